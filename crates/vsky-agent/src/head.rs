//! The head role: assembling attached volumes in the kernel, and tearing
//! them down.
//!
//! For every mirrored disk, each leg that is not known to have failed is
//! imported: a chunk on another server through the kernel NBD client (a
//! socket we handshake, then hand to the kernel over netlink), a chunk on
//! one of this server's block devices directly. Each leg is carved into a
//! metadata and a data device, the legs form a dm-raid raid1 mirror, and the
//! mirrors are concatenated (or striped) into `/dev/mapper/vsky-<volume>`.
//!
//! Everything is idempotent and adopts what the kernel already has: NBD
//! devices by their backend identifier, dm devices by name and table. So an
//! agent restarted while volumes are attached picks them up unchanged.
//!
//! All calls here block (ioctls, netlink, socket handshakes): the agent runs
//! them on the blocking pool, one at a time (the [`Head`] is behind a mutex).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vsky_api::types::{ChunkId, LegSpec, LegState, ResyncReport, VolumeSpec};
use vsky_kernel::dm::{
    Datapath, DevName, Device, LegDevices, LegHealth, LegLayout, MappedDevice, Raid1Table, Sectors,
    SyncAction, VolumeLayout, VolumeName,
};
use vsky_kernel::nbd::{self, ConnectRequest, NbdNetlink};

const SECTOR: u64 = 512;
/// Bitmap region of the mirrors: the unit a returning leg resyncs in.
const REGION_SECTORS: u64 = 2048;
/// Backend identifiers start with this, so we only ever touch our devices.
const BACKEND_PREFIX: &str = "vsky:";

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Dm(#[from] vsky_kernel::dm::DmError),
    #[error(transparent)]
    Nbd(#[from] vsky_kernel::nbd::NbdError),
    #[error(
        "volume {volume}: mirrored disk {mirrored_disk} has no reachable leg; its data is unavailable until a leg's server returns"
    )]
    NoLeg {
        volume: String,
        mirrored_disk: usize,
    },
    #[error("volume {volume}: {reason}")]
    Layout { volume: String, reason: String },
}

/// Timeouts for imported legs: finite, so a dead server turns into an I/O
/// error that degrades the mirror instead of hanging it.
#[derive(Clone, Copy, Debug)]
pub struct NbdTimeouts {
    pub request: Duration,
    pub dead_connection: Duration,
    pub connect: Duration,
}

/// What one assembly found, for the agent to report.
#[derive(Debug, Default)]
pub struct Assembly {
    pub device: PathBuf,
    /// Legs (mirrored disk, leg) that could not be imported.
    pub unreachable_legs: Vec<(u32, u8)>,
}

pub struct Head {
    dp: Datapath,
    nl: NbdNetlink,
    timeouts: NbdTimeouts,
    /// This server's block-device disks, by path, for direct local legs.
    local_block_disks: BTreeSet<PathBuf>,
    /// Last attempt to bring back each dead leg the manager lists active
    /// (volume, mirror, slot, chunk), so an unreachable server costs one
    /// connect timeout per [`REVIVE_BACKOFF`], not one per reconcile.
    revive_attempts: HashMap<(String, usize, usize, ChunkId), Instant>,
    /// The cluster's resync rate limit, KiB/s per leg, for mirrors created
    /// from now on (`None`: md's default).
    recovery_rate_kib: Option<u64>,
}

/// Least time between two attempts to bring back the same dead leg.
const REVIVE_BACKOFF: Duration = Duration::from_secs(10);

fn sectors(bytes: u64) -> Sectors {
    Sectors(bytes / SECTOR)
}

/// The identifier the kernel keeps for an imported leg (visible in sysfs,
/// so it holds no secret): volume, mirrored disk, leg slot and chunk.
fn backend_id(volume: &str, k: usize, l: usize, leg: &LegSpec) -> String {
    format!(
        "{BACKEND_PREFIX}{volume}:{k}:{l}:{}:{}",
        leg.chunk.disk_id, leg.chunk.index
    )
}

impl Head {
    pub fn open(
        timeouts: NbdTimeouts,
        local_block_disks: BTreeSet<PathBuf>,
    ) -> Result<Self, HeadError> {
        Ok(Head {
            dp: Datapath::new()?,
            nl: NbdNetlink::open()?,
            timeouts,
            local_block_disks,
            revive_attempts: HashMap::new(),
            recovery_rate_kib: None,
        })
    }

    /// Forgets earlier attempts to bring back these legs (mirror, slot) of
    /// `volume`, so the next assembly tries them at once: the manager has
    /// just listed them active again.
    pub fn forget_revive_attempts(
        &mut self,
        volume: &str,
        legs: impl IntoIterator<Item = (usize, usize)>,
    ) {
        for (k, l) in legs {
            self.revive_attempts
                .retain(|(v, m, s, _), _| !(v == volume && *m == k && *s == l));
        }
    }

    /// Sets the resync rate limit (bytes per second, 0 for none) that
    /// mirrors get when they are created; running ones keep theirs.
    pub fn set_resync_rate(&mut self, bytes_per_second: u64) {
        self.recovery_rate_kib = (bytes_per_second > 0).then(|| (bytes_per_second / 1024).max(1));
    }

    /// Volumes whose top device exists in the kernel (ours: `vsky-` names
    /// without the internal `+` separator).
    pub fn assembled_volumes(&self) -> Result<BTreeSet<String>, HeadError> {
        let prefix = vsky_kernel::dm::NAME_PREFIX;
        Ok(self
            .dp
            .list()?
            .into_iter()
            .filter_map(|(n, _)| {
                n.as_str()
                    .strip_prefix(prefix)
                    .filter(|v| !v.contains('+'))
                    .map(String::from)
            })
            .collect())
    }

    /// Creates or adopts every device of `spec`; returns the volume device.
    pub fn ensure(&mut self, spec: &VolumeSpec) -> Result<Assembly, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let layout =
            LegLayout::with_meta(sectors(spec.chunk_size_bytes), sectors(spec.leg_meta_bytes))?;
        let data_len = layout.data_size;
        let mut assembly = Assembly::default();
        let mut mirrors: Vec<MappedDevice> = Vec::with_capacity(spec.mirrored_disks.len());
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            let mut slots: Vec<Option<LegDevices>> = Vec::with_capacity(legs.len());
            let mut rebuild = Vec::new();
            for (l, leg) in legs.iter().enumerate() {
                let new_member = match (leg.state, leg.resync_job) {
                    // Failed, or a replacement waiting for its turn: the
                    // mirror runs without it.
                    (LegState::Failed, _) | (LegState::Syncing, None) => {
                        slots.push(None);
                        continue;
                    }
                    (LegState::Syncing, Some(_)) => true,
                    (LegState::Active, _) => false,
                };
                match self.leg(&vol, spec, k, l, leg, layout, new_member) {
                    Ok(devices) => {
                        if new_member {
                            rebuild.push(l);
                        }
                        slots.push(Some(devices));
                    }
                    Err(e) => {
                        tracing::warn!(volume = %spec.name, mirrored_disk = k, leg = l, server = %leg.server, error = %e,
                            "leg unreachable; assembling the mirror without it");
                        assembly.unreachable_legs.push((k as u32, l as u8));
                        slots.push(None);
                    }
                }
            }
            if slots.iter().all(Option::is_none) {
                return Err(HeadError::NoLeg {
                    volume: spec.name.clone(),
                    mirrored_disk: k,
                });
            }
            mirrors.push(self.mirror(&vol, k as u32, data_len, slots, &rebuild)?);
            self.revive_returned_legs(&vol, spec, k);
        }
        let top = self.top(&vol, spec, data_len, &mirrors)?;
        assembly.device = top.path;
        self.collect_garbage(&vol, spec.mirrored_disks.len());
        Ok(assembly)
    }

    /// Imports one leg and carves its meta and data devices. A new member
    /// (a replacement leg) gets its metadata area zeroed when its devices
    /// are first created, so dm-raid rebuilds it rather than trusting
    /// whatever an earlier user of the chunk left there.
    #[allow(clippy::too_many_arguments)]
    fn leg(
        &mut self,
        vol: &VolumeName,
        spec: &VolumeSpec,
        k: usize,
        l: usize,
        leg: &LegSpec,
        layout: LegLayout,
        new_member: bool,
    ) -> Result<LegDevices, HeadError> {
        let names = vol.leg(k as u32, &leg_tag(leg.chunk))?;
        let (parent, layout) = match leg.local_disk_path.as_ref().map(PathBuf::from) {
            Some(path) if self.local_block_disks.contains(&path) => {
                // A chunk on our own block device: map it in place, no
                // network hop.
                let meta = std::fs::metadata(&path).map_err(|e| HeadError::Layout {
                    volume: spec.name.clone(),
                    reason: format!("cannot stat local disk {}: {e}", path.display()),
                })?;
                if !meta.file_type().is_block_device() {
                    return Err(HeadError::Layout {
                        volume: spec.name.clone(),
                        reason: format!("{} is no block device", path.display()),
                    });
                }
                let rdev = meta.rdev();
                let device = Device {
                    major: libc::major(rdev),
                    minor: libc::minor(rdev),
                };
                (device, layout.at(sectors(leg.offset_bytes)))
            }
            // A remote chunk, or one on a local *file* (labs only: a file is
            // not a block device, so it goes through our own NBD export).
            _ => (
                self.import(
                    &backend_id(&spec.name, k, l, leg),
                    spec.chunk_size_bytes,
                    leg,
                )?,
                layout,
            ),
        };
        Ok(self
            .dp
            .ensure_leg(&names, parent, layout, new_member)?
            .devices())
    }

    /// Imports a chunk through the kernel NBD client, or adopts the device
    /// already connected for it.
    fn import(
        &mut self,
        backend: &str,
        chunk_size_bytes: u64,
        leg: &LegSpec,
    ) -> Result<Device, HeadError> {
        if let Some(index) = nbd::find_by_backend(backend)? {
            return Ok(index.device()?);
        }
        let (socket, info) =
            handshake(&leg.server_address, &leg.export_name, self.timeouts.connect).map_err(
                |e| HeadError::Layout {
                    volume: backend.to_string(),
                    reason: format!("cannot reach {} ({}): {e}", leg.server, leg.server_address),
                },
            )?;
        if info.size_bytes != chunk_size_bytes {
            return Err(HeadError::Layout {
                volume: backend.to_string(),
                reason: format!(
                    "server {} exports {} bytes, expected a {chunk_size_bytes}-byte chunk",
                    leg.server, info.size_bytes
                ),
            });
        }
        let mut req = ConnectRequest::new(info.size_bytes, info.transmission_flags, backend);
        req.timeout = self.timeouts.request;
        req.dead_conn_timeout = self.timeouts.dead_connection;
        let index = self.nl.connect(&req, &[socket.as_fd()])?;
        // The kernel holds its own reference to the socket.
        drop(socket);
        Ok(index.device()?)
    }

    /// Creates the mirror, or adopts a running one whose live legs match,
    /// swapping in the new members (`rebuild` slots) it lacks.
    fn mirror(
        &self,
        vol: &VolumeName,
        k: u32,
        len: Sectors,
        slots: Vec<Option<LegDevices>>,
        rebuild: &[usize],
    ) -> Result<MappedDevice, HeadError> {
        let name = vol.raid(k);
        if self.dp.lookup(&name)?.is_some() {
            // A running mirror may still list a leg that has since failed
            // (dm-raid marks it dead, the manager marks it failed): adopt it
            // as long as every leg we expect is where we expect it. A slot
            // whose replacement's turn has come gets it now, online.
            let (_, table) = self.dp.raid1_table(&name)?;
            if slots.len() == table.legs.len() {
                for &i in rebuild {
                    let new = slots[i].expect("rebuild slots hold a leg");
                    if table.legs[i] != Some(new) {
                        self.dp.replace_raid1_leg(&name, i, new)?;
                    }
                }
            }
            let (_, table) = self.dp.raid1_table(&name)?;
            let consistent = slots.len() == table.legs.len()
                && slots
                    .iter()
                    .zip(&table.legs)
                    .all(|(want, have)| want.is_none() || want == have);
            if !consistent {
                return Err(HeadError::Layout {
                    volume: vol.as_str().to_string(),
                    reason: format!(
                        "running mirror {} has other legs than the manager's layout",
                        name.as_str()
                    ),
                });
            }
            let node = name.node_path();
            let device = self.dp.lookup(&name)?.expect("looked up above");
            return Ok(MappedDevice {
                name,
                device,
                path: node,
                created: false,
            });
        }
        let mut region = REGION_SECTORS;
        // dm-raid's bitmap has at most 2^21 regions.
        while region < *len >> 21 {
            region <<= 1;
        }
        let mut table = Raid1Table::new(slots, Sectors(region.min(*len)));
        table.rebuild = rebuild.to_vec();
        table.max_recovery_rate_kib = self.recovery_rate_kib;
        Ok(self.dp.ensure_raid1(&name, len, &table)?)
    }

    /// Brings back legs of mirror `k` that the kernel failed but the manager
    /// lists active again (their server returned within its grace period):
    /// the NBD import gets a fresh socket in place (netlink RECONFIGURE;
    /// the device, and so the mirror's table, stay the same), then the
    /// mirror's table is reloaded so dm-raid re-adds the leg and resyncs
    /// only what its write-intent bitmap marks. Best effort: a leg still
    /// unreachable stays dead and is reported again by the health loop.
    fn revive_returned_legs(&mut self, vol: &VolumeName, spec: &VolumeSpec, k: usize) {
        let legs = &spec.mirrored_disks[k];
        let name = vol.raid(k as u32);
        let Ok(status) = self.dp.raid1_status(&name) else {
            return;
        };
        let dead: Vec<usize> = status
            .dead_legs()
            .into_iter()
            .filter(|l| {
                legs.get(*l)
                    .is_some_and(|leg| leg.state == LegState::Active)
            })
            .collect();
        if dead.is_empty() {
            return;
        }
        let Ok(chunks) = self
            .device_names()
            .and_then(|names| self.slot_chunks(vol, k as u32, &names))
        else {
            return;
        };
        let mut back = Vec::new();
        for l in dead {
            let leg = &legs[l];
            // The dead device is another chunk's (a replacement is due).
            if chunks.get(l).copied().flatten() != Some(leg.chunk) {
                continue;
            }
            let key = (spec.name.clone(), k, l, leg.chunk);
            if self
                .revive_attempts
                .get(&key)
                .is_some_and(|t| t.elapsed() < REVIVE_BACKOFF)
            {
                continue;
            }
            self.revive_attempts.insert(key, Instant::now());
            let local = leg
                .local_disk_path
                .as_ref()
                .is_some_and(|p| self.local_block_disks.contains(&PathBuf::from(p)));
            let reconnected = if local {
                Ok(())
            } else {
                self.reconnect(&backend_id(&spec.name, k, l, leg), leg)
            };
            match reconnected {
                Ok(()) => back.push(l),
                Err(e) => {
                    tracing::warn!(volume = %spec.name, mirrored_disk = k, leg = l, error = %e,
                    "cannot bring the returned leg back yet")
                }
            }
        }
        if back.is_empty() {
            return;
        }
        match self.dp.reload_raid1(&name) {
            Ok(()) => tracing::info!(volume = %spec.name, mirrored_disk = k, legs = ?back,
                "returned legs re-added; catching up from the write-intent bitmap"),
            Err(e) => tracing::warn!(volume = %spec.name, mirrored_disk = k, error = %e,
                "cannot reload the mirror to re-add returned legs"),
        }
        self.revive_attempts
            .retain(|(v, m, l, _), _| !(v == &spec.name && *m == k && back.contains(l)));
    }

    /// Gives the existing NBD import of a leg a fresh connection in place.
    fn reconnect(&mut self, backend: &str, leg: &LegSpec) -> Result<(), HeadError> {
        let index = nbd::find_by_backend(backend)?.ok_or_else(|| HeadError::Layout {
            volume: backend.to_string(),
            reason: "the leg's NBD import is gone; it is replaced instead".into(),
        })?;
        let (socket, _) = handshake(&leg.server_address, &leg.export_name, self.timeouts.connect)
            .map_err(|e| HeadError::Layout {
            volume: backend.to_string(),
            reason: format!("cannot reach {} ({}): {e}", leg.server, leg.server_address),
        })?;
        self.nl.reconfigure(index, backend, &[socket.as_fd()])?;
        Ok(())
    }

    /// The volume device over the mirrors: a concatenation, or stripes
    /// whose columns concatenate every `width`-th mirror.
    fn top(
        &self,
        vol: &VolumeName,
        spec: &VolumeSpec,
        data_len: Sectors,
        mirrors: &[MappedDevice],
    ) -> Result<MappedDevice, HeadError> {
        let size = sectors(spec.size_bytes);
        let layout = match &spec.stripe {
            None => {
                let mut left = *size;
                let mut parts = Vec::new();
                for m in mirrors {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(*data_len);
                    parts.push((m.device, Sectors(take)));
                    left -= take;
                }
                VolumeLayout::Linear(parts)
            }
            Some(stripe) => {
                let width = stripe.width as usize;
                if width == 0 || !mirrors.len().is_multiple_of(width) {
                    return Err(HeadError::Layout {
                        volume: spec.name.clone(),
                        reason: "mirrored disks are not a multiple of the stripe width".into(),
                    });
                }
                let per_column = *size / width as u64;
                let mut members = Vec::with_capacity(width);
                for c in 0..width {
                    let column: Vec<&MappedDevice> =
                        mirrors.iter().skip(c).step_by(width).collect();
                    let device = if column.len() == 1 {
                        column[0].device
                    } else {
                        let mut left = per_column;
                        let parts = column
                            .iter()
                            .map(|m| {
                                let take = left.min(*data_len);
                                left -= take;
                                (m.device, Sectors(take))
                            })
                            .filter(|(_, l)| **l > 0)
                            .collect();
                        self.dp
                            .ensure_volume(&vol.column(c as u32), &VolumeLayout::Linear(parts))?
                            .device
                    };
                    members.push((device, Sectors(per_column)));
                }
                VolumeLayout::Striped {
                    chunk: sectors(stripe.unit_bytes),
                    members,
                }
            }
        };
        Ok(self.dp.ensure_volume(&vol.top(), &layout)?)
    }

    /// Removes every device of a volume and disconnects its legs.
    pub fn teardown(&mut self, volume: &str) -> Result<(), HeadError> {
        let vol = VolumeName::new(volume)?;
        self.dp.teardown_volume(&vol)?;
        let prefix = format!("{BACKEND_PREFIX}{volume}:");
        for (index, backend) in nbd::list_backends()? {
            if backend.starts_with(&prefix) {
                self.nl.disconnect(index)?;
            }
        }
        Ok(())
    }

    /// Legs the kernel reports dead, as (mirrored disk, leg, chunk of the
    /// dead device) of `spec`. The chunk matters: until its replacement
    /// goes in, a slot's dead device is the old chunk's, while the manager
    /// already lists the new one there.
    pub fn dead_legs(
        &self,
        spec: &VolumeSpec,
    ) -> Result<Vec<(u32, u8, Option<ChunkId>)>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let names = self.device_names()?;
        let mut dead = Vec::new();
        for k in 0..spec.mirrored_disks.len() as u32 {
            let status = self.dp.raid1_status(&vol.raid(k))?;
            let chunks = self.slot_chunks(&vol, k, &names)?;
            dead.extend(
                status
                    .dead_legs()
                    .into_iter()
                    .map(|l| (k, l as u8, chunks.get(l).copied().flatten())),
            );
        }
        Ok(dead)
    }

    /// Progress of the resyncs this head runs for `spec` (its legs with a
    /// `resync_job`). A leg is done when dm-raid reports it in sync and
    /// idle, with the target chunk's device in its slot.
    pub fn resyncs(&self, spec: &VolumeSpec) -> Result<Vec<ResyncReport>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let data_bytes = spec.chunk_size_bytes.saturating_sub(spec.leg_meta_bytes);
        let mut names = None;
        let mut out = Vec::new();
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            if legs.iter().all(|l| l.resync_job.is_none()) {
                continue;
            }
            let names = match &names {
                Some(n) => n,
                None => names.insert(self.device_names()?),
            };
            let status = self.dp.raid1_status(&vol.raid(k as u32))?;
            let chunks = self.slot_chunks(&vol, k as u32, names)?;
            for (l, leg) in legs.iter().enumerate() {
                let Some(job) = leg.resync_job else { continue };
                if chunks.get(l).copied().flatten() != Some(leg.chunk) {
                    continue; // not swapped in yet
                }
                let report = match status.legs.get(l) {
                    Some(LegHealth::InSync) if status.sync_action == SyncAction::Idle => {
                        ResyncReport {
                            job,
                            bytes_done: data_bytes,
                            done: true,
                            error: None,
                        }
                    }
                    Some(LegHealth::Syncing | LegHealth::InSync) => ResyncReport {
                        job,
                        bytes_done: (status.sync_ratio() * data_bytes as f64) as u64,
                        done: false,
                        error: None,
                    },
                    // Dead: reported as a failed leg, which fails the job.
                    _ => continue,
                };
                out.push(report);
            }
        }
        Ok(out)
    }

    /// Every dm device, by device number.
    fn device_names(&self) -> Result<HashMap<Device, DevName>, HeadError> {
        Ok(self.dp.list()?.into_iter().map(|(n, d)| (d, n)).collect())
    }

    /// The chunk behind each slot of mirror `k`, read back from the names
    /// of the leg devices in its table (`…+r<k>+d<disk>c<index>+data`).
    fn slot_chunks(
        &self,
        vol: &VolumeName,
        k: u32,
        names: &HashMap<Device, DevName>,
    ) -> Result<Vec<Option<ChunkId>>, HeadError> {
        let (_, table) = self.dp.raid1_table(&vol.raid(k))?;
        let prefix = format!("{}+", vol.raid(k).as_str());
        Ok(table
            .legs
            .iter()
            .map(|leg| {
                let name = names.get(&leg.as_ref()?.data)?;
                parse_tag(name.as_str().strip_prefix(&prefix)?.strip_suffix("+data")?)
            })
            .collect())
    }

    /// Removes the leg devices of `vol` that no mirror uses any more (the
    /// old legs of replaced slots) and disconnects their NBD imports. Best
    /// effort: a device still busy is left for the next pass.
    fn collect_garbage(&mut self, vol: &VolumeName, mirrors: usize) {
        let Ok(all) = self.dp.list() else { return };
        let mut in_use: HashSet<Device> = HashSet::new();
        for k in 0..mirrors as u32 {
            match self.dp.raid1_table(&vol.raid(k)) {
                Ok((_, table)) => {
                    in_use.extend(table.legs.iter().flatten().flat_map(|l| [l.meta, l.data]))
                }
                // Without the table, nothing can be proven unused.
                Err(_) => return,
            }
        }
        let mut kept_tags: BTreeSet<(u32, ChunkId)> = BTreeSet::new();
        for (name, device) in &all {
            let Some((k, chunk)) = leg_device_of(vol, name.as_str()) else {
                continue;
            };
            if in_use.contains(device) {
                kept_tags.insert((k, chunk));
                continue;
            }
            match self.dp.remove(name) {
                Ok(()) => tracing::info!(device = %name, "removed the device of a replaced leg"),
                Err(e) => {
                    tracing::debug!(device = %name, error = %e, "unused leg device still busy");
                    kept_tags.insert((k, chunk));
                }
            }
        }
        let prefix = format!("{BACKEND_PREFIX}{}:", vol.as_str());
        let Ok(backends) = nbd::list_backends() else {
            return;
        };
        for (index, backend) in backends {
            let Some(rest) = backend.strip_prefix(&prefix) else {
                continue;
            };
            let Some((k, chunk)) = parse_backend_rest(rest) else {
                continue;
            };
            if kept_tags.contains(&(k, chunk)) {
                continue;
            }
            match self.nl.disconnect(index) {
                Ok(()) => tracing::info!(%backend, "disconnected the import of a replaced leg"),
                Err(e) => {
                    tracing::debug!(%backend, error = %e, "cannot disconnect an unused import yet")
                }
            }
        }
    }

    /// Starts a scrub of mirror `k` of `volume` (dm-raid `check`: md reads
    /// every leg and counts the sectors whose copies differ), if the mirror
    /// is in sync and idle. Returns whether it started.
    pub fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
        let name = VolumeName::new(volume)?.raid(k);
        if !self.dp.raid1_status(&name)?.is_in_sync() {
            return Ok(false);
        }
        self.dp.raid1_message(&name, "check")?;
        Ok(true)
    }

    /// A running scrub's state: `None` while md is still checking, then the
    /// mismatched sectors it counted.
    pub fn scrub_result(&self, volume: &str, k: u32) -> Result<Option<u64>, HeadError> {
        let status = self.dp.raid1_status(&VolumeName::new(volume)?.raid(k))?;
        Ok((status.sync_action != SyncAction::Check).then_some(status.mismatch_count))
    }

    /// Per-mirror health (`AA`, `AD`, …) of an assembled volume.
    pub fn health(&self, spec: &VolumeSpec) -> Result<BTreeMap<u32, String>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let mut out = BTreeMap::new();
        for k in 0..spec.mirrored_disks.len() as u32 {
            out.insert(k, self.dp.raid1_status(&vol.raid(k))?.health_string());
        }
        Ok(out)
    }
}

/// The leg tag of a chunk, `d<disk>c<index>`, as in device names.
fn leg_tag(chunk: ChunkId) -> String {
    format!("d{}c{}", chunk.disk_id, chunk.index)
}

fn parse_tag(tag: &str) -> Option<ChunkId> {
    let (disk, index) = tag.strip_prefix('d')?.split_once('c')?;
    Some(ChunkId {
        disk_id: disk.parse().ok()?,
        index: index.parse().ok()?,
    })
}

/// (mirror, chunk) of one of `vol`'s leg devices, `vsky-<vol>+r<k>+<tag>+meta|data`.
fn leg_device_of(vol: &VolumeName, name: &str) -> Option<(u32, ChunkId)> {
    let rest = name
        .strip_prefix(vsky_kernel::dm::NAME_PREFIX)?
        .strip_prefix(vol.as_str())?
        .strip_prefix("+r")?;
    let (k, rest) = rest.split_once('+')?;
    let tag = rest
        .strip_suffix("+meta")
        .or_else(|| rest.strip_suffix("+data"))?;
    Some((k.parse().ok()?, parse_tag(tag)?))
}

/// (mirror, chunk) of an import's backend id past `vsky:<vol>:`
/// (`<k>:<l>:<disk>:<index>`).
fn parse_backend_rest(rest: &str) -> Option<(u32, ChunkId)> {
    let mut parts = rest.split(':');
    let k = parts.next()?.parse().ok()?;
    let _slot: u32 = parts.next()?.parse().ok()?;
    let disk_id = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((k, ChunkId { disk_id, index }))
}

/// Connects and negotiates a socket the kernel can take over.
fn handshake(
    address: &str,
    export: &str,
    timeout: Duration,
) -> std::io::Result<(std::net::TcpStream, vsky_nbd::client::ExportInfo)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let connect = async {
            let mut s = tokio::net::TcpStream::connect(address).await?;
            s.set_nodelay(true)?;
            let info = vsky_nbd::client::handshake(&mut s, export)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((s.into_std()?, info))
        };
        let (s, info) = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "NBD connect timed out")
        })??;
        // The kernel drives the socket in blocking mode.
        s.set_nonblocking(false)?;
        Ok((s, info))
    })
}
