//! The agent's shared state: what its loops observe for the next heartbeat
//! (wipes, failed legs, resync and scrub progress, assembled volumes) and
//! the desired volumes the health watcher and the local API read. The loops
//! that fill and send it live in `reconcile`; the local API (`api`) reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use vsky_api::types::{
    ChunkId, FailedLeg, LegState, PoolReport, ResyncReport, ScrubReport, ScrubSpec, ServedVolume,
    VolumeSpec, WipedChunk,
};
use vsky_sync::LockExt;

use crate::head::mirror_sets;

/// Observations waiting for the next heartbeat, plus the latest desired
/// volumes for the health watcher.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) wiped: Mutex<Vec<WipedChunk>>,
    pub(crate) failed: Mutex<Vec<FailedLeg>>,
    /// Failed legs already queued or reported, so each is sent once. Keyed
    /// by chunk as well as slot: a slot (volume, mirrored disk, leg) is
    /// reused by a re-created volume of the same name or a replacement leg,
    /// and a failure of that new leg must be reported too. See
    /// [`Shared::set_volumes`] for when entries are forgotten.
    pub(crate) failed_seen: Mutex<BTreeSet<FailedKey>>,
    pub(crate) volumes: Mutex<Vec<VolumeSpec>>,
    /// Legs the manager listed failed and now lists active again on the same
    /// chunk (their server came back within its grace period): the kernel
    /// still has them dead until the next assembly brings them back, so the
    /// health loop must not report them meanwhile (that would have them
    /// replaced after all). Cleared once an assembly has tried.
    pub(crate) returning: Mutex<BTreeSet<FailedKey>>,
    /// Progress of the resyncs this head runs, by job (replaced on every
    /// health pass).
    pub(crate) head_resyncs: Mutex<BTreeMap<u64, ResyncReport>>,
    /// Progress of the copies this storage agent runs, by job.
    pub(crate) copy_resyncs: Arc<Mutex<BTreeMap<u64, ResyncReport>>>,
    /// The checks of assembled mirrors the manager lists for this head
    /// (set once their volumes are assembled), for the scrub patrol.
    pub(crate) head_checks: Mutex<Vec<ScrubSpec>>,
    /// Reports of those checks, sent until the manager stops listing them.
    pub(crate) check_reports: Mutex<Vec<ScrubReport>>,
    /// Verdicts of the detached volumes' scrubs this storage agent ran,
    /// by scrub id (sent until the manager stops listing them).
    pub(crate) detached_scrubs: Arc<Mutex<BTreeMap<u64, ScrubReport>>>,
    pub(crate) heartbeat_now: Notify,
    /// Volumes assembled on this head, with their devices; the local API
    /// waits on `assembly` for attaches and detaches to take effect.
    pub(crate) assembled: Mutex<BTreeMap<String, Assembled>>,
    pub(crate) assembly: watch::Sender<u64>,
    /// Volumes whose devices exist in the kernel, as the last assembly pass
    /// (or the start) found them: with the desired volumes, what the
    /// heartbeat reports assembled, so the manager ends a release only
    /// once the devices are gone.
    pub(crate) present: Mutex<BTreeSet<String>>,
    /// Why the last teardown of a volume failed (usually: held open), until
    /// one succeeds; the local API's detach answers with it.
    pub(crate) teardown_errors: Mutex<BTreeMap<String, String>>,
    /// Old tops (layers) the head has switched its thin volumes off while
    /// the manager still lists them freezing (from the last assembly
    /// pass): the heartbeat reports them until it stops.
    pub(crate) switched: Mutex<BTreeSet<String>>,
    /// The pools of the tops this head writes, as the health loop last
    /// read them: the heartbeat reports them, and the manager grows those
    /// that fill.
    pub(crate) pools: Mutex<Vec<PoolReport>>,
}

/// A volume device this head has assembled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Assembled {
    /// `/dev/mapper/vsky-<volume>`.
    pub(crate) device: PathBuf,
    /// Its size now: it grows online when the manager grows the volume.
    pub(crate) size_bytes: u64,
}

/// (volume, mirrored disk, leg slot, chunk) of a failed leg.
pub(crate) type FailedKey = (String, u32, u8, ChunkId);

/// Every leg slot of `volumes` with its state (a thin volume's under the
/// names of its layers).
pub(crate) fn slots(volumes: &[VolumeSpec]) -> impl Iterator<Item = (FailedKey, LegState)> {
    let mut out = Vec::new();
    for spec in volumes.iter().flat_map(mirror_sets) {
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            for (l, leg) in legs.iter().enumerate() {
                out.push(((spec.name.clone(), k as u32, l as u8, leg.chunk), leg.state));
            }
        }
    }
    out.into_iter()
}

impl Shared {
    /// Records the latest desired volumes, and forgets reported failures
    /// the manager no longer needs to hear about: legs it now lists as
    /// failed (the health loop skips those) and legs it no longer lists
    /// (volume detached or deleted, leg replaced). Without this, a failure
    /// in a slot that had failed before (same volume name, mirrored disk
    /// and leg) was never reported again.
    pub(crate) fn set_volumes(&self, volumes: &[VolumeSpec]) {
        let failed_before: BTreeSet<FailedKey> = slots(&self.volumes.lock_unpoisoned())
            .filter(|(_, state)| *state == LegState::Failed)
            .map(|(key, _)| key)
            .collect();
        let live: BTreeSet<FailedKey> = slots(volumes)
            .filter(|(_, state)| *state != LegState::Failed)
            .map(|(key, _)| key)
            .collect();
        let back: Vec<FailedKey> = slots(volumes)
            .filter(|(key, state)| *state == LegState::Active && failed_before.contains(key))
            .map(|(key, _)| key)
            .collect();
        self.failed_seen
            .lock_unpoisoned()
            .retain(|key| live.contains(key));
        let mut returning = self.returning.lock_unpoisoned();
        returning.retain(|key| live.contains(key));
        returning.extend(back);
        drop(returning);
        *self.volumes.lock_unpoisoned() = volumes.to_vec();
    }

    /// The volumes this head has assembled or is assembling, for the
    /// heartbeat: those whose devices exist, and those the manager lists
    /// (an assembly may be under way). Empty on a storage-only agent.
    pub(crate) fn assembled_report(&self) -> Vec<String> {
        let mut names = self.present.lock_unpoisoned().clone();
        names.extend(
            self.volumes
                .lock_unpoisoned()
                .iter()
                .map(|v| v.name.clone()),
        );
        names.extend(self.assembled.lock_unpoisoned().keys().cloned());
        names.into_iter().collect()
    }

    /// The size of every volume device assembled here, for the heartbeat
    /// (a grow of an attached volume is done once its head serves it).
    pub(crate) fn served_report(&self) -> Vec<ServedVolume> {
        self.assembled
            .lock_unpoisoned()
            .iter()
            .map(|(volume, a)| ServedVolume {
                volume: volume.clone(),
                size_bytes: a.size_bytes,
            })
            .collect()
    }

    /// Records an assembled volume; a new size goes to the manager at once
    /// (a grow waits for it).
    pub(crate) fn set_assembled(&self, volume: &str, assembled: Assembled) {
        let before = self
            .assembled
            .lock_unpoisoned()
            .insert(volume.to_string(), assembled.clone());
        if before.is_none_or(|b| b.size_bytes != assembled.size_bytes) {
            self.heartbeat_now.notify_one();
        }
    }

    /// Whether a volume has no devices here (none assembled by this
    /// process, none found in the kernel by the last pass).
    pub(crate) fn gone(&self, volume: &str) -> bool {
        !self.assembled.lock_unpoisoned().contains_key(volume)
            && !self.present.lock_unpoisoned().contains(volume)
    }

    /// Records which volumes have devices now; a change goes to the
    /// manager at once (a release waits for it).
    pub(crate) fn set_present(&self, present: BTreeSet<String>) {
        let mut have = self.present.lock_unpoisoned();
        if *have != present {
            *have = present;
            drop(have);
            self.heartbeat_now.notify_one();
        }
    }

    /// Records the switched volumes of an assembly pass; a new one has a
    /// heartbeat go out at once (a snapshot request waits for it).
    pub(crate) fn set_switched(&self, switched: BTreeSet<String>) {
        let mut have = self.switched.lock_unpoisoned();
        let new = switched.iter().any(|v| !have.contains(v));
        *have = switched;
        drop(have);
        if new {
            self.heartbeat_now.notify_one();
        }
    }

    /// (volume, mirrored disk) of every volume this head should have
    /// assembled, for the scrub patrol.
    pub(crate) fn assembled_mirrors(&self) -> Vec<(String, u32)> {
        let assembled = self.assembled.lock_unpoisoned();
        self.volumes
            .lock_unpoisoned()
            .iter()
            .filter(|v| assembled.contains_key(&v.name))
            .flat_map(mirror_sets)
            .flat_map(|v| (0..v.mirrored_disks.len() as u32).map(move |k| (v.name.clone(), k)))
            .collect()
    }

    /// The checks the manager wants of this head's mirrors.
    pub(crate) fn head_checks(&self) -> Vec<ScrubSpec> {
        self.head_checks.lock_unpoisoned().clone()
    }

    /// The patrol's reports for the heartbeats; `new`: one just finished,
    /// so a heartbeat goes out at once.
    pub(crate) fn set_check_reports(&self, reports: Vec<ScrubReport>, new: bool) {
        *self.check_reports.lock_unpoisoned() = reports;
        if new {
            self.heartbeat_now.notify_one();
        }
    }

    /// The returning legs of one volume, now handed to an assembly.
    pub(crate) fn take_returning(&self, volume: &str) -> Vec<FailedKey> {
        let mut returning = self.returning.lock_unpoisoned();
        let mine: Vec<FailedKey> = returning
            .iter()
            .filter(|key| key.0 == volume)
            .cloned()
            .collect();
        for key in &mine {
            returning.remove(key);
        }
        mine
    }

    /// Queues a failure of leg `leg` of mirrored disk `mirrored_disk` of
    /// `spec` for the next heartbeat, unless it was queued already, the
    /// manager already lists the leg as failed, or the dead device is
    /// another chunk than the one the manager lists (`dead_chunk`: the old
    /// leg of a slot whose replacement is not swapped in yet).
    pub(crate) fn leg_failed(
        &self,
        spec: &VolumeSpec,
        mirrored_disk: u32,
        leg: u8,
        dead_chunk: Option<ChunkId>,
    ) {
        let Some(leg_spec) = spec
            .mirrored_disks
            .get(mirrored_disk as usize)
            .and_then(|legs| legs.get(leg as usize))
        else {
            return;
        };
        if leg_spec.state == LegState::Failed || dead_chunk.is_some_and(|c| c != leg_spec.chunk) {
            return;
        }
        let volume = spec.name.as_str();
        let key = (volume.to_string(), mirrored_disk, leg, leg_spec.chunk);
        if self.returning.lock_unpoisoned().contains(&key) {
            return;
        }
        if self.failed_seen.lock_unpoisoned().insert(key) {
            tracing::warn!(
                volume,
                mirrored_disk,
                leg,
                "leg failed; reporting to the manager"
            );
            self.failed.lock_unpoisoned().push(FailedLeg {
                volume: volume.to_string(),
                mirrored_disk,
                leg,
                chunk: Some(leg_spec.chunk),
            });
            self.heartbeat_now.notify_one();
        }
    }
}

impl crate::copy::Notifier for Shared {
    fn notify(&self) {
        self.heartbeat_now.notify_one();
    }
}
