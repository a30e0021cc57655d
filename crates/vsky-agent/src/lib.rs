//! The VastSky agent, one per server.
//!
//! - Storage role: registers the server and its disks with the manager,
//!   serves the chunks allocated on them over NBD (`vsky-nbd`) under their
//!   secret export names, and wipes chunks freed by deleted volumes before
//!   reporting them reusable.
//! - Head role: assembles the volumes attached to this server in the kernel
//!   (`vsky-kernel`: NBD imports, dm-raid raid1 mirrors, a linear or striped
//!   `/dev/mapper/vsky-<volume>`), tears down detached ones, reports legs
//!   the kernel marks dead, and swaps replacement legs into running mirrors
//!   when the manager's scheduler starts their resync.
//! - Resyncs of detached volumes: the storage agent holding a replacement
//!   chunk fills it from a healthy leg over NBD ([`copy`]).
//! - Scrubs, when the manager asks: a head runs dm-raid's check on a mirror
//!   it assembles ([`scrub`]); for a detached volume, the storage agent
//!   holding a mirrored disk's first leg compares its legs ([`compare`]).
//!
//! The agent reconciles: it long-polls the manager's desired state for its
//! server and converges the local state onto it, so a missed message or a
//! restart is harmless. Heartbeats carry what it observed (wiped chunks,
//! failed legs, resync progress, scrub results).
//!
//! Modules: [`disks`] (probe), [`label`] (whose disk it is), [`wipe`] (zeroing), [`head`] (kernel
//! assembly and online leg replacement), [`copy`] (server-to-server resync),
//! [`compare`] (scrubs of detached volumes), [`leg_reader`] (reading a leg
//! in place or over NBD, for both), [`activations`] (which domains use
//! each assembled volume, for the local API), [`reconcile`] (the loops), `run`
//! (starting and stopping them: the only module that wires the tasks
//! together), `shared` (the state the loops share), [`scrub`]
//! (the head's checks of its mirrors), [`api`] (the local REST API
//! the SMAPIv3 datapath plugin calls).
//!
//! Shutdown stops the NBD server after in-flight requests finish and leaves
//! assembled volumes in place: VMs keep their disks while the agent
//! restarts, and the next agent adopts them.

pub mod activations;
pub mod api;
pub mod compare;
mod config;
pub mod copy;
pub mod disks;
pub mod head;
pub mod label;
pub mod leg_reader;
pub mod reconcile;
mod run;
pub mod scrub;
mod shared;
pub mod wipe;

pub use config::Config;
pub use run::run;
