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
        let db = Database::create(&path).map_err(|e| {
            StoreError::Io(format!(
                "cannot open {}: {e} (is another vsky-manager using this --data-dir?)",
                path.display()
            ))
        })?;
        Ok(RedbStore { db })
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

impl Store for RedbStore {
    fn load(&self) -> Result<Option<Records>, StoreError> {
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
            return Err(StoreError::Io(format!(
                "store format {version} is not supported by this manager (expects {FORMAT_VERSION})"
            )));
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
        if changes.next_id {
            let mut meta = txn.open_table(META).map_err(io)?;
            meta.insert("next_id", encode(&cluster.next_id()).as_slice())
                .map_err(io)?;
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

    /// Records written through commit() load back into an identical cluster.
    #[test]
    fn commit_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_none());
        let mut c = Cluster::new(Settings::new(8 << 20)).unwrap();
        store.initialise(&c).unwrap();
        let mut secrets = CountingSecrets::default();
        for s in 0..3 {
            let (_, ch) = c
                .add_server(NewServer {
                    name: format!("s{s}"),
                    address: format!("127.0.0.1:{}", 9000 + s),
                    labels: Default::default(),
                })
                .unwrap();
            store.commit(&c, &ch).unwrap();
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
        };
        let (_, ch) = c.create_volume(new("a"), &mut secrets).unwrap();
        store.commit(&c, &ch).unwrap();
        let (_, ch) = c.create_volume(new("b"), &mut secrets).unwrap();
        store.commit(&c, &ch).unwrap();
        let ch = c.delete_volume("a").unwrap();
        store.commit(&c, &ch).unwrap();
        let sr = vsky_model::Group {
            name: "sr1".into(),
            uuid: Some("u-1".into()),
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
}
