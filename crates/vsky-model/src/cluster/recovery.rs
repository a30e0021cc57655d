//! Recovery without dedicated spares: replacement legs and their resyncs.
//!
//! When a leg fails, [`Cluster::plan_repairs`] takes a new chunk from the
//! pool for it (on a server that holds no other live leg of its mirrored
//! disk, in another failure domain when possible, least loaded first), puts
//! it in the leg's slot as `Syncing`, releases the failed chunk, and queues
//! a [`ResyncJob`]. [`Cluster::start_jobs`] starts queued jobs as soon as
//! their disks are free: every physical disk, as resync source or target,
//! takes part in at most `per_disk_limit` running resyncs, and mirrored
//! disks with the fewest healthy legs go first. Whoever copies (the head's
//! dm-raid for an attached volume, a storage agent for a detached one)
//! reports progress and completion; [`Cluster::finish_job`] turns the leg
//! `Active`.
//!
//! Everything here is pure state-machine code, like the rest of the model:
//! the manager drives it from its loop, and `vsky-sim` drives the very same
//! code under simulated time with injected faults.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Changes, Cluster, LegAddr};
use crate::entities::LegState;
use crate::error::ModelError;
use crate::ids::{ChunkRef, DiskId, JobId, ServerId, VolumeId};
use crate::{SecretSource, alloc::Near};

/// Finished jobs kept for `vsky rebuild list` and the event history.
const FINISHED_JOBS_KEPT: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its disks to be free.
    Queued,
    Running,
    Done,
    /// Gave up (its target disk failed, or no healthy leg is left to copy
    /// from); a new job replaces it if the leg can still be repaired.
    Failed,
}

/// Copying one mirrored disk's healthy data onto a replacement leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncJob {
    pub id: JobId,
    pub volume: VolumeId,
    pub mirrored_disk: u32,
    pub leg: u8,
    /// The new chunk being filled.
    pub target: ChunkRef,
    /// The healthy leg copied from; chosen when the job starts.
    pub source: Option<ChunkRef>,
    /// The failed chunk this job replaces.
    pub replaced: ChunkRef,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub state: JobState,
    pub error: Option<String>,
}

impl ResyncJob {
    pub fn is_active(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Running)
    }

    /// The disks this job occupies while running.
    pub fn disks(&self) -> impl Iterator<Item = DiskId> {
        std::iter::once(self.target.disk).chain(self.source.map(|s| s.disk))
    }
}

impl Cluster {
    pub fn jobs(&self) -> impl Iterator<Item = &ResyncJob> {
        self.jobs.values()
    }

    pub fn job(&self, id: JobId) -> Result<&ResyncJob, ModelError> {
        self.jobs
            .get(&id)
            .ok_or_else(|| super::not_found("resync job", "rebuild", id.0))
    }

    /// Running resyncs per disk (as source or target).
    pub fn running_per_disk(&self) -> BTreeMap<DiskId, u32> {
        let mut busy = BTreeMap::new();
        for job in self.jobs.values().filter(|j| j.state == JobState::Running) {
            for d in job.disks() {
                *busy.entry(d).or_insert(0) += 1;
            }
        }
        busy
    }

    pub(super) fn load_jobs(&mut self, jobs: Vec<ResyncJob>) -> Result<(), ModelError> {
        for job in jobs {
            if job.id.0 >= self.next_id {
                return Err(ModelError::Corrupt(format!("{} is beyond next id", job.id)));
            }
            if job.is_active() {
                let leg = self
                    .volumes
                    .get(&job.volume)
                    .and_then(|v| v.mirrored_disks.get(job.mirrored_disk as usize))
                    .and_then(|m| m.legs.get(usize::from(job.leg)));
                if leg.is_none_or(|l| l.chunk != job.target || l.state != LegState::Syncing) {
                    return Err(ModelError::Corrupt(format!(
                        "{} targets a leg that is not syncing onto it",
                        job.id
                    )));
                }
                self.repairs
                    .insert((job.volume, job.mirrored_disk, job.leg), job.id);
            }
            self.jobs.insert(job.id, job);
        }
        Ok(())
    }

    /// Plans a replacement for every failed leg that has none yet. A leg
    /// whose mirrored disk has no healthy leg left cannot be rebuilt and is
    /// skipped (its data is lost; `lost_mirrored_disks` counts them). Legs
    /// for which the pool has no room stay failed and are retried on the
    /// next call. Returns the new jobs.
    pub fn plan_repairs(&mut self, secrets: &mut dyn SecretSource) -> (Vec<JobId>, Changes) {
        let mut changes = Changes::default();
        let mut planned = Vec::new();
        if !self.repairs_pending {
            return (planned, changes);
        }
        let failed: Vec<(VolumeId, u32, u8)> = self
            .volumes
            .values()
            .flat_map(|v| {
                v.mirrored_disks
                    .iter()
                    .enumerate()
                    .flat_map(move |(m, md)| {
                        md.legs
                            .iter()
                            .enumerate()
                            .filter(|(_, l)| l.state == LegState::Failed)
                            .map(move |(l, _)| (v.id, m as u32, l as u8))
                    })
            })
            .filter(|slot| !self.repairs.contains_key(slot))
            .collect();
        let mut unplanned = false;
        for (volume, m, l) in failed {
            match self.plan_one(volume, m, l, secrets, &mut changes) {
                Some(id) => planned.push(id),
                None => unplanned = true,
            }
        }
        // Legs left without a repair (no room, no healthy leg) are retried
        // on the next call.
        self.repairs_pending = unplanned;
        (planned, self.commit(changes))
    }

    fn plan_one(
        &mut self,
        volume: VolumeId,
        m: u32,
        l: u8,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) -> Option<JobId> {
        let v = &self.volumes[&volume];
        let md = &v.mirrored_disks[m as usize];
        if md.healthy_legs() == 0 {
            return None;
        }
        let label = &self.settings.failure_domain_label;
        let taken: Vec<(ServerId, String, DiskId)> = md
            .legs
            .iter()
            .enumerate()
            .filter(|(i, leg)| *i != usize::from(l) && leg.state != LegState::Failed)
            .filter_map(|(_, leg)| self.disks.get(&leg.chunk.disk))
            .filter_map(|d| {
                self.servers
                    .get(&d.server)
                    .map(|s| (s.id, s.failure_domain(label), d.id))
            })
            .collect();
        let near = v
            .attachment
            .as_ref()
            .map(|a| a.head)
            .or(v.near_server)
            .and_then(|id| self.servers.get(&id))
            .map(|s| Near {
                server: s.id,
                domain: s.failure_domain(label),
            });
        let class = v.class.clone();
        let replaced = md.legs[usize::from(l)].chunk;
        let shared = |a: DiskId, b: DiskId| self.shared(a, b);
        let disk = self
            .index
            .pick_more(&taken, 1, class.as_deref(), near.as_ref(), &shared)?[0];
        let before: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();

        // Take the new chunk for the slot; release the failed one (it is
        // wiped if its disk ever serves again, dropped with the disk if not).
        let index = self.take_chunk(
            disk,
            LegAddr {
                volume,
                mirrored_disk: m,
                leg: l,
            },
        );
        let old = self
            .runtime
            .get_mut(&replaced.disk)
            .expect("legs sit on known disks");
        assert!(
            old.used.remove(&replaced.index).is_some(),
            "a leg's chunk is used"
        );
        assert!(
            self.disks
                .get_mut(&replaced.disk)
                .expect("exists")
                .releasing
                .insert(replaced.index)
        );
        self.reindex(replaced.disk);
        let target = ChunkRef { disk, index };
        let leg = &mut self
            .volumes
            .get_mut(&volume)
            .expect("exists")
            .mirrored_disks[m as usize]
            .legs[usize::from(l)];
        leg.chunk = target;
        leg.state = LegState::Syncing;
        leg.export_name = secrets.export_secret();
        let mut after = before.clone();
        after[usize::from(l)] = target;
        self.link_pairs(&before, false);
        self.link_pairs(&after, true);

        let id = JobId(self.next_id);
        self.next_id += 1;
        changes.next_id = true;
        let job = ResyncJob {
            id,
            volume,
            mirrored_disk: m,
            leg: l,
            target,
            source: None,
            replaced,
            bytes_total: self.settings.data_bytes_per_chunk(),
            bytes_done: 0,
            state: JobState::Queued,
            error: None,
        };
        self.jobs.insert(id, job);
        self.repairs.insert((volume, m, l), id);
        changes.jobs.insert(id);
        changes.volumes.insert(volume);
        // Only the released chunk's disk record changes (its releasing set);
        // which chunks are used is derived from the volume records.
        changes.disks.insert(replaced.disk);
        Some(id)
    }

    /// Starts queued jobs whose disks have room, fewest healthy legs first,
    /// so that no disk takes part in more than `per_disk_limit` running
    /// resyncs. The source is the healthy leg on the least busy disk.
    /// Returns the started jobs.
    pub fn start_jobs(&mut self, per_disk_limit: u32) -> (Vec<JobId>, Changes) {
        assert!(per_disk_limit > 0);
        let mut busy = self.running_per_disk();
        let mut queued: Vec<(usize, JobId)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| {
                (
                    self.volumes[&j.volume].mirrored_disks[j.mirrored_disk as usize].healthy_legs(),
                    j.id,
                )
            })
            .collect();
        queued.sort();
        let mut started = Vec::new();
        let mut changes = Changes::default();
        for (_, id) in queued {
            let job = &self.jobs[&id];
            let free = |d: &DiskId, busy: &BTreeMap<DiskId, u32>| {
                busy.get(d).copied().unwrap_or(0) < per_disk_limit
            };
            if !free(&job.target.disk, &busy) {
                continue;
            }
            let md = &self.volumes[&job.volume].mirrored_disks[job.mirrored_disk as usize];
            let source = md
                .legs
                .iter()
                .filter(|leg| leg.state == LegState::Active && free(&leg.chunk.disk, &busy))
                .min_by_key(|leg| (busy.get(&leg.chunk.disk).copied().unwrap_or(0), leg.chunk))
                .map(|leg| leg.chunk);
            let Some(source) = source else { continue };
            *busy.entry(job.target.disk).or_insert(0) += 1;
            *busy.entry(source.disk).or_insert(0) += 1;
            let job = self.jobs.get_mut(&id).expect("listed");
            job.source = Some(source);
            job.state = JobState::Running;
            changes.jobs.insert(id);
            started.push(id);
        }
        (started, self.commit(changes))
    }

    /// Records how far a running job got.
    pub fn job_progress(&mut self, id: JobId, bytes_done: u64) -> Result<Changes, ModelError> {
        let job = self.running_job(id)?;
        let bytes_done = bytes_done.min(job.bytes_total);
        let mut changes = Changes::default();
        let job = self.jobs.get_mut(&id).expect("checked");
        if job.bytes_done != bytes_done {
            job.bytes_done = bytes_done;
            changes.jobs.insert(id);
        }
        Ok(self.commit(changes))
    }

    /// A running job copied everything: its leg is healthy again.
    pub fn finish_job(&mut self, id: JobId) -> Result<Changes, ModelError> {
        let job = self.running_job(id)?.clone();
        let leg = &mut self
            .volumes
            .get_mut(&job.volume)
            .expect("active jobs name volumes")
            .mirrored_disks[job.mirrored_disk as usize]
            .legs[usize::from(job.leg)];
        assert_eq!(
            (leg.chunk, leg.state),
            (job.target, LegState::Syncing),
            "an active job's leg syncs onto its target"
        );
        leg.state = LegState::Active;
        let mut changes = Changes::default();
        changes.volumes.insert(job.volume);
        self.end_job(id, JobState::Done, None, &mut changes);
        Ok(self.commit(changes))
    }

    /// A job gave up (copy error reported by its executor): its leg is
    /// failed again, and the next `plan_repairs` places a new one.
    pub fn fail_job(&mut self, id: JobId, reason: &str) -> Result<Changes, ModelError> {
        let job = self.job(id)?.clone();
        if !job.is_active() {
            return Err(ModelError::Conflict(format!(
                "{} is already {:?}",
                id, job.state
            )));
        }
        let mut changes = Changes::default();
        let leg = &mut self
            .volumes
            .get_mut(&job.volume)
            .expect("active jobs name volumes")
            .mirrored_disks[job.mirrored_disk as usize]
            .legs[usize::from(job.leg)];
        leg.state = LegState::Failed;
        changes.volumes.insert(job.volume);
        self.repairs_pending = true;
        self.end_job(id, JobState::Failed, Some(reason.to_string()), &mut changes);
        Ok(self.commit(changes))
    }

    fn running_job(&self, id: JobId) -> Result<&ResyncJob, ModelError> {
        let job = self.job(id)?;
        if job.state != JobState::Running {
            return Err(ModelError::Conflict(format!(
                "{id} is {:?}, not running",
                job.state
            )));
        }
        Ok(job)
    }

    fn end_job(
        &mut self,
        id: JobId,
        state: JobState,
        error: Option<String>,
        changes: &mut Changes,
    ) {
        let job = self.jobs.get_mut(&id).expect("ending a known job");
        job.state = state;
        job.error = error;
        if state == JobState::Done {
            job.bytes_done = job.bytes_total;
        }
        self.repairs
            .remove(&(job.volume, job.mirrored_disk, job.leg));
        changes.jobs.insert(id);
        // Keep a bounded history of finished jobs (ids grow, so the
        // smallest finished ids are the oldest).
        let finished: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| !j.is_active())
            .map(|j| j.id)
            .collect();
        for old in finished
            .iter()
            .take(finished.len().saturating_sub(FINISHED_JOBS_KEPT))
        {
            self.jobs.remove(old);
            changes.jobs.insert(*old);
        }
    }

    /// A disk stopped serving: jobs writing to it fail (their leg is
    /// marked failed with the disk's other legs and gets a new target), and
    /// jobs reading from it go back to the queue to pick another source.
    pub(super) fn jobs_lose_disk(&mut self, disk: DiskId, changes: &mut Changes) {
        self.jobs_lose(|c| c.disk == disk, changes);
    }

    /// Like [`Self::jobs_lose_disk`], for the chunks `lost` selects.
    pub(super) fn jobs_lose(&mut self, lost: impl Fn(ChunkRef) -> bool, changes: &mut Changes) {
        let active: Vec<JobId> = self.repairs.values().copied().collect();
        for id in active {
            let job = &self.jobs[&id];
            if lost(job.target) {
                let reason = format!("target {} failed", job.target.disk);
                self.end_job(id, JobState::Failed, Some(reason), changes);
            } else if job.source.is_some_and(&lost) {
                let job = self.jobs.get_mut(&id).expect("active");
                job.source = None;
                job.state = JobState::Queued;
                job.bytes_done = 0;
                changes.jobs.insert(id);
            }
        }
    }

    /// Mirrored disks that have no healthy or syncing leg left: their data
    /// is gone. The simulator asserts this stays zero while failures per
    /// mirrored disk stay below the replica count.
    pub fn lost_mirrored_disks(&self) -> usize {
        self.volumes
            .values()
            .flat_map(|v| &v.mirrored_disks)
            .filter(|md| md.legs.iter().all(|l| l.state == LegState::Failed))
            .count()
    }

    /// Checks the recovery invariants: every syncing leg has exactly one
    /// active job targeting it, and no disk exceeds `per_disk_limit`.
    pub fn check_recovery_invariants(&self, per_disk_limit: u32) -> Result<(), String> {
        let mut syncing = BTreeSet::new();
        for v in self.volumes.values() {
            for (m, md) in v.mirrored_disks.iter().enumerate() {
                for (l, leg) in md.legs.iter().enumerate() {
                    if leg.state == LegState::Syncing {
                        syncing.insert((v.id, m as u32, l as u8));
                    }
                }
            }
        }
        let repairing: BTreeSet<_> = self.repairs.keys().copied().collect();
        if syncing != repairing {
            return Err(format!(
                "syncing legs {syncing:?} differ from active repairs {repairing:?}"
            ));
        }
        if let Some((disk, n)) = self
            .running_per_disk()
            .into_iter()
            .find(|(_, n)| *n > per_disk_limit)
        {
            return Err(format!(
                "{disk} takes part in {n} resyncs (limit {per_disk_limit})"
            ));
        }
        Ok(())
    }
}
