//! Who copies a running resync, and what happens to its jobs when a volume
//! is attached, detached or deleted.
//!
//! A running [`ResyncJob`] has exactly one executor, derived from the
//! volume and never stored:
//! - an **attached** volume's head rebuilds the new leg through its own
//!   dm-raid mirror (the data keeps changing under the copy, and only the
//!   mirror sees every write); so does the head of a thin volume for the
//!   layers it writes (its top, and its old top while that freezes:
//!   `Cluster::writer_of` in `chains.rs`);
//! - a **detached** volume's new leg is filled by the storage agent that
//!   holds the target chunk, reading the healthy source leg over NBD.
//!
//! - a **releasing** volume's jobs have none: they were requeued when the
//!   release started and none starts until the attachment ends
//!   (`access.rs`), because the head may still write through its mirror.
//!
//! The two must never write the target at the same time. So the target
//! chunk is exported (the head's only way in) only while the head is the
//! executor, a copy is listed only while the storage agent is, and a change
//! of executor always passes through `Queued`: attaching or detaching a
//! volume puts its running jobs back in the queue, and the storage agent
//! stops a copy before it adds the export for the head (see the agent's
//! `apply`). A requeued job starts over from zero under its new executor.

use std::collections::BTreeSet;

use super::recovery::{JobKind, JobState, ResyncJob};
use super::{Changes, Cluster, LegAddr};
use crate::entities::{DiskState, LegState};
use crate::ids::{JobId, ServerId, VolumeId};

/// Who copies a running resync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    /// The head of the attached volume, through its dm-raid mirror.
    Head(ServerId),
    /// The storage server holding the target chunk (detached volume).
    Storage(ServerId),
}

impl Executor {
    pub fn server(self) -> ServerId {
        match self {
            Executor::Head(s) | Executor::Storage(s) => s,
        }
    }
}

impl Cluster {
    /// The active (queued or running) job repairing a leg slot, if any.
    pub fn active_job(&self, volume: VolumeId, mirrored_disk: u32, leg: u8) -> Option<&ResyncJob> {
        self.repairs
            .get(&LegAddr {
                volume,
                mirrored_disk,
                leg,
            })
            .map(|id| &self.jobs[id])
    }

    /// The executor of a running job; `None` for any other job.
    pub fn job_executor(&self, id: JobId) -> Option<Executor> {
        let job = self.jobs.get(&id)?;
        if job.state != JobState::Running {
            return None;
        }
        // A layer's writer is its thin volume's attachment (`chains.rs`).
        Some(match self.writer_of(job.volume) {
            // Never running (requeued when the release starts, and none
            // starts until it ends): nobody may copy.
            Some(a) if a.is_releasing() => return None,
            Some(a) => Executor::Head(a.head),
            None if self.volumes.contains_key(&job.volume) => {
                Executor::Storage(self.disks.get(&job.target.disk)?.server)
            }
            None => return None,
        })
    }

    /// Whether a volume's attachment is releasing: none of its jobs may
    /// start, neither by its head (which tears it down) nor by a storage
    /// agent (the head may still write the chunks).
    pub(super) fn releasing(&self, volume: VolumeId) -> bool {
        self.writer_of(volume).is_some_and(|a| a.is_releasing())
    }

    /// Whether the storage agent should export a leg's chunk: every leg's,
    /// except a syncing leg's while its resync is not run by the head (the
    /// head must not write a chunk that is queued or being copied). While
    /// the volume is releasing every leg stays exported: the head may
    /// still have any of them open while it tears down (its last
    /// superblock writes must succeed), and nobody else writes them, since
    /// no job starts until the attachment ends.
    pub(crate) fn leg_exported(&self, volume: VolumeId, mirrored_disk: u32, leg: u8) -> bool {
        let state = self.volumes[&volume].mirrored_disks[mirrored_disk as usize].legs
            [usize::from(leg)]
        .state;
        if state != LegState::Syncing || self.releasing(volume) {
            return true;
        }
        self.active_job(volume, mirrored_disk, leg)
            .is_some_and(|j| matches!(self.job_executor(j.id), Some(Executor::Head(_))))
    }

    /// Sets the servers in their grace period: a failed leg on one of them
    /// (unless its disk failed) is not replaced until the server leaves the
    /// set, because it may come back with its data. The manager derives the
    /// set from heartbeats; the simulator from its fault plan.
    pub fn set_repair_hold(&mut self, servers: BTreeSet<ServerId>) {
        if servers != self.repair_hold {
            // Legs held so far may need planning now.
            self.repairs_pending = true;
            self.repair_hold = servers;
        }
    }

    pub fn repair_hold(&self) -> &BTreeSet<ServerId> {
        &self.repair_hold
    }

    /// Whether the failed leg in this slot waits for its server.
    pub(super) fn repair_held(&self, a: LegAddr) -> bool {
        if self.repair_hold.is_empty() {
            return false;
        }
        let chunk = self.leg_at(a).chunk;
        self.disks
            .get(&chunk.disk)
            .is_some_and(|d| d.state != DiskState::Failed && self.repair_hold.contains(&d.server))
    }

    /// Puts a volume's running jobs back in the queue (its executor is
    /// about to change); they restart from zero.
    pub(super) fn requeue_jobs_of(&mut self, volume: VolumeId, changes: &mut Changes) {
        let running: Vec<JobId> = self
            .repairs
            .iter()
            .filter(|(a, _)| a.volume == volume)
            .map(|(_, id)| *id)
            .filter(|id| self.jobs[id].state == JobState::Running)
            .collect();
        for id in running {
            let job = self.jobs.get_mut(&id).expect("listed");
            job.state = JobState::Queued;
            job.source = None;
            job.bytes_done = 0;
            changes.jobs.insert(id);
        }
    }

    /// Ends the active jobs of a volume being deleted: nothing is left to
    /// repair.
    pub(super) fn end_jobs_of(&mut self, volume: VolumeId, changes: &mut Changes) {
        let active: Vec<JobId> = self
            .repairs
            .iter()
            .filter(|(a, _)| a.volume == volume)
            .map(|(_, id)| *id)
            .collect();
        for id in active {
            let reason = "volume deleted".to_string();
            if let JobKind::Move { .. } = self.jobs[&id].kind {
                self.abandon_move(id, reason, changes);
            } else {
                self.end_job(id, JobState::Failed, Some(reason), changes);
            }
        }
    }
}
