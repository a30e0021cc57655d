//! Durable storage of the cluster's records, behind a narrow interface.
//!
//! The store holds the ground truth; the in-memory [`Cluster`] is derived
//! from it at start-up. A mutation's [`Changes`] are written in one
//! transaction that is durable before the manager answers the request, so a
//! crash can lose no acknowledged change, and since chunk ownership is only
//! ever derived from stored volume records, a chunk can never be handed out
//! twice across restarts.
//!
//! Two implementations share the record encoding defined here (JSON, one
//! record per key, keyed by id or group name):
//! - [`redb`]: the embedded single-manager store under `--data-dir`;
//! - [`etcd`]: a replicated store for several managers, one of which leads
//!   (see `crate::leader`). Its commits are fenced by the leader's lease.

pub mod etcd;
pub mod redb;

use serde::Serialize;
use serde::de::DeserializeOwned;
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
    /// This manager does not (or no longer) lead, so the store refused its
    /// write: nothing was written. `leader` is the leader's advertised URL
    /// when one is known.
    #[error("{}", not_leader_message(.leader.as_deref()))]
    NotLeader { leader: Option<String> },
    /// The store changed under this manager (another writer committed since
    /// it last loaded): nothing was written, and the manager reloads.
    #[error("the store changed under this manager ({0}); nothing was written, retry the request")]
    Conflict(String),
    /// The target of an import already holds a cluster.
    #[error("{0}")]
    NotEmpty(String),
    /// The store was written by a manager of another format version.
    #[error(
        "store format {found} is not supported by this manager (it reads format {expected}); run the vsky-manager release that wrote it, or a newer one"
    )]
    Unsupported { found: u64, expected: u64 },
    /// The store's file cannot be read as a store (truncated, overwritten):
    /// the manager must not start from it, nor start a new cluster in its
    /// place.
    #[error(
        "the store file {path} is damaged ({detail}); the manager cannot start from it. Restore the file from a backup, or run `vsky-manager migrate --from` a good copy into a new --data-dir. Moving it aside would start a NEW, empty cluster"
    )]
    Corrupt { path: String, detail: String },
}

fn not_leader_message(leader: Option<&str>) -> String {
    match leader {
        Some(url) => format!(
            "this manager is a standby; the leading manager is {url}: send changes there (vsky --manager accepts several URLs and follows the leader)"
        ),
        None => "this manager is a standby and no manager leads right now (an election is under way, or etcd has no quorum); retry in a few seconds".to_string(),
    }
}

pub trait Store: Send + Sync {
    /// Loads every record; `None` for a store never initialised.
    fn load(&self) -> Result<Option<Records>, StoreError>;

    /// Initialises an empty store with the cluster's settings.
    fn initialise(&self, cluster: &Cluster) -> Result<(), StoreError>;

    /// Writes the records named by `changes` as they are now in `cluster`
    /// (or deletes those no longer there), in one durable transaction.
    fn commit(&self, cluster: &Cluster, changes: &Changes) -> Result<(), StoreError>;

    /// Writes a whole cluster's records into a store that holds none
    /// (`vsky-manager migrate`). Refuses with [`StoreError::NotEmpty`] if
    /// the store is already initialised or holds anything.
    fn import(&self, records: &Records) -> Result<(), StoreError>;
}

/// Bumped when the record layout changes incompatibly (both stores).
pub const FORMAT_VERSION: u64 = 1;

/// The record kinds, one table (redb) or key prefix (etcd) each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Servers,
    Disks,
    Volumes,
    Groups,
    Jobs,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Servers,
        Table::Disks,
        Table::Volumes,
        Table::Groups,
        Table::Jobs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Servers => "servers",
            Table::Disks => "disks",
            Table::Volumes => "volumes",
            Table::Groups => "groups",
            Table::Jobs => "jobs",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A record's key within its table: ids for servers, disks, volumes and
/// jobs, the name for groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKey {
    Id(u64),
    Name(String),
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordKey::Id(id) => write!(f, "{id}"),
            RecordKey::Name(n) => f.write_str(n),
        }
    }
}

/// One record to write (`Some` bytes) or delete (`None`).
#[derive(Clone, Debug)]
pub struct RecordWrite {
    pub table: Table,
    pub key: RecordKey,
    pub value: Option<Vec<u8>>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model records always serialise")
}

pub(crate) fn decode<T: DeserializeOwned>(
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        key: key.to_string(),
        detail: e.to_string(),
    })
}

/// The record writes of one commit: every record named by `changes`, as it
/// is now in `cluster`, or a delete when it is gone. Both stores write
/// exactly this list, so they cannot disagree about what a commit means.
pub(crate) fn changed_records(cluster: &Cluster, changes: &Changes) -> Vec<RecordWrite> {
    let mut out = Vec::new();
    for id in &changes.servers {
        out.push(RecordWrite {
            table: Table::Servers,
            key: RecordKey::Id(id.0),
            value: cluster.server(*id).map(encode),
        });
    }
    for id in &changes.disks {
        out.push(RecordWrite {
            table: Table::Disks,
            key: RecordKey::Id(id.0),
            value: cluster.disk(*id).ok().map(encode),
        });
    }
    for name in &changes.groups {
        out.push(RecordWrite {
            table: Table::Groups,
            key: RecordKey::Name(name.clone()),
            value: cluster.group(name).ok().map(encode),
        });
    }
    for id in &changes.jobs {
        out.push(RecordWrite {
            table: Table::Jobs,
            key: RecordKey::Id(id.0),
            value: cluster.job(*id).ok().map(encode),
        });
    }
    for id in &changes.volumes {
        out.push(RecordWrite {
            table: Table::Volumes,
            key: RecordKey::Id(id.0),
            value: cluster.volume(*id).map(encode),
        });
    }
    out
}

/// Every record of a cluster as writes, for an import.
pub(crate) fn all_records(records: &Records) -> Vec<RecordWrite> {
    let mut out = Vec::new();
    let mut push = |table, key, value| {
        out.push(RecordWrite {
            table,
            key,
            value: Some(value),
        })
    };
    for s in &records.servers {
        push(Table::Servers, RecordKey::Id(s.id.0), encode(s));
    }
    for d in &records.disks {
        push(Table::Disks, RecordKey::Id(d.id.0), encode(d));
    }
    for g in &records.groups {
        push(Table::Groups, RecordKey::Name(g.name.clone()), encode(g));
    }
    for j in &records.jobs {
        push(Table::Jobs, RecordKey::Id(j.id.0), encode(j));
    }
    for v in &records.volumes {
        push(Table::Volumes, RecordKey::Id(v.id.0), encode(v));
    }
    out
}

/// Decodes one stored record into its place in `records`.
pub(crate) fn decode_record(
    records: &mut Records,
    table: Table,
    key: &str,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let key = format!("{}/{key}", table.name());
    match table {
        Table::Servers => records.servers.push(decode(key, bytes)?),
        Table::Disks => records.disks.push(decode(key, bytes)?),
        Table::Volumes => records.volumes.push(decode(key, bytes)?),
        Table::Groups => records.groups.push(decode(key, bytes)?),
        Table::Jobs => records.jobs.push(decode(key, bytes)?),
    }
    Ok(())
}

/// A short description of a cluster's records, for logs and the migration
/// report.
pub fn describe(records: &Records) -> String {
    format!(
        "{} servers, {} disks, {} volumes, {} groups, {} resync jobs, next id {}",
        records.servers.len(),
        records.disks.len(),
        records.volumes.len(),
        records.groups.len(),
        records.jobs.len(),
        records.next_id
    )
}
