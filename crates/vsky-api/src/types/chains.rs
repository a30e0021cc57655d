//! The bodies of thin volumes' chains: the requests that make snapshots,
//! clones and reverts, the layers `GET /volumes/{v}` shows, and what a
//! head is told to assemble (docs/design/snapshots.md).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{LegSpec, MirroredDisk};

/// The name of a new snapshot (`POST /volumes/{name}/snapshot`) or clone
/// (`POST /volumes/{name}/clone`): a volume name nothing has yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVolumeName {
    pub name: String,
    /// The new volume's keys. Left out, it gets the source's (with its
    /// display name, description and group, which it always gets); the
    /// SMAPIv3 plugin sends `{}`, since xapi sets its own keys on
    /// snapshots and clones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /volumes/{name}/revert`: the snapshot of the volume to go back to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertVolume {
    pub snapshot: String,
}

/// One layer of a thin volume's chain: a dm-thin pool on mirrored disks of
/// its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Layer {
    /// `_L<id>`, as in the head's device names.
    pub name: String,
    pub state: LayerState,
    /// The size of its thin device.
    pub thin_size_bytes: u64,
    /// When it was frozen (a snapshot taken), Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_at_unix_s: Option<u64>,
    /// The volumes and snapshots whose data it holds.
    pub shared_by: Vec<String>,
    pub layout: Vec<MirroredDisk>,
    /// The pool as its head last reported it: only for the top of an
    /// attached thin volume (`vsky volume show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolUse>,
}

/// How full a writable layer's pool is, as its head's kernel counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolUse {
    /// Data the thin device has written (mapped blocks).
    pub mapped_bytes: u64,
    /// Data the pool holds now; it grows as it fills.
    pub data_bytes: u64,
    /// Share of the pool's metadata in use, in percent.
    pub metadata_used_percent: u8,
    /// The pool is full and the head holds writes to new blocks (the
    /// cluster has no chunk to grow it).
    pub full: bool,
}

/// A layer is written by one thin volume's head, then frozen for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LayerState {
    Writable,
    /// Frozen by a snapshot while its head still switches off it.
    Freezing,
    Frozen,
}

/// How a head assembles one layer of a thin volume's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LayerForm {
    /// The layer the volume writes: raid1 with metadata over every leg,
    /// its pool read-write.
    Top,
    /// The old top of a snapshot this head still has to switch away from:
    /// assembled as `top`; once the volume device reads the new top, its
    /// pool is reloaded read-only and the switch reported.
    Freezing,
    /// Immutable: read-only raid1 over the active legs' data areas, no
    /// metadata, its pool read-only.
    Base,
}

/// One layer of a thin volume's chain: a dm-thin pool on the layer's
/// mirrored disks and its thin device 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LayerSpec {
    /// The layer's name: its devices are named after it.
    pub name: String,
    pub form: LayerForm,
    pub mirrored_disks: Vec<Vec<LegSpec>>,
    /// Bytes of pool metadata at the front of the layer's first mirrored
    /// disk's data area.
    pub meta_bytes: u64,
    /// Bytes of pool metadata at the front of the data area of each later
    /// mirrored disk. The pool's metadata device is the concatenation of
    /// the metadata parts in order, its data device that of the rest, so a
    /// pool that grows (more mirrored disks) appends to both. 0 from
    /// managers from before growth, whose layers have one mirrored disk.
    #[serde(default)]
    pub added_meta_bytes: u64,
    /// dm-thin block size, in 512-byte sectors.
    pub block_sectors: u32,
    pub thin_size_bytes: u64,
    /// The next layer of the chain, which this one reads unwritten blocks
    /// from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}
