//! [`Cluster`]: the whole cluster state in memory, and every mutation.
//!
//! Each mutation validates first and changes nothing on error (all or
//! nothing), then applies and returns [`Changes`]: the ids of the records it
//! touched. The manager writes exactly those records to the store in one
//! transaction; at start-up [`Cluster::load`] rebuilds everything derived
//! (free lists, load index, chunk owners) from the records and refuses to run
//! on records that contradict each other (a chunk used twice, a leg on a
//! missing disk).
//!
//! This file holds the state: [`Cluster`] (the records and what is derived
//! from them), [`Changes`], and `commit`, which ends every mutation and
//! moves the generation when something changed. The rules live in one
//! `impl Cluster` block per concern:
//! - `load.rs`: [`Records`], [`Cluster::load`] and [`Cluster::records`];
//! - `invariants.rs`: [`Cluster::check_invariants`], everything re-derived
//!   from scratch;
//! - `summary.rs`: cluster-wide totals and the capacity accounting;
//! - `servers.rs`, `disks.rs`, `volumes.rs`, `groups.rs`: each kind of
//!   record's queries and its admin and agent mutations;
//! - `legs.rs`: a leg's failure, and its return within a grace period;
//! - `placement.rs`: taking chunks for new legs, keeping the allocation
//!   index and partner counts current (the rules themselves are in
//!   `alloc.rs`);
//! - `chains.rs`: thin volumes, snapshots and clones as chains of hidden
//!   layers; `pools.rs`: their pools' layout and growth;
//! - `access.rs` (who may reach a volume), `identity.rs` (whose disk it
//!   is), `executor.rs` (who copies a resync), `recovery.rs` (replacement
//!   legs and resyncs), `schedule.rs` (which resyncs start), `moves.rs`
//!   (drain and rebalance), `scrub.rs` (the
//!   scrub patrol), `heartbeat.rs` (what an agent may report) and
//!   `pass.rs` (the recovery loop's planning pass).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;

pub mod access;
mod chains;
mod disks;
pub mod executor;
mod groups;
pub mod heartbeat;
pub mod identity;
mod invariants;
mod legs;
mod load;
pub mod moves;
pub mod pass;
mod placement;
pub mod pools;
pub mod readers;
pub mod recovery;
mod schedule;
pub mod scrub;
mod servers;
mod summary;
mod volumes;

pub use chains::{layer_name, thin_meta_bytes};
pub use disks::{DiskUsage, NewDisk, WipedChunk};
pub use groups::{GroupUpdate, VolumeMetaUpdate};
pub use load::Records;
pub use pools::{PoolGrowth, PoolUsage, pool_data_blocks, pool_extents, thin_added_meta_bytes};
pub use servers::NewServer;
pub use summary::{CapacityLevel, Summary};
pub use volumes::NewVolume;

use crate::alloc::{AllocIndex, Partners};
use crate::entities::{Disk, Group, Server, Settings, Volume};
use crate::error::ModelError;
use crate::freelist::FreeList;
use crate::ids::{self, DiskId, JobId, ServerId, VolumeId};
use crate::limits;

/// What a mutation touched. For each id, the store writes the record if it
/// still exists in the cluster and deletes it otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub next_id: bool,
    /// The cluster's `Settings` changed (only ever its identity, once).
    pub settings: bool,
    pub groups: BTreeSet<String>,
    pub jobs: BTreeSet<JobId>,
    pub servers: BTreeSet<ServerId>,
    pub disks: BTreeSet<DiskId>,
    pub volumes: BTreeSet<VolumeId>,
}

impl Changes {
    /// Adds what another mutation touched (for callers that chain several
    /// mutations into one store transaction).
    pub fn merge(&mut self, other: Changes) {
        self.next_id |= other.next_id;
        self.settings |= other.settings;
        self.groups.extend(other.groups);
        self.jobs.extend(other.jobs);
        self.servers.extend(other.servers);
        self.disks.extend(other.disks);
        self.volumes.extend(other.volumes);
    }

    pub fn is_empty(&self) -> bool {
        !self.next_id
            && !self.settings
            && self.groups.is_empty()
            && self.jobs.is_empty()
            && self.servers.is_empty()
            && self.disks.is_empty()
            && self.volumes.is_empty()
    }
}

/// The address of one leg slot: a volume, one of its mirrored disks (by
/// index), and the slot in it. It says which leg uses a chunk, which slot a
/// resync job fills, and which slot a failed leg comes back to.
///
/// The derived order sorts by volume, then mirrored disk, then slot, so the
/// slots of one mirrored disk form a key range ([`LegAddr::slots_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LegAddr {
    pub volume: VolumeId,
    pub mirrored_disk: u32,
    pub leg: u8,
}

impl LegAddr {
    /// Every slot of one mirrored disk, as a range of keys.
    pub(crate) fn slots_of(volume: VolumeId, mirrored_disk: u32) -> RangeInclusive<LegAddr> {
        let slot = |leg| LegAddr {
            volume,
            mirrored_disk,
            leg,
        };
        slot(0)..=slot(u8::MAX)
    }
}

/// Derived per-disk state: which chunks are free and who uses the others.
/// A chunk is in exactly one of: `free`, `used`, or the disk's `releasing`.
#[derive(Clone, Debug, Default)]
struct DiskRuntime {
    free: FreeList,
    used: BTreeMap<u32, LegAddr>,
}

#[derive(Clone, Debug)]
pub struct Cluster {
    settings: Settings,
    /// Next id for any object; ids are never reused.
    next_id: u64,
    servers: BTreeMap<ServerId, Server>,
    server_names: HashMap<String, ServerId>,
    disks: BTreeMap<DiskId, Disk>,
    disks_by_server: BTreeMap<ServerId, BTreeSet<DiskId>>,
    volumes: BTreeMap<VolumeId, Volume>,
    volume_names: HashMap<String, VolumeId>,
    groups: BTreeMap<String, Group>,
    /// Resync jobs, active and recent (see `recovery`).
    jobs: BTreeMap<JobId, recovery::ResyncJob>,
    /// The active (queued or running) job of each leg slot being repaired.
    repairs: BTreeMap<LegAddr, JobId>,
    /// How many mirrored disks each pair of disks, and each disk and
    /// server, share: the allocator spreads a disk's partners with it.
    partners: Partners,
    /// Set whenever a leg fails, cleared once every failed leg has a
    /// repair: `plan_repairs` scans the volumes only when it is set.
    repairs_pending: bool,
    /// Set when the last `plan_repairs` found no room for a failed leg
    /// whose mirrored disk still has a healthy leg: queued moves give their
    /// chunks back, and no new move is planned until repairs fit (moves.rs).
    repairs_lack_room: bool,
    /// Finished jobs kept for history, oldest (smallest id) first, so
    /// trimming the history costs O(log jobs), not a scan of all jobs.
    finished: BTreeSet<JobId>,
    /// Servers in their grace period: their failed legs are not replaced
    /// yet (set by the manager from heartbeats; not persisted).
    repair_hold: BTreeSet<ServerId>,
    /// Running scrubs (see `scrub`; not persisted).
    scrubs: scrub::Scrubs,
    /// The window of the last background rebalance top-up
    /// (`moves::auto_rebalance`; not persisted).
    auto_rebalance_window: usize,
    runtime: HashMap<DiskId, DiskRuntime>,
    index: AllocIndex,
    /// Bumped by every mutation that changed something; agents long-poll on
    /// it. Not persisted: the manager starts each process at a random value
    /// (agents compare for inequality, so a fresh value wakes them).
    generation: u64,
}

fn validate_settings(s: &Settings) -> Result<(), ModelError> {
    let what = "chunk size";
    if s.chunk_size_bytes < limits::CHUNK_SIZE_BYTES_MIN
        || s.chunk_size_bytes > limits::CHUNK_SIZE_BYTES_MAX
    {
        return Err(ModelError::invalid(
            what,
            format!(
                "{} bytes is outside {}..={} bytes",
                s.chunk_size_bytes,
                limits::CHUNK_SIZE_BYTES_MIN,
                limits::CHUNK_SIZE_BYTES_MAX
            ),
        ));
    }
    if !s.chunk_size_bytes.is_multiple_of(limits::CHUNK_ALIGN_BYTES) {
        return Err(ModelError::invalid(what, "must be a whole number of MiB"));
    }
    if !(limits::REPLICAS_MIN..=limits::REPLICAS_MAX).contains(&s.default_replicas) {
        return Err(ModelError::invalid("default replicas", "must be 2..=9"));
    }
    ids::validate_name("failure domain label", &s.failure_domain_label)
}

pub(crate) fn not_found(kind: &'static str, cli: &'static str, key: impl ToString) -> ModelError {
    ModelError::NotFound {
        kind,
        cli,
        key: key.to_string(),
    }
}

impl Cluster {
    pub fn new(settings: Settings) -> Result<Self, ModelError> {
        validate_settings(&settings)?;
        Ok(Cluster {
            settings,
            next_id: 1,
            servers: BTreeMap::new(),
            server_names: HashMap::new(),
            disks: BTreeMap::new(),
            disks_by_server: BTreeMap::new(),
            volumes: BTreeMap::new(),
            volume_names: HashMap::new(),
            groups: BTreeMap::new(),
            jobs: BTreeMap::new(),
            repairs: BTreeMap::new(),
            repair_hold: BTreeSet::new(),
            scrubs: scrub::Scrubs::default(),
            auto_rebalance_window: 0,
            partners: Partners::default(),
            repairs_pending: true,
            repairs_lack_room: false,
            finished: BTreeSet::new(),
            runtime: HashMap::new(),
            index: AllocIndex::default(),
            generation: 1,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Moves the generation counter (the manager starts it at a random
    /// point per process, and moves it forward after reloading the store).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    fn take_id(&mut self, changes: &mut Changes) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        changes.next_id = true;
        id
    }

    fn commit(&mut self, changes: Changes) -> Changes {
        if !changes.is_empty() {
            self.generation += 1;
            // A scrub whose mirrored disk stopped qualifying (attached,
            // degraded, a job) is over for good, even if it qualifies again.
            self.drop_stale_scrubs();
        }
        changes
    }

    /// Moves the generation for a change of some agent's desired state that
    /// touches no record (scrub runs live in memory only), so the agent's
    /// long-poll wakes.
    fn desired_changed(&mut self) {
        self.generation += 1;
    }
}
