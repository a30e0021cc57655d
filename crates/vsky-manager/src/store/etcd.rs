//! The replicated store: the cluster's records in etcd, for several
//! managers of which one leads.
//!
//! Key layout under the prefix `P` (default `/vastsky`, from the store URL):
//!
//! | key                      | value                                        |
//! |--------------------------|----------------------------------------------|
//! | `P/meta/format_version`  | JSON number, [`FORMAT_VERSION`]               |
//! | `P/meta/settings`        | JSON `Settings`                               |
//! | `P/meta/next_id`         | JSON number                                   |
//! | `P/meta/commit`          | the guard key: rewritten by every commit     |
//! | `P/leader`               | the elected manager (attached to its lease)  |
//! | `P/servers/<id>` …       | one JSON record per key, ids zero-padded to  |
//! | `P/disks/<id>`           | 20 digits so keys sort like ids; groups are  |
//! | `P/volumes/<id>`         | keyed by name (`P/groups/<name>`); the same  |
//! | `P/jobs/<id>`            | encoding as the redb store                   |
//! | `P/groups/<name>`        | (`store::encode`)                            |
//!
//! **Why no chunk is ever allocated twice.** Every commit is one etcd
//! transaction guarded by two compares:
//! 1. `P/leader` is attached to this manager's lease (fencing: once the
//!    lease is gone, because this manager was paused, partitioned or
//!    deposed, its writes fail even if it still believes it leads);
//! 2. `P/meta/commit`'s mod revision is the one this manager loaded or last
//!    wrote (optimistic concurrency: its in-memory cluster, from which the
//!    allocation was computed, is exactly the stored one).
//!
//! The transaction rewrites `P/meta/commit` too, so any two commits
//! computed from the same state conflict and only one can land. Chunk
//! ownership is derived from volume records, so two commits that could
//! hand out one chunk twice can never both succeed, whichever managers
//! send them.
//!
//! A commit whose outcome is unknown (etcd lost its leader, the answer was
//! lost) is retried for a few seconds: the guard makes that safe, and the
//! guard key's value carries a per-commit nonce, so a retry can tell that
//! its first attempt landed.
//!
//! A load reads every key under the prefix at one revision (paged, with
//! the revision pinned), so it sees one consistent snapshot.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vsky_model::{Changes, Cluster, Records};
use vsky_sync::LockExt;

use super::{
    FORMAT_VERSION, RecordKey, RecordWrite, Store, StoreError, Table, all_records, changed_records,
    decode, decode_record, encode,
};
use crate::etcd_client::{Compare, EtcdClient, EtcdConfig, EtcdError, Kv, Op, prefix_end};

/// Keys per page when loading: small enough for the gateway's message
/// limit, large enough that a big cluster loads in a few round trips.
const LOAD_PAGE_KEYS: i64 = 2000;

/// Record writes per transaction during an import: below etcd's default
/// `--max-txn-ops` of 128.
const IMPORT_BATCH_OPS: usize = 100;

/// What the leader key holds: who leads and where clients reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The URL clients use to reach the leader (`--advertise-url`).
    pub url: String,
    /// Unique per manager process, so a restarted manager on the same URL
    /// is a different candidate.
    pub id: String,
}

/// The state a commit is checked against.
#[derive(Debug, Default)]
struct Fence {
    /// This manager's lease while it leads; commits are refused without it.
    lease: Option<i64>,
    /// Mod revision of `P/meta/commit` in the state this manager holds.
    commit_revision: i64,
    /// The leader's URL as last seen, for "not the leader" answers.
    leader_hint: Option<String>,
}

struct Inner {
    client: EtcdClient,
    prefix: String,
    fence: Mutex<Fence>,
}

/// A handle on the etcd store; clones share the client and the fence (the
/// manager commits through one, the election loop steers the other).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

fn etcd(e: EtcdError) -> StoreError {
    StoreError::Io(e.to_string())
}

impl EtcdStore {
    /// Builds the client and checks that etcd answers, so a wrong `--store`
    /// fails at start-up with a clear message.
    pub fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let client = EtcdClient::new(config).map_err(etcd)?;
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                prefix: config.prefix.clone(),
                fence: Mutex::new(Fence::default()),
            }),
        };
        store
            .inner
            .client
            .range(store.leader_key().as_slice(), None, 0, 1)
            .map_err(etcd)?;
        Ok(store)
    }

    pub fn client(&self) -> &EtcdClient {
        &self.inner.client
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/{rest}", self.inner.prefix).into_bytes()
    }

    pub fn leader_key(&self) -> Vec<u8> {
        self.key("leader")
    }

    pub fn commit_key(&self) -> Vec<u8> {
        self.key("meta/commit")
    }

    fn meta_key(&self, name: &str) -> Vec<u8> {
        self.key(&format!("meta/{name}"))
    }

    fn record_key(&self, table: Table, key: &RecordKey) -> Vec<u8> {
        match key {
            RecordKey::Id(id) => self.key(&format!("{}/{id:020}", table.name())),
            RecordKey::Name(name) => self.key(&format!("{}/{name}", table.name())),
        }
    }

    fn fence(&self) -> std::sync::MutexGuard<'_, Fence> {
        self.inner.fence.lock_unpoisoned()
    }

    /// True when a manager currently leads on this store.
    pub fn has_leader(&self) -> Result<bool, StoreError> {
        let r = self
            .inner
            .client
            .range(&self.leader_key(), None, 0, 1)
            .map_err(etcd)?;
        Ok(!r.kvs.is_empty())
    }

    /// Arms (with this manager's lease, once it leads) or disarms commits.
    pub fn set_lease(&self, lease: Option<i64>) {
        self.fence().lease = lease;
    }

    /// Remembers the leader's URL for "not the leader" errors.
    pub fn set_leader_hint(&self, url: Option<String>) {
        self.fence().leader_hint = url;
    }

    /// Mod revision of the guard key in the state last loaded or written;
    /// a standby compares it with etcd's to know when to reload.
    pub fn loaded_revision(&self) -> i64 {
        self.fence().commit_revision
    }

    fn write_ops(&self, writes: &[RecordWrite]) -> Vec<Op> {
        writes
            .iter()
            .map(|w| {
                let key = self.record_key(w.table, &w.key);
                match &w.value {
                    Some(v) => Op::Put {
                        key,
                        value: v.clone(),
                        lease: 0,
                    },
                    None => Op::Delete(key),
                }
            })
            .collect()
    }

    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Op {
        Op::Put {
            key,
            value,
            lease: 0,
        }
    }

    /// The guard key's value: who committed (for people reading etcd), and
    /// a nonce that identifies this very commit, so a retried transaction
    /// can tell whether its first attempt landed.
    fn commit_marker(&self) -> Vec<u8> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        encode(&serde_json::json!({
            "by": std::process::id(),
            "host": hostname(),
            "nonce": u64::from_le_bytes(nonce),
        }))
    }

    /// Turns a failed guarded transaction into the reason: deposed (the
    /// leader key is not on our lease) or overtaken (the guard moved).
    fn refusal(&self, lease: i64, leader: Option<&Kv>, commit: Option<&Kv>) -> StoreError {
        let holder = leader.filter(|kv| kv.lease != 0);
        if holder.is_none_or(|kv| kv.lease != lease) {
            let url = holder
                .and_then(|kv| serde_json::from_slice::<LeaderRecord>(&kv.value).ok())
                .map(|r| r.url);
            self.set_lease(None);
            self.set_leader_hint(url.clone());
            return StoreError::NotLeader { leader: url };
        }
        StoreError::Conflict(format!(
            "the guard key moved to revision {} but this manager holds revision {}",
            commit.map_or(0, |kv| kv.mod_revision),
            self.loaded_revision()
        ))
    }
}

/// How long one commit is retried while etcd elects a leader. Its
/// elections take about a second, but a proposal a follower forwarded to a
/// leader that just died hangs until the request timeout (5 s), so the
/// window allows one timed-out attempt and a retry; a lost quorum fails the
/// request after about two timeouts.
const COMMIT_RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
const COMMIT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Failures after which a guarded commit may be retried: etcd could not
/// reach a decision (no leader, leader changed, timed out), or the
/// exchange broke.
fn retriable(e: &EtcdError) -> bool {
    match e {
        EtcdError::Unreachable { .. } => true,
        EtcdError::Server { code, message, .. } => {
            *code == 14
                || message.contains("no leader")
                || message.contains("leader changed")
                || message.contains("timed out")
        }
        EtcdError::Decode { .. } | EtcdError::Config(_) => false,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Option<Records>, StoreError> {
        let prefix = format!("{}/", self.inner.prefix).into_bytes();
        let end = prefix_end(&prefix);
        let client = &self.inner.client;
        // Page through the prefix at one pinned revision: one snapshot.
        let mut from = prefix.clone();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let page = client
                .range(&from, Some(&end), revision, LOAD_PAGE_KEYS)
                .map_err(etcd)?;
            if revision == 0 {
                revision = page.revision;
            }
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            kvs.extend(page.kvs);
            if !more {
                break;
            }
        }
        let mut records = Records::default();
        let mut format = None;
        let mut settings = None;
        let mut next_id = None;
        let mut commit_revision = 0;
        let mut any_record = false;
        for kv in &kvs {
            let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            let (table, key) = name.split_once('/').unwrap_or((name.as_str(), ""));
            match (table, key) {
                ("leader", "") => {}
                ("meta", "commit") => commit_revision = kv.mod_revision,
                ("meta", "format_version") => format = Some(kv.value.clone()),
                ("meta", "settings") => settings = Some(kv.value.clone()),
                ("meta", "next_id") => next_id = Some(kv.value.clone()),
                _ => match Table::from_name(table) {
                    Some(t) if !key.is_empty() => {
                        any_record = true;
                        decode_record(&mut records, t, key, &kv.value)?;
                    }
                    _ => {
                        return Err(StoreError::Decode {
                            key: format!("{}/{name}", self.inner.prefix),
                            detail: "not a VastSky key; is another application using this etcd prefix? Give the store its own prefix (etcd://…/PREFIX)".into(),
                        });
                    }
                },
            }
        }
        self.fence().commit_revision = commit_revision;
        let Some(format) = format else {
            if any_record || settings.is_some() || next_id.is_some() {
                return Err(StoreError::Io(format!(
                    "etcd prefix {} holds records but no format version: an interrupted `vsky-manager migrate`? Delete the prefix (etcdctl del --prefix {}/) and migrate again",
                    self.inner.prefix, self.inner.prefix
                )));
            }
            return Ok(None);
        };
        let version: u64 = decode("meta/format_version", &format)?;
        if version != FORMAT_VERSION {
            return Err(StoreError::Unsupported {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        records.settings = decode("meta/settings", &settings.unwrap_or_default())?;
        records.next_id = decode("meta/next_id", &next_id.unwrap_or_default())?;
        Ok(Some(records))
    }

    fn initialise(&self, cluster: &Cluster) -> Result<(), StoreError> {
        let Some(lease) = self.fence().lease else {
            let leader = self.fence().leader_hint.clone();
            return Err(StoreError::NotLeader { leader });
        };
        let leader = self.leader_key();
        let format = self.meta_key("format_version");
        let success = [
            self.put(format.clone(), encode(&FORMAT_VERSION)),
            self.put(self.meta_key("settings"), encode(cluster.settings())),
            self.put(self.meta_key("next_id"), encode(&cluster.next_id())),
            self.put(self.commit_key(), self.commit_marker()),
        ];
        let resp = self
            .inner
            .client
            .txn(
                &[
                    Compare::Lease(leader.clone(), lease),
                    Compare::CreateRevision(format, 0),
                ],
                &success,
                &[Op::Get(leader), Op::Get(self.commit_key())],
            )
            .map_err(etcd)?;
        if !resp.succeeded {
            let leader = resp.ranges.first().and_then(|r| r.first());
            return match self.refusal(lease, leader, None) {
                StoreError::Conflict(_) => Err(StoreError::Conflict(
                    "another manager initialised the store first; restart this one".into(),
                )),
                other => Err(other),
            };
        }
        self.fence().commit_revision = resp.revision;
        Ok(())
    }

    fn commit(&self, cluster: &Cluster, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let (lease, expected) = {
            let fence = self.fence();
            match fence.lease {
                Some(lease) => (lease, fence.commit_revision),
                None => {
                    return Err(StoreError::NotLeader {
                        leader: fence.leader_hint.clone(),
                    });
                }
            }
        };
        let mut success = self.write_ops(&changed_records(cluster, changes));
        if changes.next_id {
            success.push(self.put(self.meta_key("next_id"), encode(&cluster.next_id())));
        }
        if changes.settings {
            success.push(self.put(self.meta_key("settings"), encode(cluster.settings())));
        }
        let marker = self.commit_marker();
        success.push(self.put(self.commit_key(), marker.clone()));
        let leader = self.leader_key();
        let compare = [
            Compare::Lease(leader.clone(), lease),
            Compare::ModRevision(self.commit_key(), expected),
        ];
        let failure = [Op::Get(leader), Op::Get(self.commit_key())];
        let mut pause = COMMIT_RETRY_PAUSE;
        let mut attempt = 1;
        let deadline = std::time::Instant::now() + COMMIT_RETRY_WINDOW;
        loop {
            match self.inner.client.txn(&compare, &success, &failure) {
                Ok(resp) if resp.succeeded => {
                    // The transaction rewrote the guard key, so its mod
                    // revision is the transaction's revision.
                    self.fence().commit_revision = resp.revision;
                    return Ok(());
                }
                Ok(resp) => {
                    let first = |i: usize| resp.ranges.get(i).and_then(|r| r.first());
                    if let Some(guard) = first(1).filter(|kv| kv.value == marker) {
                        // An earlier attempt of this very commit landed;
                        // its answer was lost (see below).
                        self.fence().commit_revision = guard.mod_revision;
                        return Ok(());
                    }
                    return Err(self.refusal(lease, first(0), first(1)));
                }
                // etcd lost its leader, or the answer was lost: the outcome
                // is unknown. Retrying is safe because the transaction is
                // guarded: if the first attempt landed, the guard moved and
                // the retry fails its compare, and the marker in the guard
                // key then says it was ours. So no change is applied twice,
                // and a brief etcd election does not fail the request.
                Err(e) if std::time::Instant::now() + pause < deadline && retriable(&e) => {
                    tracing::warn!(error = %e, attempt, "etcd commit failed; retrying the guarded transaction");
                    std::thread::sleep(pause);
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(etcd(e)),
            }
        }
    }

    fn import(&self, records: &Records) -> Result<(), StoreError> {
        let prefix = format!("{}/", self.inner.prefix).into_bytes();
        let client = &self.inner.client;
        let leader = client.range(&self.leader_key(), None, 0, 0).map_err(etcd)?;
        if !leader.kvs.is_empty() {
            return Err(StoreError::NotEmpty(format!(
                "a vsky-manager is running against etcd prefix {}; stop every manager before migrating",
                self.inner.prefix
            )));
        }
        let present = client.count(&prefix, &prefix_end(&prefix)).map_err(etcd)?;
        if present > 0 {
            return Err(StoreError::NotEmpty(format!(
                "etcd prefix {} already holds {present} keys; migrate into an empty prefix (or delete it with etcdctl del --prefix {}/)",
                self.inner.prefix, self.inner.prefix
            )));
        }
        // Records first, in batches (an import can be larger than one
        // transaction may be); the meta keys last, so an interrupted import
        // is recognisable (records without a format version) and refused
        // at load instead of being half-read.
        let format = self.meta_key("format_version");
        let no_format = [Compare::CreateRevision(format.clone(), 0)];
        let ops = self.write_ops(&all_records(records));
        for batch in ops.chunks(IMPORT_BATCH_OPS) {
            let resp = client.txn(&no_format, batch, &[]).map_err(etcd)?;
            if !resp.succeeded {
                return Err(StoreError::NotEmpty(format!(
                    "a manager initialised etcd prefix {} during the import; stop every manager, delete the prefix and migrate again",
                    self.inner.prefix
                )));
            }
        }
        let meta = [
            self.put(format, encode(&FORMAT_VERSION)),
            self.put(self.meta_key("settings"), encode(&records.settings)),
            self.put(self.meta_key("next_id"), encode(&records.next_id)),
            self.put(self.commit_key(), self.commit_marker()),
        ];
        let guards = [
            no_format[0].clone(),
            Compare::CreateRevision(self.leader_key(), 0),
        ];
        let resp = client.txn(&guards, &meta, &[]).map_err(etcd)?;
        if !resp.succeeded {
            return Err(StoreError::NotEmpty(format!(
                "a manager started against etcd prefix {} during the import; stop every manager, delete the prefix and migrate again",
                self.inner.prefix
            )));
        }
        Ok(())
    }
}
