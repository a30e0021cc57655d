//! `vsky-manager migrate`: copies a whole cluster from one store to another
//! (redb → etcd when moving to an HA manager pair, etcd → redb back).
//!
//! The copy is verified twice: the source must load into a consistent
//! [`Cluster`] before anything is written (so a corrupt store is not
//! spread), and the target is read back afterwards and must hold exactly
//! the same records, byte for byte. Managers must be stopped on both sides:
//! the target refuses an import when it holds anything, or when a manager
//! leads on it.

use vsky_model::{Cluster, Records};

use crate::store::{Store, StoreError, all_records, describe};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the source store holds no cluster; nothing to migrate")]
    EmptySource,
    #[error("the source store is inconsistent, so nothing was copied: {0}")]
    Inconsistent(String),
    #[error("reading the source store failed: {0}")]
    Source(StoreError),
    #[error("writing the target store failed: {0}")]
    Target(StoreError),
    #[error(
        "the target store does not read back what was written ({0}); do not start managers on it: clear it and migrate again"
    )]
    Mismatch(String),
}

/// Every record as (table, key, bytes), sorted: two stores hold the same
/// cluster exactly when these are equal.
fn fingerprint(records: &Records) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<_> = all_records(records)
        .into_iter()
        .map(|w| {
            (
                w.table.name(),
                w.key.to_string(),
                w.value.unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Copies every record from `source` to the empty `target`; returns a
/// description of what was copied.
pub fn migrate(source: &dyn Store, target: &dyn Store) -> Result<String, MigrateError> {
    let records = source
        .load()
        .map_err(MigrateError::Source)?
        .ok_or(MigrateError::EmptySource)?;
    Cluster::load(records.clone()).map_err(|e| MigrateError::Inconsistent(e.to_string()))?;
    target.import(&records).map_err(MigrateError::Target)?;
    let back = target
        .load()
        .map_err(MigrateError::Target)?
        .ok_or_else(|| MigrateError::Mismatch("the target reads back empty".into()))?;
    if back.settings != records.settings || back.next_id != records.next_id {
        return Err(MigrateError::Mismatch("settings or next id differ".into()));
    }
    if fingerprint(&back) != fingerprint(&records) {
        return Err(MigrateError::Mismatch(format!(
            "wrote {}, read back {}",
            describe(&records),
            describe(&back)
        )));
    }
    Cluster::load(back).map_err(|e| MigrateError::Mismatch(e.to_string()))?;
    Ok(describe(&records))
}
