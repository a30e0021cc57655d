//! VastSky's test kit: what the tests, benches and the simulator share to
//! set up a cluster, so each is written once.
//!
//! - [`pool`]: a model-level pool (`Cluster`) of N servers × M empty disks
//!   with one naming and deterministic ids. Depends on `vsky-model` only.
//! - [`free_port`]: a loopback port for a server a test starts.
//! - `tokens` and `process` (feature `api`): the tokens every test
//!   manager accepts, and a real `vsky-manager` process on loopback.
//! - `rest` (feature `api`): a pool registered through the REST API,
//!   named as [`pool`] names it, and clients.
//! - `in_process` (feature `manager`): a manager served by the test
//!   process itself.
//! - `agents` (feature `agents`): storage agents served by the test
//!   process, with file-backed disks, and `LocalCluster`: such a manager
//!   with its agents.
//!
//! The features keep each user's build small: the model's tests and the
//! simulator take no feature and so do not compile the manager.
//!
//! Everything a test starts stops when its handle is dropped: a real
//! process is killed, an in-process manager or agent is told to shut down
//! (and ends at the latest with its tokio runtime). Helpers panic with a
//! message rather than return errors: they run in tests only (the pool
//! builder also has `try_` forms, for the simulator).

pub mod pool;
mod ports;

#[cfg(feature = "agents")]
pub mod agents;
#[cfg(feature = "manager")]
pub mod in_process;
#[cfg(feature = "api")]
pub mod process;
#[cfg(feature = "api")]
pub mod rest;
#[cfg(feature = "api")]
pub mod tokens;

pub use ports::free_port;
