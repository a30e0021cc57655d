//! Request and response bodies of REST API v1.
//!
//! Sizes are bytes (u64) everywhere; states are lower-case strings. Request
//! bodies deny unknown fields so that a misspelt option is an error, not a
//! silently ignored wish.
//!
//! The agents' endpoints (registration, heartbeat, desired state) have
//! their bodies in `types/agent.rs`, thin volumes' chains in
//! `types/chains.rs`; everything is re-exported here, so the wire format
//! is one module to its users.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod agent;
mod chains;
pub use agent::*;
pub use chains::*;

/// Every error answer: a stable machine `code` to match on and a `message`
/// for people, which says what to do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `invalid_argument`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `already_exists`, `conflict`,
    /// `attached_elsewhere`,
    /// `not_enough_servers`, `not_enough_space`, `payload_too_large`,
    /// `unsupported_media_type`, `request_timeout`, `uri_too_long`,
    /// `headers_too_large`, `shutting_down`, `store_unavailable`,
    /// `store_corrupt`,
    /// `not_leader`, `internal`.
    pub code: String,
    pub message: String,
    /// The request id, also in the `x-request-id` header and the logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// With `not_leader` (HTTP 503): the URL of the manager that leads, when
    /// one does; also in the `x-vsky-leader` header. Send the request there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the manager answers.
    pub status: String,
    pub version: String,
    /// `single` (embedded store, always writable), `leader` or `standby`
    /// (several managers on etcd; a standby answers reads only).
    #[serde(default)]
    pub role: String,
    /// The leading manager's URL, when known (for a standby: where writes
    /// go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSummary {
    /// This cluster's identity, carried by every disk label.
    #[serde(default)]
    pub cluster_id: String,
    pub servers: usize,
    pub servers_failed: usize,
    pub disks: usize,
    pub disks_failed: usize,
    pub chunk_size_bytes: u64,
    /// Legs per mirrored disk of a volume created without `replicas`.
    pub default_replicas: u8,
    /// Chunk bytes on serving disks (online disks of online servers):
    /// always `free_bytes + used_bytes + releasing_bytes`.
    pub capacity_bytes: u64,
    /// Chunk bytes free for new legs.
    pub free_bytes: u64,
    /// Chunk bytes used by legs on serving disks.
    pub used_bytes: u64,
    /// Chunk bytes on serving disks freed (by deleted volumes, replaced or
    /// moved legs), awaiting their wipe.
    pub releasing_bytes: u64,
    /// Chunk bytes on disks that cannot serve (failed disks, disks of
    /// failed servers), whatever they hold; not part of the capacity.
    #[serde(default)]
    pub unavailable_bytes: u64,
    /// Volumes and snapshots.
    pub volumes: usize,
    pub volumes_attached: usize,
    /// The sizes of the writable volumes, thick and thin: what users were
    /// promised. Thin volumes take chunks as they are written, so this may
    /// exceed the usable capacity (`capacity_bytes` over the replicas):
    /// over-commit.
    #[serde(default)]
    pub provisioned_bytes: u64,
    /// Usable bytes the pools of thin volumes, their snapshots and clones
    /// hold now.
    #[serde(default)]
    pub thin_allocated_bytes: u64,
    pub mirrored_disks: usize,
    /// Mirrored disks with a failed leg.
    pub mirrored_disks_degraded: usize,
    /// Mirrored disks with a leg resyncing.
    pub mirrored_disks_rebuilding: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Online,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Server {
    pub id: u64,
    pub name: String,
    /// `host:port` of the server's agent.
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub state: ServerState,
    pub disks: usize,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub legs: u64,
    /// An admin asked for the server to be emptied: it keeps serving its
    /// legs, takes no new chunks, and its legs are moved to other servers
    /// (`POST /api/v1/servers/{name}/drain`).
    #[serde(default)]
    pub draining: bool,
    /// Legs still on its disks (summed over them): while draining, what
    /// is left to move. The server can be removed once this is 0.
    #[serde(default)]
    pub legs_left: u64,
    /// Of those, legs whose move (drain or rebalance) is queued or
    /// running.
    #[serde(default)]
    pub legs_moving: u64,
    /// Its agent runs with `--storage-only` (as it said when it last
    /// registered): it serves chunks but cannot head volumes, so attaching
    /// one to it is refused.
    #[serde(default)]
    pub storage_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServer {
    pub name: String,
    /// `host:port` of the server's agent.
    pub address: String,
    /// Free-form labels; the `rack` label (by default) names the failure
    /// domain.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    Online,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Disk {
    pub id: u64,
    pub server: String,
    pub path: String,
    pub size_bytes: u64,
    pub class: Option<String>,
    pub state: DiskState,
    pub chunk_count: u32,
    pub legs: u64,
    pub free_chunks: u64,
    pub releasing_chunks: u64,
    /// The disk, or its server, is draining: it keeps serving its legs,
    /// takes no new chunks, and its legs are moved to other disks
    /// (`POST /api/v1/disks/{id}/drain`).
    #[serde(default)]
    pub draining: bool,
    /// Legs still on the disk: while draining, what is left to move. The
    /// disk can be removed once this is 0.
    #[serde(default)]
    pub legs_left: u64,
    /// Of those, legs whose move (drain or rebalance) is queued or
    /// running.
    #[serde(default)]
    pub legs_moving: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDisk {
    /// Name of the server that holds the disk.
    pub server: String,
    /// Block device or file path on that server.
    pub path: String,
    pub size_bytes: u64,
    /// Optional performance class (`ssd`, `nvme`, …).
    #[serde(default)]
    pub class: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stripe {
    /// Mirrored disks per stripe set (2..=64).
    pub width: u32,
    /// Stripe unit in bytes (a power of two, 4 KiB..=1 GiB).
    pub unit_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    /// Usable size; rounded up to 4 KiB (to whole stripe rows if striped).
    pub size_bytes: u64,
    /// Legs per mirrored disk (2..=9); the cluster default when omitted.
    #[serde(default)]
    pub replicas: Option<u8>,
    #[serde(default)]
    pub stripe: Option<Stripe>,
    /// Place every leg on disks of this class.
    #[serde(default)]
    pub class: Option<String>,
    /// Place legs near this server (the expected head) when possible.
    #[serde(default)]
    pub near_server: Option<String>,
    /// The group (XAPI SR) the volume belongs to; it must exist.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Free-form key/value metadata, stored and returned verbatim.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    #[serde(default)]
    pub sharable: bool,
    /// Thin: chunks are taken as data is written, not at create, and the
    /// volume can have snapshots and clones. Until pools grow as they
    /// fill, a thin volume holds at most one chunk's data less its pool
    /// metadata, and is not striped.
    #[serde(default)]
    pub thin: bool,
}

/// A change to a volume's descriptive data; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVolume {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Keys to add or overwrite.
    #[serde(default)]
    pub set_keys: BTreeMap<String, String>,
    /// Keys to remove (absent keys are ignored).
    #[serde(default)]
    pub unset_keys: Vec<String>,
}

/// A named group of volumes (an XAPI SR); groups share the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub name: String,
    pub uuid: Option<String>,
    pub display_name: String,
    pub description: String,
    pub volumes: usize,
    /// Sum of the sizes of its volumes.
    pub virtual_size_bytes: u64,
    /// Chunk bytes its volumes use, all replicas counted.
    pub physical_bytes: u64,
    pub mirrored_disks_degraded: usize,
    pub mirrored_disks_rebuilding: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    /// A UUID in 8-4-4-4-12 hex form (XAPI: the SR's uuid). Creating again
    /// with the same uuid succeeds without change.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeHealth {
    /// Every leg active.
    Healthy,
    /// Some leg is resyncing, none failed.
    Rebuilding,
    /// Some leg failed: redundancy is reduced.
    Degraded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: u64,
    pub name: String,
    pub size_bytes: u64,
    pub replicas: u8,
    pub stripe: Option<Stripe>,
    pub class: Option<String>,
    pub near_server: Option<String>,
    /// Head server the volume is attached to (also while it releases it).
    pub attached_to: Option<String>,
    /// Where the attachment is: `attached`, or `releasing` (a graceful
    /// detach waits for the head to tear its devices down; no other server
    /// may attach meanwhile). `None` when detached.
    #[serde(default)]
    pub attachment_state: Option<AttachmentState>,
    /// The size of the volume device on its head, as the head last
    /// reported it; below `size_bytes` while a grow is not applied there
    /// yet. `None` when detached or not reported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_bytes: Option<u64>,
    /// The servers that read this snapshot (read-only attachments, e.g. a
    /// backup's); empty for every other volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_on: Vec<String>,
    pub health: VolumeHealth,
    /// Thin (see `CreateVolume::thin`): its mirrored disks are those of
    /// the layers it reads (its own and those it shares with snapshots and
    /// clones), and the counts below cover them all.
    #[serde(default)]
    pub thin: bool,
    /// For a snapshot (read-only): the volume it was taken of, as named
    /// then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_of: Option<String>,
    /// For a snapshot: when it was taken, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_time_unix_s: Option<u64>,
    pub mirrored_disks: usize,
    pub mirrored_disks_degraded: usize,
    pub mirrored_disks_rebuilding: usize,
    /// Usable bytes held for this volume's own data: a thick volume's size
    /// (all of it, from create on); for a thin volume or a snapshot, the
    /// pool of its own layer, which grows as it is written (layers it
    /// shares with others are not counted here).
    #[serde(default)]
    pub allocated_bytes: u64,
    pub group: Option<String>,
    /// The display name, or the name when none was set.
    pub display_name: String,
    pub description: String,
    pub keys: BTreeMap<String, String>,
    pub sharable: bool,
}

/// The life of an attachment: attached → releasing → detached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentState {
    /// The head assembles the volume and may write it.
    Attached,
    /// A graceful detach is under way: the head tears its devices down, and
    /// the attachment ends once it reports them gone.
    Releasing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LegState {
    Active,
    Syncing,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Leg {
    pub server: String,
    pub disk_id: u64,
    pub disk_path: String,
    pub chunk_index: u32,
    /// Byte offset of the chunk on its disk.
    pub offset_bytes: u64,
    pub state: LegState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MirroredDisk {
    pub index: usize,
    pub legs: Vec<Leg>,
    /// When the manager's scrub patrol last finished reading and comparing
    /// this mirrored disk's legs (Unix seconds; by its head's dm-raid check
    /// or, while detached, by a storage agent); absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrub_unix_s: Option<u64>,
}

/// A volume with its full layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeDetail {
    #[serde(flatten)]
    pub volume: Volume,
    /// Bytes of volume data each mirrored disk carries.
    pub data_bytes_per_mirrored_disk: u64,
    pub layout: Vec<MirroredDisk>,
    /// A thin volume's or a snapshot's layers, its own first, then each
    /// one it reads from; empty for a thick volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolume {
    /// Name of the head server.
    pub server: String,
    /// Read-only: a snapshot is read on this server, alongside any others
    /// (`Volume::read_on`); any other volume is attached to it as for a
    /// write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// The optional body of a detach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachVolume {
    /// The fencing operation, for a head that is dead or cut off: end the
    /// attachment at once, whatever its state, without waiting for the
    /// head to tear its devices down. Every leg gets a new secret export
    /// name, so the storage agents cut the old head's connections and
    /// refuse its names. Without it (the default) the detach is graceful:
    /// the attachment is `releasing` until the head reports its devices
    /// gone.
    #[serde(default)]
    pub force: bool,
    /// End this server's read of a snapshot (`Volume::read_on`) instead.
    /// A snapshot read on several servers needs it (or `force`, which ends
    /// every read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// New size; must not be smaller than the current one.
    pub size_bytes: u64,
    /// For an attached volume: how long the answer waits for the head to
    /// serve the new size (504 if it has not by then; the grow goes on).
    /// 0 answers at once. Default and most: `GROW_APPLY_WAIT_SECONDS`
    /// (60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u64>,
}

/// Where a rebuild reads or writes: one chunk of one server's disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChunkLocation {
    /// The server's name (empty if the server has since been removed).
    pub server: String,
    pub disk_id: u64,
    pub chunk_index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    /// Waiting until its disks are free (each disk takes part in a bounded
    /// number of resyncs at a time).
    Queued,
    Running,
    Done,
    /// Gave up: a repair is planned again on another chunk; a move is
    /// abandoned (the leg stays where it was; a drain plans it again).
    Failed,
}

/// Why a resync job copies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildKind {
    /// A failed leg gets a new chunk.
    #[default]
    Repair,
    /// A healthy leg moves to a new chunk (drain or rebalance). The new
    /// leg syncs in an extra slot (the mirrored disk has one leg more
    /// than its replicas meanwhile), then takes the moving leg's slot and
    /// the old chunk is released: redundancy never drops.
    Move,
}

/// Why a leg moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// Its disk or server is draining.
    Drain,
    /// `POST /api/v1/pool/rebalance` moves it to a less full disk.
    Rebalance,
}

/// One resync job: a failed leg's replacement, or a moving leg's new
/// chunk, being filled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rebuild {
    pub id: u64,
    /// `repair` (a failed leg) or `move` (a healthy leg moving away).
    #[serde(default)]
    pub kind: RebuildKind,
    /// For a move: why it moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<MoveReason>,
    /// For a move: the slot of the leg moving away. The new chunk syncs
    /// in the extra slot `leg` and then takes this slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_leg: Option<u8>,
    /// The volume's name (`#<id>` if it was deleted since).
    pub volume: String,
    pub mirrored_disk: u32,
    /// The slot being filled (for a move: the extra slot, one past the
    /// replicas).
    pub leg: u8,
    pub state: RebuildState,
    /// The healthy leg copied from (chosen when the job starts).
    pub source: Option<ChunkLocation>,
    /// The new chunk being filled.
    pub target: ChunkLocation,
    /// The chunk it replaces: the failed one (repair), or the one moving
    /// away, released once the move is done (move).
    pub replaced: ChunkLocation,
    /// Who copies: the volume's head (dm-raid) when attached, else the
    /// storage agent holding the target chunk.
    pub executor: Option<String>,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Copy rate measured from progress reports since the job started, when
    /// known.
    pub rate_bytes_per_second: Option<f64>,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebuildList {
    pub queued: usize,
    pub running: usize,
    /// Jobs in id order: active ones, then (with `all=true`) recent
    /// finished ones.
    pub rebuilds: Vec<Rebuild>,
}

/// Moves a rebalance plans when the request does not say
/// (`RebalanceRequest::max_moves`).
pub const REBALANCE_MAX_MOVES_DEFAULT: u32 = 64;
/// The most moves one rebalance request may plan.
pub const REBALANCE_MAX_MOVES_MAX: u32 = 10_000;

/// Asks the manager to even out the pool: legs move from the fullest disks
/// (by the fraction of their chunks in use) to the emptiest, under the
/// placement rules. An empty body takes the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebalanceRequest {
    /// At most this many moves (1..=10000; 64 when omitted). Moves run
    /// under the same per-disk limit as rebuilds, repairs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_moves: Option<u32>,
}

/// One move a rebalance planned: a resync job (`/api/v1/rebuilds`, kind
/// `move`, reason `rebalance`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlannedMoveInfo {
    /// The job's id in `/api/v1/rebuilds`.
    pub rebuild: u64,
    pub volume: String,
    pub mirrored_disk: u32,
    pub from_disk: u64,
    pub from_server: String,
    pub to_disk: u64,
    pub to_server: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebalanceResponse {
    /// The moves planned, in order; empty when no move narrows the gap
    /// between the fullest and the emptiest disk.
    pub moves: Vec<PlannedMoveInfo>,
    /// Fill (fraction of chunks in use, 0..1) of the fullest disk that
    /// takes new chunks minus that of the emptiest, before these moves.
    pub fill_spread_before: f64,
}

/// One state change in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increases by one per event; pass the last one seen as `since`.
    pub seq: u64,
    /// Milliseconds since the Unix epoch (UTC).
    pub time_unix_ms: u64,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// Stable kind: `server_failed`, `server_silent`, `leg_failed`,
    /// `rebuild_queued`, `rebuild_started`, `rebuild_done`,
    /// `rebuild_failed`, `rebuild_source_failed`, `disk_failed`, `disk_refused`,
    /// `disk_draining`,
    /// `disk_drain_stopped`, `server_draining`, `server_drain_stopped`,
    /// `rebalance_planned`, `volume_created`, …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<u64>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
    /// The `since` to pass next time.
    pub next: u64,
    /// True when older events than `since` asked for were already dropped
    /// from the manager's bounded log.
    pub truncated: bool,
}
