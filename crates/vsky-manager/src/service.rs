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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;
use vsky_model::{Changes, Cluster, ModelError, SecretSource, ServerId, Settings};

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
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

pub struct Manager {
    cluster: Mutex<Cluster>,
    store: Box<dyn Store>,
    /// Set when a failed write could not be undone by reloading: the manager
    /// then refuses every request rather than serve state it cannot persist.
    poisoned: AtomicBool,
    /// Publishes the cluster generation; agents long-poll on it.
    generation: watch::Sender<u64>,
    /// Last heartbeat per server (volatile: a restart starts a new grace).
    last_seen: Mutex<HashMap<ServerId, Instant>>,
}

fn load_cluster(store: &dyn Store) -> Result<Option<Cluster>, ServiceError> {
    let Some(st) = store.load()? else {
        return Ok(None);
    };
    Ok(Some(Cluster::load(
        st.settings,
        st.next_id,
        st.servers,
        st.disks,
        st.volumes,
        st.groups,
    )?))
}

impl Manager {
    /// Opens the cluster from the store, initialising an empty store with
    /// `settings`. A chunk size given for an existing store must match.
    pub fn open(
        store: Box<dyn Store>,
        settings: Settings,
        chunk_size_given: bool,
    ) -> Result<Self, ServiceError> {
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
                let c = Cluster::new(settings)?;
                store.initialise(&c)?;
                c
            }
        };
        let (generation, _) = watch::channel(cluster.generation());
        Ok(Manager {
            cluster: Mutex::new(cluster),
            store,
            poisoned: AtomicBool::new(false),
            generation,
            last_seen: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        // A panic while holding the lock can only come from a broken model
        // invariant; the state is still the last committed one plus at most
        // that mutation, so recover the guard rather than wedge the manager.
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a read-only query.
    pub fn read<T>(&self, f: impl FnOnce(&Cluster) -> T) -> Result<T, ServiceError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(ServiceError::Poisoned);
        }
        Ok(f(&self.lock()))
    }

    /// Runs one mutation and persists it before returning.
    pub async fn mutate<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Cluster, &mut dyn SecretSource) -> Result<(T, Changes), ModelError>
            + Send
            + 'static,
    {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.mutate_blocking(f))
            .await
            .unwrap_or(Err(ServiceError::Poisoned))
    }

    fn mutate_blocking<T, F>(&self, f: F) -> Result<T, ServiceError>
    where
        F: FnOnce(&mut Cluster, &mut dyn SecretSource) -> Result<(T, Changes), ModelError>,
    {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(ServiceError::Poisoned);
        }
        let mut cluster = self.lock();
        let (value, changes) = f(&mut cluster, &mut OsSecrets)?;
        if let Err(e) = self.store.commit(&cluster, &changes) {
            tracing::error!(error = %e, "store commit failed; reloading state from the store");
            match load_cluster(self.store.as_ref()) {
                Ok(Some(reloaded)) => *cluster = reloaded,
                other => {
                    tracing::error!(?other, "reload failed; refusing further requests");
                    self.poisoned.store(true, Ordering::Release);
                }
            }
            return Err(e.into());
        }
        if !changes.is_empty() {
            self.generation.send_replace(cluster.generation());
        }
        Ok(value)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn saw_heartbeat(&self, server: ServerId) {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server, Instant::now());
    }

    /// Seconds since the server's last heartbeat to this manager process.
    pub fn heartbeat_age_seconds(&self, server: ServerId) -> Option<f64> {
        let seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&server).map(|t| t.elapsed().as_secs_f64())
    }
}
