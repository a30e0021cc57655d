//! Thin volumes: a chain of layers, each a dm-thin pool on the layer's own
//! mirrored disks with one thin device that reads what it has not written
//! from the layer below (docs/design/snapshots.md §5.4).
//!
//! Devices, for a layer `L` (`_L<id>`) and a handle `h`:
//! - the layer's mirrors and their legs, named as a volume's
//!   (`vsky-L+r<k>`, …), and its **space** `vsky-L`, their concatenation;
//! - `vsky-L+tmeta` and `vsky-L+tdata`, the pool's metadata (the front of
//!   the space) and data (the rest);
//! - `vsky-L+pool` and `vsky-L+thin` (thin device 0, whose external origin
//!   is the thin device of the layer below);
//! - `vsky-h`, the device users get: a linear over its top layer's thin
//!   device, so a later freeze can re-point it without its path changing.
//!
//! The **top** form is the layer the volume writes: its mirrors are
//! assembled exactly as a thick volume's (`Head::assemble`: legs with
//! metadata devices, resyncs, moves, returning legs), and its pool is
//! read-write. The **base** form is a frozen layer, immutable: raid1 over
//! the active legs' data areas only (no metadata devices, `nosync`), and
//! every device below the pool loaded read-only, the pool `read_only`, so
//! any number of heads may assemble it at once. A layer is assembled once
//! per head, however many of its chains name it, and torn down (as a
//! volume name the head reports assembled) when none does.

use vsky_api::types::{LayerForm, LayerSpec, LegSpec, LegState, VolumeSpec};
use vsky_kernel::dm::{
    DevName, Device, Growth, LegLayout, MappedDevice, Raid1BaseTable, Sectors,
    THIN_METADATA_BLOCK_BYTES, TableMode, Target, TargetLine, ThinPoolTable, ThinSuperblock,
    ThinTable, VolumeLayout, VolumeName,
};

use super::{Assembly, Head, HeadError, REGION_SECTORS, SECTOR, sectors};

/// How a layer's pool and thin device are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StackForm {
    /// The top this head writes: read-write tables and pool.
    Writable,
    /// The old top of a snapshot, until this head has switched the volume
    /// off it: read-write tables, the pool in whatever mode it runs
    /// (read-only once the switch is done, `freeze.rs`).
    Freezing,
    /// Frozen while this head had it assembled writable: its tables stay
    /// as they were loaded, the pool is read-only.
    FrozenInPlace,
    /// Frozen and assembled read-only (base form).
    Base,
}

impl StackForm {
    fn table_mode(self) -> TableMode {
        match self {
            StackForm::Base => TableMode::ReadOnly,
            _ => TableMode::ReadWrite,
        }
    }

    /// The pool's `read_only` feature, given the running pool's.
    fn pool_read_only(self, running: Option<bool>) -> bool {
        match self {
            StackForm::Writable => false,
            StackForm::Freezing => running.unwrap_or(false),
            StackForm::FrozenInPlace | StackForm::Base => true,
        }
    }

    /// Whether the layer is written here (its thin device may be created).
    fn writes(self) -> bool {
        matches!(self, StackForm::Writable | StackForm::Freezing)
    }
}

/// Every set of mirrors a volume spec stands for, each as a spec of its
/// own: a thick volume itself; each layer of a thin volume's chain, under
/// the layer's name. Failed legs, resyncs, scrubs and health are per set:
/// the manager knows a layer's legs under the layer's name.
pub fn mirror_sets(spec: &VolumeSpec) -> Vec<VolumeSpec> {
    if spec.chain.is_empty() {
        return vec![spec.clone()];
    }
    spec.chain
        .iter()
        .map(|layer| layer_as_volume(spec, layer))
        .collect()
}

/// Whether an assembled name is a layer's (`_L<id>`): users' volume names
/// start with a letter or a digit.
pub fn is_layer(name: &str) -> bool {
    name.starts_with('_')
}

/// The length of each mirrored disk of a layer's space: a chunk's data
/// area.
pub(super) fn disk_len(spec: &VolumeSpec) -> Sectors {
    sectors(spec.chunk_size_bytes.saturating_sub(spec.leg_meta_bytes))
}

/// A layer as a thick volume whose device is the layer's space.
fn layer_as_volume(spec: &VolumeSpec, layer: &LayerSpec) -> VolumeSpec {
    let data_bytes = spec.chunk_size_bytes.saturating_sub(spec.leg_meta_bytes);
    VolumeSpec {
        name: layer.name.clone(),
        size_bytes: data_bytes * layer.mirrored_disks.len() as u64,
        stripe: None,
        chunk_size_bytes: spec.chunk_size_bytes,
        leg_meta_bytes: spec.leg_meta_bytes,
        mirrored_disks: layer.mirrored_disks.clone(),
        chain: Vec::new(),
        read_only: false,
    }
}

/// Refuses a chain this head cannot stack: parents that do not follow the
/// order, a writable layer anywhere but at the top, an empty pool, and a
/// snapshot read here (`read_only`) with anything but base layers.
fn check_chain(spec: &VolumeSpec) -> Result<(), String> {
    let chain = &spec.chain;
    for (i, layer) in chain.iter().enumerate() {
        let below = chain.get(i + 1).map(|l| l.name.as_str());
        if layer.parent.as_deref() != below {
            return Err(format!(
                "layer {} names parent {:?} but the chain has {below:?} below it",
                layer.name, layer.parent
            ));
        }
        let allowed = match layer.form {
            _ if spec.read_only => layer.form == LayerForm::Base,
            LayerForm::Top => i == 0,
            LayerForm::Freezing => i == 1,
            LayerForm::Base => i > 0,
        };
        if !allowed {
            return Err(format!(
                "layer {} is {:?} at depth {i} of the chain",
                layer.name, layer.form
            ));
        }
        if layer.mirrored_disks.is_empty() || layer.thin_size_bytes == 0 {
            return Err(format!("layer {} has no space or no size", layer.name));
        }
    }
    match chain.first() {
        Some(top) if top.thin_size_bytes == spec.size_bytes => Ok(()),
        Some(top) => Err(format!(
            "the top layer {} is {} bytes, the volume {}",
            top.name, top.thin_size_bytes, spec.size_bytes
        )),
        None => Err("no layer".into()),
    }
}

impl Head {
    /// Assembles a thin volume: its layers from the bottom up, then the
    /// volume device over the top layer's thin device.
    pub(super) fn assemble_chain(
        &mut self,
        spec: &VolumeSpec,
        listed: &[(vsky_kernel::nbd::NbdIndex, String)],
    ) -> Result<Assembly, HeadError> {
        let layout_error = |reason: String| HeadError::Layout {
            volume: spec.name.clone(),
            reason,
        };
        check_chain(spec).map_err(layout_error)?;
        let handle = VolumeName::new(&spec.name)?;
        if let Some(old) = spec.chain.get(1).filter(|_| !spec.read_only) {
            // A switch a crash or an error cut short must not hold the VM's
            // I/O while this assembly works (`freeze.rs`).
            self.resume_cut_short_switch(&handle, &VolumeName::new(&old.name)?)?;
        }
        let mut assembly = Assembly::default();
        let mut below: Option<(Device, Sectors)> = None;
        for layer in spec.chain.iter().rev() {
            self.imports = Some(super::imports::ImportIndex::of(
                &layer.name,
                listed.to_vec(),
            ));
            let thin = match layer.form {
                LayerForm::Top => self
                    .top_layer(spec, layer, below, StackForm::Writable, &mut assembly)
                    .map(Some),
                LayerForm::Freezing => self
                    .top_layer(spec, layer, below, StackForm::Freezing, &mut assembly)
                    .map(Some),
                LayerForm::Base if self.assembled_writable(&layer.name)? => {
                    self.frozen_in_place(spec, layer, below).map(Some)
                }
                LayerForm::Base => self.base_layer(spec, layer, below, &mut assembly),
            };
            self.imports = None;
            // A base never written has no thin device: the layer above
            // reads through it.
            if let Some(thin) = thin? {
                below = Some((thin, sectors(layer.thin_size_bytes)));
            }
        }
        let len = sectors(spec.size_bytes);
        if spec.read_only {
            return self.read_only_device(&handle, below, len, assembly);
        }
        // check_chain: the chain ends in its top, which always has one.
        let (thin, _) = below.expect("a top layer has a thin device");
        if let Some(old) = spec.chain.get(1) {
            // A snapshot gave the volume a new top: move its device there
            // (`freeze.rs`), then report it while the manager lists the old
            // top freezing. Also when the old top is frozen already (the
            // volume was fenced and attached here again before this head
            // tore it down): the device must not keep mapping it.
            let old_vol = VolumeName::new(&old.name)?;
            if old.form == LayerForm::Freezing || self.maps_thin_of(&handle, &old_vol)? {
                self.switch_to_new_top(&handle, &old_vol, thin, len)?;
            }
            if old.form == LayerForm::Freezing {
                assembly.switched = Some(old.name.clone());
            }
        }
        let device = self
            .dp
            .ensure_volume(&handle.top(), &VolumeLayout::Linear(vec![(thin, len)]))?;
        assembly.device = device.path;
        assembly.size_bytes = *len * SECTOR;
        Ok(assembly)
    }

    /// The writable top: its mirrors as a thick volume's, then a read-write
    /// pool and thin device 0 (created in the pool's metadata the first
    /// time). Returns the thin device.
    fn top_layer(
        &mut self,
        spec: &VolumeSpec,
        layer: &LayerSpec,
        below: Option<(Device, Sectors)>,
        form: StackForm,
        assembly: &mut Assembly,
    ) -> Result<Device, HeadError> {
        let as_volume = layer_as_volume(spec, layer);
        let space = self.assemble(&as_volume)?;
        assembly.retry_new_members |= space.retry_new_members;
        assembly.unreachable_legs.extend(space.unreachable_legs);
        let vol = VolumeName::new(&layer.name)?;
        let space_device = self
            .dp
            .lookup(&vol.top())?
            .ok_or_else(|| HeadError::Layout {
                volume: spec.name.clone(),
                reason: format!("layer {}: its space device is gone", layer.name),
            })?;
        self.thin_stack(
            &vol,
            layer,
            space_device,
            sectors(space.size_bytes),
            disk_len(spec),
            below,
            form,
        )?
        .ok_or_else(|| HeadError::Layout {
            volume: spec.name.clone(),
            reason: format!("layer {}: a writable pool made no thin device", layer.name),
        })
    }

    /// A frozen layer, read-only: raid1 over the data areas of its active
    /// legs without metadata devices, `nosync`, then a `read_only` pool and
    /// a read-only thin device. Returns the thin device, or `None` for a
    /// layer never written (see [`Head::thin_stack`]).
    fn base_layer(
        &mut self,
        spec: &VolumeSpec,
        layer: &LayerSpec,
        below: Option<(Device, Sectors)>,
        assembly: &mut Assembly,
    ) -> Result<Option<Device>, HeadError> {
        let vol = VolumeName::new(&layer.name)?;
        let as_volume = layer_as_volume(spec, layer);
        let layout =
            LegLayout::with_meta(sectors(spec.chunk_size_bytes), sectors(spec.leg_meta_bytes))?;
        let data_len = layout.data_size;
        // The manager lists only in-sync legs with an export name: without
        // a bitmap nothing could tell which regions of a catching-up leg
        // are stale. Their devices, then the mirrors, are made a few at
        // once, as a volume's are (`Head::assemble`).
        let active = |leg: &LegSpec| {
            (leg.state == LegState::Active && !leg.export_name.is_empty()).then_some(())
        };
        let mut made = self.legs_at_once(&as_volume, active, |maker, nl, k, leg, (), known| {
            maker.base_leg(nl, &vol, &as_volume, k, leg, layout, known)
        });
        let mut planned = Vec::with_capacity(layer.mirrored_disks.len());
        for (k, legs) in layer.mirrored_disks.iter().enumerate() {
            let mut slots = Vec::with_capacity(legs.len());
            for (l, leg) in legs.iter().enumerate() {
                match made.remove(&(k, l)) {
                    None => slots.push(None),
                    // This host's trouble, not the leg's.
                    Some(Err(e @ HeadError::Netlink(_))) => return Err(e),
                    Some(Ok(data)) => slots.push(Some(data.device)),
                    Some(Err(e)) => {
                        tracing::warn!(volume = %spec.name, layer = %layer.name, mirrored_disk = k, leg = l,
                            server = %leg.server, error = %e, "leg of a base unreachable; reading from the others");
                        assembly
                            .unreachable_legs
                            .push((layer.name.clone(), k as u32, l as u8));
                        slots.push(None);
                    }
                }
            }
            if slots.iter().all(Option::is_none) {
                return Err(HeadError::NoLeg {
                    volume: layer.name.clone(),
                    mirrored_disk: k,
                });
            }
            planned.push((k, slots));
        }
        let head = &*self;
        let parts = vsky_sync::map_bounded(
            planned,
            super::ASSEMBLY_WORKERS,
            || (),
            |_, (k, slots)| {
                head.base_mirror(&vol, k as u32, data_len, slots)
                    .map(|mirror| (mirror.device, data_len))
            },
        )
        .into_iter()
        .collect::<Result<Vec<_>, HeadError>>()?;
        let space_len = Sectors(parts.iter().map(|(_, l)| **l).sum());
        let space =
            self.dp
                .ensure_device_mode(&vol.top(), &linear_lines(&parts), TableMode::ReadOnly)?;
        self.thin_stack(
            &vol,
            layer,
            space.device,
            space_len,
            data_len,
            below,
            StackForm::Base,
        )
    }

    /// Creates a base's mirror, or reloads a running one whose legs the
    /// manager changed (a leg failed, or a repaired one is active again):
    /// without a bitmap there is nothing to resync, and every listed leg
    /// holds the same immutable data.
    fn base_mirror(
        &self,
        vol: &VolumeName,
        k: u32,
        len: Sectors,
        slots: Vec<Option<Device>>,
    ) -> Result<MappedDevice, HeadError> {
        let name = vol.raid(k);
        let lines = [TargetLine {
            start: Sectors(0),
            len,
            target: Target::Raid1Base(Raid1BaseTable {
                data: slots,
                region_size: region_size(len),
            }),
        }];
        if self.dp.lookup(&name)?.is_some() {
            let running = self.dp.raid1_data_devices(&name)?;
            let Target::Raid1Base(wanted) = &lines[0].target else {
                unreachable!("built above")
            };
            if running != wanted.data {
                tracing::info!(mirror = %name, "the legs of a base changed; reloading its mirror");
                self.dp.load_table(&name, &lines, TableMode::ReadOnly)?;
                self.dp.suspend(&name)?;
                self.dp.resume(&name)?;
            }
        }
        Ok(self
            .dp
            .ensure_device_mode(&name, &lines, TableMode::ReadOnly)?)
    }

    /// The pool and thin device of a layer over its space of mirrored
    /// disks of `disk_len` each: the pool's metadata and data devices from
    /// their parts of each disk ([`pool_parts`]), thin device 0 reading
    /// unwritten blocks from `below`, in `form`; `None` for a base that was
    /// never written, which needs no pool.
    ///
    /// How big the pool is: in the writable form, every disk of the space
    /// (a pool the manager grew gets longer devices in place, and dm-thin
    /// takes them in on the pool's reload); in any other form, the pool as
    /// it runs, or, when it does not run yet, as its superblock records it
    /// (a read-only pool must not be resized, and its layer may have grown
    /// while its head was switching off it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn thin_stack(
        &mut self,
        vol: &VolumeName,
        layer: &LayerSpec,
        space: Device,
        space_len: Sectors,
        disk_len: Sectors,
        below: Option<(Device, Sectors)>,
        form: StackForm,
    ) -> Result<Option<Device>, HeadError> {
        let mode = form.table_mode();
        let block = Sectors(u64::from(layer.block_sectors));
        let layout_error = |reason: String| HeadError::Layout {
            volume: layer.name.clone(),
            reason,
        };
        let (meta_parts, data_parts) =
            pool_parts(layer, *space_len / (*disk_len).max(1), disk_len).map_err(layout_error)?;
        let running_len = self.running_pool_len(&vol.pool())?;
        let (meta_parts, data_parts, pool_len, growth) = match (form, running_len) {
            (StackForm::Writable, _) => {
                let len = whole_blocks(&data_parts, block);
                (meta_parts, data_parts, len, Growth::Reload)
            }
            (_, Some(len)) => (meta_parts, data_parts, len, Growth::KeepRunning),
            (_, None) => {
                let first = self.dp.node_path(&vol.top());
                match read_superblock(&first)? {
                    // A frozen layer no head ever wrote (a snapshot of a
                    // thin volume never attached): no pool can be loaded
                    // `read_only` over unformatted metadata, and it holds
                    // nothing, so the layer above reads from the one below
                    // instead (and zeros past its end, as over any shorter
                    // origin).
                    None if form == StackForm::Base => {
                        tracing::debug!(layer = %layer.name, "a frozen layer never written; reading through it");
                        return Ok(None);
                    }
                    None => {
                        let len = whole_blocks(&data_parts, block);
                        (meta_parts, data_parts, len, Growth::KeepRunning)
                    }
                    Some(sb) => {
                        let (meta, data, len) = recorded_parts(&sb, meta_parts, data_parts, block)
                            .map_err(layout_error)?;
                        (meta, data, len, Growth::KeepRunning)
                    }
                }
            }
        };
        let tmeta = self.dp.ensure_device_growing(
            &vol.thin_meta(),
            &parts_lines(space, &meta_parts),
            mode,
            growth,
        )?;
        let tdata = self.dp.ensure_device_growing(
            &vol.thin_data(),
            &parts_lines(space, &data_parts),
            mode,
            growth,
        )?;
        let mut pool = ThinPoolTable::new(tmeta.device, tdata.device, block, 0);
        let running = self.running_pool(&vol.pool())?;
        pool.read_only = form.pool_read_only(running.as_ref().map(|p| p.read_only));
        let pool_lines = [TargetLine {
            start: Sectors(0),
            len: pool_len,
            target: Target::ThinPool(pool.clone()),
        }];
        if let Some(running) = running
            && (ThinPoolTable {
                read_only: pool.read_only,
                ..running.clone()
            }) == pool
            && (running.read_only != pool.read_only
                || running_len.is_some_and(|len| *len < *pool_len))
        {
            // Frozen since it was loaded (the same pool, read-only now), or
            // grown (its devices are longer now): reloaded live, with its
            // thin device open (dm-thin suspends and resumes the pool's
            // active thin devices around it). The reload of a grown pool
            // resizes its data and metadata in the kernel.
            tracing::info!(layer = %layer.name, read_only = pool.read_only,
                from_sectors = running_len.map(|l| *l), to_sectors = *pool_len, "reloading a pool");
            if pool.read_only {
                self.finish_metadata_growth(vol)?;
            }
            self.dp.reload(&vol.pool(), &pool_lines)?;
        }
        // A thin-pool is always loaded read-write; `read_only` is its own.
        let pool = self.dp.ensure_device(&vol.pool(), &pool_lines)?;
        if form.writes() && self.dp.lookup(&vol.thin())?.is_none() {
            // Thin device 0 lives in the pool's metadata: a retry after a
            // crash finds it there (EEXIST), which is done too.
            self.dp.create_thin(&pool.name, 0)?;
        }
        let wanted = ThinTable {
            pool: pool.device,
            dev_id: 0,
            external_origin: below.map(|(device, _)| device),
        };
        let len = sectors(layer.thin_size_bytes);
        let lines = [TargetLine {
            start: Sectors(0),
            len,
            target: Target::Thin(wanted.clone()),
        }];
        if form == StackForm::Writable && self.thin_is_shorter(&vol.thin(), &wanted, len)? {
            // The volume grew: its thin device gets the new length in
            // place (blocks past the old end are unmapped, and past the
            // origin's end read as zeros).
            tracing::info!(layer = %layer.name, sectors = *len, "growing a thin device");
            self.dp.reload(&vol.thin(), &lines)?;
        }
        Ok(Some(
            self.dp
                .ensure_device_mode(&vol.thin(), &lines, mode)?
                .device,
        ))
    }

    /// The length of the running pool `name`, if it runs.
    pub(super) fn running_pool_len(&self, name: &DevName) -> Result<Option<Sectors>, HeadError> {
        if self.dp.lookup(name)?.is_none() {
            return Ok(None);
        }
        Ok(match self.dp.table(name)?.as_slice() {
            [(0, len, kind, _)] if kind == "thin-pool" => Some(Sectors(*len)),
            _ => None,
        })
    }

    /// Whether the running thin device `name` is `wanted` with fewer than
    /// `len` sectors.
    fn thin_is_shorter(
        &self,
        name: &vsky_kernel::dm::DevName,
        wanted: &ThinTable,
        len: Sectors,
    ) -> Result<bool, HeadError> {
        if self.dp.lookup(name)?.is_none() {
            return Ok(false);
        }
        Ok(match self.dp.table(name)?.as_slice() {
            [(0, found_len, kind, params)] if kind == "thin" => {
                *found_len < *len && params.parse::<ThinTable>().as_ref() == Ok(wanted)
            }
            _ => false,
        })
    }
}

/// The pool's metadata and data parts of a layer of `disks` mirrored
/// disks of `disk_len` each, as (offset in the space, length): the first
/// `meta_bytes` of the first disk and the first `added_meta_bytes` of every
/// later one are metadata, the rest of each is data (the wire contract of
/// `LayerSpec`; the manager's `cluster/pools.rs` holds the rule).
type Parts = Vec<(Sectors, Sectors)>;

fn pool_parts(layer: &LayerSpec, disks: u64, disk_len: Sectors) -> Result<(Parts, Parts), String> {
    let block = u64::from(layer.block_sectors);
    let first = *sectors(layer.meta_bytes);
    // Older managers send no rule for later disks; their layers have one.
    let later = *sectors(layer.added_meta_bytes);
    if first == 0
        || block == 0
        || *disk_len <= first + block
        || (disks > 1 && (later == 0 || *disk_len <= later))
    {
        return Err(format!(
            "mirrored disks of {} sectors hold no pool with {first} and {later} sectors of metadata",
            *disk_len
        ));
    }
    let mut meta = Vec::new();
    let mut data = Vec::new();
    for k in 0..disks {
        let start = k * *disk_len;
        let m = if k == 0 { first } else { later };
        meta.push((Sectors(start), Sectors(m)));
        data.push((Sectors(start + m), Sectors(*disk_len - m)));
    }
    Ok((meta, data))
}

/// The whole pool blocks of `parts`, in sectors.
fn whole_blocks(parts: &[(Sectors, Sectors)], block: Sectors) -> Sectors {
    let total: u64 = parts.iter().map(|(_, l)| **l).sum();
    Sectors(total - total % (*block).max(1))
}

/// The parts and pool length a pool's superblock records: the metadata
/// parts that make exactly its metadata size, the data parts its data
/// blocks lie in.
fn recorded_parts(
    sb: &ThinSuperblock,
    meta: Parts,
    data: Parts,
    block: Sectors,
) -> Result<(Parts, Parts, Sectors), String> {
    if u64::from(sb.data_block_sectors) != *block {
        return Err(format!(
            "its pool's metadata has blocks of {} sectors, the layer {}",
            sb.data_block_sectors, *block
        ));
    }
    // A corrupt superblock may say anything: no overflow, a refusal.
    let too_big = || format!("its pool's superblock records impossible sizes: {sb:?}");
    let meta_len = sb
        .metadata_blocks
        .checked_mul(THIN_METADATA_BLOCK_BYTES / SECTOR)
        .ok_or_else(too_big)?;
    let mut sum = 0;
    let Some(m) = meta.iter().position(|(_, l)| {
        sum += **l;
        sum >= meta_len
    }) else {
        return Err(format!(
            "its pool's metadata records {meta_len} sectors of metadata, more than the layer's {sum}"
        ));
    };
    if sum != meta_len {
        return Err(format!(
            "its pool's metadata records {meta_len} sectors of metadata, which are no whole mirrored disks' parts"
        ));
    }
    let pool_len = sb.data_blocks.checked_mul(*block).ok_or_else(too_big)?;
    let mut sum = 0;
    let Some(d) = data.iter().position(|(_, l)| {
        sum += **l;
        sum >= pool_len
    }) else {
        return Err(format!(
            "its pool's metadata records {pool_len} sectors of data, more than the layer's {sum}"
        ));
    };
    let mut meta = meta;
    let mut data = data;
    meta.truncate(m + 1);
    data.truncate(d + 1);
    Ok((meta, data, Sectors(pool_len)))
}

/// The superblock at the front of a layer's space (its pool's metadata
/// starts there).
fn read_superblock(space: &std::path::Path) -> Result<Option<ThinSuperblock>, HeadError> {
    use std::io::Read;
    let error = |reason: String| HeadError::Layout {
        volume: space.display().to_string(),
        reason,
    };
    let mut block = vec![0u8; THIN_METADATA_BLOCK_BYTES as usize];
    std::fs::File::open(space)
        .and_then(|mut f| f.read_exact(&mut block))
        .map_err(|e| error(format!("cannot read the pool's metadata superblock: {e}")))?;
    ThinSuperblock::parse(&block).map_err(error)
}

/// `parts` of `space` as a concatenation.
fn parts_lines(space: Device, parts: &[(Sectors, Sectors)]) -> Vec<TargetLine> {
    let mut at = 0;
    parts
        .iter()
        .map(|&(offset, len)| {
            let line = TargetLine {
                start: Sectors(at),
                len,
                target: Target::Linear { dev: space, offset },
            };
            at += *len;
            line
        })
        .collect()
}

/// A concatenation of `parts` as table lines.
fn linear_lines(parts: &[(Device, Sectors)]) -> Vec<TargetLine> {
    let mut at = 0;
    parts
        .iter()
        .map(|&(dev, len)| {
            let line = TargetLine {
                start: Sectors(at),
                len,
                target: Target::Linear {
                    dev,
                    offset: Sectors(0),
                },
            };
            at += *len;
            line
        })
        .collect()
}

/// dm-raid's region for a mirror of `len` sectors: [`REGION_SECTORS`], or
/// more so the bitmap has at most 2^21 regions (checked without a bitmap
/// too).
pub(super) fn region_size(len: Sectors) -> Sectors {
    let mut region = REGION_SECTORS;
    while region < *len >> 21 {
        region <<= 1;
    }
    Sectors(region.min(*len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsky_api::types::{ChunkId, LegSpec};

    fn leg(disk_id: u64) -> LegSpec {
        LegSpec {
            server: format!("s{disk_id}"),
            server_address: format!("10.0.0.{disk_id}:10809"),
            export_name: format!("x{disk_id}"),
            chunk: ChunkId { disk_id, index: 0 },
            offset_bytes: 0,
            state: LegState::Active,
            resync_job: None,
            local_disk_path: None,
        }
    }

    fn layer(name: &str, form: LayerForm, parent: Option<&str>) -> LayerSpec {
        LayerSpec {
            name: name.into(),
            form,
            mirrored_disks: vec![vec![leg(1), leg(2)]],
            meta_bytes: 2 << 20,
            added_meta_bytes: 64 << 10,
            block_sectors: 128,
            thin_size_bytes: 4 << 20,
            parent: parent.map(String::from),
        }
    }

    #[test]
    fn a_pool_takes_the_front_of_each_disk_for_metadata_and_grows_by_appending() {
        let l = layer("_L1", LayerForm::Top, None);
        let disk = Sectors(14336);
        let (meta, data) = pool_parts(&l, 3, disk).unwrap();
        assert_eq!(
            meta,
            [
                (Sectors(0), Sectors(4096)),
                (Sectors(14336), Sectors(128)),
                (Sectors(28672), Sectors(128)),
            ]
        );
        assert_eq!(
            data,
            [
                (Sectors(4096), Sectors(10240)),
                (Sectors(14464), Sectors(14208)),
                (Sectors(28800), Sectors(14208)),
            ]
        );
        let (meta1, data1) = pool_parts(&l, 1, disk).unwrap();
        assert_eq!((&meta[..1], &data[..1]), (&meta1[..], &data1[..]));
        assert_eq!(*whole_blocks(&data, Sectors(128)), 38656);
        // Without a rule for later disks (an older manager), only one.
        let old = LayerSpec {
            added_meta_bytes: 0,
            ..l.clone()
        };
        assert!(pool_parts(&old, 1, disk).is_ok());
        assert!(pool_parts(&old, 2, disk).is_err());
        assert!(pool_parts(&l, 1, Sectors(4096)).is_err());
    }

    #[test]
    fn a_read_only_pool_gets_exactly_the_parts_its_superblock_records() {
        let l = layer("_L1", LayerForm::Base, None);
        let (meta, data) = pool_parts(&l, 3, Sectors(14336)).unwrap();
        let sb = |metadata_blocks: u64, data_blocks: u64| ThinSuperblock {
            data_blocks,
            metadata_blocks,
            data_block_sectors: 128,
        };
        // Grown once: two disks' metadata (4096 + 128 sectors = 528 blocks
        // of 4 KiB) and their data.
        let (m, d, len) = recorded_parts(
            &sb(528, (10240 + 14208) / 128),
            meta.clone(),
            data.clone(),
            Sectors(128),
        )
        .unwrap();
        assert_eq!((m.len(), d.len(), *len), (2, 2, 24448));
        // Never grown.
        let (m, d, len) =
            recorded_parts(&sb(512, 80), meta.clone(), data.clone(), Sectors(128)).unwrap();
        assert_eq!((m.len(), d.len(), *len), (1, 1, 10240));
        // What no prefix of the layer's parts makes is refused.
        for bad in [sb(520, 80), sb(10_000, 80), sb(512, 1_000_000)] {
            assert!(recorded_parts(&bad, meta.clone(), data.clone(), Sectors(128)).is_err());
        }
        let other_block = ThinSuperblock {
            data_block_sectors: 256,
            ..sb(512, 40)
        };
        assert!(recorded_parts(&other_block, meta, data, Sectors(128)).is_err());
    }

    fn thin(chain: Vec<LayerSpec>) -> VolumeSpec {
        VolumeSpec {
            name: "v".into(),
            size_bytes: 4 << 20,
            stripe: None,
            chunk_size_bytes: 8 << 20,
            leg_meta_bytes: 1 << 20,
            mirrored_disks: Vec::new(),
            chain,
            read_only: false,
        }
    }

    #[test]
    fn a_chain_is_stacked_only_in_order() {
        let good = thin(vec![
            layer("_L3", LayerForm::Top, Some("_L2")),
            layer("_L2", LayerForm::Base, Some("_L1")),
            layer("_L1", LayerForm::Base, None),
        ]);
        assert_eq!(check_chain(&good), Ok(()));
        let mut freezing = good.clone();
        freezing.chain[1].form = LayerForm::Freezing;
        assert_eq!(check_chain(&freezing), Ok(()));
        for (what, bad) in [
            ("parent skips a layer", {
                let mut b = good.clone();
                b.chain[0].parent = Some("_L1".into());
                b
            }),
            ("bottom has a parent", {
                let mut b = good.clone();
                b.chain[2].parent = Some("_L9".into());
                b
            }),
            ("a base on top", {
                let mut b = good.clone();
                b.chain[0].form = LayerForm::Base;
                b
            }),
            ("a writable layer below", {
                let mut b = good.clone();
                b.chain[2].form = LayerForm::Top;
                b
            }),
            ("freezing too deep", {
                let mut b = good.clone();
                b.chain[2].form = LayerForm::Freezing;
                b
            }),
            ("sizes differ", {
                let mut b = good.clone();
                b.size_bytes += 4096;
                b
            }),
            ("no space", {
                let mut b = good.clone();
                b.chain[1].mirrored_disks.clear();
                b
            }),
            ("empty", thin(Vec::new())),
            ("a writable layer read", {
                let mut b = good.clone();
                b.read_only = true;
                b
            }),
        ] {
            assert!(check_chain(&bad).is_err(), "{what}");
        }
        // A snapshot read here: every layer a base, its own at the top.
        let mut read = good.clone();
        read.read_only = true;
        read.chain[0].form = LayerForm::Base;
        assert_eq!(check_chain(&read), Ok(()));
    }

    #[test]
    fn each_layer_is_a_set_of_mirrors_under_its_own_name() {
        let v = thin(vec![
            layer("_L3", LayerForm::Top, Some("_L1")),
            layer("_L1", LayerForm::Base, None),
        ]);
        let sets = mirror_sets(&v);
        let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["_L3", "_L1"]);
        assert_eq!(sets[0].mirrored_disks, v.chain[0].mirrored_disks);
        assert_eq!(sets[0].size_bytes, 7 << 20);
        assert!(sets.iter().all(|s| s.chain.is_empty()));
        let thick = VolumeSpec {
            mirrored_disks: vec![vec![leg(1), leg(2)]],
            ..thin(Vec::new())
        };
        assert_eq!(mirror_sets(&thick), vec![thick.clone()]);
    }

    #[test]
    fn regions_keep_the_bitmap_small() {
        assert_eq!(region_size(Sectors(1 << 20)), Sectors(REGION_SECTORS));
        assert_eq!(region_size(Sectors(1000)), Sectors(1000));
        assert_eq!(region_size(Sectors(1 << 33)), Sectors(4096));
    }
}
