//! Moving healthy legs: draining a disk or a server, and rebalancing.
//!
//! A move never lowers a mirrored disk's redundancy. The new chunk joins
//! the mirrored disk as an **extra slot** at the end of its legs (so a
//! 2-replica mirrored disk has three legs while the move runs), syncs like
//! a replacement leg under the same per-disk scheduler ([`ResyncJob`] with
//! [`JobKind::Move`]; repairs go first because their mirrored disks have
//! fewer healthy legs), and when it is in sync it takes the moving leg's
//! slot and the old chunk is released. The head of an attached volume
//! does this with its running dm-raid mirror (grow, then shrink); a storage
//! agent copies a detached volume's chunk, as for a repair.
//!
//! If the target fails, the move is abandoned: the extra slot goes away
//! and the next planning pass picks another target. If the moving leg
//! fails meanwhile, the move carries on and is its replacement (repairs
//! skip that slot), so a drain of a dying disk loses no time.
//!
//! Draining marks a disk or a server: it keeps serving, takes no new
//! chunks (it leaves the allocation index), and [`Cluster::plan_drains`]
//! moves its legs away, one move per mirrored disk at a time. Once it holds
//! no leg it can be removed. [`Cluster::rebalance`] moves legs from the
//! fullest disks to the emptiest, as many as asked;
//! [`Cluster::auto_rebalance`] is the background policy that calls it.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::recovery::{JobKind, JobState, MoveReason, ResyncJob};
use super::{Changes, Cluster, LegAddr};
use crate::SecretSource;
use crate::entities::{DiskState, Leg, LegState, ServerState};
use crate::error::ModelError;
use crate::ids::{ChunkRef, DiskId, JobId, ServerId, VolumeId};

/// How far a draining disk or server is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// Legs still on it (healthy, failed or moving).
    pub legs_left: u64,
    /// Of those, legs whose move is queued or running.
    pub moving: u64,
}

/// The background rebalance policy (`vsky-manager --auto-rebalance`), see
/// [`Cluster::auto_rebalance`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoRebalance {
    /// Moves are planned while the fill spread between the fullest and the
    /// emptiest disk is above this (a fraction, 0.0 to 1.0).
    pub spread: f64,
    /// Rebalance moves queued or running at most. `None`: sized to the
    /// pool, the per-disk limit times the disks emptier than the mean (the
    /// most that can receive at once).
    pub window: Option<usize>,
}

/// One planned move of [`Cluster::rebalance`] (for the caller's report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    pub job: JobId,
    pub from: DiskId,
    pub to: DiskId,
}

impl Cluster {
    /// Whether new chunks stay off this disk because it or its server is
    /// draining.
    pub fn is_draining(&self, disk: DiskId) -> bool {
        self.disks
            .get(&disk)
            .is_some_and(|d| d.draining || self.servers.get(&d.server).is_some_and(|s| s.draining))
    }

    /// Starts draining a disk: it takes no new chunks, and its legs are
    /// moved to other disks by [`Self::plan_drains`]. Idempotent.
    pub fn drain_disk(&mut self, id: DiskId) -> Result<Changes, ModelError> {
        self.set_disk_draining(id, true)
    }

    /// Stops draining a disk: it takes new chunks again; moves already
    /// queued or running finish.
    pub fn stop_drain_disk(&mut self, id: DiskId) -> Result<Changes, ModelError> {
        self.set_disk_draining(id, false)
    }

    fn set_disk_draining(&mut self, id: DiskId, draining: bool) -> Result<Changes, ModelError> {
        let disk = self.disk(id)?;
        if draining && disk.state == DiskState::Failed {
            return Err(ModelError::Conflict(format!(
                "disk {} failed; its legs are being replaced already. Remove it once it holds no leg",
                id.0
            )));
        }
        let mut changes = Changes::default();
        let disk = self.disks.get_mut(&id).expect("exists");
        if disk.draining != draining {
            disk.draining = draining;
            changes.disks.insert(id);
            self.reindex(id);
        }
        Ok(self.commit(changes))
    }

    /// Starts draining a server (all its disks). Idempotent.
    pub fn drain_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.set_server_draining(name, true)
    }

    /// Stops draining a server.
    pub fn stop_drain_server(&mut self, name: &str) -> Result<Changes, ModelError> {
        self.set_server_draining(name, false)
    }

    fn set_server_draining(&mut self, name: &str, draining: bool) -> Result<Changes, ModelError> {
        let id = self.server_by_name(name)?.id;
        if draining && self.servers[&id].state == ServerState::Failed {
            return Err(ModelError::Conflict(format!(
                "server '{name}' failed; its legs are being replaced already. Remove it once it holds no leg"
            )));
        }
        let mut changes = Changes::default();
        let server = self.servers.get_mut(&id).expect("exists");
        if server.draining != draining {
            server.draining = draining;
            changes.servers.insert(id);
            self.reindex_server(id);
        }
        Ok(self.commit(changes))
    }

    /// Legs left on a disk, and how many of them are moving.
    pub fn drain_progress(&self, disk: DiskId) -> DrainProgress {
        let mut p = DrainProgress::default();
        for (_, a) in self.legs_on_disk(disk) {
            p.legs_left += 1;
            if self
                .move_of(a.volume, a.mirrored_disk)
                .is_some_and(|j| matches!(j.kind, JobKind::Move { from, .. } if from == a.leg))
            {
                p.moving += 1;
            }
        }
        p
    }

    /// The active move of a mirrored disk, if any (at most one: its job
    /// sits on the extra slot).
    pub(crate) fn move_of(&self, volume: VolumeId, m: u32) -> Option<&ResyncJob> {
        self.repairs
            .range(LegAddr::slots_of(volume, m))
            .map(|(_, id)| &self.jobs[id])
            .find(|j| matches!(j.kind, JobKind::Move { .. }))
    }

    /// Whether a failed leg is being replaced by its own move (repairs
    /// leave it alone).
    pub(super) fn moving_away(&self, a: LegAddr) -> bool {
        self.move_of(a.volume, a.mirrored_disk)
            .is_some_and(|j| matches!(j.kind, JobKind::Move { from, .. } if from == a.leg))
    }

    /// Plans a move for every healthy leg on a draining disk (or a disk of
    /// a draining server) whose mirrored disk is whole and has no other job:
    /// a new chunk on a disk chosen like a replacement (allocation rule 7),
    /// queued under the per-disk scheduler. Legs that cannot move yet (a
    /// job on their mirrored disk, a degraded mirrored disk, no room) are
    /// retried on the next call. Returns the new jobs.
    pub fn plan_drains(&mut self, secrets: &mut dyn SecretSource) -> (Vec<JobId>, Changes) {
        let mut changes = Changes::default();
        let mut planned = Vec::new();
        if self.repairs_lack_room {
            return (planned, changes);
        }
        let draining: Vec<DiskId> = self
            .disks
            .values()
            .filter(|d| d.state == DiskState::Online && self.is_draining(d.id))
            .map(|d| d.id)
            .collect();
        if draining.is_empty() {
            return (planned, changes);
        }
        // The legs that move now (one per mirrored disk: two of its legs
        // may be draining), each with the partner it will read off
        // draining disks when there is one (`forced_source`).
        let mut legs: Vec<(DiskId, LegAddr, Option<DiskId>)> = Vec::new();
        let mut seen = HashSet::new();
        for &disk in &draining {
            for (_, a) in self.legs_on_disk(disk) {
                if self.movable(a) && seen.insert((a.volume, a.mirrored_disk)) {
                    legs.push((disk, a, self.forced_source(a.volume, a.mirrored_disk)));
                }
            }
        }
        // Every move's source is counted before any target is chosen (as
        // `plan_repairs` does), so that no target lands on a disk another
        // move of this pass must read. The partner, not the draining disk,
        // takes part in a move: counting the draining disk put half of the
        // targets at 1000 servers on disks that were also another move's
        // source (at 100 servers × 10 disks, 70 s instead of 64 s).
        // Counting each partner only once its own move's target was chosen
        // still let earlier moves' targets land on later moves' partners
        // (idle until then): some disks took part in three moves, and the
        // drain at 1000 servers × 10 disks took three rounds where the
        // bound counts two (16 s against 10.7 s, docs/benchmarks.md).
        let mut load = self.resyncs_bound_per_disk();
        for (_, _, forced) in &legs {
            if let Some(p) = forced {
                *load.entry(*p).or_insert(0) += 1;
            }
        }
        let mut receiving: HashMap<ServerId, u32> = HashMap::new();
        for id in self.repairs.values() {
            let server = self.disks[&self.jobs[id].target.disk].server;
            *receiving.entry(server).or_insert(0) += 1;
        }
        for (disk, a, forced) in legs {
            let md = &self.volumes[&a.volume].mirrored_disks[a.mirrored_disk as usize];
            let label = &self.settings.failure_domain_label;
            let taken: Vec<(ServerId, String, DiskId)> = md
                .legs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != usize::from(a.leg))
                .map(|(_, leg)| {
                    let d = &self.disks[&leg.chunk.disk];
                    (
                        d.server,
                        self.servers[&d.server].failure_domain(label),
                        d.id,
                    )
                })
                .collect();
            let class = self.volumes[&a.volume].class.clone();
            let resyncs = |d: DiskId| load.get(&d).copied().unwrap_or(0);
            let receives = |s: ServerId| receiving.get(&s).copied().unwrap_or(0);
            let Some(target) = self.index.pick_replacement(
                &taken,
                class.as_deref(),
                &self.partners,
                &resyncs,
                &receives,
            ) else {
                // No room: the leg waits for a later call, and its partner
                // reads nothing for it meanwhile.
                if let Some(n) = forced.and_then(|p| load.get_mut(&p)) {
                    *n = n.saturating_sub(1);
                }
                continue;
            };
            *load.entry(target).or_insert(0) += 1;
            // With no partner forced (the scheduler has a choice), the
            // draining disk stands for the source.
            if forced.is_none() {
                *load.entry(disk).or_insert(0) += 1;
            }
            *receiving.entry(self.disks[&target].server).or_insert(0) += 1;
            planned.push(self.plan_move(a, target, MoveReason::Drain, secrets, &mut changes));
        }
        (planned, self.commit(changes))
    }

    /// Whether the leg at `a` may start moving: it is active, its mirrored
    /// disk has all its legs active and no job of any kind.
    fn movable(&self, a: LegAddr) -> bool {
        let v = &self.volumes[&a.volume];
        let md = &v.mirrored_disks[a.mirrored_disk as usize];
        md.legs.len() == usize::from(v.replicas)
            && md.legs.iter().all(|l| l.state == LegState::Active)
            && !self
                .repairs
                .range(LegAddr::slots_of(a.volume, a.mirrored_disk))
                .any(|_| true)
    }

    /// Moves up to `max_moves` legs from the fullest disks to the emptiest
    /// (by the fraction of their chunks in use, counting moves already
    /// under way as done), as long as a move narrows the gap: after it, the
    /// source must be at least as full as the target. A leg moves only to
    /// a disk of its volume's class, on a server that holds no other leg of
    /// its mirrored disk, and never into a failure domain another leg
    /// already uses unless it was sharing one before. Returns the moves.
    pub fn rebalance(
        &mut self,
        max_moves: usize,
        secrets: &mut dyn SecretSource,
    ) -> (Vec<PlannedMove>, Changes) {
        let mut changes = Changes::default();
        let mut planned = Vec::new();
        if self.repairs_lack_room {
            return (planned, changes);
        }
        // Legs per eligible disk as they will be once the moves under way
        // are done.
        let mut legs: HashMap<DiskId, (u64, u64)> = self
            .disks
            .values()
            .filter(|d| self.index_eligible(d.id))
            .map(|d| {
                (
                    d.id,
                    (
                        self.runtime[&d.id].used.len() as u64,
                        u64::from(d.chunk_count),
                    ),
                )
            })
            .collect();
        for job in self.repairs.values().map(|id| &self.jobs[id]) {
            if matches!(job.kind, JobKind::Move { .. })
                && let Some(e) = legs.get_mut(&job.replaced.disk)
            {
                e.0 = e.0.saturating_sub(1);
            }
        }
        // Disks ordered by fill (parts per billion, then id), kept current
        // as moves are planned, so each move costs O(log disks) plus the
        // legs weighed, not a sort of the whole pool.
        let key = |d: DiskId, (n, of): (u64, u64)| (n * 1_000_000_000 / of.max(1), d);
        let mut order: BTreeSet<(u64, DiskId)> = legs.iter().map(|(d, e)| key(*d, *e)).collect();
        let mut blocked: HashSet<DiskId> = HashSet::new();
        while planned.len() < max_moves {
            let mut found = None;
            'sources: for &(_, src) in order.iter().rev() {
                let s = legs[&src];
                if s.0 == 0 {
                    break;
                }
                if blocked.contains(&src) {
                    continue;
                }
                for &(_, dst) in &order {
                    let d = legs[&dst];
                    // After the move the source must still be at least as
                    // full as the target, or the move only swaps roles.
                    if dst == src || (s.0 - 1) * d.1 < (d.0 + 1) * s.1 {
                        break;
                    }
                    if self.runtime[&dst].free.is_empty() {
                        continue;
                    }
                    if let Some(a) = self.rebalance_candidate(src, dst) {
                        found = Some((a, src, dst));
                        break 'sources;
                    }
                }
                // Nothing on this disk can move anywhere useful.
                blocked.insert(src);
            }
            let Some((a, src, dst)) = found else { break };
            let job = self.plan_move(a, dst, MoveReason::Rebalance, secrets, &mut changes);
            for (disk, delta) in [(src, -1i64), (dst, 1)] {
                let e = legs.get_mut(&disk).expect("listed");
                order.remove(&key(disk, *e));
                e.0 = e.0.saturating_add_signed(delta);
                order.insert(key(disk, *e));
            }
            planned.push(PlannedMove {
                job,
                from: src,
                to: dst,
            });
        }
        (planned, self.commit(changes))
    }

    /// The background rebalance policy, called on every recovery step:
    /// while the fill spread is above `policy.spread` and nothing is being
    /// repaired or drained, it keeps up to a window of rebalance moves
    /// queued or running, topping the window up once half of it is done.
    /// The moves run under the same per-disk limit as everything else, so
    /// a window in flight keeps every receiving disk busy, where planning
    /// a batch only when the pool is idle left most of them waiting for
    /// the batch's slowest move. Repairs always win: none is planned while
    /// a mirrored disk is degraded, and queued moves give way
    /// ([`Cluster::start_jobs`] starts repairs first).
    pub fn auto_rebalance(
        &mut self,
        policy: AutoRebalance,
        per_disk_limit: u32,
        secrets: &mut dyn SecretSource,
    ) -> (Vec<PlannedMove>, Changes) {
        let mut in_flight = 0;
        for job in self.repairs.values().map(|id| &self.jobs[id]) {
            match job.kind {
                JobKind::Move {
                    reason: MoveReason::Rebalance,
                    ..
                } => in_flight += 1,
                // A repair or a drain is under way: it goes first.
                _ => return (Vec::new(), Changes::default()),
            }
        }
        // Cheap checks first: this runs on every step, the pool-wide ones
        // only when the window needs topping up.
        if in_flight > 0
            && self.auto_rebalance_window > 0
            && in_flight > self.auto_rebalance_window / 2
        {
            return (Vec::new(), Changes::default());
        }
        if self.summary().mirrored_disks_degraded > 0 || self.fill_spread() <= policy.spread {
            return (Vec::new(), Changes::default());
        }
        let window = policy
            .window
            .unwrap_or_else(|| {
                self.receiving_disks()
                    .saturating_mul(per_disk_limit as usize)
            })
            .max(1);
        self.auto_rebalance_window = window;
        if in_flight > window / 2 {
            return (Vec::new(), Changes::default());
        }
        self.rebalance(window - in_flight, secrets)
    }

    /// Disks that take new chunks and are emptier than the mean of those:
    /// the ones a rebalance fills.
    fn receiving_disks(&self) -> usize {
        let fills = self.eligible_fills();
        let mean = fills.iter().sum::<f64>() / fills.len().max(1) as f64;
        fills.iter().filter(|f| **f < mean).count()
    }

    /// The spread of fill (fraction of chunks in use) between the fullest
    /// and the emptiest disk that takes new chunks, for the background
    /// rebalance policy and `/metrics`.
    pub fn fill_spread(&self) -> f64 {
        let fills = self.eligible_fills();
        let max = fills.iter().copied().fold(f64::NAN, f64::max);
        let min = fills.iter().copied().fold(f64::NAN, f64::min);
        if fills.is_empty() { 0.0 } else { max - min }
    }

    /// The fill (fraction of chunks in use) of every disk that takes new
    /// chunks.
    fn eligible_fills(&self) -> Vec<f64> {
        self.disks
            .values()
            .filter(|d| self.index_eligible(d.id))
            .map(|d| self.runtime[&d.id].used.len() as f64 / f64::from(d.chunk_count.max(1)))
            .collect()
    }

    /// Whether the disk takes new chunks (online, not draining, on an
    /// online server that is not draining).
    fn index_eligible(&self, id: DiskId) -> bool {
        let d = &self.disks[&id];
        let s = &self.servers[&d.server];
        d.state == DiskState::Online && s.state == ServerState::Online && !d.draining && !s.draining
    }

    /// A leg on `src` that may move to `dst`.
    fn rebalance_candidate(&self, src: DiskId, dst: DiskId) -> Option<LegAddr> {
        let label = &self.settings.failure_domain_label;
        let dst_disk = &self.disks[&dst];
        let dst_server = &self.servers[&dst_disk.server];
        let dst_domain = dst_server.failure_domain(label);
        let src_domain = self.servers[&self.disks[&src].server].failure_domain(label);
        self.legs_on_disk(src).map(|(_, a)| a).find(|&a| {
            if !self.movable(a) {
                return false;
            }
            let v = &self.volumes[&a.volume];
            if v.class
                .as_ref()
                .is_some_and(|c| dst_disk.class.as_ref() != Some(c))
            {
                return false;
            }
            let others: Vec<(ServerId, String)> = v.mirrored_disks[a.mirrored_disk as usize]
                .legs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != usize::from(a.leg))
                .map(|(_, l)| {
                    let s = self.disks[&l.chunk.disk].server;
                    (s, self.servers[&s].failure_domain(label))
                })
                .collect();
            others.iter().all(|(s, _)| *s != dst_server.id)
                && (others.iter().all(|(_, d)| *d != dst_domain)
                    || others.iter().any(|(_, d)| *d == src_domain))
        })
    }

    /// Appends the extra slot for moving the leg at `a` onto a free chunk
    /// of `target`, and queues its job.
    fn plan_move(
        &mut self,
        a: LegAddr,
        target: DiskId,
        reason: MoveReason,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) -> JobId {
        let md = &self.volumes[&a.volume].mirrored_disks[a.mirrored_disk as usize];
        let before: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
        let slot = md.legs.len() as u8;
        let replaced = md.legs[usize::from(a.leg)].chunk;
        let index = self.take_chunk(target, LegAddr { leg: slot, ..a });
        let chunk = ChunkRef {
            disk: target,
            index,
        };
        self.volumes
            .get_mut(&a.volume)
            .expect("exists")
            .mirrored_disks[a.mirrored_disk as usize]
            .legs
            .push(Leg {
                chunk,
                state: LegState::Syncing,
                export_name: secrets.export_secret(),
                never_synced: false,
            });
        let mut after = before.clone();
        after.push(chunk);
        self.link_pairs(&before, false);
        self.link_pairs(&after, true);
        self.queue_job(
            JobKind::Move {
                from: a.leg,
                reason,
            },
            LegAddr { leg: slot, ..a },
            chunk,
            replaced,
            changes,
        )
    }

    /// A move's new leg is in sync: it takes the moving leg's slot, the
    /// extra slot goes away, and the old chunk is released (wiped before
    /// reuse).
    pub(super) fn finish_move(&mut self, job: &ResyncJob, from: u8, changes: &mut Changes) {
        let md = &mut self
            .volumes
            .get_mut(&job.volume)
            .expect("exists")
            .mirrored_disks[job.mirrored_disk as usize];
        let before: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
        let mut new = md.legs.pop().expect("the extra slot");
        assert_eq!(new.chunk, job.target, "a move's target is the extra slot");
        new.state = LegState::Active;
        let old = std::mem::replace(&mut md.legs[usize::from(from)], new);
        let after: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
        self.runtime
            .get_mut(&job.target.disk)
            .expect("known disk")
            .used
            .insert(
                job.target.index,
                LegAddr {
                    volume: job.volume,
                    mirrored_disk: job.mirrored_disk,
                    leg: from,
                },
            );
        self.release_chunk(old.chunk, changes);
        self.link_pairs(&before, false);
        self.link_pairs(&after, true);
        changes.volumes.insert(job.volume);
    }

    /// Gives up a move (its target failed, its copy failed, or its volume
    /// goes away): the extra slot is removed and its chunk released (it may
    /// hold a partial copy, so it is wiped before reuse). The moving leg
    /// stays where it is; a later pass plans the move again.
    pub(super) fn abandon_move(&mut self, id: JobId, reason: String, changes: &mut Changes) {
        let job = self.jobs[&id].clone();
        let md = &mut self
            .volumes
            .get_mut(&job.volume)
            .expect("exists")
            .mirrored_disks[job.mirrored_disk as usize];
        let before: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
        let extra = md.legs.pop().expect("the extra slot");
        assert_eq!(extra.chunk, job.target, "a move's target is the extra slot");
        let after: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
        self.release_chunk(extra.chunk, changes);
        self.link_pairs(&before, false);
        self.link_pairs(&after, true);
        changes.volumes.insert(job.volume);
        // A moving leg that failed meanwhile needs a repair now.
        self.repairs_pending = true;
        self.end_job(id, JobState::Failed, Some(reason), changes);
    }

    /// Gives up every queued move, so its target chunk returns to the pool
    /// (through a wipe) for repairs that found no room. Running moves go
    /// on: they end soon and free the moving leg's chunk.
    pub(super) fn cancel_queued_moves(&mut self, changes: &mut Changes) {
        let queued: Vec<JobId> = self
            .repairs
            .values()
            .filter(|id| {
                let j = &self.jobs[*id];
                j.state == JobState::Queued && matches!(j.kind, JobKind::Move { .. })
            })
            .copied()
            .collect();
        for id in queued {
            self.abandon_move(
                id,
                "cancelled: repairs need the room its chunk held".into(),
                changes,
            );
        }
    }

    /// Releases a used chunk: it waits in its disk's releasing set, under
    /// a new release id, until the storage agent wipes it for that release.
    pub(super) fn release_chunk(&mut self, chunk: ChunkRef, changes: &mut Changes) {
        let release = self.take_id(changes);
        let rt = self.runtime.get_mut(&chunk.disk).expect("known disk");
        assert!(
            rt.used.remove(&chunk.index).is_some(),
            "a leg's chunk is used"
        );
        assert!(
            self.disks
                .get_mut(&chunk.disk)
                .expect("exists")
                .releasing
                .insert(chunk.index, release)
                .is_none(),
            "a used chunk is not releasing"
        );
        self.reindex(chunk.disk);
        changes.disks.insert(chunk.disk);
    }
}
