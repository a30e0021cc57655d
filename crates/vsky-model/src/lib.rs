//! The VastSky cluster model: servers, disks, chunks, volumes, mirrored disks
//! and legs, and the rules that allocate chunks to legs.
//!
//! This crate is the one home of the cluster's rules. It is pure: it does no
//! I/O, reads no clock and draws no randomness of its own (secrets come in
//! through [`SecretSource`]). The manager wraps a [`Cluster`] in a lock,
//! applies one mutation at a time, and persists the records each mutation
//! reports as [`Changes`]; the simulator can drive the very same code.
//!
//! A tour:
//! - [`ids`]: typed identifiers and name validation.
//! - [`entities`]: the persistent records (`Server`, `Disk`, `Volume`, …).
//! - [`cluster`]: [`Cluster`], the in-memory state plus derived indexes, and
//!   every mutation (`create_volume`, `fail_disk`, …); `cluster::recovery`
//!   plans replacement legs and schedules their resyncs, `cluster::moves`
//!   moves healthy legs (drain, rebalance) under the same scheduler, and
//!   `cluster::scrub` schedules the scrubs (heads check attached volumes,
//!   storage agents compare detached ones) under the same per-disk limit;
//!   `cluster::access` says who may reach a volume's legs (storage-only
//!   servers head nothing, and an ended attachment's leg secrets are
//!   replaced); `cluster::heartbeat` applies an agent's heartbeat (who may
//!   report what, which reports are stale), and `cluster::pass` is the
//!   recovery loop's planning pass, which the manager and `vsky-sim` both
//!   run.
//! - [`alloc`]: the allocation index that picks disks for legs.
//! - [`freelist`]: the compact per-disk set of free chunk indexes.
//! - [`agent_view`]: what one server's agent must do (desired state).
//! - [`limits`]: every bound in one place.

pub mod agent_view;
pub mod alloc;
pub mod cluster;
pub mod entities;
pub mod error;
pub mod freelist;
pub mod ids;
pub mod limits;

pub use cluster::executor::Executor;
pub use cluster::heartbeat::{
    AgentReport, DroppedReport, FinishedScrub, HeartbeatEvent, HeartbeatOutcome, LegFailure,
    ResyncStatus, ResyncUpdate, ScrubResult, ScrubVerdict,
};
pub use cluster::identity::{DiskLabel, DiskVerdict, FoundLabel, ReportedDisk};
pub use cluster::moves::{AutoRebalance, DrainProgress, PlannedMove};
pub use cluster::pass::{Drained, PassConfig, PassOutcome, ScrubClock, SilentServer};
pub use cluster::readers::ReadOnlyAttach;
pub use cluster::recovery::{JobKind, JobState, MoveReason, ResyncJob};
pub use cluster::scrub::{ScrubMethod, ScrubRun, StartedScrub};
pub use cluster::{
    CapacityLevel, Changes, Cluster, GroupUpdate, LegAddr, NewDisk, NewServer, NewVolume,
    PoolGrowth, PoolUsage, Records, Summary, VolumeMetaUpdate, WipedChunk, layer_name,
    pool_data_blocks, pool_extents, thin_added_meta_bytes, thin_meta_bytes,
};
pub use entities::*;
pub use error::{ErrorKind, ModelError};
pub use ids::{ChunkRef, DiskId, JobId, ServerId, VolumeId};

/// Where per-leg export secrets come from. The manager draws them from the
/// operating system's CSPRNG; tests and the simulator use a seeded source so
/// runs stay reproducible.
pub trait SecretSource {
    /// A fresh, unguessable export name for one leg (URL- and NBD-safe text).
    fn export_secret(&mut self) -> String;
}

/// A deterministic secret source for tests and simulation. Never use it in a
/// real cluster: its names are predictable.
#[derive(Debug, Default)]
pub struct CountingSecrets {
    next: u64,
}

impl SecretSource for CountingSecrets {
    fn export_secret(&mut self) -> String {
        self.next += 1;
        format!("test-secret-{:016x}", self.next)
    }
}
