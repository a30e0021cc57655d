//! Leader election among managers that share an etcd store.
//!
//! Each manager runs one [`Election`] loop on its own thread (the etcd
//! client blocks). The loop is a small state machine with two states:
//!
//! - **Standby.** Every `poll` it reads the leader key and the store's guard
//!   key in one transaction. When nobody leads, it grants itself a lease of
//!   `ttl` and campaigns: one transaction puts the leader key (attached to
//!   that lease) only if the key does not exist. When the guard key moved,
//!   someone committed, so it reloads its in-memory cluster: standbys answer
//!   reads, at most one `poll` behind the leader.
//! - **Leader.** On winning it first reloads everything from the store
//!   (resync jobs and every other piece of state are records already), arms
//!   the store's fence with its lease, and only then publishes
//!   [`Role::Leader`], so no write is accepted on stale state. Every
//!   `ttl / 3` it refreshes the lease and checks that the leader key is
//!   still its own. It steps down when the lease is gone, the key is not
//!   its own, or no refresh succeeded for `2/3 ttl` (it can no longer be
//!   sure it leads).
//!
//! Safety does not rest on these timings: every commit's transaction
//! compares the leader key's lease with this manager's (see
//! `store::etcd`), so a manager that was paused past its lease and still
//! believes it leads has its writes refused by etcd itself. The timings only
//! decide how fast a standby takes over: within `ttl + poll` after a
//! leader dies, and at once after a leader stops cleanly (it revokes its
//! lease).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::etcd_client::{Compare, EtcdError, Kv, Op};
use crate::manager::{Manager, Role};
use crate::store::StoreError;
use crate::store::etcd::{EtcdStore, LeaderRecord};

/// The lease TTL when `--lease-ttl` is not given: a dead leader is
/// replaced within about 7 s.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(6);
/// Bounds of `--lease-ttl`: etcd refuses leases much shorter than its
/// election timeout, and a long TTL only delays failover.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(2);
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(60);

pub struct Election {
    store: EtcdStore,
    record: LeaderRecord,
    ttl: Duration,
    /// How often a standby looks at the leader key and the guard key.
    poll: Duration,
    /// The lease this manager leads with, and when its last successful
    /// refresh was sent (the lease is valid until at least `ttl` later).
    leading: Option<(i64, Instant)>,
    /// The last problem logged, so a persistent one is logged once.
    last_problem: Option<String>,
}

/// A running election loop: stop it to resign.
pub struct ElectionHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ElectionHandle {
    /// Stops the loop; a leader revokes its lease, so a standby takes over
    /// at once instead of after the TTL.
    pub fn resign(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn etcd(e: EtcdError) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Election {
    /// `url` is what clients should use to reach this manager.
    pub fn new(store: EtcdStore, url: String, ttl: Duration) -> Election {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        let id = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let poll = (ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(1));
        Election {
            store,
            record: LeaderRecord { url, id },
            ttl,
            poll,
            leading: None,
            last_problem: None,
        }
    }

    /// Reads the leader key and the guard key in one snapshot.
    fn observe(&self) -> Result<(Option<Kv>, i64), StoreError> {
        let resp = self
            .store
            .client()
            .txn(
                &[],
                &[
                    Op::Get(self.store.leader_key()),
                    Op::Get(self.store.commit_key()),
                ],
                &[],
            )
            .map_err(etcd)?;
        let first = |i: usize| resp.ranges.get(i).and_then(|r| r.first()).cloned();
        let commit_revision = first(1).map_or(0, |kv| kv.mod_revision);
        Ok((first(0), commit_revision))
    }

    fn timeout(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_secs(1))
    }

    /// One campaign: true when this manager now holds the leader key.
    /// Used at start-up (before the manager exists) and by the loop.
    pub fn try_acquire(&mut self) -> Result<bool, StoreError> {
        let (leader, _) = self.observe()?;
        if let Some(kv) = leader {
            let url = serde_json::from_slice::<LeaderRecord>(&kv.value)
                .ok()
                .map(|r| r.url);
            self.store.set_leader_hint(url);
            return Ok(self.leading.is_some_and(|(lease, _)| lease == kv.lease));
        }
        let client = self.store.client();
        let sent = Instant::now();
        let lease = client.lease_grant(self.ttl).map_err(etcd)?;
        let key = self.store.leader_key();
        let value = serde_json::to_vec(&self.record).expect("the leader record serialises");
        let resp = client.txn(
            &[Compare::CreateRevision(key.clone(), 0)],
            &[Op::Put {
                key: key.clone(),
                value,
                lease,
            }],
            &[Op::Get(key)],
        );
        match resp {
            Ok(r) if r.succeeded => {
                self.leading = Some((lease, sent));
                self.store.set_lease(Some(lease));
                self.store.set_leader_hint(Some(self.record.url.clone()));
                Ok(true)
            }
            other => {
                // Lost the race (or could not tell): give the lease back so
                // it does not linger.
                let _ = client.lease_revoke(lease, self.timeout());
                other.map_err(etcd)?;
                Ok(false)
            }
        }
    }

    /// Starts the loop on its own thread. `manager` must have been opened
    /// on the same store; if `try_acquire` already won, the loop starts as
    /// leader.
    pub fn spawn(self, manager: Arc<Manager>) -> ElectionHandle {
        // Set the role before returning, so nothing is served as `Single`.
        manager.set_role(if self.leading.is_some() {
            Role::Leader
        } else {
            Role::Standby { leader: None }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vsky-election".into())
            .spawn(move || self.run(manager, flag))
            .expect("the election thread starts");
        ElectionHandle {
            stop,
            thread: Some(thread),
        }
    }

    fn run(mut self, manager: Arc<Manager>, stop: Arc<AtomicBool>) {
        if self.leading.is_some() {
            // Won at start-up: the manager was opened after winning, so its
            // state is current.
            tracing::info!(url = %self.record.url, "leading: accepting writes");
        }
        while !stop.load(Ordering::Acquire) {
            let pause = if self.leading.is_some() {
                self.lead_tick(&manager);
                self.ttl / 3
            } else {
                self.standby_tick(&manager);
                self.poll
            };
            sleep_unless(&stop, pause);
        }
        if let Some((lease, _)) = self.leading.take() {
            self.store.set_lease(None);
            manager.set_role(Role::Standby { leader: None });
            match self.store.client().lease_revoke(lease, self.timeout()) {
                Ok(()) => tracing::info!("resigned the leadership"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the leader lease; a standby takes over when it expires")
                }
            }
        }
    }

    fn problem(&mut self, what: &str, e: &dyn std::fmt::Display) {
        let text = format!("{what}: {e}");
        if self.last_problem.as_deref() != Some(text.as_str()) {
            tracing::warn!("{text}");
            self.last_problem = Some(text);
        }
    }

    fn standby_tick(&mut self, manager: &Arc<Manager>) {
        let (leader, commit_revision) = match self.observe() {
            Ok(o) => o,
            Err(e) => {
                self.problem("cannot read the leader from etcd", &e);
                return;
            }
        };
        match leader {
            Some(kv) => {
                let record = serde_json::from_slice::<LeaderRecord>(&kv.value).ok();
                if record.as_ref().is_some_and(|r| r.id == self.record.id) {
                    // Our own key from a leadership we gave up while etcd
                    // was unreachable: clear it rather than name ourselves
                    // as the leader until it expires.
                    let _ = self.store.client().lease_revoke(kv.lease, self.timeout());
                    return;
                }
                let url = record.map(|r| r.url);
                self.store.set_leader_hint(url.clone());
                manager.set_role(Role::Standby { leader: url });
                // Someone committed since we loaded: follow.
                let behind = commit_revision != self.store.loaded_revision();
                if (behind || manager.is_poisoned())
                    && let Err(e) = manager.resync()
                {
                    self.problem("cannot reload the cluster from etcd", &e);
                    return;
                }
                self.last_problem = None;
            }
            None => match self.try_acquire() {
                Ok(true) => self.take_over(manager),
                Ok(false) => {}
                Err(e) => self.problem("campaign for leadership failed", &e),
            },
        }
    }

    /// Just won: load everything, then accept writes.
    fn take_over(&mut self, manager: &Arc<Manager>) {
        match manager.resync() {
            Ok(()) => {
                tracing::info!(url = %self.record.url, "elected leader: state reloaded from etcd, accepting writes");
                self.last_problem = None;
                manager.ensure_cluster_id();
                manager.set_role(Role::Leader);
            }
            Err(e) => {
                // Leading on state we could not load would be worse than
                // not leading: give the key back and try again later.
                self.problem("elected, but cannot load the cluster; resigning", &e);
                self.step_down(manager);
            }
        }
    }

    fn step_down(&mut self, manager: &Arc<Manager>) {
        self.store.set_lease(None);
        manager.set_role(Role::Standby { leader: None });
        if let Some((lease, _)) = self.leading.take() {
            let _ = self.store.client().lease_revoke(lease, self.timeout());
        }
        // Name the new leader at once if there is one, rather than a poll
        // later.
        if let Ok((Some(kv), _)) = self.observe() {
            let url = serde_json::from_slice::<LeaderRecord>(&kv.value)
                .ok()
                .filter(|r| r.id != self.record.id)
                .map(|r| r.url);
            if url.is_some() {
                self.store.set_leader_hint(url.clone());
                manager.set_role(Role::Standby { leader: url });
            }
        }
    }

    fn lead_tick(&mut self, manager: &Arc<Manager>) {
        let Some((lease, last_ok)) = self.leading else {
            return;
        };
        let sent = Instant::now();
        let outcome = self
            .store
            .client()
            .lease_keepalive(lease, self.timeout())
            .map_err(etcd)
            .and_then(|ttl| Ok((ttl, self.observe()?.0)));
        match outcome {
            Ok((0, _)) => {
                tracing::warn!(
                    "the leader lease expired (was this manager paused or cut off from etcd?); stepping down to standby"
                );
                self.step_down(manager);
            }
            Ok((_, holder)) if holder.as_ref().is_none_or(|kv| kv.lease != lease) => {
                tracing::warn!(
                    "the leader key is no longer this manager's; stepping down to standby"
                );
                self.step_down(manager);
            }
            Ok(_) => {
                self.leading = Some((lease, sent));
                self.last_problem = None;
                if manager.is_poisoned()
                    && let Err(e) = manager.resync()
                {
                    self.problem("cannot reload the cluster from etcd", &e);
                }
            }
            Err(e) => {
                self.problem("cannot refresh the leader lease", &e);
                if last_ok.elapsed() >= self.ttl * 2 / 3 {
                    tracing::warn!(
                        "no lease refresh for {:?}; this manager may no longer lead, stepping down to standby",
                        last_ok.elapsed()
                    );
                    self.step_down(manager);
                }
            }
        }
    }
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}
