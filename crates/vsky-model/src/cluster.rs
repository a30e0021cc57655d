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
//! Size: over 1000 lines, not split yet. Issue #15 item 2 splits it into one
//! `impl` block per concern (load and invariants, servers, disks, volumes,
//! groups, placement), as `cluster/{access,identity,recovery,moves,scrub}.rs`
//! already are.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub mod access;
pub mod executor;
pub mod identity;
pub mod moves;
pub mod recovery;
pub mod scrub;

use crate::alloc::{AllocIndex, DiskEntry, Near, Partners};
use crate::entities::*;
use crate::error::ModelError;
use crate::freelist::FreeList;
use crate::ids::{self, ChunkRef, DiskId, JobId, ServerId, VolumeId};
use crate::{SecretSource, limits};

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

/// Everything the store keeps: the input of [`Cluster::load`] and the
/// output of [`Cluster::records`].
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub settings: Settings,
    pub next_id: u64,
    pub servers: Vec<Server>,
    pub disks: Vec<Disk>,
    pub volumes: Vec<Volume>,
    pub groups: Vec<Group>,
    pub jobs: Vec<recovery::ResyncJob>,
}

/// Where a used chunk is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegAddr {
    pub volume: VolumeId,
    pub mirrored_disk: u32,
    pub leg: u8,
}

/// Derived per-disk state: which chunks are free and who uses the others.
/// A chunk is in exactly one of: `free`, `used`, or the disk's `releasing`.
#[derive(Clone, Debug, Default)]
struct DiskRuntime {
    free: FreeList,
    used: BTreeMap<u32, LegAddr>,
}

#[derive(Clone, Debug)]
pub struct NewServer {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct NewDisk {
    pub server: String,
    pub path: String,
    pub size_bytes: u64,
    pub class: Option<String>,
}

/// A storage agent's report that it wiped a chunk for one release (the
/// `release` of the `WipeSpec` it acted on; see [`Disk::releasing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WipedChunk {
    pub chunk: ChunkRef,
    pub release: u64,
}

#[derive(Clone, Debug, Default)]
pub struct NewVolume {
    pub name: String,
    pub size_bytes: u64,
    pub replicas: Option<u8>,
    pub stripe: Option<Stripe>,
    pub class: Option<String>,
    pub near_server: Option<String>,
    pub meta: VolumeMeta,
}

/// A change to a volume's descriptive data; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct VolumeMetaUpdate {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub set_keys: BTreeMap<String, String>,
    pub unset_keys: Vec<String>,
}

/// A change to a group's descriptive data; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct GroupUpdate {
    pub display_name: Option<String>,
    pub description: Option<String>,
}

/// Per-disk usage in chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub legs: u64,
    pub free_chunks: u64,
    pub releasing_chunks: u64,
}

/// Cluster-wide totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub servers: usize,
    pub servers_failed: usize,
    pub disks: usize,
    pub disks_failed: usize,
    pub chunk_size_bytes: u64,
    pub default_replicas: u8,
    /// Chunk bytes on disks that can serve (online disk, online server).
    /// Always `free_bytes + used_bytes + releasing_bytes`.
    pub capacity_bytes: u64,
    /// Chunk bytes free for new legs (on serving disks).
    pub free_bytes: u64,
    /// Chunk bytes in use by legs on serving disks.
    pub used_bytes: u64,
    /// Chunk bytes on serving disks freed but not yet wiped by their agent.
    pub releasing_bytes: u64,
    /// Chunk bytes on disks that cannot serve (a failed disk, or any disk
    /// of a failed server), whatever they hold: not part of the capacity.
    pub unavailable_bytes: u64,
    pub volumes: usize,
    pub volumes_attached: usize,
    pub mirrored_disks: usize,
    pub mirrored_disks_degraded: usize,
    pub mirrored_disks_rebuilding: usize,
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
    repairs: BTreeMap<(VolumeId, u32, u8), JobId>,
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

/// A UUID in its canonical 8-4-4-4-12 hex form (an XAPI SR's uuid).
fn validate_uuid(what: &'static str, text: &str) -> Result<(), ModelError> {
    let canonical = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !canonical {
        return Err(ModelError::invalid(
            what,
            "must be a UUID in the form 8-4-4-4-12 hex digits, e.g. 0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e3f (an SR's uuid); leave it out if the group has none",
        ));
    }
    Ok(())
}

fn validate_display_name(text: &str) -> Result<(), ModelError> {
    if text.len() > limits::DISPLAY_NAME_LEN_MAX || text.chars().any(char::is_control) {
        return Err(ModelError::invalid(
            "display name",
            format!(
                "at most {} bytes without control characters",
                limits::DISPLAY_NAME_LEN_MAX
            ),
        ));
    }
    Ok(())
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

    /// Rebuilds a cluster from stored records, checking that they agree.
    pub fn load(records: Records) -> Result<Self, ModelError> {
        let Records {
            settings,
            next_id,
            servers,
            disks,
            volumes,
            groups,
            jobs,
        } = records;
        let corrupt = |msg: String| ModelError::Corrupt(msg);
        let mut cluster = Cluster::new(settings)?;
        cluster.next_id = next_id;
        for group in groups {
            cluster.groups.insert(group.name.clone(), group);
        }
        for server in servers {
            if server.id.0 >= next_id || cluster.server_names.contains_key(&server.name) {
                return Err(corrupt(format!(
                    "server record {} is duplicated or beyond next id",
                    server.id
                )));
            }
            cluster.server_names.insert(server.name.clone(), server.id);
            cluster.servers.insert(server.id, server);
        }
        for disk in disks {
            if disk.id.0 >= next_id || !cluster.servers.contains_key(&disk.server) {
                return Err(corrupt(format!(
                    "disk record {} names a missing server",
                    disk.id
                )));
            }
            let mut free = FreeList::full(disk.chunk_count);
            for (&index, &release) in &disk.releasing {
                if !free.take(index) {
                    return Err(corrupt(format!(
                        "{} releases chunk {index} beyond its end",
                        disk.id
                    )));
                }
                // A release id the counter has not reached yet could be
                // drawn again, and a stale wipe report would then match.
                if release >= next_id {
                    return Err(corrupt(format!(
                        "{} releases chunk {index} with id {release}, beyond next id",
                        disk.id
                    )));
                }
            }
            cluster.runtime.insert(
                disk.id,
                DiskRuntime {
                    free,
                    used: BTreeMap::new(),
                },
            );
            cluster
                .disks_by_server
                .entry(disk.server)
                .or_default()
                .insert(disk.id);
            cluster.disks.insert(disk.id, disk);
        }
        for volume in volumes {
            if volume.id.0 >= next_id || cluster.volume_names.contains_key(&volume.name) {
                return Err(corrupt(format!(
                    "volume record {} is duplicated",
                    volume.id
                )));
            }
            for (m, md) in volume.mirrored_disks.iter().enumerate() {
                for (l, leg) in md.legs.iter().enumerate() {
                    let addr = LegAddr {
                        volume: volume.id,
                        mirrored_disk: m as u32,
                        leg: l as u8,
                    };
                    let runtime = cluster.runtime.get_mut(&leg.chunk.disk).ok_or_else(|| {
                        corrupt(format!("{} uses missing {}", volume.id, leg.chunk.disk))
                    })?;
                    if !runtime.free.take(leg.chunk.index) {
                        return Err(corrupt(format!(
                            "chunk {} of {} is used twice or also releasing",
                            leg.chunk.index, leg.chunk.disk
                        )));
                    }
                    runtime.used.insert(leg.chunk.index, addr);
                }
            }
            if let Some(g) = &volume.meta.group
                && !cluster.groups.contains_key(g)
            {
                return Err(corrupt(format!(
                    "{} belongs to missing group '{g}'",
                    volume.id
                )));
            }
            for md in &volume.mirrored_disks {
                let chunks: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
                cluster.link_pairs(&chunks, true);
            }
            cluster.volume_names.insert(volume.name.clone(), volume.id);
            cluster.volumes.insert(volume.id, volume);
        }
        let ids: Vec<ServerId> = cluster.servers.keys().copied().collect();
        for id in ids {
            cluster.reindex_server(id);
        }
        cluster.load_jobs(jobs)?;
        Ok(cluster)
    }

    // ---- queries -------------------------------------------------------

    /// Every record, as a store would hold them.
    pub fn records(&self) -> Records {
        Records {
            settings: self.settings.clone(),
            next_id: self.next_id,
            servers: self.servers.values().cloned().collect(),
            disks: self.disks.values().cloned().collect(),
            volumes: self.volumes.values().cloned().collect(),
            groups: self.groups.values().cloned().collect(),
            jobs: self.jobs.values().cloned().collect(),
        }
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

    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.values()
    }

    pub fn server(&self, id: ServerId) -> Option<&Server> {
        self.servers.get(&id)
    }

    pub fn server_by_name(&self, name: &str) -> Result<&Server, ModelError> {
        self.server_names
            .get(name)
            .map(|id| &self.servers[id])
            .ok_or_else(|| not_found("server", "server", name))
    }

    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.disks.values()
    }

    pub fn disk(&self, id: DiskId) -> Result<&Disk, ModelError> {
        self.disks
            .get(&id)
            .ok_or_else(|| not_found("disk", "disk", id.0))
    }

    pub fn disks_of(&self, server: ServerId) -> impl Iterator<Item = &Disk> {
        self.disks_by_server
            .get(&server)
            .into_iter()
            .flatten()
            .map(|id| &self.disks[id])
    }

    pub fn disk_usage(&self, id: DiskId) -> DiskUsage {
        let disk = &self.disks[&id];
        let rt = &self.runtime[&id];
        DiskUsage {
            legs: rt.used.len() as u64,
            free_chunks: rt.free.len(),
            releasing_chunks: disk.releasing.len() as u64,
        }
    }

    /// Every leg that uses a chunk of this disk.
    pub fn legs_on_disk(&self, id: DiskId) -> impl Iterator<Item = (u32, LegAddr)> + '_ {
        self.runtime
            .get(&id)
            .into_iter()
            .flat_map(|rt| rt.used.iter().map(|(&i, &a)| (i, a)))
    }

    pub fn volumes(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.values()
    }

    pub fn volume(&self, id: VolumeId) -> Option<&Volume> {
        self.volumes.get(&id)
    }

    pub fn volume_by_name(&self, name: &str) -> Result<&Volume, ModelError> {
        self.volume_names
            .get(name)
            .map(|id| &self.volumes[id])
            .ok_or_else(|| not_found("volume", "volume", name))
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn group(&self, name: &str) -> Result<&Group, ModelError> {
        self.groups
            .get(name)
            .ok_or_else(|| not_found("group", "group", name))
    }

    /// Volumes of one group.
    pub fn volumes_in(&self, group: &str) -> impl Iterator<Item = &Volume> {
        let group = group.to_string();
        self.volumes
            .values()
            .filter(move |v| v.meta.group.as_deref() == Some(group.as_str()))
    }

    pub fn summary(&self) -> Summary {
        let chunk = self.settings.chunk_size_bytes;
        let mut s = Summary {
            chunk_size_bytes: chunk,
            default_replicas: self.settings.default_replicas,
            ..Summary::default()
        };
        s.servers = self.servers.len();
        s.servers_failed = self
            .servers
            .values()
            .filter(|v| v.state == ServerState::Failed)
            .count();
        for disk in self.disks.values() {
            s.disks += 1;
            let serving = disk.state == DiskState::Online
                && self.servers[&disk.server].state == ServerState::Online;
            if disk.state == DiskState::Failed {
                s.disks_failed += 1;
            }
            // Each disk's chunks are free, used or releasing; a disk that
            // cannot serve counts apart, so the capacity still adds up.
            let usage = self.disk_usage(disk.id);
            if serving {
                s.capacity_bytes += u64::from(disk.chunk_count) * chunk;
                s.free_bytes += usage.free_chunks * chunk;
                s.used_bytes += usage.legs * chunk;
                s.releasing_bytes += usage.releasing_chunks * chunk;
            } else {
                s.unavailable_bytes += u64::from(disk.chunk_count) * chunk;
            }
        }
        for volume in self.volumes.values() {
            s.volumes += 1;
            s.volumes_attached += usize::from(volume.attachment.is_some());
            s.mirrored_disks += volume.mirrored_disks.len();
            s.mirrored_disks_degraded += volume.degraded_mirrored_disks();
            s.mirrored_disks_rebuilding += volume.rebuilding_mirrored_disks();
        }
        s
    }

    // ---- servers ---------------------------------------------------------

    fn validate_new_server(
        &self,
        new: &NewServer,
        except: Option<ServerId>,
    ) -> Result<(), ModelError> {
        ids::validate_name("server name", &new.name)?;
        ids::validate_address(&new.address)?;
        if new.labels.len() > limits::LABELS_PER_SERVER_MAX {
            return Err(ModelError::invalid(
                "labels",
                format!("at most {} per server", limits::LABELS_PER_SERVER_MAX),
            ));
        }
        for (k, v) in &new.labels {
            ids::validate_label(k, v)?;
        }
        if let Some(other) = self
            .servers
            .values()
            .find(|s| s.address == new.address && Some(s.id) != except)
        {
            return Err(ModelError::Conflict(format!(
                "address {} is already used by server '{}'; each agent needs its own address",
                new.address, other.name
            )));
        }
        Ok(())
    }

    fn take_id(&mut self, changes: &mut Changes) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        changes.next_id = true;
        id
    }

    /// Adds a server (admin). Fails if the name exists.
    pub fn add_server(&mut self, new: NewServer) -> Result<(ServerId, Changes), ModelError> {
        if self.server_names.contains_key(&new.name) {
            return Err(ModelError::AlreadyExists {
                kind: "server",
                key: new.name,
            });
        }
        self.validate_new_server(&new, None)?;
        let mut changes = Changes::default();
        let id = ServerId(self.take_id(&mut changes));
        self.server_names.insert(new.name.clone(), id);
        self.servers.insert(
            id,
            Server {
                id,
                name: new.name,
                address: new.address,
                labels: new.labels,
                state: ServerState::Online,
                failed_by_silence: false,
                draining: false,
                storage_only: false,
            },
        );
        changes.servers.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Registers a server on behalf of its agent: creates it, or updates the
    /// address and labels of an existing one. A failed server stays failed
    /// (returning it to service is the recovery engine's decision).
    pub fn register_server(&mut self, new: NewServer) -> Result<(ServerId, Changes), ModelError> {
        let Some(&id) = self.server_names.get(&new.name) else {
            return self.add_server(new);
        };
        self.validate_new_server(&new, Some(id))?;
        let server = self.servers.get_mut(&id).expect("name index is consistent");
        let mut changes = Changes::default();
        if server.address != new.address || server.labels != new.labels {
            server.address = new.address;
            server.labels = new.labels;
            changes.servers.insert(id);
            // The failure domain may have changed.
            self.reindex_server(id);
        }
        Ok((id, self.commit(changes)))
    }

    /// Removes a server and its disks; only when none of its chunks is used
    /// and no volume is attached to it.
    pub fn remove_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        let id = self.server_by_name(name)?.id;
        let disks: Vec<DiskId> = self.disks_of(id).map(|d| d.id).collect();
        let legs: usize = disks.iter().map(|d| self.runtime[d].used.len()).sum();
        if legs > 0 {
            return Err(ModelError::Conflict(format!(
                "server '{name}' still holds {legs} legs of volumes; drain it or delete those volumes first"
            )));
        }
        if let Some(v) = self
            .volumes
            .values()
            .find(|v| v.attachment.as_ref().is_some_and(|a| a.head == id))
        {
            return Err(ModelError::Conflict(format!(
                "volume '{}' is attached to server '{name}'; detach it first",
                v.name
            )));
        }
        let mut changes = Changes::default();
        for d in disks {
            self.drop_disk(d);
            changes.disks.insert(d);
        }
        self.servers.remove(&id);
        self.disks_by_server.remove(&id);
        self.server_names.remove(name);
        changes.servers.insert(id);
        Ok(self.commit(changes))
    }

    /// Whether the server still holds any leg: a live one (failing the
    /// server degrades its mirrored disk) or a failed one not replaced yet
    /// (it waits for the server to come back or be declared failed). A
    /// replaced leg's chunk is released, so it no longer counts.
    pub fn server_holds_legs(&self, id: ServerId) -> bool {
        self.disks_of(id)
            .any(|d| self.legs_on_disk(d.id).next().is_some())
    }

    /// Declares a server failed: every leg on its disks fails, and it gets
    /// no new chunks. Idempotent.
    pub fn fail_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.fail_server_as(name, false)
    }

    /// Declares a server failed because its heartbeats stopped for longer
    /// than its grace period: like [`Self::fail_server`], but the server
    /// returns to service when its agent speaks again
    /// ([`Self::server_returned`]).
    pub fn fail_silent_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.fail_server_as(name, true)
    }

    fn fail_server_as(&mut self, name: &str, by_silence: bool) -> Result<Changes, ModelError> {
        let id = self.server_by_name(name)?.id;
        let mut changes = Changes::default();
        let server = self.servers.get_mut(&id).expect("exists");
        if server.state != ServerState::Failed {
            server.state = ServerState::Failed;
            server.failed_by_silence = by_silence;
            changes.servers.insert(id);
        } else if server.failed_by_silence && !by_silence {
            // An admin confirms the failure: it now stands.
            server.failed_by_silence = false;
            changes.servers.insert(id);
        }
        let disks: Vec<DiskId> = self.disks_of(id).map(|d| d.id).collect();
        for d in disks {
            self.fail_legs_on(d, &mut changes);
        }
        self.reindex_server(id);
        Ok(self.commit(changes))
    }

    /// The agent of a server declared failed for its silence speaks again:
    /// the server serves new chunks again. Its legs were failed (and those
    /// with room elsewhere replaced; the replaced chunks are wiped before
    /// reuse), so nothing stale is trusted. A server an admin failed stays
    /// failed. Returns no changes when there is nothing to do.
    pub fn server_returned(&mut self, id: ServerId) -> Result<Changes, ModelError> {
        let server = self
            .servers
            .get_mut(&id)
            .ok_or_else(|| not_found("server", "server", id.0))?;
        let mut changes = Changes::default();
        if server.state == ServerState::Failed && server.failed_by_silence {
            server.state = ServerState::Online;
            server.failed_by_silence = false;
            changes.servers.insert(id);
            self.reindex_server(id);
        }
        Ok(self.commit(changes))
    }

    // ---- disks -----------------------------------------------------------

    fn validate_new_disk(&self, new: &NewDisk) -> Result<(ServerId, u32), ModelError> {
        let server = self.server_by_name(&new.server)?.id;
        ids::validate_device_path(&new.path)?;
        if let Some(class) = &new.class {
            ids::validate_name("disk class", class)?;
        }
        let chunks = self.settings.chunks_on_disk(new.size_bytes);
        if chunks == 0 {
            return Err(ModelError::invalid(
                "disk size",
                format!(
                    "{} bytes holds no chunk: a disk needs at least {} bytes ({} header + one {}-byte chunk)",
                    new.size_bytes,
                    self.settings.disk_header_bytes + self.settings.chunk_size_bytes,
                    self.settings.disk_header_bytes,
                    self.settings.chunk_size_bytes
                ),
            ));
        }
        if chunks > limits::CHUNKS_PER_DISK_MAX {
            return Err(ModelError::invalid(
                "disk size",
                "more than 2^32-1 chunks; use a bigger chunk size",
            ));
        }
        Ok((server, chunks as u32))
    }

    /// Adds a disk to a server (admin). Fails if the path exists there.
    pub fn add_disk(&mut self, new: NewDisk) -> Result<(DiskId, Changes), ModelError> {
        let (server, chunk_count) = self.validate_new_disk(&new)?;
        if self.disks_of(server).any(|d| d.path == new.path) {
            return Err(ModelError::AlreadyExists {
                kind: "disk",
                key: format!("{}:{}", new.server, new.path),
            });
        }
        let mut changes = Changes::default();
        let id = DiskId(self.take_id(&mut changes));
        self.disks.insert(
            id,
            Disk {
                id,
                server,
                path: new.path,
                size_bytes: new.size_bytes,
                class: new.class,
                state: DiskState::Online,
                chunk_count,
                releasing: BTreeMap::new(),
                draining: false,
                labelled: false,
            },
        );
        self.runtime.insert(
            id,
            DiskRuntime {
                free: FreeList::full(chunk_count),
                used: BTreeMap::new(),
            },
        );
        self.disks_by_server.entry(server).or_default().insert(id);
        self.reindex(id);
        changes.disks.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Registers a disk on behalf of its agent: adds it, or updates an
    /// existing one (a disk that grew gets more chunks; one that shrank below
    /// its chunks is refused, since that would lose data).
    pub fn register_disk(&mut self, new: NewDisk) -> Result<(DiskId, Changes), ModelError> {
        let (server, chunk_count) = self.validate_new_disk(&new)?;
        let Some(id) = self
            .disks_of(server)
            .find(|d| d.path == new.path)
            .map(|d| d.id)
        else {
            return self.add_disk(new);
        };
        let disk = self.disks.get_mut(&id).expect("exists");
        let mut changes = Changes::default();
        if chunk_count < disk.chunk_count {
            return Err(ModelError::Conflict(format!(
                "disk {} on '{}' shrank from {} to {} bytes, which cuts off its chunks: it is failed and its legs are rebuilt elsewhere; once it holds no legs, remove it with `vsky disk remove`",
                new.path, new.server, disk.size_bytes, new.size_bytes
            )));
        }
        if chunk_count > disk.chunk_count
            || disk.class != new.class
            || disk.size_bytes != new.size_bytes
        {
            let rt = self.runtime.get_mut(&id).expect("runtime for every disk");
            rt.free.extend(disk.chunk_count, chunk_count);
            disk.chunk_count = chunk_count;
            disk.size_bytes = new.size_bytes;
            disk.class = new.class;
            changes.disks.insert(id);
            self.reindex(id);
        }
        Ok((id, self.commit(changes)))
    }

    /// Removes a disk none of whose chunks is used.
    pub fn remove_disk(&mut self, id: DiskId) -> Result<Changes, ModelError> {
        self.disk(id)?;
        let legs = self.runtime[&id].used.len();
        if legs > 0 {
            return Err(ModelError::Conflict(format!(
                "disk {} still holds {legs} legs of volumes; drain it or delete those volumes first",
                id.0
            )));
        }
        self.drop_disk(id);
        let mut changes = Changes::default();
        changes.disks.insert(id);
        Ok(self.commit(changes))
    }

    /// Declares a disk failed: its legs fail and it gets no new chunks.
    /// Idempotent.
    pub fn fail_disk(&mut self, id: DiskId) -> Result<Changes, ModelError> {
        self.disk(id)?;
        let mut changes = Changes::default();
        let disk = self.disks.get_mut(&id).expect("exists");
        if disk.state != DiskState::Failed {
            disk.state = DiskState::Failed;
            changes.disks.insert(id);
        }
        self.fail_legs_on(id, &mut changes);
        self.reindex(id);
        Ok(self.commit(changes))
    }

    /// The storage agent of `server` reports chunks it has wiped: each
    /// becomes free if it is still releasing under the release the wipe was
    /// for. Anything else is ignored, not refused: the report may be a
    /// retry, or late, and the chunk may since have been reused and freed
    /// again (it then waits for the wipe of its new release, or an old
    /// volume's data would reach a new one). Returns how many chunks were
    /// freed.
    pub fn chunks_wiped(
        &mut self,
        server: ServerId,
        wiped: &[WipedChunk],
    ) -> Result<(usize, Changes), ModelError> {
        for w in wiped {
            let disk = self.disk(w.chunk.disk)?;
            if disk.server != server {
                return Err(ModelError::invalid(
                    "wiped chunk",
                    format!("disk {} does not belong to this server", w.chunk.disk.0),
                ));
            }
        }
        let mut changes = Changes::default();
        let mut freed = 0;
        for &WipedChunk { chunk: c, release } in wiped {
            let disk = self.disks.get_mut(&c.disk).expect("checked");
            if disk.releasing.get(&c.index) == Some(&release) {
                disk.releasing.remove(&c.index);
                let rt = self
                    .runtime
                    .get_mut(&c.disk)
                    .expect("runtime for every disk");
                assert!(
                    rt.free.give_back(c.index),
                    "a releasing chunk is never free"
                );
                freed += 1;
                changes.disks.insert(c.disk);
            }
        }
        for d in changes.disks.clone() {
            self.reindex(d);
        }
        Ok((freed, self.commit(changes)))
    }

    // ---- volumes ---------------------------------------------------------

    /// Creates a volume: ceil(size / data per chunk) mirrored disks of
    /// `replicas` legs each, placed by the allocation rules. All or nothing.
    pub fn create_volume(
        &mut self,
        new: NewVolume,
        secrets: &mut dyn SecretSource,
    ) -> Result<(VolumeId, Changes), ModelError> {
        ids::validate_name("volume name", &new.name)?;
        if self.volume_names.contains_key(&new.name) {
            return Err(ModelError::AlreadyExists {
                kind: "volume",
                key: new.name,
            });
        }
        let replicas = new.replicas.unwrap_or(self.settings.default_replicas);
        if !(limits::REPLICAS_MIN..=limits::REPLICAS_MAX).contains(&replicas) {
            return Err(ModelError::invalid(
                "replicas",
                format!(
                    "{replicas} is outside {}..={}",
                    limits::REPLICAS_MIN,
                    limits::REPLICAS_MAX
                ),
            ));
        }
        if let Some(class) = &new.class {
            ids::validate_name("disk class", class)?;
        }
        let (size_bytes, count) = self.layout_for(new.size_bytes, new.stripe.as_ref())?;
        let near = match &new.near_server {
            Some(name) => Some(self.server_by_name(name)?.id),
            None => None,
        };
        self.validate_meta(&new.meta)?;
        let mut volume = Volume {
            id: VolumeId(0),
            name: new.name,
            size_bytes,
            replicas,
            stripe: new.stripe,
            class: new.class,
            near_server: near,
            mirrored_disks: Vec::new(),
            attachment: None,
            meta: new.meta,
        };
        let mut changes = Changes::default();
        let id = VolumeId(self.next_id);
        volume.id = id;
        volume.mirrored_disks = self.allocate(&volume, count, 0, secrets)?;
        self.take_id(&mut changes);
        self.volume_names.insert(volume.name.clone(), id);
        self.volumes.insert(id, volume);
        changes.volumes.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Grows a volume to at least `size_bytes` (shrinking would cut data off
    /// and is refused). All or nothing.
    pub fn resize_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        secrets: &mut dyn SecretSource,
    ) -> Result<Changes, ModelError> {
        let volume = self.volume_by_name(name)?;
        let (new_size, count) = self.layout_for(size_bytes, volume.stripe.as_ref())?;
        if new_size < volume.size_bytes {
            return Err(ModelError::invalid(
                "size",
                format!(
                    "volume '{name}' is {} bytes; shrinking to {new_size} would destroy data and is not supported",
                    volume.size_bytes
                ),
            ));
        }
        let mut changes = Changes::default();
        if new_size == volume.size_bytes {
            return Ok(changes);
        }
        let id = volume.id;
        let have = volume.mirrored_disks.len() as u64;
        // allocate() needs the cluster mutably; it reads only the placement
        // fields, so a shell copy without the layout is enough.
        let shell = Volume {
            mirrored_disks: Vec::new(),
            ..volume.clone()
        };
        let added = self.allocate(&shell, count.saturating_sub(have), have, secrets)?;
        let volume = self.volumes.get_mut(&id).expect("exists");
        volume.mirrored_disks.extend(added);
        volume.size_bytes = new_size;
        changes.volumes.insert(id);
        Ok(self.commit(changes))
    }

    /// Deletes a detached volume. Its chunks go to their disks' releasing
    /// sets until the storage agents wipe them.
    pub fn delete_volume(&mut self, name: &str) -> Result<Changes, ModelError> {
        let volume = self.volume_by_name(name)?;
        if let Some(a) = &volume.attachment {
            let server = &self.servers[&a.head].name;
            return Err(ModelError::Conflict(if a.is_releasing() {
                format!(
                    "volume '{name}' is being released by server '{server}'; wait until it has torn its devices down, or fence a dead server with `vsky volume detach --force {name}`"
                )
            } else {
                format!("volume '{name}' is attached to server '{server}'; detach it first")
            }));
        }
        let id = volume.id;
        let mut changes = Changes::default();
        self.end_jobs_of(id, &mut changes);
        let volume = self.volumes.remove(&id).expect("exists");
        self.volume_names.remove(name);
        for md in &volume.mirrored_disks {
            let chunks: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
            self.link_pairs(&chunks, false);
        }
        // One release id for all its chunks: what matters is that each
        // release of one chunk has its own.
        let release = self.take_id(&mut changes);
        for leg in volume.mirrored_disks.iter().flat_map(|m| &m.legs) {
            let rt = self
                .runtime
                .get_mut(&leg.chunk.disk)
                .expect("legs sit on known disks");
            assert!(
                rt.used.remove(&leg.chunk.index).is_some(),
                "a leg's chunk is used"
            );
            let disk = self.disks.get_mut(&leg.chunk.disk).expect("exists");
            assert!(
                disk.releasing.insert(leg.chunk.index, release).is_none(),
                "a used chunk is not releasing"
            );
            changes.disks.insert(leg.chunk.disk);
        }
        for d in changes.disks.clone() {
            self.reindex(d);
        }
        changes.volumes.insert(id);
        Ok(self.commit(changes))
    }

    /// Attaches a volume to its head server. Attaching again to the same
    /// server is a no-op, or, while that attachment is releasing, takes it
    /// back (a retry after a failed deactivate: the head assembles it
    /// again); to another server is a conflict (`AttachedElsewhere`, or
    /// `ReleasingElsewhere` until the head has confirmed its teardown); to
    /// a server whose agent runs with `--storage-only` is refused.
    pub fn attach_volume(&mut self, name: &str, server: &str) -> Result<Changes, ModelError> {
        let head = self.server_by_name(server)?;
        let head_id = head.id;
        if head.state == ServerState::Failed {
            return Err(ModelError::Conflict(format!(
                "server '{server}' is failed; attach on a healthy server"
            )));
        }
        self.check_may_head(head_id)?;
        let volume = self.volume_by_name(name)?;
        let mut changes = Changes::default();
        let id = volume.id;
        match &volume.attachment {
            Some(a) if a.head == head_id && !a.is_releasing() => return Ok(changes),
            Some(a) if a.head == head_id => {
                // Its resyncs were requeued when the release started: the
                // head takes them up again once they start.
                let a = self
                    .volumes
                    .get_mut(&id)
                    .and_then(|v| v.attachment.as_mut())
                    .expect("exists");
                a.state = AttachmentState::Attached;
                changes.volumes.insert(id);
                return Ok(self.commit(changes));
            }
            Some(a) if a.is_releasing() => {
                return Err(ModelError::ReleasingElsewhere {
                    volume: name.to_string(),
                    server: self.servers[&a.head].name.clone(),
                });
            }
            Some(a) => {
                return Err(ModelError::AttachedElsewhere {
                    volume: name.to_string(),
                    server: self.servers[&a.head].name.clone(),
                });
            }
            None => {}
        }
        self.volumes.get_mut(&id).expect("exists").attachment = Some(Attachment {
            head: head_id,
            state: AttachmentState::Attached,
        });
        changes.volumes.insert(id);
        // A storage agent was copying its resyncs; the head takes over.
        self.requeue_jobs_of(id, &mut changes);
        Ok(self.commit(changes))
    }

    /// The head of a volume reports that one of its legs failed.
    pub fn report_leg_failed(
        &mut self,
        head: ServerId,
        volume: &str,
        mirrored_disk: u32,
        leg: u8,
    ) -> Result<Changes, ModelError> {
        let v = self.volume_by_name(volume)?;
        if v.attachment.as_ref().map(|a| a.head) != Some(head) {
            return Err(ModelError::Conflict(format!(
                "volume '{volume}' is not attached to this server; only its head reports leg failures"
            )));
        }
        let id = v.id;
        let l = v
            .mirrored_disks
            .get(mirrored_disk as usize)
            .and_then(|m| m.legs.get(usize::from(leg)))
            .ok_or_else(|| {
                ModelError::invalid("leg", format!("{volume} has no leg {mirrored_disk}/{leg}"))
            })?;
        let lost = l.chunk;
        let mut changes = Changes::default();
        self.jobs_lose(|c| c == lost, &mut changes);
        // A lost move target is gone with its extra slot (moves.rs).
        let Some(l) = self.volumes[&id].mirrored_disks[mirrored_disk as usize]
            .legs
            .get(usize::from(leg))
            .filter(|l| l.chunk == lost)
        else {
            return Ok(self.commit(changes));
        };
        if l.state != LegState::Failed {
            let v = self.volumes.get_mut(&id).expect("exists");
            v.mirrored_disks[mirrored_disk as usize].legs[usize::from(leg)].fail();
            changes.volumes.insert(id);
            self.repairs_pending = true;
        }
        Ok(self.commit(changes))
    }

    /// A failed leg whose server came back within its grace period, with
    /// the leg's chunk intact: the leg is active again, and its head re-adds
    /// it to the running mirror, which then resyncs only the regions written
    /// while it was away (dm-raid's write-intent bitmap). Refused once the
    /// slot has a replacement, or when the leg's disk or server failed.
    pub fn leg_returned(
        &mut self,
        volume: VolumeId,
        mirrored_disk: u32,
        leg: u8,
    ) -> Result<Changes, ModelError> {
        let v = self
            .volumes
            .get(&volume)
            .ok_or_else(|| not_found("volume", "volume", volume.0))?;
        let l = v
            .mirrored_disks
            .get(mirrored_disk as usize)
            .and_then(|m| m.legs.get(usize::from(leg)))
            .ok_or_else(|| {
                ModelError::invalid(
                    "leg",
                    format!("{} has no leg {mirrored_disk}/{leg}", v.name),
                )
            })?;
        if l.state != LegState::Failed {
            return Ok(Changes::default());
        }
        if l.never_synced {
            return Err(ModelError::Conflict(format!(
                "leg {mirrored_disk}/{leg} of '{}' failed before it was in sync; it is replaced, not revived",
                v.name
            )));
        }
        if self.repairs.contains_key(&(volume, mirrored_disk, leg)) {
            return Err(ModelError::Conflict(format!(
                "leg {mirrored_disk}/{leg} of '{}' is being replaced already",
                v.name
            )));
        }
        let disk = self.disk(l.chunk.disk)?;
        let server_failed = self
            .server(disk.server)
            .is_none_or(|s| s.state == ServerState::Failed);
        if disk.state == DiskState::Failed || server_failed {
            return Err(ModelError::Conflict(format!(
                "the disk or server of leg {mirrored_disk}/{leg} of '{}' failed; it is replaced, not revived",
                v.name
            )));
        }
        self.volumes
            .get_mut(&volume)
            .expect("exists")
            .mirrored_disks[mirrored_disk as usize]
            .legs[usize::from(leg)]
        .state = LegState::Active;
        let mut changes = Changes::default();
        changes.volumes.insert(volume);
        Ok(self.commit(changes))
    }

    /// Failed legs on `server`'s serving disks that nothing replaces yet:
    /// the candidates for [`Self::leg_returned`] when the server is back.
    pub fn failed_legs_on(&self, server: ServerId) -> Vec<(VolumeId, u32, u8, ChunkRef)> {
        self.disks_of(server)
            .filter(|d| d.state != DiskState::Failed)
            .flat_map(|d| {
                self.legs_on_disk(d.id)
                    .map(move |(index, a)| (a, ChunkRef { disk: d.id, index }))
            })
            .filter(|(a, _)| {
                self.volumes[&a.volume].mirrored_disks[a.mirrored_disk as usize].legs
                    [usize::from(a.leg)]
                .state
                    == LegState::Failed
                    && !self.volumes[&a.volume].mirrored_disks[a.mirrored_disk as usize].legs
                        [usize::from(a.leg)]
                    .never_synced
                    && !self
                        .repairs
                        .contains_key(&(a.volume, a.mirrored_disk, a.leg))
            })
            .map(|(a, c)| (a.volume, a.mirrored_disk, a.leg, c))
            .collect()
    }

    // ---- groups and descriptive data ---------------------------------------

    /// Creates a group. Creating it again with the same uuid is a no-op, so
    /// a retried SR.create does not fail.
    pub fn create_group(&mut self, group: Group) -> Result<Changes, ModelError> {
        ids::validate_name("group name", &group.name)?;
        validate_display_name(&group.display_name)?;
        ids::validate_description(&group.description)?;
        if let Some(u) = &group.uuid {
            validate_uuid("group uuid", u)?;
        }
        if let Some(existing) = self.groups.get(&group.name) {
            if existing.uuid.is_some() && existing.uuid == group.uuid {
                return Ok(Changes::default());
            }
            return Err(ModelError::AlreadyExists {
                kind: "group",
                key: group.name,
            });
        }
        let mut changes = Changes::default();
        changes.groups.insert(group.name.clone());
        self.groups.insert(group.name.clone(), group);
        Ok(self.commit(changes))
    }

    pub fn update_group(&mut self, name: &str, update: GroupUpdate) -> Result<Changes, ModelError> {
        self.group(name)?;
        if let Some(d) = &update.display_name {
            validate_display_name(d)?;
        }
        if let Some(d) = &update.description {
            ids::validate_description(d)?;
        }
        let group = self.groups.get_mut(name).expect("checked");
        let mut changes = Changes::default();
        if let Some(d) = update.display_name
            && d != group.display_name
        {
            group.display_name = d;
            changes.groups.insert(name.to_string());
        }
        if let Some(d) = update.description
            && d != group.description
        {
            group.description = d;
            changes.groups.insert(name.to_string());
        }
        Ok(self.commit(changes))
    }

    /// Deletes an empty group.
    pub fn delete_group(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.group(name)?;
        let volumes = self.volumes_in(name).count();
        if volumes > 0 {
            return Err(ModelError::Conflict(format!(
                "group '{name}' still holds {volumes} volumes; delete them first"
            )));
        }
        self.groups.remove(name);
        let mut changes = Changes::default();
        changes.groups.insert(name.to_string());
        Ok(self.commit(changes))
    }

    /// Changes a volume's display name, description or keys.
    pub fn update_volume_meta(
        &mut self,
        name: &str,
        update: VolumeMetaUpdate,
    ) -> Result<Changes, ModelError> {
        let id = self.volume_by_name(name)?.id;
        if let Some(d) = &update.display_name {
            validate_display_name(d)?;
        }
        if let Some(d) = &update.description {
            ids::validate_description(d)?;
        }
        let mut meta = self.volumes[&id].meta.clone();
        if let Some(d) = update.display_name {
            meta.display_name = Some(d);
        }
        if let Some(d) = update.description {
            meta.description = d;
        }
        meta.keys.extend(update.set_keys);
        for k in &update.unset_keys {
            meta.keys.remove(k);
        }
        self.validate_meta(&meta)?;
        let mut changes = Changes::default();
        let volume = self.volumes.get_mut(&id).expect("exists");
        if volume.meta != meta {
            volume.meta = meta;
            changes.volumes.insert(id);
        }
        Ok(self.commit(changes))
    }

    fn validate_meta(&self, meta: &VolumeMeta) -> Result<(), ModelError> {
        if let Some(g) = &meta.group {
            self.group(g)?;
        }
        if let Some(d) = &meta.display_name {
            validate_display_name(d)?;
        }
        ids::validate_description(&meta.description)?;
        if meta.keys.len() > limits::VOLUME_KEYS_MAX {
            return Err(ModelError::invalid(
                "keys",
                format!("at most {} per volume", limits::VOLUME_KEYS_MAX),
            ));
        }
        for (k, v) in &meta.keys {
            if k.is_empty()
                || k.len() > limits::VOLUME_KEY_LEN_MAX
                || v.len() > limits::VOLUME_KEY_VALUE_LEN_MAX
                || k.chars().any(char::is_control)
            {
                return Err(ModelError::invalid(
                    "key",
                    format!(
                        "keys are 1..={} bytes without control characters, values at most {} bytes",
                        limits::VOLUME_KEY_LEN_MAX,
                        limits::VOLUME_KEY_VALUE_LEN_MAX
                    ),
                ));
            }
        }
        Ok(())
    }

    // ---- internals -------------------------------------------------------

    /// Rounds a requested size and computes how many mirrored disks hold it.
    fn layout_for(
        &self,
        size_bytes: u64,
        stripe: Option<&Stripe>,
    ) -> Result<(u64, u64), ModelError> {
        if size_bytes == 0 {
            return Err(ModelError::invalid("size", "must be greater than zero"));
        }
        let per_chunk = self.settings.data_bytes_per_chunk();
        let too_big = || {
            ModelError::invalid(
                "size",
                format!(
                    "{size_bytes} bytes needs more than {} mirrored disks; use a bigger chunk size",
                    limits::MIRRORED_DISKS_PER_VOLUME_MAX
                ),
            )
        };
        let (size, count) = match stripe {
            None => {
                let size = size_bytes
                    .checked_next_multiple_of(limits::VOLUME_BLOCK_BYTES)
                    .ok_or_else(too_big)?;
                (size, size.div_ceil(per_chunk))
            }
            Some(s) => {
                if !(2..=limits::STRIPE_WIDTH_MAX).contains(&s.width) {
                    return Err(ModelError::invalid(
                        "stripe width",
                        format!("must be 2..={}", limits::STRIPE_WIDTH_MAX),
                    ));
                }
                if !s.unit_bytes.is_power_of_two()
                    || !(limits::STRIPE_UNIT_BYTES_MIN..=limits::STRIPE_UNIT_BYTES_MAX)
                        .contains(&s.unit_bytes)
                    || !per_chunk.is_multiple_of(s.unit_bytes)
                {
                    return Err(ModelError::invalid(
                        "stripe unit",
                        format!(
                            "must be a power of two from {} to {} bytes that divides the {per_chunk}-byte data area of a chunk",
                            limits::STRIPE_UNIT_BYTES_MIN,
                            limits::STRIPE_UNIT_BYTES_MAX
                        ),
                    ));
                }
                let row = u64::from(s.width) * s.unit_bytes;
                let size = size_bytes
                    .checked_next_multiple_of(row)
                    .ok_or_else(too_big)?;
                let per_column = size / u64::from(s.width);
                (size, per_column.div_ceil(per_chunk) * u64::from(s.width))
            }
        };
        if count > limits::MIRRORED_DISKS_PER_VOLUME_MAX {
            return Err(too_big());
        }
        Ok((size, count))
    }

    /// Allocates `count` mirrored disks for `volume`, numbered from `first`.
    /// On failure every chunk taken is given back: nothing stays allocated.
    fn allocate(
        &mut self,
        volume: &Volume,
        count: u64,
        first: u64,
        secrets: &mut dyn SecretSource,
    ) -> Result<Vec<MirroredDisk>, ModelError> {
        let class = volume.class.as_deref();
        let needed = count * u64::from(volume.replicas);
        let free = self.index.free_chunks(class);
        let class_note = class
            .map(|c| format!(" of class '{c}'"))
            .unwrap_or_default();
        if needed > free {
            return Err(ModelError::NotEnoughChunks {
                needed,
                free,
                class: class_note,
            });
        }
        let near_server = volume
            .near_server
            .or(volume.attachment.as_ref().map(|a| a.head));
        let near = near_server
            .and_then(|id| self.servers.get(&id))
            .map(|s| Near {
                server: s.id,
                domain: s.failure_domain(&self.settings.failure_domain_label),
            });
        let mut taken: Vec<ChunkRef> = Vec::with_capacity(needed as usize);
        let mut mirrored: Vec<Vec<ChunkRef>> = Vec::with_capacity(count as usize);
        for m in 0..count {
            let picked = self
                .index
                .pick(volume.replicas, class, near.as_ref(), &self.partners);
            let Some(disks) = picked else {
                let eligible = self.index.eligible_servers(class);
                for legs in &mirrored {
                    self.link_pairs(legs, false);
                }
                self.give_back(&taken);
                return Err(if eligible < usize::from(volume.replicas) {
                    ModelError::NotEnoughServers {
                        replicas: volume.replicas,
                        eligible,
                        class: class_note,
                    }
                } else {
                    ModelError::NotEnoughChunks {
                        needed,
                        free,
                        class: class_note,
                    }
                });
            };
            let mut legs = Vec::with_capacity(disks.len());
            for (l, disk) in disks.into_iter().enumerate() {
                let addr = LegAddr {
                    volume: volume.id,
                    mirrored_disk: (first + m) as u32,
                    leg: l as u8,
                };
                let index = self.take_chunk(disk, addr);
                let chunk = ChunkRef { disk, index };
                taken.push(chunk);
                legs.push(chunk);
            }
            self.link_pairs(&legs, true);
            mirrored.push(legs);
        }
        // Secrets are drawn only once the allocation stands.
        Ok(mirrored
            .into_iter()
            .map(|legs| MirroredDisk {
                last_scrub_unix_s: None,
                legs: legs
                    .into_iter()
                    .map(|chunk| Leg {
                        chunk,
                        state: LegState::Active,
                        export_name: secrets.export_secret(),
                        never_synced: false,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Counts (or with `add` false, uncounts) every pair of the legs of one
    /// mirrored disk in the partner counts.
    pub(super) fn link_pairs(&mut self, legs: &[ChunkRef], add: bool) {
        let legs: Vec<(DiskId, ServerId)> = legs
            .iter()
            .map(|c| (c.disk, self.disks[&c.disk].server))
            .collect();
        self.partners.link(&legs, add);
    }

    /// Takes the lowest free chunk of an indexed disk for the leg at
    /// `addr`, keeping the allocation index current.
    fn take_chunk(&mut self, disk: DiskId, addr: LegAddr) -> u32 {
        let rt = self
            .runtime
            .get_mut(&disk)
            .expect("indexed disks have runtime");
        let index = rt
            .free
            .take_lowest()
            .expect("indexed disks have a free chunk");
        rt.used.insert(index, addr);
        self.reindex(disk);
        index
    }

    fn give_back(&mut self, chunks: &[ChunkRef]) {
        for c in chunks {
            let rt = self
                .runtime
                .get_mut(&c.disk)
                .expect("taken from a known disk");
            rt.used.remove(&c.index);
            assert!(rt.free.give_back(c.index));
            self.reindex(c.disk);
        }
    }

    fn fail_legs_on(&mut self, disk: DiskId, changes: &mut Changes) {
        self.jobs_lose_disk(disk, changes);
        let addrs: Vec<LegAddr> = self.runtime[&disk].used.values().copied().collect();
        for a in addrs {
            let v = self
                .volumes
                .get_mut(&a.volume)
                .expect("used chunks belong to volumes");
            let leg = &mut v.mirrored_disks[a.mirrored_disk as usize].legs[usize::from(a.leg)];
            if leg.state != LegState::Failed {
                leg.fail();
                changes.volumes.insert(a.volume);
                self.repairs_pending = true;
            }
        }
    }

    fn drop_disk(&mut self, id: DiskId) {
        self.index.set(id, None);
        self.runtime.remove(&id);
        let disk = self.disks.remove(&id).expect("dropping a known disk");
        if let Some(set) = self.disks_by_server.get_mut(&disk.server) {
            set.remove(&id);
        }
        self.reindex_server(disk.server);
    }

    /// Brings a disk's allocation-index entry up to date.
    fn reindex(&mut self, id: DiskId) {
        let disk = &self.disks[&id];
        let server = &self.servers[&disk.server];
        let rt = &self.runtime[&id];
        // A draining disk or server serves its legs but takes no new ones.
        let eligible = disk.state == DiskState::Online
            && server.state == ServerState::Online
            && !disk.draining
            && !server.draining;
        let entry = eligible.then(|| DiskEntry {
            disk: id,
            server: server.id,
            domain: server.failure_domain(&self.settings.failure_domain_label),
            class: disk.class.clone(),
            legs: rt.used.len() as u64,
            free_chunks: rt.free.len(),
        });
        self.index.set(id, entry);
    }

    /// Re-indexes every disk of a server (its state or domain changed).
    fn reindex_server(&mut self, server: ServerId) {
        let disks: Vec<DiskId> = self
            .disks_by_server
            .get(&server)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for id in disks {
            self.reindex(id);
        }
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

    /// Checks every invariant from scratch (tests and the simulator call
    /// this after each step; it is O(cluster)).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for v in self.volumes.values() {
            if self.volume_names.get(&v.name) != Some(&v.id) {
                return Err(format!("volume name index broken for {}", v.name));
            }
            // Nothing writes a releasing volume's chunks but its head.
            if v.attachment.as_ref().is_some_and(|a| a.is_releasing())
                && let Some(job) = self
                    .jobs
                    .values()
                    .find(|j| j.volume == v.id && j.state == recovery::JobState::Running)
            {
                return Err(format!("{} runs on releasing volume {}", job.id, v.name));
            }
            if v.attachment.as_ref().is_some_and(|a| a.is_releasing())
                && self.scrubs.has_run_of(v.id)
            {
                return Err(format!("a scrub runs on releasing volume {}", v.name));
            }
            for (m, md) in v.mirrored_disks.iter().enumerate() {
                let moving = usize::from(self.move_of(v.id, m as u32).is_some());
                if md.legs.len() != usize::from(v.replicas) + moving {
                    return Err(format!(
                        "{} mirrored disk {m} has {} legs",
                        v.name,
                        md.legs.len()
                    ));
                }
                let mut servers = BTreeSet::new();
                // A move's new leg may share the moving leg's server (a
                // disk drained onto its server's other disks): the old leg
                // leaves when the move ends.
                let moving_from = self.move_of(v.id, m as u32).and_then(|j| match j.kind {
                    recovery::JobKind::Move { from, .. } => Some(from),
                    recovery::JobKind::Repair => None,
                });
                for (l, leg) in md.legs.iter().enumerate() {
                    if !seen.insert(leg.chunk) {
                        return Err(format!("chunk {:?} used twice", leg.chunk));
                    }
                    let disk = self
                        .disks
                        .get(&leg.chunk.disk)
                        .ok_or("leg on missing disk")?;
                    let leaving = moving_from.is_some_and(|from| usize::from(from) == l);
                    if !leaving && !servers.insert(disk.server) {
                        return Err(format!(
                            "{} mirrored disk {m} has two legs on one server",
                            v.name
                        ));
                    }
                    let rt = &self.runtime[&disk.id];
                    let want = LegAddr {
                        volume: v.id,
                        mirrored_disk: m as u32,
                        leg: l as u8,
                    };
                    if rt.used.get(&leg.chunk.index) != Some(&want)
                        || rt.free.contains(leg.chunk.index)
                    {
                        return Err(format!("chunk owner index broken for {:?}", leg.chunk));
                    }
                }
            }
        }
        for disk in self.disks.values() {
            let rt = &self.runtime[&disk.id];
            let total = rt.free.len() + rt.used.len() as u64 + disk.releasing.len() as u64;
            if total != u64::from(disk.chunk_count) {
                return Err(format!(
                    "{} chunk accounting: {total} != {}",
                    disk.id, disk.chunk_count
                ));
            }
            if disk
                .releasing
                .keys()
                .any(|i| rt.free.contains(*i) || rt.used.contains_key(i))
            {
                return Err(format!(
                    "{} has a releasing chunk that is also free or used",
                    disk.id
                ));
            }
            if let Some(i) =
                (rt.used.keys().chain(disk.releasing.keys())).find(|&&i| i >= disk.chunk_count)
            {
                return Err(format!("{} accounts for chunk {i} beyond its end", disk.id));
            }
            if let Some((i, r)) = disk.releasing.iter().find(|(_, r)| **r >= self.next_id) {
                return Err(format!(
                    "{} chunk {i} has release id {r}, not yet drawn",
                    disk.id
                ));
            }
        }
        // The pool's capacity adds up too, whatever has failed.
        let s = self.summary();
        if s.free_bytes + s.used_bytes + s.releasing_bytes != s.capacity_bytes {
            return Err(format!(
                "capacity {} != free {} + used {} + releasing {}",
                s.capacity_bytes, s.free_bytes, s.used_bytes, s.releasing_bytes
            ));
        }
        let chunk = self.settings.chunk_size_bytes;
        let raw: u64 = self
            .disks
            .values()
            .map(|d| u64::from(d.chunk_count) * chunk)
            .sum();
        if s.capacity_bytes + s.unavailable_bytes != raw {
            return Err(format!(
                "capacity {} + unavailable {} != all disks' chunks {raw}",
                s.capacity_bytes, s.unavailable_bytes
            ));
        }
        let mut partners = Partners::default();
        for md in self.volumes.values().flat_map(|v| &v.mirrored_disks) {
            let legs: Vec<(DiskId, ServerId)> = md
                .legs
                .iter()
                .map(|l| (l.chunk.disk, self.disks[&l.chunk.disk].server))
                .collect();
            partners.link(&legs, true);
        }
        if partners != self.partners {
            return Err("partner-pair counts differ from the volumes' legs".into());
        }
        let used: usize = self.runtime.values().map(|r| r.used.len()).sum();
        if used != seen.len() {
            return Err(format!(
                "{used} chunks marked used but {} legs exist",
                seen.len()
            ));
        }
        Ok(())
    }
}
