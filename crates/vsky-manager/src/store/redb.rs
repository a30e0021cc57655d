//! The embedded store: one redb file under `--data-dir`.
//!
//! Layout: a `meta` table (settings, next id, format version) and one table
//! per record kind keyed by id, holding the record as JSON. JSON keeps the
//! file inspectable and lets records gain `#[serde(default)]` fields without
//! a migration. Every commit uses redb's immediate durability (fsync before
//! `commit` returns).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use vsky_model::{Changes, Cluster, Records};

use super::{
    FORMAT_VERSION, RecordKey, RecordWrite, Store, StoreError, Table, all_records, changed_records,
    decode, encode,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SERVERS: TableDefinition<u64, &[u8]> = TableDefinition::new("servers");
const DISKS: TableDefinition<u64, &[u8]> = TableDefinition::new("disks");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");

pub struct RedbStore {
    db: Database,
    /// The file, for messages about it.
    path: std::path::PathBuf,
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn id_table(table: Table) -> TableDefinition<'static, u64, &'static [u8]> {
    match table {
        Table::Servers => SERVERS,
        Table::Disks => DISKS,
        Table::Volumes => VOLUMES,
        Table::Jobs => JOBS,
        Table::Groups => unreachable!("groups are keyed by name"),
    }
}

/// Applies record writes inside one write transaction.
fn write_records(txn: &redb::WriteTransaction, writes: &[RecordWrite]) -> Result<(), StoreError> {
    for w in writes {
        match &w.key {
            RecordKey::Name(name) => {
                let mut t = txn.open_table(GROUPS).map_err(io)?;
                match &w.value {
                    Some(v) => t.insert(name.as_str(), v.as_slice()).map(drop),
                    None => t.remove(name.as_str()).map(drop),
                }
                .map_err(io)?;
            }
            RecordKey::Id(id) => {
                let mut t = txn.open_table(id_table(w.table)).map_err(io)?;
                match &w.value {
                    Some(v) => t.insert(*id, v.as_slice()).map(drop),
                    None => t.remove(*id).map(drop),
                }
                .map_err(io)?;
            }
        }
    }
    Ok(())
}

impl RedbStore {
    /// Opens (or creates) `dir/vastsky.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("vastsky.redb");
        let shown = path.display().to_string();
        let corrupt = |detail: String| StoreError::Corrupt {
            path: shown.clone(),
            detail,
        };
        // redb may panic on a damaged file rather than answer an error: a
        // panic here is a damaged store, not a bug to crash on.
        let opened = std::panic::catch_unwind(|| Database::create(&path));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StoreError::Io(format!(
                    "cannot open {shown}: it is locked by another vsky-manager using this --data-dir; stop that one or choose another --data-dir"
                )));
            }
            // Short reads and unparsable headers are a damaged file; any
            // other I/O error (permissions, a failing disk) is said as is.
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(StoreError::Io(format!("cannot open {shown}: {e}")));
            }
            Ok(Err(e)) => return Err(corrupt(e.to_string())),
            Err(panic) => return Err(corrupt(panic_message(panic.as_ref()))),
        };
        Ok(RedbStore { db, path })
    }

    fn load_records(&self) -> Result<Option<Records>, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.display().to_string(),
            detail,
        };
        // A damaged file shows as redb errors, or as a panic inside redb.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read_all())) {
            Ok(Err(StoreError::Io(detail))) => Err(corrupt(detail)),
            Ok(loaded) => loaded,
            Err(panic) => Err(corrupt(panic_message(panic.as_ref()))),
        }
    }

    /// Like `load_table`, for tables added after the first release: an
    /// older store simply lacks them.
    fn load_table_if_present<T: DeserializeOwned>(
        txn: &redb::ReadTransaction,
        table: TableDefinition<u64, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        match txn.open_table(table) {
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            _ => Self::load_table(txn, table),
        }
    }

    fn load_table<T: DeserializeOwned>(
        txn: &redb::ReadTransaction,
        table: TableDefinition<u64, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let t = txn.open_table(table).map_err(io)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            out.push(decode(
                format!("{}/{}", table.name(), k.value()),
                v.value(),
            )?);
        }
        Ok(out)
    }
}

impl RedbStore {
    fn read_all(&self) -> Result<Option<Records>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(key).map_err(io)?.map(|v| v.value().to_vec()))
        };
        let Some(version) = get("format_version")? else {
            return Ok(None);
        };
        let version: u64 = decode("meta/format_version", &version)?;
        if version != FORMAT_VERSION {
            return Err(StoreError::Unsupported {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let settings = decode("meta/settings", &get("settings")?.unwrap_or_default())?;
        let next_id = decode("meta/next_id", &get("next_id")?.unwrap_or_default())?;
        Ok(Some(Records {
            settings,
            next_id,
            servers: Self::load_table(&txn, SERVERS)?,
            disks: Self::load_table(&txn, DISKS)?,
            volumes: Self::load_table(&txn, VOLUMES)?,
            jobs: Self::load_table_if_present(&txn, JOBS)?,
            groups: {
                // Added after the first release: an older store lacks it.
                match txn.open_table(GROUPS) {
                    Ok(t) => {
                        let mut out = Vec::new();
                        for row in t.iter().map_err(io)? {
                            let (k, v) = row.map_err(io)?;
                            out.push(decode(format!("groups/{}", k.value()), v.value())?);
                        }
                        out
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                    Err(e) => return Err(io(e)),
                }
            },
        }))
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Option<Records>, StoreError> {
        self.load_records()
    }

    fn initialise(&self, cluster: &Cluster) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            meta.insert("format_version", encode(&FORMAT_VERSION).as_slice())
                .map_err(io)?;
            meta.insert("settings", encode(cluster.settings()).as_slice())
                .map_err(io)?;
            meta.insert("next_id", encode(&cluster.next_id()).as_slice())
                .map_err(io)?;
            // Create the record tables so readers never meet a missing one.
            txn.open_table(SERVERS).map_err(io)?;
            txn.open_table(DISKS).map_err(io)?;
            txn.open_table(VOLUMES).map_err(io)?;
            txn.open_table(GROUPS).map_err(io)?;
            txn.open_table(JOBS).map_err(io)?;
        }
        txn.commit().map_err(io)
    }

    fn commit(&self, cluster: &Cluster, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(io)?;
        if changes.next_id || changes.settings {
            let mut meta = txn.open_table(META).map_err(io)?;
            if changes.next_id {
                meta.insert("next_id", encode(&cluster.next_id()).as_slice())
                    .map_err(io)?;
            }
            if changes.settings {
                meta.insert("settings", encode(cluster.settings()).as_slice())
                    .map_err(io)?;
            }
        }
        write_records(&txn, &changed_records(cluster, changes))?;
        txn.commit().map_err(io)
    }

    fn import(&self, records: &Records) -> Result<(), StoreError> {
        if self.load()?.is_some() {
            return Err(StoreError::NotEmpty(
                "the target --data-dir already holds a cluster; migrate into an empty directory"
                    .into(),
            ));
        }
        // One transaction: an interrupted import leaves nothing behind.
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            meta.insert("format_version", encode(&FORMAT_VERSION).as_slice())
                .map_err(io)?;
            meta.insert("settings", encode(&records.settings).as_slice())
                .map_err(io)?;
            meta.insert("next_id", encode(&records.next_id).as_slice())
                .map_err(io)?;
            txn.open_table(SERVERS).map_err(io)?;
            txn.open_table(DISKS).map_err(io)?;
            txn.open_table(VOLUMES).map_err(io)?;
            txn.open_table(GROUPS).map_err(io)?;
            txn.open_table(JOBS).map_err(io)?;
        }
        write_records(&txn, &all_records(records))?;
        txn.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use vsky_model::{CountingSecrets, NewDisk, NewServer, NewVolume, Settings};

    use super::*;

    /// A new cluster in `store` with servers s0, s1 and s2, each committed.
    fn servers_in(store: &RedbStore) -> Cluster {
        let mut c = Cluster::new(Settings::new(8 << 20)).unwrap();
        store.initialise(&c).unwrap();
        for s in 0..3 {
            let (_, ch) = c
                .add_server(NewServer {
                    name: format!("s{s}"),
                    address: format!("127.0.0.1:{}", 9000 + s),
                    labels: Default::default(),
                })
                .unwrap();
            store.commit(&c, &ch).unwrap();
        }
        c
    }

    /// Records written through commit() load back into an identical cluster.
    #[test]
    fn commit_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_none());
        let mut c = servers_in(&store);
        let mut secrets = CountingSecrets::default();
        for s in 0..3 {
            let (_, ch) = c
                .add_disk(NewDisk {
                    server: format!("s{s}"),
                    path: "/d".into(),
                    size_bytes: 100 << 20,
                    class: None,
                })
                .unwrap();
            store.commit(&c, &ch).unwrap();
        }
        let new = |name: &str| NewVolume {
            name: name.into(),
            size_bytes: 20 << 20,
            replicas: None,
            stripe: None,
            class: None,
            near_server: None,
            meta: Default::default(),
            thin: false,
        };
        let (_, ch) = c.create_volume(new("a"), &mut secrets).unwrap();
        store.commit(&c, &ch).unwrap();
        let (_, ch) = c.create_volume(new("b"), &mut secrets).unwrap();
        store.commit(&c, &ch).unwrap();
        let ch = c.delete_volume("a").unwrap();
        store.commit(&c, &ch).unwrap();
        let sr = vsky_model::Group {
            name: "sr1".into(),
            uuid: Some("0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e3f".into()),
            display_name: "SR one".into(),
            description: String::new(),
        };
        let ch = c.create_group(sr).unwrap();
        store.commit(&c, &ch).unwrap();
        let mut in_group = new("c");
        in_group.meta.group = Some("sr1".into());
        in_group.meta.keys.insert("vdi-type".into(), "user".into());
        let (_, ch) = c.create_volume(in_group, &mut secrets).unwrap();
        store.commit(&c, &ch).unwrap();
        drop(store);

        let store = RedbStore::open(dir.path()).unwrap();
        let st = store.load().unwrap().unwrap();
        let loaded = Cluster::load(st).unwrap();
        loaded.check_invariants().unwrap();
        assert_eq!(loaded.summary(), c.summary());
        assert_eq!(
            loaded.volume_by_name("b").unwrap(),
            c.volume_by_name("b").unwrap()
        );
        assert!(loaded.volume_by_name("a").is_err());
        assert_eq!(loaded.group("sr1").unwrap(), c.group("sr1").unwrap());
        assert_eq!(
            loaded.volume_by_name("c").unwrap().meta.keys["vdi-type"],
            "user"
        );
    }

    /// A store with a few records, closed: its file's length.
    fn written_store(dir: &Path) -> u64 {
        let store = RedbStore::open(dir).unwrap();
        servers_in(&store);
        drop(store);
        std::fs::metadata(dir.join("vastsky.redb")).unwrap().len()
    }

    /// Regression: a truncated store file made the manager panic at start.
    /// Every truncation now ends in an error that names the file and says
    /// what to do (or, where redb can recover on its own, in the records).
    #[test]
    fn a_truncated_store_is_an_error_that_names_the_file() {
        let probe = tempfile::tempdir().unwrap();
        let len = written_store(probe.path());
        let mut refused = 0;
        for keep in [1, 64, 511, 4096, len / 3, len / 2, len - 4096, len - 1] {
            let dir = tempfile::tempdir().unwrap();
            written_store(dir.path());
            let file = dir.path().join("vastsky.redb");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(keep)
                .unwrap();
            let outcome = RedbStore::open(dir.path()).and_then(|s| s.load());
            match outcome {
                Err(e @ StoreError::Corrupt { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(&file.display().to_string()), "{text}");
                    assert!(text.contains("Restore"), "{text}");
                    assert!(!text.contains("another vsky-manager"), "{text}");
                    refused += 1;
                }
                Ok(Some(records)) => assert_eq!(records.servers.len(), 3, "kept {keep}"),
                other => panic!("kept {keep} of {len} bytes: {other:?}"),
            }
        }
        assert!(refused > 0, "no truncation was detected");
    }

    /// A store locked by a running manager says so, and only then.
    #[test]
    fn a_locked_store_names_the_other_manager() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path()).unwrap();
        let Err(e) = RedbStore::open(dir.path()) else {
            panic!("a second open of a locked store succeeded")
        };
        assert!(e.to_string().contains("another vsky-manager"), "{e}");
    }
}
