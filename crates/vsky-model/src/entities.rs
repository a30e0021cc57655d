//! The persistent records of the cluster. These are what the store keeps;
//! everything else in [`crate::Cluster`] (free lists, load indexes, leg
//! counts) is derived from them at load time.
//!
//! They derive serde only so the store can encode them. The REST contract is
//! separate (vsky-api), so the wire format and the store format can evolve
//! on their own. New fields must carry `#[serde(default)]` so that older
//! stores still load.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkRef, DiskId, ServerId, VolumeId};
use crate::limits;

/// Cluster-wide settings, fixed when the cluster is created (the chunk size
/// cannot change once disks are carved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub chunk_size_bytes: u64,
    /// Metadata area at the front of every chunk (dm-raid superblock and
    /// write-intent bitmap of the leg that uses the chunk).
    pub leg_meta_bytes: u64,
    /// Bytes reserved at the front of every disk.
    pub disk_header_bytes: u64,
    /// The server label whose values are failure domains (e.g. `rack`):
    /// legs of one mirrored disk go to distinct values when the pool allows.
    /// A server without the label is a failure domain of its own.
    pub failure_domain_label: String,
    pub default_replicas: u8,
    /// This cluster's identity, drawn once when the cluster is created (a
    /// store from before identities gets one when it is first loaded). Disk
    /// labels carry it, so a disk of another cluster, or a manager started
    /// on a lost store, is refused instead of silently reused. Empty only
    /// until that first load.
    #[serde(default)]
    pub cluster_id: String,
}

impl Settings {
    pub fn new(chunk_size_bytes: u64) -> Self {
        Settings {
            chunk_size_bytes,
            leg_meta_bytes: limits::LEG_META_BYTES,
            disk_header_bytes: limits::DISK_HEADER_BYTES,
            failure_domain_label: "rack".to_string(),
            default_replicas: limits::REPLICAS_DEFAULT,
            cluster_id: String::new(),
        }
    }

    /// Bytes of volume data one chunk carries (the chunk minus its leg
    /// metadata area).
    pub fn data_bytes_per_chunk(&self) -> u64 {
        self.chunk_size_bytes - self.leg_meta_bytes
    }

    /// How many whole chunks a disk of `size_bytes` holds.
    pub fn chunks_on_disk(&self, size_bytes: u64) -> u64 {
        size_bytes.saturating_sub(self.disk_header_bytes) / self.chunk_size_bytes
    }

    /// Byte offset of a chunk on its disk.
    pub fn chunk_offset_bytes(&self, index: u32) -> u64 {
        self.disk_header_bytes + u64::from(index) * self.chunk_size_bytes
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(limits::CHUNK_SIZE_BYTES_DEFAULT)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Serving and eligible for new chunks.
    Online,
    /// Declared failed (by an admin or a health check): its legs are failed
    /// and it gets no new chunks.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: ServerId,
    pub name: String,
    /// `host:port` of the server's agent (NBD exports).
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub state: ServerState,
    /// Set when the recovery loop (not an admin) declared the server failed
    /// because its heartbeats stopped: if its agent speaks again, it returns
    /// to service. An admin's verdict stands until the admin acts.
    #[serde(default)]
    pub failed_by_silence: bool,
    /// An admin asked for the server to be emptied (graceful removal): it
    /// keeps serving its legs, gets no new chunks, and its legs are moved
    /// to other servers one copy at a time (`cluster/moves.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Its agent runs with `--storage-only`: it exports its chunks but
    /// cannot assemble volumes, so no volume may be attached to it and its
    /// desired state names no volume to assemble. Reported by the agent at
    /// every registration; false for servers from before the role was
    /// recorded, and for a server an admin added whose agent has not
    /// registered yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub storage_only: bool,
}

impl Server {
    /// The failure domain this server belongs to.
    pub fn failure_domain(&self, label: &str) -> String {
        match self.labels.get(label) {
            Some(value) => format!("{label}={value}"),
            None => format!("server={}", self.name),
        }
    }
}

/// The release id of a chunk freed before releases had ids (stores written
/// before them), and of wipe reports that carry none (older agents). No
/// release drawn since has it: ids start at 1.
pub const UNNUMBERED_RELEASE: u64 = 0;

/// Reads [`Disk::releasing`] in either shape: a map of chunk index to
/// release id, or the list of indexes older stores hold (each then
/// [`UNNUMBERED_RELEASE`]).
fn releasing_any_shape<'de, D>(d: D) -> Result<BTreeMap<u32, u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Shapes;
    impl<'de> serde::de::Visitor<'de> for Shapes {
        type Value = BTreeMap<u32, u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of chunk index to release id, or a list of chunk indexes")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut releasing = BTreeMap::new();
            while let Some((index, release)) = a.next_entry::<u32, u64>()? {
                releasing.insert(index, release);
            }
            Ok(releasing)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut releasing = BTreeMap::new();
            while let Some(index) = a.next_element::<u32>()? {
                releasing.insert(index, UNNUMBERED_RELEASE);
            }
            Ok(releasing)
        }
    }
    d.deserialize_any(Shapes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    Online,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub id: DiskId,
    pub server: ServerId,
    pub path: String,
    pub size_bytes: u64,
    /// Optional performance class (`ssd`, `nvme`, …) volumes can ask for.
    pub class: Option<String>,
    pub state: DiskState,
    /// Chunks carved from the disk; fixed at registration, grows only.
    pub chunk_count: u32,
    /// Chunks freed (by a deleted volume, a replaced or moved leg) that the
    /// storage agent has not yet wiped, each with its release id. They are
    /// neither free nor in use: a new volume must never read an old
    /// volume's data, so they return to the free list only when the agent
    /// reports them wiped *for that release*. The id is drawn from the
    /// cluster's id counter when the chunk is freed, so a chunk freed,
    /// wiped, reused and freed again gets a new one, and a late or repeated
    /// report of the earlier wipe cannot free it unwiped.
    /// [`UNNUMBERED_RELEASE`] marks chunks freed before releases had ids
    /// (older stores hold a plain list of indexes, read here as such).
    #[serde(default, deserialize_with = "releasing_any_shape")]
    pub releasing: BTreeMap<u32, u64>,
    /// An admin asked for the disk to be emptied: like a draining server,
    /// for one disk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The agent has confirmed the disk carries this disk's label (see
    /// `cluster::identity`). A labelled disk that later reads blank was
    /// replaced or wiped, so its chunks hold nothing: it is failed rather
    /// than trusted. False for disks from before labels, until their agent
    /// labels them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub labelled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegState {
    /// In sync and serving.
    Active,
    /// Being resynced from the other legs.
    Syncing,
    /// Lost (disk or server failure, I/O error); awaiting replacement.
    Failed,
}

/// One copy of a mirrored disk: a chunk plus its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub chunk: ChunkRef,
    pub state: LegState,
    /// The NBD export name of this leg: a secret only the head of the volume
    /// and the storage server holding the chunk learn, so nobody else can
    /// open the chunk.
    pub export_name: String,
    /// The leg failed while it was still being synced: its chunk holds an
    /// incomplete copy, so it may never come back as a healthy leg (only be
    /// replaced), even if its server returns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub never_synced: bool,
}

impl Leg {
    /// Marks the leg failed, remembering whether it ever held a full copy.
    pub fn fail(&mut self) {
        if self.state == LegState::Syncing {
            self.never_synced = true;
        }
        self.state = LegState::Failed;
    }
}

/// A RAID1 set of 2+ legs on distinct servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirroredDisk {
    pub legs: Vec<Leg>,
    /// When the last scrub of this mirrored disk finished
    /// (`cluster/scrub.rs`), in Unix seconds; `None` if none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrub_unix_s: Option<u64>,
}

impl MirroredDisk {
    pub fn healthy_legs(&self) -> usize {
        self.legs
            .iter()
            .filter(|l| l.state == LegState::Active)
            .count()
    }

    pub fn is_degraded(&self) -> bool {
        self.legs.iter().any(|l| l.state == LegState::Failed)
    }

    pub fn is_rebuilding(&self) -> bool {
        self.legs.iter().any(|l| l.state == LegState::Syncing)
    }
}

/// Striping across mirrored disks: `width` mirrored disks form one stripe
/// set with a `unit_bytes` stripe unit (dm-striped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    pub width: u32,
    pub unit_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The server whose VMs use the volume and which assembles it.
    pub head: ServerId,
    /// Where the attachment is in its life (`cluster/access.rs`). Records
    /// from before two-phase detach have none: they were attached.
    #[serde(default)]
    pub state: AttachmentState,
    /// The size of the volume device the head serves, as it last reported
    /// (`None` until it has). Below the volume's size while a grow is not
    /// applied on the head yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_bytes: Option<u64>,
}

impl Attachment {
    pub fn is_releasing(&self) -> bool {
        self.state == AttachmentState::Releasing
    }
}

/// The life of an attachment: attached → releasing → (ended: no
/// attachment). See `cluster/access.rs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentState {
    /// The head assembles the volume and may write it.
    #[default]
    Attached,
    /// A graceful detach was asked: the head tears its devices down, and
    /// the attachment ends once it reports them gone. No other server may
    /// attach meanwhile, and no resync or scrub of the volume runs.
    Releasing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: VolumeId,
    pub name: String,
    /// Exact usable size as requested (rounded up to 4 KiB).
    pub size_bytes: u64,
    pub replicas: u8,
    pub stripe: Option<Stripe>,
    /// Disk class the legs were placed on, if one was asked for.
    pub class: Option<String>,
    /// Server the legs should be placed near, if one was named.
    pub near_server: Option<ServerId>,
    /// Concatenated in order (or striped in sets of `stripe.width`).
    pub mirrored_disks: Vec<MirroredDisk>,
    pub attachment: Option<Attachment>,
    /// The servers that read this snapshot (read-only attachments,
    /// `cluster/readers.rs`); empty for every other kind of volume.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub readers: BTreeSet<ServerId>,
    /// What users and XAPI say about the volume; no effect on placement.
    #[serde(default)]
    pub meta: VolumeMeta,
    /// Thick, a thin volume, a snapshot, or one of their hidden layers
    /// (`cluster/chains.rs`). Records from before thin volumes are thick.
    #[serde(default, skip_serializing_if = "VolumeRole::is_thick")]
    pub role: VolumeRole,
}

/// What a volume record is. Thin volumes and snapshots hold no mirrored
/// disks of their own: their data is a chain of layers, each a dm-thin
/// pool with one thin device on the layer's own mirrored disks, reading
/// what it has not written from its parent (docs/design/snapshots.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VolumeRole {
    /// Its mirrored disks hold its data as they are (every volume made
    /// before thin volumes, and those asked for thick).
    #[default]
    Thick,
    /// A thin volume: it writes to its `top` layer and reads through the
    /// chain below it.
    Thin { top: VolumeId },
    /// A read-only snapshot: the frozen `layer` and the chain below it.
    Snapshot {
        layer: VolumeId,
        /// The name of the volume it was taken of (the IDL's
        /// `snapshot_of`; kept as it was, even if that volume is gone).
        snapshot_of: String,
        snapshot_time_unix_s: u64,
    },
    /// A hidden layer of some thin volumes' and snapshots' chains.
    Layer(LayerInfo),
}

impl VolumeRole {
    pub fn is_thick(&self) -> bool {
        matches!(self, VolumeRole::Thick)
    }

    pub fn layer(&self) -> Option<&LayerInfo> {
        match self {
            VolumeRole::Layer(info) => Some(info),
            _ => None,
        }
    }
}

/// A layer: one dm-thin pool on the layer's mirrored disks, with one thin
/// device of `thin_size_bytes`. Each mirrored disk gives the front of its
/// data area to the pool's metadata (`meta_bytes` on the first,
/// `added_meta_bytes` on each later one) and the rest to its data, so a
/// pool that grows appends to both and no used sector moves
/// (`cluster/pools.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The layer below (the thin device's external origin), frozen.
    pub parent: Option<VolumeId>,
    pub state: LayerState,
    /// dm-thin's block size, in 512-byte sectors.
    pub block_sectors: u32,
    /// Metadata at the front of the first mirrored disk.
    pub meta_bytes: u64,
    /// Metadata at the front of every later mirrored disk; 0 in records
    /// from before pools grew, which have one mirrored disk (the first
    /// growth sets it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub added_meta_bytes: u64,
    pub thin_size_bytes: u64,
    /// When it was frozen (the snapshot's moment), Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_at_unix_s: Option<u64>,
    /// The thin volume whose head may write this layer: the one whose top
    /// it is, and, while it is freezing, the one it was the top of. `None`
    /// once frozen. That head (when the volume is attached) runs the
    /// layer's resyncs and scrubs, as it does an attached thick volume's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<VolumeId>,
    /// No head has had it writable yet (its volume was not attached since
    /// it was made): it holds nothing of its own, so a clone of its volume
    /// may read its parent instead of freezing it. False in records from
    /// before the flag, which may hold data.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unwritten: bool,
}

/// The life of a layer: writable → freezing → frozen, never back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerState {
    /// The top of exactly one thin volume, written by its head.
    Writable,
    /// Frozen in the records, but the head of the volume it was the top of
    /// may still write it until it reports the switch to the new top done
    /// or its attachment ends (`cluster/chains.rs`): nothing may rely on
    /// its content yet.
    Freezing,
    /// Immutable: any number of hosts may read it.
    Frozen,
}

/// Descriptive data of a volume, kept verbatim for its users (XAPI stores
/// its VDI metadata in `keys`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// The group (an XAPI SR) the volume belongs to.
    pub group: Option<String>,
    /// Free-form display name (the internal name is fixed at creation).
    pub display_name: Option<String>,
    pub description: String,
    pub keys: BTreeMap<String, String>,
    /// May be attached by several hosts at once (the datapath decides).
    pub sharable: bool,
}

/// A named group of volumes: what XAPI calls a storage repository (SR).
/// Several groups share one pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub uuid: Option<String>,
    pub display_name: String,
    pub description: String,
}

impl Volume {
    pub fn degraded_mirrored_disks(&self) -> usize {
        self.mirrored_disks
            .iter()
            .filter(|m| m.is_degraded())
            .count()
    }

    pub fn rebuilding_mirrored_disks(&self) -> usize {
        self.mirrored_disks
            .iter()
            .filter(|m| m.is_rebuilding())
            .count()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}
