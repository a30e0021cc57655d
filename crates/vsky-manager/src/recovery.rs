//! The recovery loop: turns failures into rebuilds without an admin.
//!
//! Once a second, and whenever the cluster changes, the leader:
//! 1. declares failed every server whose heartbeats stopped longer ago than
//!    the grace period (`--server-grace`) and that still holds legs
//!    (`Cluster::silent_servers` says which, from the heartbeat ages this
//!    module measures): a server that merely rebooted or lost its link for
//!    a moment keeps its legs; one that stays away has them replaced;
//! 2. makes one planning pass, `Cluster::recovery_pass` (the very pass
//!    `vsky-sim` runs): a replacement for every failed leg not held for
//!    its server's grace period, a move for every leg on a draining disk
//!    or server and, with `--auto-rebalance` on, a window of moves from
//!    full disks to empty ones while no repair or drain runs; then the
//!    queued resyncs whose disks are free start (at most
//!    `--resyncs-per-disk` per disk, repairs first) and, with
//!    `--scrub-interval`, the scrubs that are due on the disks the resyncs
//!    left free (heads check the mirrors of attached volumes, storage
//!    agents compare the legs of detached ones, and report the verdicts
//!    through their heartbeats). It says when a draining disk or server is
//!    empty.
//!
//! The rules are the model's; this module only supplies time (heartbeat
//! ages, the scrub clock), keeps what lives in memory only (which servers
//! are suspected, the rate samples), and records events. Progress and
//! completion come from the executors through their heartbeats
//! (`Cluster::apply_heartbeat`, called by
//! `http::handlers::agent::heartbeat`), which also feed the rate estimates
//! kept here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vsky_model::{
    AutoRebalance, CapacityLevel, ChunkRef, Cluster, Drained, JobId, JobState, LegAddr, PassConfig,
    PoolUsage, ScrubClock, ScrubMethod, ServerId, ServerState,
};
use vsky_sync::LockExt;

use crate::events::{EventLog, NewEvent, Severity};
use crate::manager::{Manager, ManagerError};

#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    /// Resyncs one physical disk takes part in at a time (as source or
    /// target).
    pub per_disk_limit: u32,
    /// How long a server may miss heartbeats before its legs are replaced.
    pub server_grace: Duration,
    /// Per-resync copy rate limit (0: none).
    pub rate_bytes_per_second: u64,
    /// How often the loop runs when nothing changes.
    pub tick: Duration,
    /// The background rebalance policy (`Cluster::auto_rebalance`).
    /// `None`: only `vsky pool rebalance`.
    pub auto_rebalance: Option<AutoRebalance>,
    /// How often each mirrored disk of a detached volume is scrubbed (its
    /// legs read and compared by a storage agent, under the per-disk
    /// limit; `Cluster::start_scrubs`). `None`: never.
    pub scrub_interval: Option<Duration>,
    /// How long a head may miss heartbeats before an attach of one of its
    /// volumes on another server takes the volume over (fence, then move:
    /// `Cluster::attach_volume_taking_over`). Shorter than XCP-ng HA's
    /// restart of a dead host's VMs, so that restart's activate succeeds.
    pub head_grace: Duration,
    /// Fault injection for tests: while set, the next recovery pass
    /// panics (and clears it), to prove the loop is supervised. No flag
    /// or request reaches it; only code that builds a `RecoveryConfig`.
    #[doc(hidden)]
    pub inject_panic: Arc<AtomicBool>,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            per_disk_limit: 1,
            server_grace: Duration::from_secs(60),
            rate_bytes_per_second: 0,
            tick: Duration::from_secs(1),
            auto_rebalance: None,
            scrub_interval: None,
            head_grace: Duration::from_secs(30),
            inject_panic: Arc::default(),
        }
    }
}

/// What the recovery loop and the handlers share: the event log, the
/// configuration, and progress samples for rate estimates.
pub struct Recovery {
    pub config: RecoveryConfig,
    pub events: EventLog,
    /// When this manager process started: servers not heard from since are
    /// given the grace period from here.
    started: Instant,
    /// First and latest progress sample per running job.
    samples: Mutex<HashMap<JobId, Samples>>,
    /// Layers whose pool could not grow, already told in an event, and
    /// whether it was full then (until it grows again).
    exhausted_pools: Mutex<BTreeSet<(String, bool)>>,
    /// The latest report about each pool a head writes, and when it came:
    /// for metrics and `volume show` (the model keeps no usage).
    pools: Mutex<HashMap<String, (Instant, PoolUsage)>>,
    /// Servers already reported silent (cleared when they speak again).
    silent: Mutex<HashMap<String, Instant>>,
    /// Servers a head reported a failed leg on, since when, until they show
    /// they are alive (a heartbeat after the report) or are declared failed.
    /// Their failed legs are held: a server that merely went away gets the
    /// grace period before its legs are replaced.
    suspects: Mutex<HashMap<ServerId, Instant>>,
    /// Legs brought back once after their server returned. A leg that fails
    /// again is replaced: its server is alive, so its failure is real.
    revived: Mutex<HashSet<(LegAddr, ChunkRef)>>,
    /// Scrubs reported finished, and those with mismatches (since start).
    scrubs: AtomicU64,
    scrub_mismatches: AtomicU64,
    /// Draining disks and servers already reported empty (forgotten when
    /// they stop draining), so `disk_drained` is said once.
    drained: Mutex<BTreeSet<String>>,
    /// The pool's capacity level last told in an event.
    capacity: Mutex<CapacityLevel>,
}

#[derive(Clone, Copy, Debug)]
struct Samples {
    first: (Instant, u64),
    last: (Instant, u64),
}

/// A server's heartbeats are reported missing after this long (or the
/// grace period, if shorter).
const SILENT_AFTER: Duration = Duration::from_secs(15);

/// How long a pool report stands for the pool: a few heartbeats. Older
/// ones are of pools no head writes any more (detached, frozen).
const POOL_REPORT_FRESH: Duration = Duration::from_secs(30);

impl Recovery {
    pub fn new(config: RecoveryConfig) -> Self {
        Recovery {
            config,
            events: EventLog::default(),
            started: Instant::now(),
            samples: Mutex::new(HashMap::new()),
            exhausted_pools: Mutex::new(BTreeSet::new()),
            pools: Mutex::new(HashMap::new()),
            silent: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            revived: Mutex::new(HashSet::new()),
            capacity: Mutex::new(CapacityLevel::Ok),
            scrubs: AtomicU64::new(0),
            scrub_mismatches: AtomicU64::new(0),
            drained: Mutex::new(BTreeSet::new()),
        }
    }

    /// A head reported a failed leg on `server`.
    pub fn suspect(&self, server: ServerId) {
        self.suspects
            .lock_unpoisoned()
            .entry(server)
            .or_insert_with(Instant::now);
    }

    /// The servers whose failed legs wait: suspected and not heard from
    /// since (the caller filters servers declared failed).
    fn held(&self) -> BTreeSet<ServerId> {
        self.suspects.lock_unpoisoned().keys().copied().collect()
    }

    /// Whether `server`'s failed legs are held (see [`Self::suspect`]).
    pub fn is_held(&self, server: ServerId) -> bool {
        self.suspects.lock_unpoisoned().contains_key(&server)
    }

    /// A heartbeat from a held `server`, whose failed legs were brought
    /// back: it is back (or was alive all along) and holds nothing more.
    pub fn returned(&self, server: ServerId) {
        self.suspects.lock_unpoisoned().remove(&server);
    }

    /// Of a returned server's failed legs, those not brought back before
    /// (each leg gets one chance; remembers them).
    pub fn first_returns(&self, legs: Vec<(LegAddr, ChunkRef)>) -> Vec<(LegAddr, ChunkRef)> {
        let mut revived = self.revived.lock_unpoisoned();
        legs.into_iter().filter(|l| revived.insert(*l)).collect()
    }

    /// This process just became the leader. Which servers the previous
    /// leader held (heads reported their legs failed, and they had not
    /// shown they were alive) is not stored, so every server that still
    /// has failed legs nothing replaces is held again: one that is alive
    /// heartbeats within seconds and gets its legs back (as with the old
    /// leader), one that is gone is declared failed after the grace period.
    /// Without this, a failover would replace legs a server in its grace
    /// period would have brought back.
    fn hold_after_takeover(&self, manager: &Manager) {
        let held: Vec<ServerId> = manager
            .read(|c| {
                c.servers()
                    .filter(|s| s.state != ServerState::Failed)
                    .filter(|s| !c.failed_legs_on(s.id).is_empty())
                    .map(|s| s.id)
                    .collect()
            })
            .unwrap_or_default();
        for id in held {
            self.suspect(id);
        }
    }

    fn forget_suspect(&self, server: ServerId) {
        self.suspects.lock_unpoisoned().remove(&server);
    }

    /// Records a progress report of a running job.
    pub fn progress(&self, job: JobId, bytes_done: u64) {
        let now = Instant::now();
        let mut samples = self.samples.lock_unpoisoned();
        let s = samples.entry(job).or_insert(Samples {
            first: (now, bytes_done),
            last: (now, bytes_done),
        });
        if bytes_done < s.last.1 {
            // The job restarted (new executor or source): start over.
            s.first = (now, bytes_done);
        }
        s.last = (now, bytes_done);
    }

    /// Notes that `layer`'s pool could not grow (`full`: and holds writes);
    /// true the first time of each since it last grew (the times to tell
    /// the admin: when it needs room, and when it is full).
    pub fn pool_exhausted(&self, layer: &str, full: bool) -> bool {
        self.exhausted_pools
            .lock_unpoisoned()
            .insert((layer.to_owned(), full))
    }

    /// Keeps the pool reports of a heartbeat, and forgets reports older
    /// than [`POOL_REPORT_FRESH`] (pools no head writes any more).
    pub fn record_pools(&self, reports: &[PoolUsage]) {
        let now = Instant::now();
        let mut pools = self.pools.lock_unpoisoned();
        pools.retain(|_, (at, _)| now.duration_since(*at) < POOL_REPORT_FRESH);
        for r in reports {
            pools.insert(r.layer.clone(), (now, r.clone()));
        }
    }

    /// The latest fresh report about `layer`'s pool.
    pub fn pool_usage(&self, layer: &str) -> Option<PoolUsage> {
        let pools = self.pools.lock_unpoisoned();
        let (at, usage) = pools.get(layer)?;
        (at.elapsed() < POOL_REPORT_FRESH).then(|| usage.clone())
    }

    /// Every fresh pool report.
    pub fn pool_usages(&self) -> Vec<PoolUsage> {
        let pools = self.pools.lock_unpoisoned();
        pools
            .values()
            .filter(|(at, _)| at.elapsed() < POOL_REPORT_FRESH)
            .map(|(_, u)| u.clone())
            .collect()
    }

    /// Notes that `layer`'s pool grew: a later exhaustion is news again.
    pub fn pool_grown(&self, layer: &str) {
        self.exhausted_pools
            .lock_unpoisoned()
            .retain(|(l, _)| l != layer);
    }

    /// Forgets the samples of a job that ended.
    pub fn forget(&self, job: JobId) {
        self.samples.lock_unpoisoned().remove(&job);
    }

    /// The measured copy rate of a running job, in bytes per second.
    pub fn rate(&self, job: JobId) -> Option<f64> {
        let samples = self.samples.lock_unpoisoned();
        let s = samples.get(&job)?;
        let secs = s.last.0.duration_since(s.first.0).as_secs_f64();
        (secs >= 0.5 && s.last.1 > s.first.1).then(|| (s.last.1 - s.first.1) as f64 / secs)
    }

    /// An agent finished scrubbing a mirrored disk: an event, and the
    /// counts behind `/metrics`.
    pub fn scrub_finished(
        &self,
        agent: &str,
        volume: &str,
        mirrored_disk: u32,
        mismatched_sectors: u64,
    ) {
        self.scrubs.fetch_add(1, Ordering::Relaxed);
        let what = format!("volume {volume} mirrored disk {mirrored_disk}");
        let event = if mismatched_sectors > 0 {
            self.scrub_mismatches.fetch_add(1, Ordering::Relaxed);
            NewEvent::new(
                Severity::Warning,
                "scrub_mismatch",
                format!(
                    "scrub of {what} by {agent}: {} sectors differ between its legs; \
                     check the disks' health (a leg that cannot be read is failed and replaced)",
                    mismatched_sectors
                ),
            )
        } else {
            NewEvent::new(
                Severity::Info,
                "scrub_done",
                format!("scrub of {what} by {agent}: its legs agree"),
            )
        };
        self.events.record(event.server(agent).volume(volume));
    }

    /// Scrubs finished, and those that found mismatches, since start.
    pub fn scrub_counts(&self) -> (u64, u64) {
        (
            self.scrubs.load(Ordering::Relaxed),
            self.scrub_mismatches.load(Ordering::Relaxed),
        )
    }

    /// A server spoke: if it had been reported silent, say it is back.
    pub fn heard_from(&self, server: &str) {
        let was = self.silent.lock_unpoisoned().remove(server);
        if let Some(since) = was {
            self.events.record(
                NewEvent::new(
                    Severity::Info,
                    "server_back",
                    format!(
                        "server '{server}' answers again after {} s",
                        since.elapsed().as_secs()
                    ),
                )
                .server(server),
            );
        }
    }

    /// The heads that have been silent longer than `--head-grace` (their
    /// volumes may be taken over by an attach elsewhere). Read outside the
    /// cluster lock, then passed into the model's rule.
    pub fn gone_heads(&self, manager: &Manager) -> Result<HashSet<ServerId>, ManagerError> {
        Ok(self
            .heartbeat_ages(manager)?
            .into_iter()
            .filter(|(_, age)| *age >= self.config.head_grace)
            .map(|(id, _)| id)
            .collect())
    }

    /// How long each server has been silent ([`Self::heartbeat_age`]).
    pub fn heartbeat_ages(
        &self,
        manager: &Manager,
    ) -> Result<HashMap<ServerId, Duration>, ManagerError> {
        let servers: Vec<ServerId> = manager.read(|c| c.servers().map(|s| s.id).collect())?;
        Ok(servers
            .into_iter()
            .map(|id| (id, self.heartbeat_age(manager, id)))
            .collect())
    }

    /// How long the server has been silent to this manager process (from
    /// the process's start for one not heard from since).
    pub fn heartbeat_age(&self, manager: &Manager, server: vsky_model::ServerId) -> Duration {
        manager
            .heartbeat_age_seconds(server)
            .map(Duration::from_secs_f64)
            .unwrap_or_else(|| self.started.elapsed())
    }
}

/// Runs the loop until `stop` turns true.
pub async fn run(manager: Arc<Manager>, recovery: Arc<Recovery>, mut stop: watch::Receiver<bool>) {
    let mut changes = manager.subscribe();
    let mut leading = false;
    loop {
        // Only the leader decides (a standby's writes would be refused).
        let leader = manager.is_leader();
        if leader && !leading {
            recovery.hold_after_takeover(&manager);
        }
        leading = leader;
        if recovery.config.inject_panic.swap(false, Ordering::SeqCst) {
            panic!("injected panic (RecoveryConfig::inject_panic)");
        }
        if leader && let Err(e) = step(&manager, &recovery).await {
            tracing::warn!(error = %e, "recovery step failed; retrying");
        }
        let changed = tokio::select! {
            _ = tokio::time::sleep(recovery.config.tick) => false,
            _ = changes.changed() => true,
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
                false
            }
        };
        if changed {
            // Let a burst of changes (a server's legs failing one report at
            // a time) settle into one planning pass.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One pass: silent servers, then planning and scheduling.
pub async fn step(
    manager: &Arc<Manager>,
    recovery: &Arc<Recovery>,
) -> Result<(), crate::manager::ManagerError> {
    let grace = recovery.config.server_grace;
    let silent = manager.read(|c| {
        c.silent_servers(
            |id| recovery.heartbeat_age(manager, id),
            SILENT_AFTER,
            grace,
        )
    })?;
    for s in silent {
        let (id, name, age) = (s.id, s.name, s.silent_for);
        let newly_silent = {
            let mut silent = recovery.silent.lock_unpoisoned();
            let fresh = !silent.contains_key(&name);
            silent.entry(name.clone()).or_insert_with(Instant::now);
            fresh
        };
        if newly_silent && age < grace {
            recovery.events.record(
                NewEvent::new(
                    Severity::Warning,
                    "server_silent",
                    format!(
                        "server '{name}' sent no heartbeat for {} s; its legs are replaced if it stays away {} s",
                        age.as_secs(),
                        grace.as_secs()
                    ),
                )
                .server(&name),
            );
        }
        if s.fail {
            let failing = name.clone();
            let legs = manager
                .mutate(move |c, _| {
                    let before = c.summary().mirrored_disks_degraded;
                    let changes = c.fail_silent_server(&failing)?;
                    let after = c.summary().mirrored_disks_degraded;
                    Ok((after.saturating_sub(before), changes))
                })
                .await?;
            recovery.silent.lock_unpoisoned().remove(&name);
            recovery.forget_suspect(id);
            recovery.events.record(
                NewEvent::new(
                    Severity::Error,
                    "server_failed",
                    format!(
                        "server '{name}' sent no heartbeat for {} s (grace {} s): declared failed; {legs} mirrored disks newly degraded, their legs are being replaced (if its agent comes back, the server serves new chunks again)",
                        age.as_secs(),
                        grace.as_secs()
                    ),
                )
                .server(&name),
            );
        }
    }
    tell_capacity(manager, recovery)?;
    schedule(manager, recovery).await
}

/// Tells the admin when the pool's free chunk space crosses a mark
/// (`Summary::capacity_level`): `capacity_low`, `capacity_critical`, and
/// `capacity_ok` once it is back. Thin volumes' pools grow into that
/// space and rebuilds need it, so this comes before any pool is full.
fn tell_capacity(
    manager: &Arc<Manager>,
    recovery: &Arc<Recovery>,
) -> Result<(), crate::manager::ManagerError> {
    let summary = manager.read(|c| c.summary())?;
    let mut told = recovery.capacity.lock_unpoisoned();
    let level = summary.capacity_level(*told);
    if level == *told {
        return Ok(());
    }
    *told = level;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let free = format!(
        "{:.1} GiB of {:.1} GiB ({:.1} %) of the pool's chunk space is free",
        gib(summary.free_bytes),
        gib(summary.capacity_bytes),
        summary.free_bytes as f64 * 100.0 / summary.capacity_bytes.max(1) as f64
    );
    let event = match level {
        CapacityLevel::Ok => NewEvent::new(
            Severity::Info,
            "capacity_ok",
            format!("{free}: back above the low-water mark"),
        ),
        CapacityLevel::Low => NewEvent::new(
            Severity::Warning,
            "capacity_low",
            format!(
                "{free}, below {} %: thin volumes' pools grow into it and rebuilds need it; add disks or servers (`vsky disk add`), or delete unused volumes and snapshots",
                vsky_model::limits::CAPACITY_LOW_PERCENT
            ),
        ),
        CapacityLevel::Critical => NewEvent::new(
            Severity::Error,
            "capacity_critical",
            format!(
                "{free}, below {} %: thin volumes' writes will be held when their pools cannot grow, new volumes and rebuilds may fail; add capacity now",
                vsky_model::limits::CAPACITY_CRITICAL_PERCENT
            ),
        ),
    };
    recovery.events.record(event);
    Ok(())
}

/// Makes one planning pass (`Cluster::recovery_pass`: replacements for
/// failed legs, moves off draining disks and, with the background policy
/// on, rebalancing moves; starts what the per-disk limit allows, then the
/// scrubs that are due) and records an event per job and scrub, and one
/// per draining disk or server that became empty.
pub async fn schedule(
    manager: &Arc<Manager>,
    recovery: &Arc<Recovery>,
) -> Result<(), crate::manager::ManagerError> {
    let auto = recovery.config.auto_rebalance;
    let mut config = PassConfig {
        per_disk_limit: recovery.config.per_disk_limit,
        held: BTreeSet::new(),
        auto_rebalance: auto,
        scrubs: recovery.config.scrub_interval.map(|i| ScrubClock {
            now_unix_s: unix_now(),
            interval_s: i.as_secs(),
        }),
    };
    let holds = Arc::clone(recovery);
    let (planned, started, drained, rebalanced, scrubs) = manager
        .mutate(move |c, secrets| {
            // Read under the cluster's lock: a heartbeat that failed legs
            // and held their server committed before this, or comes after.
            config.held = holds.held();
            let (pass, changes) = c.recovery_pass(&config, secrets);
            let rebalanced = auto
                .filter(|_| pass.rebalance_moves > 0)
                .map(|policy| (pass.rebalance_moves, policy.spread));
            let scrubs: Vec<(String, u32, String, ScrubMethod)> = pass
                .scrubs
                .iter()
                .map(|s| {
                    let executor = c.server(s.run.executor).map(|s| s.name.clone());
                    (
                        c.volume_label(s.volume),
                        s.mirrored_disk,
                        executor.unwrap_or_default(),
                        s.run.method,
                    )
                })
                .collect();
            let describe = |c: &Cluster, ids: &[JobId]| -> Vec<(JobId, String, String)> {
                ids.iter()
                    .filter_map(|id| c.job(*id).ok())
                    .map(|j| (j.id, c.volume_label(j.volume), describe_job(c, j)))
                    .collect()
            };
            Ok((
                (
                    describe(c, &pass.planned),
                    describe(c, &pass.started),
                    drained_keys(c, &pass.drained),
                    rebalanced,
                    scrubs,
                ),
                changes,
            ))
        })
        .await?;
    if let Some((moves, spread)) = rebalanced {
        recovery.events.record(NewEvent::new(
            Severity::Info,
            "rebalance_planned",
            format!(
                "background rebalance: the disk fill spread is above {:.0}%; {moves} more legs move to emptier disks",
                spread * 100.0
            ),
        ));
    }
    for (id, volume, what) in planned {
        recovery.events.record(rebuild_queued(id, volume, &what));
    }
    for (id, volume, what) in started {
        recovery.events.record(
            NewEvent::new(
                Severity::Info,
                "rebuild_started",
                format!("{id} started: {what}"),
            )
            .volume(volume)
            .rebuild(id.0),
        );
    }
    for (volume, m, executor, method) in scrubs {
        let how = match method {
            ScrubMethod::RaidCheck => "its head runs dm-raid's check on the mirror",
            ScrubMethod::CompareLegs => "its legs are read and compared",
        };
        recovery.events.record(
            NewEvent::new(
                Severity::Info,
                "scrub_started",
                format!("scrub of volume {volume} mirrored disk {m} started on {executor}: {how}"),
            )
            .volume(volume)
            .server(executor),
        );
    }
    recovery.report_drained(drained);
    Ok(())
}

/// Now, in seconds since the Unix epoch (the model's clock for scrubs).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The draining disks ("disk 7") and servers a pass found empty, with the
/// server each is on and the disk's path, keyed for
/// [`Recovery::report_drained`].
fn drained_keys(c: &Cluster, drained: &[Drained]) -> Vec<(String, String, String)> {
    let server_name = |id: ServerId| c.server(id).map(|s| s.name.clone()).unwrap_or_default();
    drained
        .iter()
        .filter_map(|d| match *d {
            Drained::Server(id) => {
                let name = server_name(id);
                Some((format!("server {name}"), name, String::new()))
            }
            Drained::Disk(id) => {
                let disk = c.disk(id).ok()?;
                Some((
                    format!("disk {}", id.0),
                    server_name(disk.server),
                    disk.path.clone(),
                ))
            }
        })
        .collect()
}

impl Recovery {
    /// Says once that a draining disk or server is empty; forgets those no
    /// longer empty-and-draining, so a later drain is reported again.
    fn report_drained(&self, now: Vec<(String, String, String)>) {
        let mut said = self.drained.lock_unpoisoned();
        said.retain(|k| now.iter().any(|(n, ..)| n == k));
        for (key, server, path) in now {
            if !said.insert(key.clone()) {
                continue;
            }
            let (kind, text) = if path.is_empty() {
                (
                    "server_drained",
                    format!(
                        "{key} is drained: it holds no leg; remove it with `vsky server remove {server}`"
                    ),
                )
            } else {
                let id = key.trim_start_matches("disk ");
                (
                    "disk_drained",
                    format!(
                        "{key} ({path} on {server}) is drained: it holds no leg; remove it with `vsky disk remove {id}`"
                    ),
                )
            };
            self.events
                .record(NewEvent::new(Severity::Info, kind, text).server(&server));
        }
    }
}

/// The event for a job just planned (by the loop, or by an admin's
/// rebalance).
pub fn rebuild_queued(id: JobId, volume: String, what: &str) -> NewEvent {
    NewEvent::new(
        Severity::Info,
        "rebuild_queued",
        format!("{id} queued: {what}"),
    )
    .volume(volume)
    .rebuild(id.0)
}

/// "volume v, mirrored disk 0, leg 1: disk 7 chunk 3 → disk 12 chunk 40
/// (from disk 9), by server s3".
pub fn describe_job(c: &Cluster, j: &vsky_model::ResyncJob) -> String {
    let server_of = |d: vsky_model::DiskId| {
        c.disk(d)
            .ok()
            .and_then(|d| c.server(d.server))
            .map(|s| s.name.clone())
            .unwrap_or_else(|| "?".into())
    };
    let (what, slot) = match j.kind {
        vsky_model::JobKind::Repair => ("replaced by", j.leg),
        vsky_model::JobKind::Move { from, reason } => (
            match reason {
                vsky_model::MoveReason::Drain => "moves (drain) to",
                vsky_model::MoveReason::Rebalance => "moves (rebalance) to",
            },
            from,
        ),
    };
    let mut s = format!(
        "volume {} mirrored disk {} leg {}: {}:{}#{} {what} {}:{}#{}",
        c.volume_label(j.volume),
        j.mirrored_disk,
        slot,
        server_of(j.replaced.disk),
        j.replaced.disk,
        j.replaced.index,
        server_of(j.target.disk),
        j.target.disk,
        j.target.index
    );
    if let Some(src) = j.source {
        s.push_str(&format!(
            ", copied from {}:{}#{}",
            server_of(src.disk),
            src.disk,
            src.index
        ));
    }
    if j.state == JobState::Running
        && let Some(e) = c.job_executor(j.id)
        && let Some(server) = c.server(e.server())
    {
        s.push_str(&format!(", by {}", server.name));
    }
    s
}
