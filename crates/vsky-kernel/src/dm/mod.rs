//! Device-mapper stacks for VastSky volumes: legs, raid1 mirrors, and the
//! linear or striped volume device on top; and the dm-thin layers that
//! snapshots will use (docs/design/snapshots.md §5.4).
//!
//! A volume on the head is built bottom-up:
//!
//! ```text
//! /dev/nbdN ─┬─ vsky-<vol>+r<k>+<tag>+meta   dm-linear, first `meta_size` sectors (superblock + bitmap)
//!            └─ vsky-<vol>+r<k>+<tag>+data   dm-linear, the rest
//! vsky-<vol>+r<k>   dm-raid raid1 over 2+ (meta, data) pairs, `- -` for a missing leg
//! vsky-<vol>        dm-linear concatenation (or dm-striped) of the raid1 devices
//! ```
//!
//! A thin layer (not yet assembled by the agent; the lab's `kernel-thin`
//! runs it) sits on one such mirror: `tmeta` and `tdata` linears over it,
//! a `thin-pool` over those, and thin device 0 with an optional external
//! origin (the thin device of the layer below). Its **top form** is the
//! mirror above with metadata devices; its **base form**, for readers of a
//! frozen layer on any host, is raid1 over the data areas only
//! ([`Raid1BaseTable`]: `- <data>` pairs, `nosync`, a read-only table) with
//! the pool `read_only`.
//!
//! Every operation is an idempotent `ensure_*` in the devicemapper-rs style:
//! if the device is missing it is created (and removed again if its table
//! fails to load); if it exists, the kernel's table is read back and compared
//! with the wanted one, and a difference is an error rather than a silent
//! reload. That is also how a restarted agent adopts its devices. Tables refer
//! to parents by `major:minor` and we create `/dev/mapper/<name>` nodes
//! ourselves, because there is no udev on the test VM (and we must not depend
//! on it in production either).
//!
//! Main types: [`Datapath`] (the DM context), [`TargetLine`] (typed table
//! lines: [`Raid1Table`], [`Raid1BaseTable`], linear, striped,
//! [`ThinPoolTable`], [`ThinTable`]), [`RaidStatus`] and [`ThinPoolStatus`]
//! (parsed status).
//!
//! The pure parts need no kernel and are unit-tested here: `names`
//! (device names), `table` (typed table lines, their formatting, parsing
//! and validation), `thin` (the thin-pool and thin lines and their status),
//! `layout` (how legs and volumes map onto table lines),
//! `status` (parsing dm-raid's status), `superblock` (recognising a
//! dm-raid superblock), `thin_superblock` (the sizes a thin pool's
//! metadata records) and `floor` (which DM interface and dm-raid versions
//! the head accepts, checked at start-up). `datapath` holds the ioctls: the `ensure_*`
//! operations, reloads (also the suspend / load / resume steps a multi-device
//! change is made of), target messages, status queries and removal; the VM lab
//! (`crates/vsky-kernel/tests/lab.rs`) exercises it.

use std::path::PathBuf;
use std::time::Duration;

use devicemapper::DmError as RawDmError;
pub use devicemapper::{Device, Sectors};

mod datapath;
mod floor;
mod layout;
mod names;
mod status;
mod superblock;
mod table;
mod thin;
mod thin_superblock;

pub use datapath::{Datapath, Growth, Leg, MappedDevice, TableMode};
pub use floor::{
    DM_INTERFACE_MAJOR, DmSupport, RAID_EXACT_TABLE, RAID_MIN, TargetVersion, decide_dm_support,
};
pub use layout::{LegLayout, VolumeLayout};
pub use names::{
    DEFAULT_NAME_PREFIX, DevName, LegNames, VolumeName, check_name_prefix, name_prefix,
    name_prefix_word, set_name_prefix,
};
pub use status::{LegHealth, RaidStatus, SyncAction};
pub use superblock::has_raid_superblock;
pub use table::{LegDevices, Raid1BaseTable, Raid1Table, RaidTableReadback, Target, TargetLine};
pub use thin::{
    PoolDiscard, PoolMode, THIN_BLOCK_MAX, THIN_BLOCK_MIN, THIN_DEV_ID_MAX, ThinPoolStatus,
    ThinPoolTable, ThinPoolUsage, ThinStatus, ThinTable,
};
pub use thin_superblock::{THIN_METADATA_BLOCK_BYTES, ThinSuperblock};

/// Errors of the device-mapper layer. Messages name the device and say what
/// to do next.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error(
        "cannot open /dev/mapper/control: {0} (load the dm-mod module and run as root; \
         dm-raid and raid1 are needed for mirrors)"
    )]
    Open(String),
    #[error("the head cannot run on kernel {kernel}: {reason}")]
    Unsupported { kernel: String, reason: String },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid table for {name}: {reason}")]
    InvalidTable { name: String, reason: String },
    #[error("device-mapper {op} on {name} failed: {source} (see dmesg for the target's reason)")]
    Ioctl {
        op: &'static str,
        name: String,
        #[source]
        source: RawDmError,
    },
    #[error(
        "{name} already exists with a different table: kernel has {found:?}, wanted {wanted:?}; \
         remove it (or pick another name) if it is stale"
    )]
    TableMismatch {
        name: String,
        found: String,
        wanted: String,
    },
    #[error("{name} does not exist")]
    NotFound { name: String },
    #[error("cannot parse the {what} of {name}: {text:?}")]
    Parse {
        name: String,
        what: &'static str,
        text: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} did not reach {wanted} within {waited:?}; last status: {last}")]
    Timeout {
        name: String,
        wanted: &'static str,
        waited: Duration,
        last: String,
    },
}

pub type Result<T, E = DmError> = std::result::Result<T, E>;
