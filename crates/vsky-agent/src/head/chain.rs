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

use vsky_api::types::{LayerForm, LayerSpec, LegState, VolumeSpec};
use vsky_kernel::dm::{
    Device, LegLayout, MappedDevice, Raid1BaseTable, Sectors, TableMode, Target, TargetLine,
    ThinPoolTable, ThinTable, VolumeLayout, VolumeName,
};

use super::naming::leg_tag;
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
    }
}

/// Refuses a chain this head cannot stack: parents that do not follow the
/// order, a writable layer anywhere but at the top, an empty pool.
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
        if let Some(old) = spec.chain.get(1) {
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
                    self.frozen_in_place(layer, below).map(Some)
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
        // check_chain: the chain ends in its top, which always has one.
        let (thin, _) = below.expect("a top layer has a thin device");
        let len = sectors(spec.size_bytes);
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
        let mut parts = Vec::with_capacity(layer.mirrored_disks.len());
        for (k, legs) in layer.mirrored_disks.iter().enumerate() {
            let mut slots = Vec::with_capacity(legs.len());
            for (l, leg) in legs.iter().enumerate() {
                // The manager lists only in-sync legs with an export name:
                // without a bitmap nothing could tell which regions of a
                // catching-up leg are stale.
                if leg.state != LegState::Active || leg.export_name.is_empty() {
                    slots.push(None);
                    continue;
                }
                match self.base_leg(&vol, &as_volume, k, leg, layout) {
                    Ok(data) => slots.push(Some(data.device)),
                    Err(e) => {
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
            let mirror = self.base_mirror(&vol, k as u32, data_len, slots)?;
            parts.push((mirror.device, data_len));
        }
        let space_len = Sectors(parts.iter().map(|(_, l)| **l).sum());
        let space =
            self.dp
                .ensure_device_mode(&vol.top(), &linear_lines(&parts), TableMode::ReadOnly)?;
        self.thin_stack(&vol, layer, space.device, space_len, below, StackForm::Base)
    }

    /// One leg of a base: its import (or local chunk) and a read-only
    /// linear over its data area; its metadata area is never mapped.
    fn base_leg(
        &mut self,
        vol: &VolumeName,
        as_volume: &VolumeSpec,
        k: usize,
        leg: &vsky_api::types::LegSpec,
        layout: LegLayout,
    ) -> Result<MappedDevice, HeadError> {
        let names = vol.leg(k as u32, &leg_tag(leg.chunk))?;
        let (parent, layout) = self.leg_source(as_volume, k, leg, layout)?;
        let line = TargetLine {
            start: Sectors(0),
            len: layout.data_size,
            target: Target::Linear {
                dev: parent,
                offset: Sectors(*layout.start + *layout.meta_size),
            },
        };
        Ok(self
            .dp
            .ensure_device_mode(&names.data, &[line], TableMode::ReadOnly)?)
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

    /// The pool and thin device of a layer over its space: metadata at the
    /// front, data behind, thin device 0 reading unwritten blocks from
    /// `below`, in `form`; `None` for a base that was never written, which
    /// needs no pool.
    pub(super) fn thin_stack(
        &mut self,
        vol: &VolumeName,
        layer: &LayerSpec,
        space: Device,
        space_len: Sectors,
        below: Option<(Device, Sectors)>,
        form: StackForm,
    ) -> Result<Option<Device>, HeadError> {
        let mode = form.table_mode();
        let meta = sectors(layer.meta_bytes);
        let block = Sectors(u64::from(layer.block_sectors));
        if *meta == 0 || *block == 0 || *space_len <= *meta + *block {
            return Err(HeadError::Layout {
                volume: layer.name.clone(),
                reason: format!(
                    "{} sectors of space hold no pool with {} sectors of metadata",
                    *space_len, *meta
                ),
            });
        }
        let data_len = Sectors(*space_len - *meta);
        let tmeta =
            self.dp
                .ensure_device_mode(&vol.thin_meta(), &linear_lines(&[(space, meta)]), mode)?;
        // A running pool has formatted its metadata: read the superblock
        // only while there is none, not on every reconcile.
        if form == StackForm::Base
            && self.dp.lookup(&vol.pool())?.is_none()
            && metadata_is_blank(&tmeta.path)?
        {
            // A frozen layer no head ever wrote (a snapshot of a thin
            // volume never attached): no pool can be loaded `read_only`
            // over unformatted metadata, and it holds nothing, so the
            // layer above reads from the one below instead (and zeros
            // past its end, as over any shorter origin).
            tracing::debug!(layer = %layer.name, "a frozen layer never written; reading through it");
            return Ok(None);
        }
        let tdata = self.dp.ensure_device_mode(
            &vol.thin_data(),
            &[TargetLine {
                start: Sectors(0),
                len: data_len,
                target: Target::Linear {
                    dev: space,
                    offset: meta,
                },
            }],
            mode,
        )?;
        let mut pool = ThinPoolTable::new(tmeta.device, tdata.device, block, 0);
        let running = self.running_pool(&vol.pool())?;
        pool.read_only = form.pool_read_only(running.as_ref().map(|p| p.read_only));
        // dm-thin counts data blocks from the pool's length.
        let pool_len = Sectors(*data_len - *data_len % *block);
        let pool_lines = [TargetLine {
            start: Sectors(0),
            len: pool_len,
            target: Target::ThinPool(pool.clone()),
        }];
        if let Some(running) = running
            && running.read_only != pool.read_only
            && (ThinPoolTable {
                read_only: pool.read_only,
                ..running
            }) == pool
        {
            // Frozen since it was loaded: the same pool, read-only now,
            // reloaded live (its thin device may be another's origin).
            tracing::info!(layer = %layer.name, read_only = pool.read_only, "reloading a pool's mode");
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

/// Whether a pool's metadata device was never formatted: dm-thin reads an
/// all-zero first block as empty metadata and writes its superblock there
/// when the pool is first loaded read-write (4.19
/// `thin-provisioning.txt` l.67–71).
fn metadata_is_blank(tmeta: &std::path::Path) -> Result<bool, HeadError> {
    use std::io::Read;
    let mut block = vec![0u8; 4096];
    std::fs::File::open(tmeta)
        .and_then(|mut f| f.read_exact(&mut block))
        .map_err(|e| HeadError::Layout {
            volume: tmeta.display().to_string(),
            reason: format!("cannot read the pool's metadata superblock: {e}"),
        })?;
    Ok(block.iter().all(|b| *b == 0))
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
            block_sectors: 128,
            thin_size_bytes: 4 << 20,
            parent: parent.map(String::from),
        }
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
        ] {
            assert!(check_chain(&bad).is_err(), "{what}");
        }
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
