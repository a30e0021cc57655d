//! Durable storage of the cluster's records, behind a narrow interface.
//!
//! The store holds the ground truth; the in-memory [`Cluster`] is derived
//! from it at start-up. A mutation's [`Changes`] are written in one
//! transaction that is durable before the manager answers the request, so a
//! crash can lose no acknowledged change, and since chunk ownership is only
//! ever derived from stored volume records, a chunk can never be handed out
//! twice across restarts.
//!
//! [`redb`] is the embedded single-manager implementation. A replicated
//! implementation (etcd, for an HA manager pair) implements the same trait.

pub mod redb;

use vsky_model::{Changes, Cluster, Records};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored record {key} cannot be decoded: {detail}")]
    Decode { key: String, detail: String },
    #[error(
        "the store was created with {stored}, but {requested} was requested; start without the option or use a new --data-dir"
    )]
    SettingsMismatch { stored: String, requested: String },
}

pub trait Store: Send + Sync {
    /// Loads every record; `None` for a store never initialised.
    fn load(&self) -> Result<Option<Records>, StoreError>;

    /// Initialises an empty store with the cluster's settings.
    fn initialise(&self, cluster: &Cluster) -> Result<(), StoreError>;

    /// Writes the records named by `changes` as they are now in `cluster`
    /// (or deletes those no longer there), in one durable transaction.
    fn commit(&self, cluster: &Cluster, changes: &Changes) -> Result<(), StoreError>;
}
