//! The bodies of the agents' endpoints: registration, the heartbeat (what
//! an agent observed) and the desired state (what the manager wants each
//! agent to hold).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{LayerSpec, LegState, Stripe};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDisk {
    pub path: String,
    /// 0 when the agent cannot read it (see `problem`).
    pub size_bytes: u64,
    #[serde(default)]
    pub class: Option<String>,
    /// The label the agent read in the disk's header; absent for a blank
    /// disk (or from an agent older than labels).
    #[serde(default)]
    pub label: Option<DiskLabel>,
    /// Why the agent cannot use this disk (cannot open it, a corrupt label,
    /// foreign data in its header). The manager fails the disk it has at
    /// this path, if any; the agent serves its other disks.
    #[serde(default)]
    pub problem: Option<String>,
}

/// A disk's on-disk label: whose disk it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskLabel {
    pub cluster_id: String,
    pub disk_id: u64,
    pub server: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    pub server: String,
    /// `host:port` where this agent serves NBD.
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub disks: Vec<AgentDisk>,
    /// The agent runs with `--storage-only`: it serves its chunks but
    /// cannot assemble volumes, so the manager refuses to attach volumes
    /// to this server. Absent (false) from agents before the role was
    /// reported.
    #[serde(default)]
    pub storage_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegisteredDisk {
    pub id: u64,
    pub path: String,
    pub chunk_count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentRegistered {
    pub server_id: u64,
    pub chunk_size_bytes: u64,
    pub leg_meta_bytes: u64,
    pub disk_header_bytes: u64,
    /// The disks the agent serves.
    pub disks: Vec<RegisteredDisk>,
    /// The cluster's id, which the agent writes into the labels of blank
    /// disks.
    #[serde(default)]
    pub cluster_id: String,
    /// The disks the agent must not touch, each with the reason and what
    /// to do.
    #[serde(default)]
    pub refused_disks: Vec<RefusedDisk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RefusedDisk {
    pub path: String,
    /// The manager's disk at this path, now failed, if it has one.
    #[serde(default)]
    pub disk_id: Option<u64>,
    pub reason: String,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ChunkId {
    pub disk_id: u64,
    pub index: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailedLeg {
    pub volume: String,
    pub mirrored_disk: u32,
    pub leg: u8,
    /// The chunk the failed device imported. A slot gets a new chunk when
    /// its leg is replaced, so the manager drops a report about a chunk the
    /// slot no longer holds (the kernel may still list the old, dead device
    /// there until the replacement goes in).
    #[serde(default)]
    pub chunk: Option<ChunkId>,
}

/// How far a resync this agent executes has got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResyncReport {
    /// The job id (`LegSpec::resync_job` or `CopySpec::job`).
    pub job: u64,
    pub bytes_done: u64,
    /// The replacement leg holds all the data: the leg becomes active.
    #[serde(default)]
    pub done: bool,
    /// The copy failed for good (set instead of `done`); the manager fails
    /// the job and plans a new replacement.
    #[serde(default)]
    pub error: Option<String>,
    /// Set with `error` when a copy could not read its source leg (it was
    /// unreachable, or returned read errors): that leg's chunk. The
    /// manager then starts the copy again from another healthy leg,
    /// keeping the target, instead of replacing the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_source: Option<ChunkId>,
}

/// What an agent observed since its last heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub server: String,
    /// Freed chunks this agent has wiped for a `WipeSpec` without a
    /// release id (`release` 0: a manager from before release ids, or a
    /// chunk freed before them). A chunk freed since is freed only by a
    /// report in `wiped` naming its release, so such reports from older
    /// agents leave it releasing until the agent is upgraded.
    #[serde(default)]
    pub wiped_chunks: Vec<ChunkId>,
    /// Freed chunks this agent has wiped, each with the `release` of the
    /// `WipeSpec` it acted on (they become free if that is still the
    /// chunk's current release). Left out when empty, so that managers
    /// from before release ids accept the heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wiped: Vec<WipedChunk>,
    /// Legs of volumes this agent heads whose I/O failed.
    #[serde(default)]
    pub failed_legs: Vec<FailedLeg>,
    /// Progress of the resyncs this agent executes.
    #[serde(default)]
    pub resyncs: Vec<ResyncReport>,
    /// Scrubs this agent finished (the manager's `ScrubSpec`s, `scrub`
    /// set).
    #[serde(default)]
    pub scrubs: Vec<ScrubReport>,
    /// The volumes this agent has assembled now (or is assembling); empty
    /// for a storage-only agent. A volume being released whose name is
    /// missing here is released: its attachment ends. `None` (an agent
    /// from before two-phase detach) means unknown, and the manager then
    /// ends this server's releasing attachments at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assembled: Option<Vec<String>>,
    /// The size of each volume device this head serves now. A grow of an
    /// attached volume is done once its head serves the new size. Left
    /// out when empty, so that managers from before online resize accept
    /// the heartbeat of a head with nothing assembled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served: Vec<ServedVolume>,
    /// Old tops (layers, `_L<id>`) this head has switched its thin volumes
    /// off, onto the new tops their snapshots gave them: it no longer
    /// writes them, and the snapshots are ready. Left out when empty, for
    /// older managers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switched: Vec<String>,
    /// The pools of the layers this head writes, as the kernel counts
    /// them: the manager grows a pool that fills. Left out when empty, for
    /// older managers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolReport>,
}

/// A thin pool as its head's kernel counts it (`dmsetup status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolReport {
    /// The layer (`_L<id>`) whose pool it is.
    pub layer: String,
    /// Pool blocks (`block_sectors` each) mapped, and in the pool.
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// Metadata blocks (4 KiB) used, and in the pool.
    pub used_meta_blocks: u64,
    pub total_meta_blocks: u64,
    /// The kernel holds writes to unmapped blocks: no data space left.
    #[serde(default)]
    pub out_of_data_space: bool,
}

/// A volume device as a head serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServedVolume {
    pub volume: String,
    /// The size of `/dev/mapper/vsky-<volume>` on the head.
    pub size_bytes: u64,
}

/// A freed chunk wiped for one release of it (`WipeSpec::release`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct WipedChunk {
    pub chunk: ChunkId,
    pub release: u64,
}

/// A finished scrub of one mirrored disk: its legs were read and compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrubReport {
    pub volume: String,
    pub mirrored_disk: u32,
    /// Sectors whose copies differ (dm-raid's mismatch count, or the
    /// 512-byte sectors of the data area where the legs that could be read
    /// disagree); 0 when the legs agree.
    pub mismatched_sectors: u64,
    /// The scrub the manager asked for (`ScrubSpec::scrub`). The report is
    /// sent with every heartbeat until the manager stops listing the scrub.
    /// Agents that checked their mirrors on their own timer left it out;
    /// such a report only adds an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<u64>,
    /// Legs (slots of the mirrored disk) that returned read errors; the
    /// manager fails them, and they are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable_legs: Vec<u8>,
    /// The scrub could not be done (a leg stayed unreachable); set instead
    /// of a verdict. The manager tries again later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An agent attaching a volume to (or detaching it from) its own server, on
/// behalf of a local caller such as the SMAPIv3 datapath plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentAttachment {
    pub server: String,
    pub volume: String,
    /// A read-only attach: a snapshot gets this server as one of its
    /// readers, any other volume is attached to it as for a write.
    /// Ignored on a detach.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// The desired-state generation; when it differs from the one the agent
    /// holds, it should fetch the desired state again.
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportSpec {
    /// Secret NBD export name of the leg using this chunk.
    pub export_name: String,
    pub chunk: ChunkId,
    pub disk_path: String,
    pub offset_bytes: u64,
    pub size_bytes: u64,
    /// If set, the export refuses writes past this byte (`EPERM`), also on
    /// connections already open: the leg of a frozen snapshot layer, whose
    /// data nothing may change; its metadata area in front stays writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WipeSpec {
    pub chunk: ChunkId,
    /// Which release of the chunk this is: each time a chunk is freed it
    /// gets a new id, and the agent wipes it once per id and reports the
    /// wipe with it (`Heartbeat::wiped`). 0 (or absent) names a chunk
    /// freed before release ids; report it in `wiped_chunks`.
    #[serde(default)]
    pub release: u64,
    pub disk_path: String,
    pub offset_bytes: u64,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LegSpec {
    pub chunk: ChunkId,
    pub server: String,
    /// `host:port` of the storage agent exporting the chunk.
    pub server_address: String,
    pub export_name: String,
    /// Set when the chunk is on the head's own disk (map it directly).
    pub local_disk_path: Option<String>,
    pub offset_bytes: u64,
    pub state: LegState,
    /// Set on a `syncing` leg whose resync runs now, with this head as its
    /// executor: put the leg into the running mirror as a new member and
    /// report progress under this job id. A `syncing` leg without it waits
    /// for its turn (the scheduler limits resyncs per disk) and is left
    /// out of the mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_job: Option<u64>,
}

/// A resync of a detached volume's leg, run by the storage agent that holds
/// the new chunk: it reads the data area from a healthy leg over NBD and
/// writes it into its own chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CopySpec {
    pub job: u64,
    /// The healthy leg to read (its server and secret export name).
    pub source: LegSpec,
    /// The new chunk, on this agent's disk.
    pub target_chunk: ChunkId,
    pub target_disk_path: String,
    pub target_offset_bytes: u64,
    /// Bytes at the start of each chunk that hold the mirror's metadata:
    /// not copied (the metadata belongs to one leg slot).
    pub leg_meta_bytes: u64,
    pub chunk_size_bytes: u64,
    /// Copy no faster than this (0: no limit).
    pub rate_bytes_per_second: u64,
}

/// How a scrub reads and compares the legs of its mirrored disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScrubMethod {
    /// The volume is attached to this agent: run dm-raid's `check` on the
    /// mirror it assembled (md reads and compares every leg).
    RaidCheck,
    /// The volume is detached and this agent holds its first leg: read the
    /// data area of every leg (its own in place, the others over NBD under
    /// their secret export names) and compare them.
    #[default]
    CompareLegs,
}

/// A scrub of a mirrored disk this agent runs, scheduled by the manager
/// under the per-disk limit with the resyncs. The agent reports a
/// `ScrubReport` with this `scrub` id, with every heartbeat until the
/// manager stops listing it; a scrub that is no longer listed is stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScrubSpec {
    pub scrub: u64,
    /// Absent from managers that scrubbed detached volumes only.
    #[serde(default)]
    pub method: ScrubMethod,
    pub volume: String,
    pub mirrored_disk: u32,
    /// Every leg, in slot order (`unreadable_legs` names these slots).
    pub legs: Vec<LegSpec>,
    /// Bytes at the start of each chunk that hold the mirror's metadata:
    /// not compared (each slot's superblock and bitmap differ).
    pub leg_meta_bytes: u64,
    pub chunk_size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
    pub stripe: Option<Stripe>,
    pub chunk_size_bytes: u64,
    pub leg_meta_bytes: u64,
    /// A thick volume's mirrored disks; empty for a thin volume.
    pub mirrored_disks: Vec<Vec<LegSpec>>,
    /// A thin volume's layers, its top first, each reading what it has not
    /// written from the next; absent for a thick volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<LayerSpec>,
    /// A snapshot this agent reads (a read-only attachment): every layer
    /// of its chain in base form, and its device read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// Everything one agent must do: chunks to export, freed chunks to wipe,
/// volumes to assemble.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredState {
    pub generation: u64,
    pub exports: Vec<ExportSpec>,
    pub wipes: Vec<WipeSpec>,
    pub volumes: Vec<VolumeSpec>,
    /// Resyncs of detached volumes this agent copies.
    #[serde(default)]
    pub copies: Vec<CopySpec>,
    /// Scrubs this agent runs: checks of the mirrors it heads, and
    /// comparisons of detached volumes' legs.
    #[serde(default)]
    pub scrubs: Vec<ScrubSpec>,
    /// The per-leg resync rate limit of the cluster (0: no limit). Heads
    /// apply it to dm-raid recovery, storage agents to copies and scrubs.
    #[serde(default)]
    pub resync_rate_bytes_per_second: u64,
}
