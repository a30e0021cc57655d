//! Recovery without dedicated spares: replacement legs and their resyncs.
//!
//! When a leg fails, [`Cluster::plan_repairs`] takes a new chunk from the
//! pool for it (on a server that holds no other live leg of its mirrored
//! disk, in another failure domain when possible, on the disk with the
//! fewest resyncs already bound to it, least loaded first: allocation rule
//! 7 in `alloc.rs`), puts it in the leg's slot as `Syncing`, releases the
//! failed chunk, and queues a [`ResyncJob`]. [`Cluster::start_jobs`]
//! (`schedule.rs`) starts queued jobs as soon as their disks are free:
//! every physical disk, as resync source or target, takes part in at most
//! `per_disk_limit` running resyncs; mirrored disks with the fewest healthy
//! legs go first, then the jobs on the disks and links with the most
//! resyncs still to do (those set the end of the rebuild). Whoever copies (the head's dm-raid for an attached
//! volume, a storage agent for a detached one) reports progress and
//! completion; [`Cluster::finish_job`] turns the leg `Active`.
//!
//! Everything here is pure state-machine code, like the rest of the model:
//! the manager drives it from its loop, and `vsky-sim` drives the very same
//! code under simulated time with injected faults.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{Changes, Cluster, LegAddr};
use crate::SecretSource;
use crate::entities::LegState;
use crate::error::ModelError;
use crate::ids::{ChunkRef, DiskId, JobId, ServerId, VolumeId};

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

/// Why a leg is being resynced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum JobKind {
    /// A failed leg's slot gets a new chunk.
    #[default]
    Repair,
    /// A healthy leg (slot `from`) moves to a new chunk (`moves.rs`): the
    /// new leg syncs in an extra slot at the end of the mirrored disk,
    /// then takes slot `from`, and the old chunk is released. The mirrored
    /// disk never has fewer copies than before.
    Move { from: u8, reason: MoveReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// The leg's disk or server is draining.
    Drain,
    /// `rebalance` moves it to a less loaded disk.
    Rebalance,
}

/// Copying one mirrored disk's healthy data onto a new leg: a replacement
/// for a failed one, or a moving leg's new home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncJob {
    pub id: JobId,
    #[serde(default)]
    pub kind: JobKind,
    pub volume: VolumeId,
    pub mirrored_disk: u32,
    pub leg: u8,
    /// The new chunk being filled.
    pub target: ChunkRef,
    /// The healthy leg copied from; chosen when the job starts.
    pub source: Option<ChunkRef>,
    /// The chunk this job replaces: the failed one (repair), or the one
    /// moving away (move).
    pub replaced: ChunkRef,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub state: JobState,
    pub error: Option<String>,
    /// Sources a storage agent's copy could not read (unreachable, or
    /// read errors): passed over when the job starts again, as long as
    /// another healthy leg remains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_sources: Vec<ChunkRef>,
}

impl ResyncJob {
    /// The slot this job fills.
    pub(crate) fn leg_addr(&self) -> LegAddr {
        LegAddr {
            volume: self.volume,
            mirrored_disk: self.mirrored_disk,
            leg: self.leg,
        }
    }

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

    /// Running resyncs (as source or target) and scrubs (`scrub.rs`: a
    /// scrub reads every leg of its mirrored disk) per disk: the per-disk
    /// limit bounds their sum.
    pub fn running_per_disk(&self) -> BTreeMap<DiskId, u32> {
        let mut busy = BTreeMap::new();
        for job in self.jobs.values().filter(|j| j.state == JobState::Running) {
            for d in job.disks() {
                *busy.entry(d).or_insert(0) += 1;
            }
        }
        for d in self.scrub_disks() {
            *busy.entry(d).or_insert(0) += 1;
        }
        busy
    }

    /// Active resyncs (queued or running) bound to each disk: as target,
    /// as chosen source, or as the leg a queued job will copy from (the
    /// only healthy one, or the only one off draining disks). A disk's
    /// count is the number of chunk copies it must still take part in, so
    /// the largest count bounds how soon the rebuild can end.
    pub fn resyncs_bound_per_disk(&self) -> HashMap<DiskId, u32> {
        let mut load = HashMap::new();
        for (target, source) in self.active_resync_disks() {
            *load.entry(target).or_insert(0) += 1;
            if let Some(d) = source {
                *load.entry(d).or_insert(0) += 1;
            }
        }
        load
    }

    /// The (target, source) disks of every active resync; the source when
    /// chosen (running) or forced ([`Self::forced_source`]).
    pub(super) fn active_resync_disks(
        &self,
    ) -> impl Iterator<Item = (DiskId, Option<DiskId>)> + '_ {
        self.repairs.values().map(|id| {
            let job = &self.jobs[id];
            let source = job
                .source
                .map(|s| s.disk)
                .or_else(|| self.forced_source(job.volume, job.mirrored_disk));
            (job.target.disk, source)
        })
    }

    /// The disk a resync of this mirrored disk will read from: its only
    /// healthy leg, or else its only healthy leg off draining disks (the
    /// scheduler reads draining disks last, `schedule.rs`, so a drain's
    /// move reads the moving leg's partner). `None` when the scheduler
    /// has a real choice.
    pub(super) fn forced_source(&self, volume: VolumeId, m: u32) -> Option<DiskId> {
        let md = self.volumes.get(&volume)?.mirrored_disks.get(m as usize)?;
        let only =
            |mut legs: Box<dyn Iterator<Item = DiskId> + '_>| match (legs.next(), legs.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            };
        let active = || {
            md.legs
                .iter()
                .filter(|l| l.state == LegState::Active)
                .map(|l| l.chunk.disk)
        };
        only(Box::new(active()))
            .or_else(|| only(Box::new(active().filter(|d| !self.is_draining(*d)))))
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
                // A move's target is the extra slot, one past the replicas.
                let v = &self.volumes[&job.volume];
                let legs = v.mirrored_disks[job.mirrored_disk as usize].legs.len();
                let is_move = matches!(job.kind, JobKind::Move { .. });
                let extra = usize::from(v.replicas) + 1;
                if is_move != (legs == extra && usize::from(job.leg) + 1 == extra) {
                    return Err(ModelError::Corrupt(format!(
                        "{} and the legs of its mirrored disk disagree about a move",
                        job.id
                    )));
                }
                self.repairs.insert(job.leg_addr(), job.id);
            } else {
                self.finished.insert(job.id);
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
        let failed: Vec<LegAddr> = self
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
                            .map(move |(l, _)| LegAddr {
                                volume: v.id,
                                mirrored_disk: m as u32,
                                leg: l as u8,
                            })
                    })
            })
            .filter(|slot| !self.repairs.contains_key(slot))
            // Legs on a server in its grace period wait (executor.rs).
            .filter(|slot| !self.repair_held(*slot))
            // A leg that failed while moving is replaced by its move.
            .filter(|slot| !self.moving_away(*slot))
            .collect();
        // Resyncs bound to each disk, counting the sources the new jobs will
        // be bound to before any target is chosen, so targets avoid them.
        let mut load = self.resyncs_bound_per_disk();
        for slot in &failed {
            if let Some(d) = self.forced_source(slot.volume, slot.mirrored_disk) {
                *load.entry(d).or_insert(0) += 1;
            }
        }
        // Resyncs each server receives (their targets).
        let mut receiving: HashMap<ServerId, u32> = HashMap::new();
        for id in self.repairs.values() {
            let server = self.disks[&self.jobs[id].target.disk].server;
            *receiving.entry(server).or_insert(0) += 1;
        }
        let mut unplanned = false;
        let mut no_room = false;
        for slot in failed {
            let recoverable = self.volumes[&slot.volume].mirrored_disks
                [slot.mirrored_disk as usize]
                .healthy_legs()
                > 0;
            match self.plan_one(slot, &mut load, &mut receiving, secrets, &mut changes) {
                Some(id) => planned.push(id),
                None => {
                    unplanned = true;
                    no_room |= recoverable;
                }
            }
        }
        // Legs left without a repair (no room, no healthy leg) are retried
        // on the next call.
        self.repairs_pending = unplanned;
        // Repairs come before moves: queued moves give their chunks back
        // (wiped, then free) and no move is planned while repairs lack room.
        self.repairs_lack_room = no_room;
        if no_room {
            self.cancel_queued_moves(&mut changes);
        }
        (planned, self.commit(changes))
    }

    /// Plans one leg's replacement; `load` holds the resyncs bound to each
    /// disk and `receiving` those each server receives; both gain the new
    /// target.
    fn plan_one(
        &mut self,
        slot: LegAddr,
        load: &mut HashMap<DiskId, u32>,
        receiving: &mut HashMap<ServerId, u32>,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) -> Option<JobId> {
        let LegAddr {
            volume,
            mirrored_disk: m,
            leg: l,
        } = slot;
        let v = &self.volumes[&volume];
        let md = &v.mirrored_disks[m as usize];
        if md.healthy_legs() == 0 {
            return None;
        }
        let label = &self.settings.failure_domain_label;
        // Every other leg's server is taken, failed legs' too: a failed leg
        // held through its server's grace period comes back (`leg_returned`)
        // if the server does, and two live legs of one mirrored disk must
        // never share a server.
        let taken: Vec<(ServerId, String, DiskId)> = md
            .legs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != usize::from(l))
            .filter_map(|(_, leg)| self.disks.get(&leg.chunk.disk))
            .filter_map(|d| {
                self.servers
                    .get(&d.server)
                    .map(|s| (s.id, s.failure_domain(label), d.id))
            })
            .collect();
        let class = v.class.clone();
        let replaced = md.legs[usize::from(l)].chunk;
        let resyncs = |d: DiskId| load.get(&d).copied().unwrap_or(0);
        let receives = |s: ServerId| receiving.get(&s).copied().unwrap_or(0);
        let disk = self.index.pick_replacement(
            &taken,
            class.as_deref(),
            &self.partners,
            &resyncs,
            &receives,
        )?;
        *load.entry(disk).or_insert(0) += 1;
        *receiving.entry(self.disks[&disk].server).or_insert(0) += 1;
        let before: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();

        // Take the new chunk for the slot; release the failed one (it is
        // wiped if its disk ever serves again, dropped with the disk if not).
        let index = self.take_chunk(disk, slot);
        self.release_chunk(replaced, changes);
        let target = ChunkRef { disk, index };
        let leg = &mut self
            .volumes
            .get_mut(&volume)
            .expect("exists")
            .mirrored_disks[m as usize]
            .legs[usize::from(l)];
        leg.chunk = target;
        leg.state = LegState::Syncing;
        leg.never_synced = false;
        leg.export_name = secrets.export_secret();
        let mut after = before.clone();
        after[usize::from(l)] = target;
        self.link_pairs(&before, false);
        self.link_pairs(&after, true);

        Some(self.queue_job(JobKind::Repair, slot, target, replaced, changes))
    }

    /// Queues a new job filling `target` in slot `slot` in place of
    /// `replaced`; its source is chosen when it starts.
    pub(super) fn queue_job(
        &mut self,
        kind: JobKind,
        slot: LegAddr,
        target: ChunkRef,
        replaced: ChunkRef,
        changes: &mut Changes,
    ) -> JobId {
        let id = JobId(self.take_id(changes));
        let job = ResyncJob {
            id,
            kind,
            volume: slot.volume,
            mirrored_disk: slot.mirrored_disk,
            leg: slot.leg,
            target,
            source: None,
            replaced,
            bytes_total: self.settings.data_bytes_per_chunk(),
            bytes_done: 0,
            state: JobState::Queued,
            error: None,
            failed_sources: Vec::new(),
        };
        self.jobs.insert(id, job);
        self.repairs.insert(slot, id);
        changes.jobs.insert(id);
        changes.volumes.insert(slot.volume);
        id
    }

    /// Records how far a running job got (the generation does not move).
    pub fn job_progress(&mut self, id: JobId, bytes_done: u64) -> Result<Changes, ModelError> {
        let job = self.running_job(id)?;
        let bytes_done = bytes_done.min(job.bytes_total);
        let mut changes = Changes::default();
        let job = self.jobs.get_mut(&id).expect("checked");
        if job.bytes_done != bytes_done {
            job.bytes_done = bytes_done;
            changes.jobs.insert(id);
        }
        // Stored, but no agent's desired state depends on it: the
        // generation stays, so progress reports do not wake every agent's
        // long-poll.
        Ok(changes)
    }

    /// A running job copied everything: its leg is healthy again.
    pub fn finish_job(&mut self, id: JobId) -> Result<Changes, ModelError> {
        let job = self.running_job(id)?.clone();
        if let JobKind::Move { from, .. } = job.kind {
            let mut changes = Changes::default();
            self.finish_move(&job, from, &mut changes);
            self.end_job(id, JobState::Done, None, &mut changes);
            return Ok(self.commit(changes));
        }
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
        if let JobKind::Move { .. } = job.kind {
            self.abandon_move(id, reason.to_string(), &mut changes);
            return Ok(self.commit(changes));
        }
        let leg = &mut self
            .volumes
            .get_mut(&job.volume)
            .expect("active jobs name volumes")
            .mirrored_disks[job.mirrored_disk as usize]
            .legs[usize::from(job.leg)];
        leg.fail();
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

    pub(super) fn end_job(
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
        self.repairs.remove(&job.leg_addr());
        changes.jobs.insert(id);
        // Keep a bounded history of finished jobs (ids grow, so the
        // smallest finished ids are the oldest).
        self.finished.insert(id);
        while self.finished.len() > FINISHED_JOBS_KEPT {
            let old = self.finished.pop_first().expect("non-empty");
            self.jobs.remove(&old);
            changes.jobs.insert(old);
        }
    }

    /// The storage agent running a copy could not read its source (it was
    /// unreachable, or returned read errors) for longer than its retries:
    /// the job goes back to the queue with its target, and starts again
    /// from another healthy leg when there is one (the failed source is
    /// remembered in [`ResyncJob::failed_sources`]); with none, from the
    /// same one once more. Returns whether another healthy leg exists.
    /// The caller checks that the report comes from the job's executor.
    pub fn copy_source_failed(
        &mut self,
        id: JobId,
        reason: &str,
    ) -> Result<(Changes, bool), ModelError> {
        let job = self.running_job(id)?;
        let Some(source) = job.source else {
            return Err(ModelError::Conflict(format!(
                "{id} copies from no chosen source (a head resyncs it)"
            )));
        };
        let md = &self.volumes[&job.volume].mirrored_disks[job.mirrored_disk as usize];
        let mut failed = job.failed_sources.clone();
        if !failed.contains(&source) {
            failed.push(source);
        }
        let another = md
            .legs
            .iter()
            .any(|l| l.state == LegState::Active && !failed.contains(&l.chunk));
        let job = self.jobs.get_mut(&id).expect("checked");
        job.failed_sources = failed;
        job.source = None;
        job.state = JobState::Queued;
        job.bytes_done = 0;
        job.error = Some(reason.to_string());
        let mut changes = Changes::default();
        changes.jobs.insert(id);
        Ok((self.commit(changes), another))
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
                if let JobKind::Move { .. } = job.kind {
                    self.abandon_move(id, reason, changes);
                } else {
                    self.end_job(id, JobState::Failed, Some(reason), changes);
                }
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
                        syncing.insert(LegAddr {
                            volume: v.id,
                            mirrored_disk: m as u32,
                            leg: l as u8,
                        });
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
