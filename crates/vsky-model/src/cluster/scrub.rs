//! The scrub patrol: the legs of every mirrored disk are read and compared
//! now and then, so silent corruption and unreadable regions are found
//! while another copy still holds the data.
//!
//! The manager schedules every scrub here, so all of them run under the
//! same per-disk limit as resyncs: [`Cluster::start_scrubs`] starts a scrub
//! on every mirrored disk whose legs are all active, that has no resync
//! job, and whose last scrub is older than the interval (never-scrubbed and
//! oldest-scrubbed first). How it runs depends on the volume
//! ([`ScrubMethod`]):
//! - **attached**: its head runs dm-raid's `check` on the mirror it
//!   assembled (the agent's `scrub.rs`). md reads every leg and counts the
//!   sectors whose copies differ; a leg that fails to read is failed by md
//!   and reported like any dead leg.
//! - **detached**: nobody assembles it, so the server of its first leg
//!   reads its own chunk in place and the others over NBD, under their
//!   secret export names, and compares their data areas (`compare.rs`).
//!
//! A scrub reads every leg, so it occupies the disks of all its legs under
//! the same per-disk limit as resyncs ([`Cluster::running_per_disk`] counts
//! both). Resyncs come first: a scrub never starts on a disk a queued
//! resync needs (its target or a healthy leg it may copy from), and
//! [`Cluster::start_jobs`] ends the scrubs on such disks before it starts
//! jobs, so a rebuild never waits for a scrub.
//!
//! Runs live in memory only. A manager that restarts (or a new leader)
//! starts them again; a run whose mirrored disk changes (its volume is
//! attached, detached or deleted, a leg fails or moves, a job appears)
//! stops counting and is dropped: a comparison of a detached volume's legs
//! that a head may have written into, or a head's check of a mirror it no
//! longer holds, never reports. When it ends, [`Cluster::finish_scrub`]
//! records [`MirroredDisk::last_scrub_unix_s`] and fails every leg that
//! could not be read, so it is replaced like any failed leg.
//!
//! Like the rest of the model, this reads no clock: the caller passes the
//! time in.
//!
//! [`MirroredDisk::last_scrub_unix_s`]: crate::entities::MirroredDisk::last_scrub_unix_s

use std::collections::{BTreeMap, BTreeSet};

use super::recovery::JobState;
use super::{Changes, Cluster, LegAddr};
use crate::entities::{LegState, ServerState};
use crate::error::ModelError;
use crate::ids::{DiskId, ServerId, VolumeId};

/// A scrub that has not finished this long after it started is given up
/// (its executor may run an agent that does not know scrubs), and tried
/// again later.
pub const SCRUB_RUN_MAX_S: u64 = 24 * 3600;

/// After a scrub failed (its executor could not read a leg for a while) or
/// was given up, its mirrored disk waits this long, or the interval if
/// that is shorter, before the next attempt.
pub const SCRUB_RETRY_S: u64 = 600;

/// How a scrub reads and compares the legs of its mirrored disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScrubMethod {
    /// The volume is attached: its head runs dm-raid's `check` on the
    /// mirror it assembled.
    RaidCheck,
    /// The volume is detached: the storage agent of its first leg reads
    /// every leg (its own in place, the others over NBD) and compares them.
    CompareLegs,
}

/// One running scrub of a mirrored disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubRun {
    /// Names the run in the executor's desired state and its report. Drawn
    /// from a counter in memory: a new manager process may reuse it, so a
    /// report counts only if its volume, mirrored disk and executor match
    /// the run too.
    pub id: u64,
    /// The server that reads and compares the legs: the volume's head, or
    /// for a detached volume its first leg's server.
    pub executor: ServerId,
    pub method: ScrubMethod,
    pub started_unix_s: u64,
}

/// A scrub [`Cluster::start_scrubs`] started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartedScrub {
    pub volume: VolumeId,
    pub mirrored_disk: u32,
    pub run: ScrubRun,
}

/// The in-memory scrub state of a cluster.
#[derive(Clone, Debug, Default)]
pub(super) struct Scrubs {
    runs: BTreeMap<(VolumeId, u32), ScrubRun>,
    last_id: u64,
    /// Mirrored disks whose last scrub failed or was given up, and when.
    failed_at: BTreeMap<(VolumeId, u32), u64>,
}

impl Scrubs {
    /// Whether any run (standing or not yet forgotten) is recorded for a
    /// volume (invariant checks).
    pub(super) fn has_run_of(&self, volume: VolumeId) -> bool {
        self.runs
            .range((volume, 0)..=(volume, u32::MAX))
            .next()
            .is_some()
    }
}

impl Cluster {
    /// The running scrubs, by volume and mirrored disk.
    pub fn scrubs(&self) -> impl Iterator<Item = (VolumeId, u32, &ScrubRun)> {
        self.scrubs
            .runs
            .iter()
            .filter(|(key, run)| self.scrub_live(**key, run))
            .map(|((v, m), run)| (*v, *m, run))
    }

    /// The running scrub of one mirrored disk, if any.
    pub fn scrub(&self, volume: VolumeId, mirrored_disk: u32) -> Option<&ScrubRun> {
        self.scrubs
            .runs
            .get(&(volume, mirrored_disk))
            .filter(|run| self.scrub_live((volume, mirrored_disk), run))
    }

    /// Whether a mirrored disk may be scrubbed: it has exactly its replicas
    /// (no move's extra slot), all of them active, and no resync job.
    fn scrubbable(&self, volume: VolumeId, m: u32) -> bool {
        let Some(v) = self.volumes.get(&volume) else {
            return false;
        };
        v.mirrored_disks.get(m as usize).is_some_and(|md| {
            md.legs.len() == usize::from(v.replicas)
                && md.legs.iter().all(|l| l.state == LegState::Active)
        }) && self
            .repairs
            .range(LegAddr::slots_of(volume, m))
            .next()
            .is_none()
    }

    /// Who scrubs a mirrored disk, and how: an attached volume's head runs
    /// dm-raid's check, a detached volume's first leg's server compares the
    /// legs. `None` while that server is failed, and while the volume is
    /// releasing (its head tears the mirror down, and a comparison would
    /// read legs the head may still write).
    fn scrub_executor(&self, volume: VolumeId, m: u32) -> Option<(ServerId, ScrubMethod)> {
        let v = self.volumes.get(&volume)?;
        let (server, method) = match self.writer_of(volume) {
            Some(a) if a.is_releasing() => return None,
            Some(a) => (a.head, ScrubMethod::RaidCheck),
            None => {
                let leg = v.mirrored_disks.get(m as usize)?.legs.first()?;
                let server = self.disks.get(&leg.chunk.disk)?.server;
                (server, ScrubMethod::CompareLegs)
            }
        };
        (self.servers.get(&server)?.state != ServerState::Failed).then_some((server, method))
    }

    /// Whether a run still stands: its mirrored disk may be scrubbed, and
    /// the same server would run it the same way.
    fn scrub_live(&self, (volume, m): (VolumeId, u32), run: &ScrubRun) -> bool {
        self.scrubbable(volume, m)
            && self.scrub_executor(volume, m) == Some((run.executor, run.method))
    }

    /// The disks of a mirrored disk's legs.
    fn leg_disks(&self, volume: VolumeId, m: u32) -> Vec<DiskId> {
        self.volumes[&volume].mirrored_disks[m as usize]
            .legs
            .iter()
            .map(|l| l.chunk.disk)
            .collect()
    }

    /// Every disk of every running scrub, once per scrub.
    pub(super) fn scrub_disks(&self) -> Vec<DiskId> {
        self.scrubs()
            .flat_map(|(v, m, _)| self.leg_disks(v, m))
            .collect()
    }

    /// The disks queued resyncs need: their targets, and the healthy legs
    /// they may copy from.
    fn disks_for_queued_resyncs(&self) -> BTreeSet<DiskId> {
        let mut need = BTreeSet::new();
        for id in self.repairs.values() {
            let job = &self.jobs[id];
            if job.state != JobState::Queued {
                continue;
            }
            need.insert(job.target.disk);
            let md = &self.volumes[&job.volume].mirrored_disks[job.mirrored_disk as usize];
            need.extend(
                md.legs
                    .iter()
                    .filter(|l| l.state == LegState::Active)
                    .map(|l| l.chunk.disk),
            );
        }
        need
    }

    /// Forgets the runs that no longer stand (their executors stop them
    /// when they see their new desired state). Called on every change: a
    /// run that stopped standing never comes back, so an executor that did
    /// not notice a short attach (it saw the same scrub listed before and
    /// after) cannot report a comparison the head wrote into.
    pub(super) fn drop_stale_scrubs(&mut self) {
        if self.scrubs.runs.is_empty() {
            return;
        }
        let stale: Vec<(VolumeId, u32)> = self
            .scrubs
            .runs
            .iter()
            .filter(|(key, run)| !self.scrub_live(**key, run))
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            self.scrubs.runs.remove(&key);
        }
    }

    /// Ends the scrubs on disks a queued resync needs (resyncs come
    /// first), and forgets runs that no longer stand. The mirrored disks
    /// stay due and are scrubbed once their disks are free.
    pub(super) fn preempt_scrubs(&mut self) {
        if self.scrubs.runs.is_empty() {
            return;
        }
        let need = self.disks_for_queued_resyncs();
        let mut preempted = false;
        let keys: Vec<(VolumeId, u32)> = self.scrubs.runs.keys().copied().collect();
        for key in keys {
            let run = self.scrubs.runs[&key];
            if !self.scrub_live(key, &run) {
                self.scrubs.runs.remove(&key);
            } else if self
                .leg_disks(key.0, key.1)
                .iter()
                .any(|d| need.contains(d))
            {
                self.scrubs.runs.remove(&key);
                preempted = true;
            }
        }
        if preempted {
            // The executors must stop them.
            self.desired_changed();
        }
    }

    /// Starts the scrubs that are due and fit: mirrored disks with all their
    /// legs active and no resync job, last scrubbed `interval_s` or more
    /// before `now_unix_s` (or never),
    /// oldest first, as long as every disk of their legs takes part in
    /// fewer than `per_disk_limit` running resyncs and scrubs and no queued
    /// resync needs it. Call it after [`Self::start_jobs`], so resyncs
    /// take their disks first. Also drops runs that no longer stand, and
    /// gives up runs older than [`SCRUB_RUN_MAX_S`]. Returns the started
    /// scrubs; they live in memory only, so no record changes (the
    /// generation moves, for their executors).
    pub fn start_scrubs(
        &mut self,
        now_unix_s: u64,
        interval_s: u64,
        per_disk_limit: u32,
    ) -> Vec<StartedScrub> {
        assert!(per_disk_limit > 0);
        let keys: Vec<(VolumeId, u32)> = self.scrubs.runs.keys().copied().collect();
        let mut desired_changed = false;
        for key in keys {
            let run = self.scrubs.runs[&key];
            if !self.scrub_live(key, &run) {
                self.scrubs.runs.remove(&key);
            } else if now_unix_s.saturating_sub(run.started_unix_s) >= SCRUB_RUN_MAX_S {
                self.scrubs.runs.remove(&key);
                self.scrubs.failed_at.insert(key, now_unix_s);
                desired_changed = true;
            }
        }
        let retry = SCRUB_RETRY_S.min(interval_s);
        let volumes = &self.volumes;
        self.scrubs
            .failed_at
            .retain(|(v, _), at| volumes.contains_key(v) && now_unix_s.saturating_sub(*at) < retry);

        let mut busy = self.running_per_disk();
        let need = self.disks_for_queued_resyncs();
        let mut due: Vec<(Option<u64>, VolumeId, u32)> = self
            .volumes
            .values()
            .flat_map(|v| {
                v.mirrored_disks
                    .iter()
                    .enumerate()
                    .map(move |(m, md)| (md.last_scrub_unix_s, v.id, m as u32))
            })
            .filter(|(last, v, m)| {
                last.is_none_or(|t| now_unix_s.saturating_sub(t) >= interval_s)
                    && !self.scrubs.runs.contains_key(&(*v, *m))
                    && !self.scrubs.failed_at.contains_key(&(*v, *m))
                    && self.scrubbable(*v, *m)
            })
            .collect();
        due.sort();
        let mut started = Vec::new();
        for (_, volume, m) in due {
            let disks = self.leg_disks(volume, m);
            if disks
                .iter()
                .any(|d| need.contains(d) || busy.get(d).copied().unwrap_or(0) >= per_disk_limit)
            {
                continue;
            }
            let Some((executor, method)) = self.scrub_executor(volume, m) else {
                continue;
            };
            for d in disks {
                *busy.entry(d).or_insert(0) += 1;
            }
            self.scrubs.last_id += 1;
            let run = ScrubRun {
                id: self.scrubs.last_id,
                executor,
                method,
                started_unix_s: now_unix_s,
            };
            self.scrubs.runs.insert((volume, m), run);
            started.push(StartedScrub {
                volume,
                mirrored_disk: m,
                run,
            });
        }
        if desired_changed || !started.is_empty() {
            self.desired_changed();
        }
        started
    }

    /// The running scrub `scrub` of a mirrored disk, or why not.
    fn running_scrub(&self, volume: VolumeId, m: u32, scrub: u64) -> Result<(), ModelError> {
        match self.scrub(volume, m) {
            Some(run) if run.id == scrub => Ok(()),
            _ => Err(ModelError::Conflict(format!(
                "scrub {scrub} of volume '{}' mirrored disk {m} is not running (it ended, or its volume or legs changed)",
                self.volume_label(volume)
            ))),
        }
    }

    /// A scrub ended: the mirrored disk was scrubbed at `now_unix_s`, and
    /// each leg in `unreadable_legs` (slots) returned read errors. Those
    /// fail and are replaced; like a leg that failed before it was in
    /// sync, they are never brought back, since their chunks cannot be
    /// trusted. The caller checks that the report comes from the run's
    /// executor. A run that ended or no longer stands is refused
    /// (`Conflict`), a slot out of range too (`Invalid`).
    pub fn finish_scrub(
        &mut self,
        volume: VolumeId,
        mirrored_disk: u32,
        scrub: u64,
        now_unix_s: u64,
        unreadable_legs: &[u8],
    ) -> Result<Changes, ModelError> {
        self.running_scrub(volume, mirrored_disk, scrub)?;
        let m = mirrored_disk;
        let legs = self.volumes[&volume].mirrored_disks[m as usize].legs.len();
        if let Some(bad) = unreadable_legs.iter().find(|l| usize::from(**l) >= legs) {
            return Err(ModelError::invalid(
                "unreadable leg",
                format!("mirrored disk {m} has {legs} legs, not a leg {bad}"),
            ));
        }
        self.scrubs.runs.remove(&(volume, m));
        self.scrubs.failed_at.remove(&(volume, m));
        let md = &mut self
            .volumes
            .get_mut(&volume)
            .expect("a running scrub's volume exists")
            .mirrored_disks[m as usize];
        md.last_scrub_unix_s = Some(now_unix_s);
        for &l in unreadable_legs {
            let leg = &mut md.legs[usize::from(l)];
            if leg.state != LegState::Failed {
                leg.fail();
                leg.never_synced = true;
                self.repairs_pending = true;
            }
        }
        let mut changes = Changes::default();
        changes.volumes.insert(volume);
        Ok(self.commit(changes))
    }

    /// A scrub could not be done (its executor could not reach a leg): it
    /// ends without a verdict, and its mirrored disk is tried again after
    /// [`SCRUB_RETRY_S`] (or the interval, if shorter). No record changes.
    pub fn scrub_failed(
        &mut self,
        volume: VolumeId,
        mirrored_disk: u32,
        scrub: u64,
        now_unix_s: u64,
    ) -> Result<Changes, ModelError> {
        self.running_scrub(volume, mirrored_disk, scrub)?;
        self.scrubs.runs.remove(&(volume, mirrored_disk));
        self.scrubs
            .failed_at
            .insert((volume, mirrored_disk), now_unix_s);
        self.desired_changed();
        Ok(Changes::default())
    }
}
