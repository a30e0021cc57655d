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
//! Which legs join: an `active` leg is imported and joins the mirror; an
//! unreachable one leaves an empty slot (`- -`) and is reported. A
//! `syncing` leg whose `resync_job` this head runs is a new member: its
//! metadata area is zeroed when its devices are created, and it enters the
//! running mirror with `replace_raid1_leg` (or is listed to rebuild when the
//! mirror is created). A `syncing` leg without a job here waits outside the
//! mirror, and a `failed` one is not imported. A leg the kernel failed but
//! the manager lists `active` again (its server came back within the grace
//! period) gets its NBD import a fresh socket in place and the mirror's
//! table reloaded, so dm-raid re-adds it and catches up from its
//! write-intent bitmap (`imports`). Leg devices no mirror uses any more are
//! removed with their imports (`collect_garbage`).
//!
//! Everything is idempotent and adopts what the kernel already has: NBD
//! devices by their backend identifier (kept by the kernel, or before Linux
//! 5.14 by the head in a file of its own, see [`Head::open`]), dm devices by
//! name and table. So an agent restarted while volumes are attached picks
//! them up unchanged.
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
//! them on the blocking pool, one reconcile at a time (the [`Head`] is
//! behind a mutex). Inside one assembly the legs' imports and devices, then
//! the mirrors, are made [`ASSEMBLY_WORKERS`] at once, and a teardown
//! removes each rank of devices and then the imports the same way: they
//! are independent of each other, and each mostly waits (round trips,
//! superblock I/O over NBD).
//!
//! Files: this one holds the [`Head`] and the assembly (`ensure`, the
//! mirror and volume devices, teardown); `imports` the legs (import or
//! adopt, the leg devices made on the assembly's threads, reconnect,
//! revive); `plan` the pure planner of mirror changes
//! ([`plan_mirror_change`]); `naming` the backend identifiers and leg tags;
//! `status` what the head reports (dead legs, resyncs, scrubs, health).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vsky_api::types::{ChunkId, LegSpec, LegState, VolumeSpec};
use vsky_kernel::dm::{
    Datapath, Device, LegDevices, LegLayout, MappedDevice, Raid1Table, Sectors, VolumeLayout,
    VolumeName,
};
use vsky_kernel::nbd::{self, NbdNetlink};

mod chain;
mod freeze;
mod imports;
mod naming;
mod plan;
mod read_only;
mod status;

pub use chain::{is_layer, mirror_sets};
pub use imports::NbdBackendFile;
use imports::{LazyNetlink, LegMaker, LegOutcome};
use naming::{backend_prefix, describe_chunks, leg_device_of, leg_tag, parse_backend_rest};
use plan::{MirrorChange, holds_wanted, plan_mirror_change};

const SECTOR: u64 = 512;
/// Bitmap region of the mirrors: the unit a returning leg resyncs in.
const REGION_SECTORS: u64 = 2048;

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
    /// This host's own trouble, not a leg's: the assembly stops instead of
    /// reporting legs failed.
    #[error(
        "cannot open a netlink socket to the kernel's nbd driver ({0}); no leg can be imported: check the agent's open files limit and that the nbd module is loaded"
    )]
    Netlink(vsky_kernel::nbd::NbdError),
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
    /// The volume device's size: the new one once a grow is applied.
    pub size_bytes: u64,
    /// Legs (volume or layer, mirrored disk, leg) that could not be
    /// imported.
    pub unreachable_legs: Vec<(String, u32, u8)>,
    /// A new member (a leg whose resync this head runs) could not be
    /// imported yet and is not reported: try again soon.
    pub retry_new_members: bool,
    /// A thin volume whose old top the manager lists freezing: the old
    /// top's name, once the device maps the new top and the old top's pool
    /// is read-only.
    pub switched: Option<String>,
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
    /// The NBD imports of the volume `ensure` is assembling, read once per
    /// call (`imports.rs`); `None` outside it.
    imports: Option<imports::ImportIndex>,
}

/// How many legs are imported, mirrors created, or devices removed at once
/// while a volume is assembled or torn down. Most of each step is waiting
/// (a handshake's round trips, a dm-raid reading or writing its superblocks
/// over NBD), so a few threads hide it; bounded, because each holds kernel
/// work and a connection in flight (docs/design/activation.md, step 2).
const ASSEMBLY_WORKERS: usize = 16;

/// How long a new member may stay unreachable before it is reported as a
/// failed leg (its job then fails and the manager picks another target).
const NEW_MEMBER_PATIENCE: Duration = Duration::from_secs(30);

/// Least time between two attempts to bring back the same dead leg.
const REVIVE_BACKOFF: Duration = Duration::from_secs(10);

fn sectors(bytes: u64) -> Sectors {
    Sectors(bytes / SECTOR)
}

/// Whether a leg joins its mirror, and if so whether as a new member: an
/// active leg does; a syncing one only as the new member of a resync this
/// head runs; a failed one, or a replacement waiting for its turn, not.
fn joins(leg: &LegSpec) -> Option<bool> {
    match (leg.state, leg.resync_job) {
        (LegState::Failed, _) | (LegState::Syncing, None) => None,
        (LegState::Syncing, Some(_)) => Some(true),
        (LegState::Active, _) => Some(false),
    }
}

/// Why an assembly stops before the volume device: a mirror a grow added
/// waits for a leg, or a mirror has no reachable leg.
enum Stop {
    GrowWaits,
    NoLeg(usize),
}

/// A mirror ready to be created or adopted: its slots' devices, the slots
/// that rebuild, and whether it runs already.
struct PlannedMirror {
    k: usize,
    slots: Vec<Option<LegDevices>>,
    rebuild: Vec<usize>,
    running: bool,
}

impl Head {
    /// Opens the kernel side and checks, before the agent serves anything,
    /// that this kernel can carry the head (docs/kernel-floor.md): the DM
    /// interface and the dm-raid version (refused with what to do when
    /// unsuitable; the version also decides how raid tables read back are
    /// trusted), and the nbd family, with or without backend identifiers
    /// (without them, before Linux 5.14, the head keeps the map of its
    /// imports in `nbd_backends`' file).
    pub fn open(
        timeouts: NbdTimeouts,
        local_block_disks: BTreeSet<PathBuf>,
        nbd_backends: &NbdBackendFile,
    ) -> Result<Self, HeadError> {
        let mut dp = Datapath::new()?;
        let dm = dp.check_kernel()?;
        let nl = NbdNetlink::open_with_backend_file(
            nbd::BackendFile::new(&nbd_backends.path),
            nbd_backends.always,
        )?;
        tracing::info!(
            dm_interface = ?dm.interface,
            raid_target = %dm.raid,
            raid_table_readback = ?dm.readback,
            nbd_backend_identifiers = nl.kernel_keeps_backends(),
            nbd_backends = %nl.backend_lookup(),
            "kernel checked for the head role"
        );
        Ok(Head {
            dp,
            nl,
            timeouts,
            local_block_disks,
            revive_attempts: HashMap::new(),
            recovery_rate_kib: None,
            new_member_failures: HashMap::new(),
            imports: None,
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

    /// Volumes and layers with any device in the kernel (ours: `vsky-`
    /// names, the part before the internal `+` separator): one whose top
    /// device is gone but whose mirrors or legs are left (a teardown cut
    /// short) is still here, so it is torn down again and the manager does
    /// not end its release meanwhile.
    pub fn assembled_volumes(&self) -> Result<BTreeSet<String>, HeadError> {
        let prefix = vsky_kernel::dm::name_prefix();
        Ok(self
            .dp
            .list()?
            .into_iter()
            .filter_map(|(n, _)| {
                let name = n.as_str().strip_prefix(prefix)?;
                Some(name.split('+').next().unwrap_or(name).to_string())
            })
            .collect())
    }

    /// Creates or adopts every device of `spec`; returns the volume device.
    pub fn ensure(&mut self, spec: &VolumeSpec) -> Result<Assembly, HeadError> {
        // One listing of the NBD imports for the whole assembly; nothing
        // else connects or disconnects this volume's imports meanwhile
        // (the head runs one reconcile at a time), and it is dropped on
        // every way out, so a later call reads the kernel afresh.
        let listed = self.nl.list_backends()?;
        if !spec.chain.is_empty() {
            return self.assemble_chain(spec, &listed);
        }
        self.imports = Some(imports::ImportIndex::of(&spec.name, listed));
        let assembled = self.assemble(spec);
        self.imports = None;
        assembled
    }

    fn assemble(&mut self, spec: &VolumeSpec) -> Result<Assembly, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let layout =
            LegLayout::with_meta(sectors(spec.chunk_size_bytes), sectors(spec.leg_meta_bytes))?;
        let data_len = layout.data_size;
        let mut assembly = Assembly::default();
        // The volume device exists: mirrors it lacks were added by a grow.
        let serving = self.dp.lookup(&vol.top())?.is_some();
        // Every leg that joins its mirror, imported and carved on a few
        // threads at once; then each mirror's slots, in order.
        let mut made = self.legs_at_once(spec, joins, |maker, nl, k, leg, new_member, known| {
            maker.leg(nl, &vol, spec, k, leg, layout, new_member, known)
        });
        let mut planned: Vec<PlannedMirror> = Vec::with_capacity(spec.mirrored_disks.len());
        let mut stop = None;
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            let mut slots: Vec<Option<LegDevices>> = Vec::with_capacity(legs.len());
            let mut rebuild = Vec::new();
            // A mirror a grow added: its storage agents learn of its legs
            // with this head, so a leg not exported yet is waited for (as
            // a new member is), not reported failed.
            let running = self.dp.lookup(&vol.raid(k as u32))?.is_some();
            let grown = serving && !running;
            let mut waiting = false;
            for (l, leg) in legs.iter().enumerate() {
                let Some(new_member) = joins(leg) else {
                    // Failed, or a replacement waiting for its turn: the
                    // mirror runs without it.
                    slots.push(None);
                    continue;
                };
                let Some(devices) = made.remove(&(k, l)) else {
                    // `legs_at_once` made every leg `joins` picks: a bug
                    // here must not pass for a failed leg.
                    return Err(HeadError::Layout {
                        volume: spec.name.clone(),
                        reason: format!(
                            "mirrored disk {k}: leg {l} was never made (a bug in the head); nothing reported"
                        ),
                    });
                };
                match devices {
                    // This host's trouble, not the leg's.
                    Err(e @ HeadError::Netlink(_)) => return Err(e),
                    Ok(devices) => {
                        if new_member {
                            rebuild.push(l);
                            self.new_member_failures
                                .remove(&(spec.name.clone(), k, leg.chunk));
                        }
                        slots.push(Some(devices));
                    }
                    Err(e)
                        if (new_member || grown)
                            && self.new_member_may_wait(&spec.name, k, leg.chunk) =>
                    {
                        // Its storage agent may not export it yet (both
                        // learn of the job, or the grow, from the same
                        // change): a new member holds no data, so
                        // reporting it failed would only throw the job
                        // away, and a grown mirror would start degraded.
                        tracing::info!(volume = %spec.name, mirrored_disk = k, leg = l, server = %leg.server, error = %e,
                            "new leg not reachable yet; retrying");
                        assembly.retry_new_members = true;
                        waiting = true;
                        slots.push(None);
                    }
                    Err(e) => {
                        tracing::warn!(volume = %spec.name, mirrored_disk = k, leg = l, server = %leg.server, error = %e,
                            "leg unreachable; assembling the mirror without it");
                        assembly
                            .unreachable_legs
                            .push((spec.name.clone(), k as u32, l as u8));
                        slots.push(None);
                    }
                }
            }
            if grown && waiting {
                // Grow once every leg of the new mirrors is there; until
                // then the volume keeps serving its old size.
                stop = Some(Stop::GrowWaits);
                break;
            }
            if slots.iter().all(Option::is_none) {
                stop = Some(Stop::NoLeg(k));
                break;
            }
            planned.push(PlannedMirror {
                k,
                slots,
                rebuild,
                running,
            });
        }
        // The mirrors before a stop are reconciled all the same (new
        // members join, returned legs come back), as they were when the
        // mirrors were assembled one by one.
        let reconciled = planned.len();
        let mirrors = self.mirrors_at_once(&vol, spec, data_len, planned)?;
        for k in 0..reconciled {
            self.revive_returned_legs(&vol, spec, k);
        }
        match stop {
            None => {}
            Some(Stop::GrowWaits) => {
                let top = vol.top();
                assembly.device = top.node_path();
                assembly.size_bytes = self.dp.size(&top)?.0 * SECTOR;
                return Ok(assembly);
            }
            Some(Stop::NoLeg(k)) => {
                return Err(HeadError::NoLeg {
                    volume: spec.name.clone(),
                    mirrored_disk: k,
                });
            }
        }
        let (top, len) = self.top(&vol, spec, data_len, &mirrors)?;
        assembly.device = top.path;
        assembly.size_bytes = *len * SECTOR;
        // It disconnects imports: the index would go stale.
        self.imports = None;
        self.collect_garbage(&vol, spec.mirrored_disks.len());
        Ok(assembly)
    }

    /// The devices of the legs of `spec` that `wanted` picks (with what it
    /// tells `make` about each), by (mirrored disk, slot): each leg's import
    /// adopted from the assembly's index or connected, then its devices
    /// made by `make`, [`ASSEMBLY_WORKERS`] legs at once. Each leg's result
    /// is its own: one unreachable server fails only its legs.
    fn legs_at_once<W, R>(
        &mut self,
        spec: &VolumeSpec,
        wanted: impl Fn(&LegSpec) -> Option<W>,
        make: impl Fn(
            &LegMaker<'_>,
            &mut LazyNetlink<'_>,
            usize,
            &LegSpec,
            W,
            Option<nbd::NbdIndex>,
        ) -> LegOutcome<R>
        + Sync,
    ) -> HashMap<(usize, usize), Result<R, HeadError>>
    where
        W: Send,
        R: Send,
    {
        let mut out = HashMap::new();
        let mut pending = Vec::new();
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            for (l, leg) in legs.iter().enumerate() {
                if let Some(w) = wanted(leg) {
                    pending.push((k, l, w));
                }
            }
        }
        // Rounds, in case a mirror lists one chunk twice: no two threads
        // import the same leg; a repeat is made in the next round, which
        // adopts the import the first one connected.
        while !pending.is_empty() {
            let mut seen = HashSet::new();
            let (round, later): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(k, l, _)| seen.insert((*k, spec.mirrored_disks[*k][*l].chunk)));
            pending = later;
            let mut work = Vec::with_capacity(round.len());
            for (k, l, w) in round {
                match self.find_import(&spec.name, k, spec.mirrored_disks[k][l].chunk) {
                    Ok(known) => work.push((k, l, w, known.map(|(i, _)| i))),
                    Err(e) => {
                        out.insert((k, l), Err(e));
                    }
                }
            }
            let maker = LegMaker {
                dp: &self.dp,
                timeouts: self.timeouts,
                local_block_disks: &self.local_block_disks,
            };
            let lookup = self.nl.backend_lookup();
            let made = vsky_sync::map_bounded(
                work,
                ASSEMBLY_WORKERS,
                || LazyNetlink::new(lookup),
                |nl, (k, l, w, known)| {
                    let (devices, new) = make(&maker, nl, k, &spec.mirrored_disks[k][l], w, known);
                    (k, l, devices, new)
                },
            );
            for (k, l, devices, new) in made {
                self.note_import(&spec.name, k, spec.mirrored_disks[k][l].chunk, new);
                out.insert((k, l), devices);
            }
        }
        out
    }

    /// Creates (or adopts and brings to the manager's layout) the mirrors
    /// of `planned`, [`ASSEMBLY_WORKERS`] at once; in order. Mirrors of one
    /// volume share no device, and the volume device that joins them is
    /// made after all of them.
    fn mirrors_at_once(
        &self,
        vol: &VolumeName,
        spec: &VolumeSpec,
        len: Sectors,
        planned: Vec<PlannedMirror>,
    ) -> Result<Vec<MappedDevice>, HeadError> {
        vsky_sync::map_bounded(
            planned,
            ASSEMBLY_WORKERS,
            || (),
            |_, p| {
                let legs = &spec.mirrored_disks[p.k];
                let mut rebuild = p.rebuild;
                if !p.running {
                    rebuild.extend(self.copied_legs(vol, p.k, legs, &p.slots, &rebuild)?);
                    rebuild.sort_unstable();
                }
                self.mirror(vol, p.k as u32, len, p.slots, &rebuild, legs)
            },
        )
        .into_iter()
        .collect()
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
        let mut table = Raid1Table::new(slots, chain::region_size(len));
        table.rebuild = rebuild.to_vec();
        table.max_recovery_rate_kib = self.recovery_rate_kib;
        Ok(self.dp.ensure_raid1(&name, len, &table)?)
    }

    /// The volume device over the mirrors: a concatenation, or stripes
    /// whose columns concatenate every `width`-th mirror; with its length.
    ///
    /// Grown online: when the manager appends mirrored disks to an attached
    /// volume, the new mirrors are assembled first (above), then each
    /// column and the volume device get their longer tables in place
    /// (`Datapath::ensure_volume` reloads a table that only appends space,
    /// holding I/O for the swap). A column that was a single mirror becomes
    /// a concatenation that begins with it, so the stripe still maps every
    /// old sector where it did.
    fn top(
        &self,
        vol: &VolumeName,
        spec: &VolumeSpec,
        data_len: Sectors,
        mirrors: &[MappedDevice],
    ) -> Result<(MappedDevice, Sectors), HeadError> {
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
        Ok((self.dp.ensure_volume(&vol.top(), &layout)?, layout.len()))
    }

    /// Removes every device of a volume and disconnects its legs.
    pub fn teardown(&mut self, volume: &str) -> Result<(), HeadError> {
        let vol = VolumeName::new(volume)?;
        self.dp.teardown_volume(&vol, ASSEMBLY_WORKERS)?;
        let prefix = backend_prefix(volume);
        let legs: Vec<nbd::NbdIndex> = self
            .nl
            .list_backends()?
            .into_iter()
            .filter(|(_, backend)| backend.starts_with(&prefix))
            .map(|(index, _)| index)
            .collect();
        let lookup = self.nl.backend_lookup();
        let disconnected = vsky_sync::map_bounded(
            legs,
            ASSEMBLY_WORKERS,
            || LazyNetlink::new(lookup),
            |nl, index| (index, nl.disconnect(index)),
        );
        // Every disconnect was tried; each failure is logged, the first
        // returned (the next teardown tries those again).
        let mut first = None;
        for (index, r) in disconnected {
            if let Err(e) = r {
                tracing::warn!(volume, device = %index, error = %e, "cannot disconnect a leg's import");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
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
        let prefix = backend_prefix(vol.as_str());
        let Ok(backends) = self.nl.list_backends() else {
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
}
