//! The manager's state: one [`Cluster`] behind a lock, kept in step with the
//! store.
//!
//! Every mutation runs the same way: take the lock, apply the model
//! operation (which changes nothing on error), write the records it touched
//! to the store in one durable transaction, and only then answer. If the
//! store write fails the in-memory cluster is rebuilt from the store, so
//! memory never runs ahead of what a restart would see.
//!
//! A std mutex (not tokio's) guards the cluster: critical sections are short
//! and never await; mutations run on the blocking pool because the store
//! fsyncs.
//!
//! The manager's [`Role`] (single, leader or standby) lives here with the
//! [`Manager`] that holds it: a standby refuses writes. The election
//! (`leader.rs`) sets the role and the HTTP layer reads it, so both depend
//! on this module and it depends on neither.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;
use vsky_model::{Changes, Cluster, ModelError, SecretSource, ServerId, Settings};
use vsky_sync::LockExt;

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the manager lost track of its store after a failed write; restart vsky-manager")]
    Poisoned,
}

/// Export secrets from the operating system's CSPRNG: 128 bits, hex.
pub struct OsSecrets;

impl SecretSource for OsSecrets {
    fn export_secret(&mut self) -> String {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// This manager's part in serving the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The only manager (embedded redb store): always accepts writes.
    Single,
    /// Elected among managers sharing an etcd store: accepts writes.
    Leader,
    /// Another manager leads (its advertised URL, when known): answers
    /// reads and refuses writes with `not_leader`.
    Standby { leader: Option<String> },
}

impl Role {
    /// True when this manager may accept writes.
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Single | Role::Leader)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Leader => "leader",
            Role::Standby { .. } => "standby",
        }
    }
}

pub struct Manager {
    cluster: Mutex<Cluster>,
    store: Box<dyn Store>,
    /// Set when a failed write could not be undone by reloading: the manager
    /// then refuses every request rather than serve state it cannot persist.
    poisoned: AtomicBool,
    /// Publishes the cluster generation; agents long-poll on it.
    generation: watch::Sender<u64>,
    /// Set when the manager begins shutting down, so long-polls answer at
    /// once instead of holding the shutdown for up to a minute.
    stopping: watch::Sender<bool>,
    /// Last heartbeat per server (volatile: a restart starts a new grace).
    last_seen: Mutex<HashMap<ServerId, Instant>>,
    /// Whether this manager may write: always with redb, only while it
    /// leads with etcd (`crate::leader` drives it). Leader-only background
    /// work should wait on [`Manager::role_watch`].
    role: watch::Sender<Role>,
}

fn load_cluster(store: &dyn Store) -> Result<Option<Cluster>, ManagerError> {
    match store.load()? {
        Some(records) => Ok(Some(Cluster::load(records)?)),
        None => Ok(None),
    }
}

/// Gives a cluster loaded from a store older than cluster ids its id, and
/// stores it. A manager that may not write (an etcd standby) leaves that to
/// the leader, which does it when it takes over.
pub(crate) fn ensure_cluster_id(store: &dyn Store, cluster: &mut Cluster) {
    if !cluster.cluster_id().is_empty() {
        return;
    }
    let changes = cluster.ensure_cluster_id(&mut OsSecrets);
    match store.commit(cluster, &changes) {
        Ok(()) => {
            tracing::info!(
                cluster_id = cluster.cluster_id(),
                "the cluster has its id now"
            )
        }
        Err(e) => {
            tracing::info!(error = %e, "cannot store a cluster id yet; the leading manager will");
            if let Ok(Some(reloaded)) = load_cluster(store) {
                *cluster = reloaded;
            }
        }
    }
}

impl Manager {
    /// Opens the cluster from the store, initialising an empty store with
    /// `settings`. A chunk size given for an existing store must match.
    pub fn open(
        store: Box<dyn Store>,
        settings: Settings,
        chunk_size_given: bool,
    ) -> Result<Self, ManagerError> {
        let cluster = match load_cluster(store.as_ref())? {
            Some(c) => {
                if chunk_size_given && c.settings().chunk_size_bytes != settings.chunk_size_bytes {
                    return Err(StoreError::SettingsMismatch {
                        stored: format!("chunk size {}", c.settings().chunk_size_bytes),
                        requested: format!("chunk size {}", settings.chunk_size_bytes),
                    }
                    .into());
                }
                c
            }
            None => {
                let mut c = Cluster::new(settings)?;
                c.ensure_cluster_id(&mut OsSecrets);
                store.initialise(&c)?;
                tracing::info!(
                    cluster_id = c.cluster_id(),
                    "initialised a new, empty cluster"
                );
                c
            }
        };
        let mut cluster = cluster;
        ensure_cluster_id(store.as_ref(), &mut cluster);
        // Start generations at a random point: agents compare for
        // inequality, and a restarted manager counting from 1 again could
        // land on the very number an agent holds and leave it waiting.
        let mut seed = [0u8; 4];
        getrandom::fill(&mut seed).expect("the OS random source is available");
        cluster.set_generation(u64::from(u32::from_le_bytes(seed)) << 16);
        let (generation, _) = watch::channel(cluster.generation());
        Ok(Manager {
            cluster: Mutex::new(cluster),
            store,
            poisoned: AtomicBool::new(false),
            generation,
            stopping: watch::channel(false).0,
            last_seen: Mutex::new(HashMap::new()),
            role: watch::channel(Role::Single).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        // A panic while holding the lock (a broken invariant) poisons the
        // mutex; `mutate` then rebuilds the cluster from the store, so the
        // guard is safe to take back here.
        self.cluster.lock_unpoisoned()
    }

    /// Runs a read-only query.
    pub fn read<T>(&self, f: impl FnOnce(&Cluster) -> T) -> Result<T, ManagerError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(ManagerError::Poisoned);
        }
        Ok(f(&self.lock()))
    }

    /// Runs one mutation and persists it before returning.
    ///
    /// A mutation is all or nothing as a whole, even when the closure chains
    /// several model operations and a later one fails: whenever the
    /// in-memory cluster may have run ahead of the store (an error after a
    /// partial change, a failed commit, a panic), it is rebuilt from the
    /// store, which holds exactly the acknowledged state.
    pub async fn mutate<T, F>(self: &Arc<Self>, f: F) -> Result<T, ManagerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Cluster, &mut dyn SecretSource) -> Result<(T, Changes), ModelError>
            + Send
            + 'static,
    {
        let this = Arc::clone(self);
        match tokio::task::spawn_blocking(move || this.mutate_blocking(f)).await {
            Ok(result) => result,
            Err(panic) => {
                tracing::error!(error = %panic, "a mutation panicked; rebuilding state from the store");
                let mut cluster = self.lock();
                self.reload(&mut cluster);
                Err(ManagerError::Poisoned)
            }
        }
    }

    fn mutate_blocking<T, F>(&self, f: F) -> Result<T, ManagerError>
    where
        F: FnOnce(&mut Cluster, &mut dyn SecretSource) -> Result<(T, Changes), ModelError>,
    {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(ManagerError::Poisoned);
        }
        if let Role::Standby { leader } = self.role() {
            return Err(StoreError::NotLeader { leader }.into());
        }
        let mut cluster = self.lock();
        let before = cluster.generation();
        let (value, changes) = match f(&mut cluster, &mut OsSecrets) {
            Ok(done) => done,
            Err(e) => {
                // Each model operation is all or nothing, so an unchanged
                // generation proves nothing changed; otherwise an earlier
                // step of this closure did, and it must not outlive the
                // error.
                if cluster.generation() != before {
                    self.reload(&mut cluster);
                }
                return Err(e.into());
            }
        };
        if let Err(e) = self.store.commit(&cluster, &changes) {
            tracing::error!(error = %e, "store commit failed; reloading state from the store");
            self.reload(&mut cluster);
            return Err(e.into());
        }
        // Records changed, or only some agent's desired state (scrub runs
        // live in memory): either way the generation moved.
        if !changes.is_empty() || cluster.generation() != before {
            self.generation.send_replace(cluster.generation());
        }
        Ok(value)
    }

    /// Replaces the in-memory cluster with the store's; if even that fails
    /// the manager refuses every request from then on (restart it).
    fn reload(&self, cluster: &mut Cluster) {
        match load_cluster(self.store.as_ref()) {
            Ok(Some(mut reloaded)) => {
                // Keep generations moving forward so long-polling agents
                // notice whatever the reload undid.
                reloaded.set_generation(cluster.generation() + 1);
                self.generation.send_replace(reloaded.generation());
                *cluster = reloaded;
            }
            other => {
                tracing::error!(
                    ?other,
                    "reload from the store failed; refusing further requests"
                );
                self.poisoned.store(true, Ordering::Release);
            }
        }
    }

    /// Replaces the in-memory cluster with the store's current records: a
    /// standby following the leader, a new leader taking over, or recovery
    /// after a failed write once the store answers again. Unlike the reload
    /// after a failed commit, a failure here changes nothing (the caller
    /// retries) and a success clears `poisoned`.
    pub fn resync(&self) -> Result<(), ManagerError> {
        let Some(mut loaded) = load_cluster(self.store.as_ref())? else {
            return Err(
                StoreError::Io("the store holds no cluster (not initialised)".into()).into(),
            );
        };
        let mut cluster = self.lock();
        loaded.set_generation(cluster.generation() + 1);
        *cluster = loaded;
        self.generation.send_replace(cluster.generation());
        self.poisoned.store(false, Ordering::Release);
        Ok(())
    }

    /// Gives a cluster from a store older than cluster ids its id (a new
    /// leader on etcd calls this after taking over).
    pub fn ensure_cluster_id(&self) {
        ensure_cluster_id(self.store.as_ref(), &mut self.lock());
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// True when this manager accepts writes (single, or elected leader).
    pub fn is_leader(&self) -> bool {
        self.role.borrow().is_leader()
    }

    /// Follows role changes, e.g. to run leader-only background work.
    pub fn role_watch(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn set_role(&self, role: Role) {
        let taking_over = role == Role::Leader && !self.is_leader();
        if taking_over {
            // Agents heartbeated to the previous leader, so this process has
            // no recent heartbeats: give every server a fresh grace period
            // rather than declare them all silent.
            let servers: Vec<ServerId> = self.lock().servers().map(|s| s.id).collect();
            let now = Instant::now();
            let mut seen = self.last_seen.lock_unpoisoned();
            for id in servers {
                seen.insert(id, now);
            }
        }
        self.role.send_if_modified(|current| {
            if *current == role {
                return false;
            }
            *current = role;
            true
        });
    }

    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn saw_heartbeat(&self, server: ServerId) {
        self.last_seen
            .lock_unpoisoned()
            .insert(server, Instant::now());
    }

    /// Seconds since the server's last heartbeat to this manager process.
    pub fn heartbeat_age_seconds(&self, server: ServerId) -> Option<f64> {
        let seen = self.last_seen.lock_unpoisoned();
        seen.get(&server).map(|t| t.elapsed().as_secs_f64())
    }
}
