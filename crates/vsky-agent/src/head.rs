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
//! A running mirror follows the manager's layout online. A slot whose
//! replacement's turn has come gets the new leg in place
//! (`replace_raid1_leg`). A leg *move* (drain, rebalance) changes the
//! number and the order of the slots: the manager appends a slot for the
//! target leg (`[a, b, c]`; the head grows the mirror once the move's job
//! is its to run, and the new leg syncs while the mirror serves), then
//! puts the target into the moved leg's slot and drops the extra one
//! (`[c, b]`), or drops the extra slot alone when the move is abandoned
//! (`[a, b]`). Every such change is one reload of the mirror's table
//! (`reshape_raid1`), planned by [`plan_mirror_change`] from the running
//! table, its health and the wanted slots. A reload that drops or moves a
//! leg waits until every active leg that stays is in sync, so the mirror
//! never loses its last in-sync copy. Because a leg can change slots, the
//! NBD import of a leg is named by its volume, mirrored disk and chunk,
//! never by its slot, and kernel slots are matched to the manager's slots
//! by chunk.
//!
//! All calls here block (ioctls, netlink, socket handshakes): the agent runs
//! them on the blocking pool, one at a time (the [`Head`] is behind a mutex).
//!
//! Size: over 1000 lines, not split yet. Issue #15 item 2 splits it by
//! concern (imports, mirror planning, naming, status); this file is one of
//! the rooms it names.

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
use vsky_kernel::nbd::{self, ConnectRequest, NbdIndex, NbdNetlink};

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
    /// A new member (a leg whose resync this head runs) could not be
    /// imported yet and is not reported: try again soon.
    pub retry_new_members: bool,
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
    /// When each new member that could not be imported first failed.
    new_member_failures: HashMap<(String, usize, ChunkId), Instant>,
}

/// How long a new member may stay unreachable before it is reported as a
/// failed leg (its job then fails and the manager picks another target).
const NEW_MEMBER_PATIENCE: Duration = Duration::from_secs(30);

/// Least time between two attempts to bring back the same dead leg.
const REVIVE_BACKOFF: Duration = Duration::from_secs(10);

fn sectors(bytes: u64) -> Sectors {
    Sectors(bytes / SECTOR)
}

/// The identifier the kernel keeps for an imported leg (visible in sysfs,
/// so it holds no secret): volume, mirrored disk and chunk,
/// `vsky:<vol>:<k>:<disk>:<index>`. Not the slot: a moved leg changes
/// slots and must keep its import. Agents before moves existed put the
/// slot in too (`vsky:<vol>:<k>:<l>:<disk>:<index>`); [`find_import`]
/// adopts both.
fn backend_id(volume: &str, k: usize, chunk: ChunkId) -> String {
    format!(
        "{BACKEND_PREFIX}{volume}:{k}:{}:{}",
        chunk.disk_id, chunk.index
    )
}

/// The NBD import of `chunk` in mirrored disk `k` of `volume`, with the
/// backend identifier the kernel holds for it (either form).
fn find_import(
    volume: &str,
    k: usize,
    chunk: ChunkId,
) -> Result<Option<(NbdIndex, String)>, HeadError> {
    Ok(pick_import(nbd::list_backends()?, volume, k, chunk))
}

/// [`find_import`] over a list of (device, backend identifier).
fn pick_import(
    backends: Vec<(NbdIndex, String)>,
    volume: &str,
    k: usize,
    chunk: ChunkId,
) -> Option<(NbdIndex, String)> {
    // Volume names hold no ':', so the prefix ends exactly at the volume.
    let prefix = format!("{BACKEND_PREFIX}{volume}:");
    backends.into_iter().find(|(_, backend)| {
        backend.strip_prefix(&prefix).and_then(parse_backend_rest) == Some((k as u32, chunk))
    })
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
            new_member_failures: HashMap::new(),
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
                match self.leg(&vol, spec, k, leg, layout, new_member) {
                    Ok(devices) => {
                        if new_member {
                            rebuild.push(l);
                            self.new_member_failures
                                .remove(&(spec.name.clone(), k, leg.chunk));
                        }
                        slots.push(Some(devices));
                    }
                    Err(e) if new_member && self.new_member_may_wait(&spec.name, k, leg.chunk) => {
                        // Its storage agent may not export it yet (both
                        // learn of the job from the same change): a new
                        // member holds no data, so reporting it failed
                        // would only throw the job away.
                        tracing::info!(volume = %spec.name, mirrored_disk = k, leg = l, server = %leg.server, error = %e,
                            "new leg not reachable yet; retrying");
                        assembly.retry_new_members = true;
                        slots.push(None);
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
            if self.dp.lookup(&vol.raid(k as u32))?.is_none() {
                rebuild.extend(self.copied_legs(&vol, k, legs, &slots, &rebuild)?);
                rebuild.sort_unstable();
            }
            mirrors.push(self.mirror(&vol, k as u32, data_len, slots, &rebuild, legs)?);
            self.revive_returned_legs(&vol, spec, k);
        }
        let top = self.top(&vol, spec, data_len, &mirrors)?;
        assembly.device = top.path;
        self.collect_garbage(&vol, spec.mirrored_disks.len());
        Ok(assembly)
    }

    /// Before a mirror is created: the active legs without a dm-raid
    /// superblock when others have one. They were filled by a storage
    /// agent's copy while the volume was detached (repair or move), which
    /// copies the data area only, so dm-raid must be told to rebuild them
    /// from the legs it knows; it refuses the table otherwise. When no leg
    /// has a superblock the mirror is new and syncs as a whole.
    fn copied_legs(
        &self,
        vol: &VolumeName,
        k: usize,
        legs: &[LegSpec],
        slots: &[Option<LegDevices>],
        rebuild: &[usize],
    ) -> Result<Vec<usize>, HeadError> {
        let mut with = 0;
        let mut without = Vec::new();
        for (l, leg) in legs.iter().enumerate() {
            if slots.get(l).is_none_or(Option::is_none) || rebuild.contains(&l) {
                continue;
            }
            let meta = vol.leg(k as u32, &leg_tag(leg.chunk))?.meta.node_path();
            if vsky_kernel::dm::has_raid_superblock(&meta)? {
                with += 1;
            } else {
                without.push(l);
            }
        }
        if with == 0 {
            return Ok(Vec::new());
        }
        if !without.is_empty() {
            tracing::info!(volume = %vol.as_str(), mirrored_disk = k, legs = ?without,
                "legs copied while the volume was detached join the mirror with a rebuild");
        }
        Ok(without)
    }

    /// Whether a new member that failed to import may wait for another
    /// attempt rather than be reported failed (within
    /// [`NEW_MEMBER_PATIENCE`] of its first failure).
    fn new_member_may_wait(&mut self, volume: &str, k: usize, chunk: ChunkId) -> bool {
        // Forget legs that stopped being new members long ago.
        self.new_member_failures
            .retain(|_, t| t.elapsed() < 10 * NEW_MEMBER_PATIENCE);
        let key = (volume.to_string(), k, chunk);
        let first = *self
            .new_member_failures
            .entry(key.clone())
            .or_insert_with(Instant::now);
        if first.elapsed() < NEW_MEMBER_PATIENCE {
            return true;
        }
        self.new_member_failures.remove(&key);
        false
    }

    /// Imports one leg and carves its meta and data devices. A new member
    /// (a replacement leg) gets its metadata area zeroed when its devices
    /// are first created, so dm-raid rebuilds it rather than trusting
    /// whatever an earlier user of the chunk left there.
    fn leg(
        &mut self,
        vol: &VolumeName,
        spec: &VolumeSpec,
        k: usize,
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
                self.import(&spec.name, k, spec.chunk_size_bytes, leg)?,
                layout,
            ),
        };
        Ok(self
            .dp
            .ensure_leg(&names, parent, layout, new_member)?
            .devices())
    }

    /// Imports a chunk of mirrored disk `k` through the kernel NBD client,
    /// or adopts the device already connected for it (whichever slot it
    /// was imported for).
    fn import(
        &mut self,
        volume: &str,
        k: usize,
        chunk_size_bytes: u64,
        leg: &LegSpec,
    ) -> Result<Device, HeadError> {
        if let Some((index, _)) = find_import(volume, k, leg.chunk)? {
            return Ok(index.device()?);
        }
        let backend = &backend_id(volume, k, leg.chunk);
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

    /// Creates the mirror, or adopts a running one and brings it to the
    /// wanted `slots` online (see [`plan_mirror_change`]): new members
    /// (`rebuild` slots) go in, and legs leave or change slots when the
    /// manager moves a leg. `legs` are the manager's slots of this mirror.
    fn mirror(
        &self,
        vol: &VolumeName,
        k: u32,
        len: Sectors,
        slots: Vec<Option<LegDevices>>,
        rebuild: &[usize],
        legs: &[LegSpec],
    ) -> Result<MappedDevice, HeadError> {
        let name = vol.raid(k);
        if let Some(device) = self.dp.lookup(&name)? {
            let (_, table) = self.dp.raid1_table(&name)?;
            let status = self.dp.raid1_status(&name)?;
            // Only imported active legs: a failed or unreachable one is no
            // copy the mirror could keep.
            let active: Vec<bool> = legs
                .iter()
                .zip(&slots)
                .map(|(leg, slot)| leg.state == LegState::Active && slot.is_some())
                .collect();
            let change = plan_mirror_change(&table.legs, &status.legs, &slots, &active, rebuild)
                .map_err(|refusal| HeadError::Layout {
                    volume: vol.as_str().to_string(),
                    reason: format!("mirror {}: {}", name.as_str(), refusal.describe(legs)),
                })?;
            match change {
                MirrorChange::Keep => {}
                MirrorChange::Replace(new) => {
                    for (i, leg) in new {
                        self.dp.replace_raid1_leg(&name, i, leg)?;
                    }
                }
                MirrorChange::Reshape {
                    legs: new,
                    rebuild: new_rebuild,
                } => {
                    // For the log only: which chunks leave, stay and come.
                    let from = self
                        .device_names()
                        .and_then(|names| self.slot_chunks(vol, k, &names))
                        .unwrap_or_default();
                    let to: Vec<Option<ChunkId>> = new
                        .iter()
                        .zip(legs)
                        .map(|(slot, leg)| slot.map(|_| leg.chunk))
                        .collect();
                    for &i in &new_rebuild {
                        if legs[i].state == LegState::Active {
                            // Not a leg this mirror ever synced (a leg that
                            // was unreachable when the mirror was made, and
                            // is back): its content cannot be trusted.
                            tracing::warn!(volume = %vol.as_str(), mirrored_disk = k, leg = i,
                                "an active leg is not in the running mirror; it joins with a full rebuild");
                        }
                    }
                    tracing::info!(volume = %vol.as_str(), mirrored_disk = k,
                        from = %describe_chunks(&from), to = %describe_chunks(&to),
                        rebuild = ?new_rebuild, "reshaping the mirror");
                    self.dp.reshape_raid1(&name, new, new_rebuild)?;
                }
            }
            let (_, table) = self.dp.raid1_table(&name)?;
            if !holds_wanted(&table.legs, &slots) {
                return Err(HeadError::Layout {
                    volume: vol.as_str().to_string(),
                    reason: format!(
                        "running mirror {} has other legs than the manager's layout",
                        name.as_str()
                    ),
                });
            }
            return Ok(MappedDevice {
                name: name.clone(),
                device,
                path: name.node_path(),
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
        let dead = status.dead_legs();
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
        for position in dead {
            // The manager's slot of the dead chunk: while a leg moves, the
            // kernel's slots and the manager's can differ. None: the dead
            // device is another chunk's (a replacement is due, or the leg
            // is moving away).
            let Some(l) = chunks
                .get(position)
                .copied()
                .flatten()
                .and_then(|chunk| legs.iter().position(|leg| leg.chunk == chunk))
            else {
                continue;
            };
            let leg = &legs[l];
            if leg.state != LegState::Active {
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
                self.reconnect(&spec.name, k, leg)
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

    /// Gives the existing NBD import of a leg of mirrored disk `k` a fresh
    /// connection in place.
    fn reconnect(&mut self, volume: &str, k: usize, leg: &LegSpec) -> Result<(), HeadError> {
        // The kernel refuses a RECONFIGURE whose backend identifier differs
        // from the device's: use the one it holds (an older agent's form
        // names the slot).
        let (index, backend) =
            find_import(volume, k, leg.chunk)?.ok_or_else(|| HeadError::Layout {
                volume: volume.to_string(),
                reason: format!(
                    "the NBD import of chunk {} is gone; it is replaced instead",
                    leg_tag(leg.chunk)
                ),
            })?;
        let (socket, _) = handshake(&leg.server_address, &leg.export_name, self.timeouts.connect)
            .map_err(|e| HeadError::Layout {
            volume: volume.to_string(),
            reason: format!("cannot reach {} ({}): {e}", leg.server, leg.server_address),
        })?;
        self.nl.reconfigure(index, &backend, &[socket.as_fd()])?;
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

    /// How many openers hold a volume's device (`/dev/mapper/vsky-NAME`)
    /// open, or `None` if it is not assembled here. A volume held open
    /// cannot be torn down. Opens its own device-mapper handle, so it does
    /// not wait for a running assembly.
    pub fn volume_open_count(volume: &str) -> Result<Option<i32>, HeadError> {
        let vol = VolumeName::new(volume)?;
        Ok(Datapath::new()?.open_count(&vol.top())?)
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
    /// already lists the new one there. The leg is the manager's slot of
    /// that chunk (while a leg moves, the kernel may hold it in another
    /// slot), or the kernel's slot for a chunk the manager no longer lists.
    pub fn dead_legs(
        &self,
        spec: &VolumeSpec,
    ) -> Result<Vec<(u32, u8, Option<ChunkId>)>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let names = self.device_names()?;
        let mut dead = Vec::new();
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            let k = k as u32;
            let status = self.dp.raid1_status(&vol.raid(k))?;
            let chunks = self.slot_chunks(&vol, k, &names)?;
            dead.extend(status.dead_legs().into_iter().map(|position| {
                let chunk = chunks.get(position).copied().flatten();
                let l = chunk
                    .and_then(|c| legs.iter().position(|leg| leg.chunk == c))
                    .unwrap_or(position);
                (k, l as u8, chunk)
            }));
        }
        Ok(dead)
    }

    /// Progress of the resyncs this head runs for `spec` (its legs with a
    /// `resync_job`). A leg is done when dm-raid reports it in sync and
    /// idle, with the target chunk's device in the mirror (in its slot, or
    /// in another one while a move is between two reshapes).
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
            for leg in legs {
                let Some(job) = leg.resync_job else { continue };
                let Some(position) = chunks.iter().position(|c| *c == Some(leg.chunk)) else {
                    continue; // not swapped in yet
                };
                let report = match status.legs.get(position) {
                    Some(LegHealth::InSync) if status.sync_action == SyncAction::Idle => {
                        ResyncReport {
                            job,
                            bytes_done: data_bytes,
                            done: true,
                            error: None,
                            failed_source: None,
                        }
                    }
                    Some(LegHealth::Syncing | LegHealth::InSync) => ResyncReport {
                        job,
                        bytes_done: (status.sync_ratio() * data_bytes as f64) as u64,
                        done: false,
                        error: None,
                        failed_source: None,
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

    /// Interrupts a running check of mirror `k` (dm-raid's `idle`);
    /// whether one ran. Does nothing if md is doing anything else: `idle`
    /// would interrupt a rebuild too.
    pub fn stop_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
        let name = VolumeName::new(volume)?.raid(k);
        if self.dp.raid1_status(&name)?.sync_action != SyncAction::Check {
            return Ok(false);
        }
        self.dp.raid1_message(&name, "idle")?;
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

/// What [`Head::mirror`] does to a running mirror so that it holds the
/// legs the manager wants.
#[derive(Debug, PartialEq, Eq)]
enum MirrorChange {
    /// The table already holds every wanted leg in its slot. A slot the
    /// manager lists failed or waiting may still hold its old device or
    /// none, and wanted slots past the table's end are all empty (a move
    /// that waits for its turn).
    Keep,
    /// Same slots: these new members take the places of the legs in their
    /// slots (replacements of failed legs), one `replace_raid1_leg` each.
    Replace(Vec<(usize, LegDevices)>),
    /// Other slots (a leg added, dropped or moved): one reload with these
    /// legs, rebuilding `rebuild`.
    Reshape {
        legs: Vec<Option<LegDevices>>,
        rebuild: Vec<usize>,
    },
}

/// Why a running mirror cannot take the wanted legs now.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The active leg of wanted slot `slot`, in the running table's slot
    /// `running_slot`, is not in sync, and the change drops or moves legs.
    NotInSync {
        slot: usize,
        running_slot: usize,
        health: Option<LegHealth>,
    },
    /// The change drops or moves legs, and no leg that stays is in sync.
    NoInSyncLeg,
    /// dm-raid takes 2 to 64 legs.
    LegCount(usize),
    /// No wanted slot holds a leg.
    NoLeg,
}

impl Refusal {
    /// The reason, with chunks named from the manager's slots `legs`.
    fn describe(&self, legs: &[LegSpec]) -> String {
        match self {
            Refusal::NotInSync {
                slot,
                running_slot,
                health,
            } => format!(
                "waiting for leg {slot} ({}, slot {running_slot} of the running mirror, now {}) to be in sync before legs leave the mirror or change slots",
                legs.get(*slot)
                    .map_or_else(|| "?".to_string(), |l| leg_tag(l.chunk)),
                health.map_or('?', LegHealth::as_char),
            ),
            Refusal::NoInSyncLeg => "waiting for a leg that stays in the mirror to be in sync before legs leave the mirror or change slots".into(),
            Refusal::LegCount(n) => format!("{n} legs wanted; dm-raid takes 2 to 64"),
            Refusal::NoLeg => "no leg to build the mirror from".into(),
        }
    }
}

/// Whether a running table with `running` legs already holds `wanted`:
/// every wanted leg in its slot, and nothing wanted past the table's end.
/// A slot the head does not fill (`None`: failed, unreachable, waiting)
/// may hold anything, such as a failed leg dm-raid already marked dead.
fn holds_wanted(running: &[Option<LegDevices>], wanted: &[Option<LegDevices>]) -> bool {
    wanted.len() >= running.len()
        && running
            .iter()
            .zip(wanted)
            .all(|(have, want)| want.is_none() || want == have)
        && wanted[running.len()..].iter().all(Option::is_none)
}

/// Plans how a running mirror gets the manager's layout, from its table
/// (`running`), the kernel's health of each of its slots (`running_health`)
/// and the wanted slots: `wanted` (the devices the head imported, `None`
/// for failed, unreachable and waiting slots), which of them the manager
/// lists active (`wanted_active`), and the new members among them
/// (`new_members`, syncing legs whose job runs here).
///
/// Rules, in order:
/// 1. The table holds the wanted legs ([`holds_wanted`]): keep it. This
///    covers a queued move (one more slot, empty) and failed legs still in
///    the table.
/// 2. Same number of slots, and every slot that differs gets a new member
///    that is not in the table yet: replace those slots' legs.
/// 3. Otherwise reshape. The new table is the wanted slots, without the
///    empty slots at the end (down to dm-raid's 2), so an emptied extra slot
///    leaves the table. Legs keep their devices across slots (dm-raid raid1
///    legs may change positions), and only legs new to the table are
///    rebuilt: a syncing leg that moves resumes its recovery rather than
///    starting again. When the reshape drops or moves a leg that is in
///    the table, every active leg that stays must be in sync now, and at
///    least one leg that stays must be: otherwise it waits, because a drop
///    could take the only in-sync copy, and an active leg that is not in
///    sync is a copy the manager counts but the mirror does not have yet.
///    A reshape that only adds legs (a move's target joining) never waits.
fn plan_mirror_change(
    running: &[Option<LegDevices>],
    running_health: &[LegHealth],
    wanted: &[Option<LegDevices>],
    wanted_active: &[bool],
    new_members: &[usize],
) -> Result<MirrorChange, Refusal> {
    if holds_wanted(running, wanted) {
        return Ok(MirrorChange::Keep);
    }
    let running_slot = |d: &LegDevices| running.iter().position(|r| r.as_ref() == Some(d));
    if running.len() == wanted.len() {
        let differing: Vec<(usize, LegDevices)> = wanted
            .iter()
            .zip(running)
            .enumerate()
            .filter_map(|(i, (want, have))| want.filter(|w| Some(*w) != *have).map(|w| (i, w)))
            .collect();
        if differing
            .iter()
            .all(|(i, w)| new_members.contains(i) && running_slot(w).is_none())
        {
            return Ok(MirrorChange::Replace(differing));
        }
    }
    let mut legs = wanted.to_vec();
    while legs.len() > 2 && legs.last() == Some(&None) {
        legs.pop();
    }
    if !(2..=64).contains(&legs.len()) {
        return Err(Refusal::LegCount(legs.len()));
    }
    if legs.iter().all(Option::is_none) {
        return Err(Refusal::NoLeg);
    }
    let rebuild: Vec<usize> = legs
        .iter()
        .enumerate()
        .filter(|(_, leg)| leg.is_some_and(|d| running_slot(&d).is_none()))
        .map(|(i, _)| i)
        .collect();
    let disturbs = running
        .iter()
        .enumerate()
        .any(|(p, have)| have.is_some_and(|d| legs.iter().position(|l| *l == Some(d)) != Some(p)));
    if disturbs {
        let mut any_in_sync = false;
        for (i, leg) in legs.iter().enumerate() {
            let Some(p) = leg.and_then(|d| running_slot(&d)) else {
                continue; // new to the table
            };
            let health = running_health.get(p).copied();
            if health == Some(LegHealth::InSync) {
                any_in_sync = true;
            } else if wanted_active.get(i).copied().unwrap_or(false) {
                return Err(Refusal::NotInSync {
                    slot: i,
                    running_slot: p,
                    health,
                });
            }
        }
        if !any_in_sync {
            return Err(Refusal::NoInSyncLeg);
        }
    }
    Ok(MirrorChange::Reshape { legs, rebuild })
}

/// Chunks of a mirror's slots for the log, `[d1c2 - d3c4]`.
fn describe_chunks(chunks: &[Option<ChunkId>]) -> String {
    let tags: Vec<String> = chunks
        .iter()
        .map(|c| c.map_or_else(|| "-".to_string(), leg_tag))
        .collect();
    format!("[{}]", tags.join(" "))
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

/// (mirror, chunk) of an import's backend id past `vsky:<vol>:`:
/// `<k>:<disk>:<index>`, or `<k>:<l>:<disk>:<index>` from agents that
/// named the slot too.
fn parse_backend_rest(rest: &str) -> Option<(u32, ChunkId)> {
    let parts: Vec<&str> = rest.split(':').collect();
    let (k, disk_id, index) = match parts.as_slice() {
        [k, disk, index] => (k, disk, index),
        [k, slot, disk, index] => {
            let _slot: u32 = slot.parse().ok()?;
            (k, disk, index)
        }
        _ => return None,
    };
    Some((
        k.parse().ok()?,
        ChunkId {
            disk_id: disk_id.parse().ok()?,
            index: index.parse().ok()?,
        },
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use LegHealth::{Dead, InSync, Missing, Syncing};

    /// The devices of a leg named by a small number.
    fn dev(n: u32) -> LegDevices {
        LegDevices {
            meta: Device {
                major: 253,
                minor: 2 * n,
            },
            data: Device {
                major: 253,
                minor: 2 * n + 1,
            },
        }
    }

    fn chunk(disk_id: u64, index: u32) -> ChunkId {
        ChunkId { disk_id, index }
    }

    /// Plans, checks that a reshape's table is one dm-raid takes, and that
    /// the mirror after the change needs no further one (idempotence across
    /// reconciles and agent restarts).
    fn plan(
        running: &[Option<LegDevices>],
        health: &[LegHealth],
        wanted: &[Option<LegDevices>],
        active: &[bool],
        new_members: &[usize],
    ) -> Result<MirrorChange, Refusal> {
        let change = plan_mirror_change(running, health, wanted, active, new_members)?;
        let after = match &change {
            MirrorChange::Keep => running.to_vec(),
            MirrorChange::Replace(new) => {
                let mut after = running.to_vec();
                for (i, d) in new {
                    after[*i] = Some(*d);
                }
                after
            }
            MirrorChange::Reshape { legs, rebuild } => {
                assert!(
                    (2..=64).contains(&legs.len()) && legs.iter().any(Option::is_some),
                    "invalid table {legs:?}"
                );
                assert!(
                    rebuild
                        .iter()
                        .all(|i| legs.get(*i).is_some_and(Option::is_some)),
                    "rebuild {rebuild:?} of {legs:?}"
                );
                legs.clone()
            }
        };
        assert!(
            holds_wanted(&after, wanted),
            "{after:?} does not hold {wanted:?}"
        );
        Ok(change)
    }

    fn reshape(legs: Vec<Option<LegDevices>>, rebuild: Vec<usize>) -> MirrorChange {
        MirrorChange::Reshape { legs, rebuild }
    }

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;
    const D: u32 = 4;

    #[test]
    fn plan_keeps_the_running_mirror() {
        let legs = [Some(dev(A)), Some(dev(B))];
        assert_eq!(
            plan(&legs, &[InSync, InSync], &legs, &[true, true], &[]),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_keeps_the_mirror_while_a_move_is_queued() {
        // Step 2: one more slot, empty until the move's turn comes.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[InSync, InSync],
                &[Some(dev(A)), Some(dev(B)), None],
                &[true, true, false],
                &[],
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_keeps_a_failed_leg_in_its_slot() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[Dead, InSync],
                &[None, Some(dev(B))],
                &[false, true],
                &[],
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_replaces_a_failed_leg_in_place() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[Dead, InSync],
                &[Some(dev(D)), Some(dev(B))],
                &[false, true],
                &[0],
            ),
            Ok(MirrorChange::Replace(vec![(0, dev(D))]))
        );
    }

    #[test]
    fn plan_grows_the_mirror_when_the_move_runs() {
        // Step 3: the target joins as slot 2 and is rebuilt. Adding a leg
        // waits for nothing, not even a leg that is catching up.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[InSync, Syncing],
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[true, true, false],
                &[2],
            ),
            Ok(reshape(
                vec![Some(dev(A)), Some(dev(B)), Some(dev(C))],
                vec![2]
            ))
        );
    }

    #[test]
    fn plan_keeps_a_running_move_after_a_restart() {
        // Steps 3 again (a reconcile or a restarted agent): the target is
        // syncing in the kernel and must not start over.
        let legs = [Some(dev(A)), Some(dev(B)), Some(dev(C))];
        assert_eq!(
            plan(
                &legs,
                &[InSync, InSync, Syncing],
                &legs,
                &[true, true, false],
                &[2]
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_grows_the_mirror_when_the_moved_leg_failed_first() {
        // The leg to move failed before its target's turn: the dead leg
        // leaves the table (its slot stays, empty) as the target joins.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[Dead, InSync],
                &[None, Some(dev(B)), Some(dev(C))],
                &[false, true, false],
                &[2],
            ),
            Ok(reshape(vec![None, Some(dev(B)), Some(dev(C))], vec![2]))
        );
    }

    #[test]
    fn plan_finishes_a_move() {
        // Step 4: the target takes the moved leg's slot, the extra slot
        // goes; nothing is rebuilt.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, InSync, InSync],
                &[Some(dev(C)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Ok(reshape(vec![Some(dev(C)), Some(dev(B))], vec![]))
        );
    }

    #[test]
    fn plan_finishes_a_move_whose_moved_leg_failed() {
        for running in [
            [Some(dev(A)), Some(dev(B)), Some(dev(C))],
            [None, Some(dev(B)), Some(dev(C))],
        ] {
            let health = if running[0].is_some() { Dead } else { Missing };
            assert_eq!(
                plan(
                    &running,
                    &[health, InSync, InSync],
                    &[Some(dev(C)), Some(dev(B))],
                    &[true, true],
                    &[],
                ),
                Ok(reshape(vec![Some(dev(C)), Some(dev(B))], vec![]))
            );
        }
    }

    #[test]
    fn plan_waits_to_finish_a_move_until_the_target_is_in_sync() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, InSync, Syncing],
                &[Some(dev(C)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Err(Refusal::NotInSync {
                slot: 0,
                running_slot: 2,
                health: Some(Syncing)
            })
        );
    }

    #[test]
    fn plan_waits_to_finish_a_move_until_the_other_legs_are_in_sync() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, InSync],
                &[Some(dev(C)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Err(Refusal::NotInSync {
                slot: 1,
                running_slot: 1,
                health: Some(Dead)
            })
        );
        // Once the manager lists the dead leg failed, the move finishes.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, InSync],
                &[Some(dev(C)), None],
                &[true, false],
                &[],
            ),
            Ok(reshape(vec![Some(dev(C)), None], vec![]))
        );
    }

    #[test]
    fn plan_abandons_a_move() {
        // Step 5: the target leaves, syncing or dead.
        for target in [Syncing, Dead, InSync] {
            assert_eq!(
                plan(
                    &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                    &[InSync, InSync, target],
                    &[Some(dev(A)), Some(dev(B))],
                    &[true, true],
                    &[],
                ),
                Ok(reshape(vec![Some(dev(A)), Some(dev(B))], vec![]))
            );
        }
    }

    #[test]
    fn plan_waits_to_abandon_a_move_while_an_active_leg_catches_up() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[Syncing, InSync, InSync],
                &[Some(dev(A)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Err(Refusal::NotInSync {
                slot: 0,
                running_slot: 0,
                health: Some(Syncing)
            })
        );
    }

    #[test]
    fn plan_moves_a_syncing_leg_without_restarting_it() {
        // The moved-away leg failed during the move and the manager put the
        // still syncing target into its slot: it moves, keeps its
        // recovery, and is not rebuilt from zero.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[Dead, InSync, Syncing],
                &[Some(dev(C)), Some(dev(B))],
                &[false, true],
                &[0],
            ),
            Ok(reshape(vec![Some(dev(C)), Some(dev(B))], vec![]))
        );
    }

    #[test]
    fn plan_never_drops_the_last_in_sync_leg() {
        // Only a is in sync; the layout wants the syncing c in its place.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, Syncing],
                &[Some(dev(C)), None],
                &[false, false],
                &[0],
            ),
            Err(Refusal::NoInSyncLeg)
        );
    }

    #[test]
    fn plan_replaces_an_abandoned_target_with_a_new_one() {
        // A move's target died, and the next one is already due in the
        // same extra slot: a plain replacement.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, InSync, Dead],
                &[Some(dev(A)), Some(dev(B)), Some(dev(D))],
                &[true, true, false],
                &[2],
            ),
            Ok(MirrorChange::Replace(vec![(2, dev(D))]))
        );
    }

    #[test]
    fn plan_drops_an_empty_extra_slot_without_waiting() {
        // A mirror created while a move was queued has an empty third slot.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), None],
                &[Syncing, Syncing, Missing],
                &[Some(dev(A)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Ok(reshape(vec![Some(dev(A)), Some(dev(B))], vec![]))
        );
    }

    #[test]
    fn plan_fills_an_empty_extra_slot() {
        // ... and the move's turn comes: a plain replacement of slot 2.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), None],
                &[InSync, InSync, Missing],
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[true, true, false],
                &[2],
            ),
            Ok(MirrorChange::Replace(vec![(2, dev(C))]))
        );
    }

    #[test]
    fn plan_rebuilds_an_active_leg_the_mirror_lacks() {
        // A leg unreachable when the mirror was made is back: it joins, and
        // since the mirror never synced it, in full.
        assert_eq!(
            plan(
                &[None, Some(dev(B))],
                &[Missing, InSync],
                &[Some(dev(A)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Ok(reshape(vec![Some(dev(A)), Some(dev(B))], vec![0]))
        );
    }

    #[test]
    fn plan_keeps_two_slots_at_least() {
        // Empty slots at the end leave the table, down to dm-raid's two.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C)), Some(dev(D))],
                &[InSync, Dead, Dead, Dead],
                &[Some(dev(A)), None, None],
                &[true, false, false],
                &[],
            ),
            Ok(reshape(vec![Some(dev(A)), None], vec![]))
        );
        // Failed legs the table still holds within the wanted slots stay.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, Dead],
                &[Some(dev(A)), None, None],
                &[true, false, false],
                &[],
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_refuses_tables_dm_raid_cannot_take() {
        let running = [Some(dev(A)), Some(dev(B))];
        let mut wanted: Vec<Option<LegDevices>> = (1..=65).map(|n| Some(dev(n))).collect();
        let active = vec![true; wanted.len()];
        assert_eq!(
            plan_mirror_change(&running, &[InSync, InSync], &wanted, &active, &[]),
            Err(Refusal::LegCount(65))
        );
        wanted = vec![None, None, None];
        assert_eq!(
            plan_mirror_change(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C)), Some(dev(D))],
                &[InSync; 4],
                &wanted,
                &[false; 3],
                &[]
            ),
            Err(Refusal::NoLeg)
        );
    }

    #[test]
    fn refusals_name_the_leg_they_wait_for() {
        let leg = LegSpec {
            chunk: chunk(7, 42),
            server: "s1".into(),
            server_address: "127.0.0.1:10809".into(),
            export_name: "x".into(),
            local_disk_path: None,
            offset_bytes: 0,
            state: LegState::Active,
            resync_job: None,
        };
        let text = Refusal::NotInSync {
            slot: 0,
            running_slot: 2,
            health: Some(Syncing),
        }
        .describe(&[leg]);
        assert!(text.contains("d7c42") && text.contains("slot 2"), "{text}");
    }

    #[test]
    fn backend_ids_name_no_slot() {
        assert_eq!(backend_id("vol-1", 3, chunk(17, 5)), "vsky:vol-1:3:17:5");
    }

    #[test]
    fn backend_ids_parse_in_both_forms() {
        assert_eq!(parse_backend_rest("3:17:5"), Some((3, chunk(17, 5))));
        // Imports made by agents that named the slot.
        assert_eq!(parse_backend_rest("3:1:17:5"), Some((3, chunk(17, 5))));
        for bad in [
            "",
            "3",
            "3:17",
            "3:1:17:5:9",
            "x:17:5",
            "3:x:17:5",
            "3:17:-1",
        ] {
            assert_eq!(parse_backend_rest(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn imports_are_found_in_both_forms() {
        let backends = vec![
            (NbdIndex(0), "vsky:vol2:0:17:5".to_string()),
            (NbdIndex(1), "vsky:vol:1:17:5".to_string()),
            (NbdIndex(2), "vsky:vol:0:1:17:5".to_string()),
            (NbdIndex(3), "vsky:vol:0:17:6".to_string()),
            (NbdIndex(4), "lab/x".to_string()),
        ];
        assert_eq!(
            pick_import(backends.clone(), "vol", 0, chunk(17, 5)),
            Some((NbdIndex(2), "vsky:vol:0:1:17:5".to_string()))
        );
        assert_eq!(
            pick_import(backends.clone(), "vol", 0, chunk(17, 6)),
            Some((NbdIndex(3), "vsky:vol:0:17:6".to_string()))
        );
        assert_eq!(
            pick_import(backends.clone(), "vol", 1, chunk(17, 5)).map(|(i, _)| i),
            Some(NbdIndex(1))
        );
        // Not another volume's, nor another mirror's.
        assert_eq!(pick_import(backends.clone(), "vol2", 1, chunk(17, 5)), None);
        assert_eq!(pick_import(backends, "vo", 0, chunk(17, 5)), None);
    }

    #[test]
    fn chunks_are_described_for_the_log() {
        assert_eq!(
            describe_chunks(&[Some(chunk(1, 2)), None, Some(chunk(3, 4))]),
            "[d1c2 - d3c4]"
        );
    }
}
