//! Request and response bodies of REST API v1.
//!
//! Sizes are bytes (u64) everywhere; states are lower-case strings. Request
//! bodies deny unknown fields so that a misspelt option is an error, not a
//! silently ignored wish.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error answer: a stable machine `code` to match on and a `message`
/// for people, which says what to do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `invalid_argument`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `already_exists`, `conflict`,
    /// `attached_elsewhere`,
    /// `not_enough_servers`, `not_enough_space`, `payload_too_large`,
    /// `unsupported_media_type`, `store_unavailable`, `store_corrupt`,
    /// `internal`.
    pub code: String,
    pub message: String,
    /// The request id, also in the `x-request-id` header and the logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the manager answers.
    pub status: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSummary {
    pub servers: usize,
    pub servers_failed: usize,
    pub disks: usize,
    pub disks_failed: usize,
    pub chunk_size_bytes: u64,
    /// Legs per mirrored disk of a volume created without `replicas`.
    pub default_replicas: u8,
    /// Chunk bytes on serving disks.
    pub capacity_bytes: u64,
    /// Chunk bytes free for new legs.
    pub free_bytes: u64,
    /// Chunk bytes used by legs.
    pub used_bytes: u64,
    /// Chunk bytes freed by deleted volumes, awaiting their wipe.
    pub releasing_bytes: u64,
    pub volumes: usize,
    pub volumes_attached: usize,
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
    /// Creating again with the same uuid succeeds without change.
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
    /// Head server the volume is attached to.
    pub attached_to: Option<String>,
    pub health: VolumeHealth,
    pub mirrored_disks: usize,
    pub mirrored_disks_degraded: usize,
    pub mirrored_disks_rebuilding: usize,
    pub group: Option<String>,
    /// The display name, or the name when none was set.
    pub display_name: String,
    pub description: String,
    pub keys: BTreeMap<String, String>,
    pub sharable: bool,
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
}

/// A volume with its full layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeDetail {
    #[serde(flatten)]
    pub volume: Volume,
    /// Bytes of volume data each mirrored disk carries.
    pub data_bytes_per_mirrored_disk: u64,
    pub layout: Vec<MirroredDisk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolume {
    /// Name of the head server.
    pub server: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// New size; must not be smaller than the current one.
    pub size_bytes: u64,
}

// ---- agent endpoints --------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDisk {
    pub path: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub class: Option<String>,
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
    pub disks: Vec<RegisteredDisk>,
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
}

/// What an agent observed since its last heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub server: String,
    /// Freed chunks this agent has wiped (they become free).
    #[serde(default)]
    pub wiped_chunks: Vec<ChunkId>,
    /// Legs of volumes this agent heads whose I/O failed.
    #[serde(default)]
    pub failed_legs: Vec<FailedLeg>,
}

/// An agent attaching a volume to (or detaching it from) its own server, on
/// behalf of a local caller such as the SMAPIv3 datapath plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentAttachment {
    pub server: String,
    pub volume: String,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WipeSpec {
    pub chunk: ChunkId,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
    pub stripe: Option<Stripe>,
    pub chunk_size_bytes: u64,
    pub leg_meta_bytes: u64,
    pub mirrored_disks: Vec<Vec<LegSpec>>,
}

/// Everything one agent must do: chunks to export, freed chunks to wipe,
/// volumes to assemble.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredState {
    pub generation: u64,
    pub exports: Vec<ExportSpec>,
    pub wipes: Vec<WipeSpec>,
    pub volumes: Vec<VolumeSpec>,
}
