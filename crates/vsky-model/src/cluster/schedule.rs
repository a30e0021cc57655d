//! The resync scheduler: which queued resyncs start, and from which
//! source ([`Cluster::start_jobs`]).
//!
//! Every resync copies one whole chunk from a source disk to a target
//! disk, and under the per-disk limit k each disk takes part in at most k
//! resyncs at once. When every copy runs at disk speed they all take one
//! chunk time, so a rebuild runs in rounds, and each pass of the recovery
//! loop plans the next round: the set of queued resyncs that start on the
//! disks (and links) the running ones left free. A rebuild ends at the
//! whole-chunk bound (`vsky-sim`, docs/benchmarks.md) only if every round
//! keeps as many disks busy as it can, the disks with the most resyncs to
//! go busy first, and no copy runs slower than the others:
//! 1. **Urgency, then the resources with the most rounds to go.**
//!    Mirrored disks with the fewest healthy legs first (closest to data
//!    loss); then the jobs whose busiest resource needs the most rounds:
//!    a disk's resyncs still bound to it
//!    ([`Cluster::resyncs_bound_per_disk`]) over k, or a server link's
//!    resyncs still to send (or receive) over what it carries at once
//!    (rule 2); then both disks' resyncs together. A disk with n resyncs
//!    to go needs n chunk times whatever happens, so it must be busy in
//!    every round or it becomes the tail of the rebuild. (Counting the
//!    links too took a server loss at 100 servers × 10 disks from 70 to
//!    64 s with rules 2 and 3: a link that must receive much late in the
//!    rebuild was left a round of its own.)
//! 2. **Links at full speed.** A server's link carries its disks' resyncs
//!    both ways. A first pass over each class of equal priority keeps every
//!    server's sending and receiving resyncs each within half its resync
//!    slots (live disks × k), a second within the copies its link carries
//!    at full speed ([`limits::LINK_DISKS_AT_FULL_SPEED_PERMILLE`] × k).
//!    Measured at 100 servers × 10 disks after a server loss: without the
//!    second cap up to ten resyncs shared one 10 GbE link, copied at
//!    125 MB/s instead of 200, ended out of step with the rest, and the
//!    greedy start then left disks idle between them (76 s against a
//!    59 s bound; 70 s with the cap alone). Letting resyncs past the cap
//!    when they are their disks' last, or on the disks with the most to
//!    go, was tried and lost a second (65 s): the slow copies delay the
//!    next round.
//! 3. **Augmenting the round.** The greedy start leaves idle disks whose
//!    queued resync needs a disk another start of this pass took. From
//!    each disk with a free slot and waiting work, most resyncs to go
//!    first, the scheduler searches an alternating path: start a resync
//!    on the idle disk, drop the start that held its other disk, cover
//!    that start's other disk again with another queued resync (or the
//!    dropped job from another source), and so on, until a resync fits
//!    at once (one more resync runs and every disk busy before stays
//!    busy) or the disk left uncovered has fewer resyncs to go than the
//!    one the path began at. A start is never dropped for a less urgent
//!    one (rule 1's first key); the search is bounded in depth and steps
//!    per queued job. At 100 servers × 10 disks after a server loss the
//!    greedy start left 54-117 disks idle per round and the disks with the
//!    most to go fell behind from the fourth round; with the search none
//!    falls behind until the ninth of eleven rounds. What then leaves a
//!    twelfth round is the links, not odd cycles of disks: with targets
//!    chosen so that the resyncs form a bipartite graph (no odd cycle),
//!    and a search that finds a round covering every disk with the most to
//!    go whenever one exists, the twelfth round stayed; ordering by the
//!    links' slack kept the links on time but left disks idle instead
//!    (tried and dropped, issue #17, docs/benchmarks.md).
//!
//! The source of a resync is a healthy leg off draining disks first (a
//! disk is often drained because it is ageing, and its reads are better
//! spent on its own legs' moves), then the least busy, then the one with
//! the fewest resyncs to go; sources that failed a copy are passed over
//! while another healthy leg remains.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::recovery::JobState;
use super::{Changes, Cluster};
use crate::entities::{DiskState, LegState};
use crate::ids::{ChunkRef, DiskId, JobId, ServerId};
use crate::limits;

/// One resync as the scheduler places it: it reads `source` and writes
/// `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Start {
    job: JobId,
    source: ChunkRef,
    target: DiskId,
}

/// The disks' and links' resyncs: running ones (and scrubs, on disks), and
/// the starts planned so far.
struct Slots<'a> {
    cluster: &'a Cluster,
    limit: u32,
    busy: BTreeMap<DiskId, u32>,
    sending: HashMap<ServerId, u32>,
    receiving: HashMap<ServerId, u32>,
    /// Per server: half its resync slots, and what its link carries.
    caps: HashMap<ServerId, (u32, u32)>,
}

impl<'a> Slots<'a> {
    fn new(cluster: &'a Cluster, limit: u32) -> Self {
        let mut sending = HashMap::new();
        let mut receiving = HashMap::new();
        for job in cluster.jobs.values() {
            if job.state != JobState::Running {
                continue;
            }
            if let Some(source) = job.source {
                *sending
                    .entry(cluster.disks[&source.disk].server)
                    .or_insert(0) += 1;
            }
            *receiving
                .entry(cluster.disks[&job.target.disk].server)
                .or_insert(0) += 1;
        }
        let mut live: HashMap<ServerId, u64> = HashMap::new();
        for d in cluster.disks.values() {
            let n = live.entry(d.server).or_insert(0);
            if d.state == DiskState::Online {
                *n += 1;
            }
        }
        let caps = live
            .into_iter()
            .map(|(s, live)| {
                let slots = live.saturating_mul(u64::from(limit));
                let half = slots.div_ceil(2);
                let link = (u64::from(limit)
                    .saturating_mul(limits::LINK_DISKS_AT_FULL_SPEED_PERMILLE)
                    / 1000)
                    .max(half)
                    .max(1);
                let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                (s, (clamp(half), clamp(link)))
            })
            .collect();
        Slots {
            cluster,
            limit,
            busy: cluster.running_per_disk(),
            sending,
            receiving,
            caps,
        }
    }

    fn server(&self, d: DiskId) -> ServerId {
        self.cluster.disks[&d].server
    }

    fn busy(&self, d: DiskId) -> u32 {
        self.busy.get(&d).copied().unwrap_or(0)
    }

    fn disk_free(&self, d: DiskId) -> bool {
        self.busy(d) < self.limit
    }

    fn cap(&self, s: ServerId, balanced: bool) -> u32 {
        let (half, link) = self.caps.get(&s).copied().unwrap_or((1, 1));
        if balanced { half } else { link }
    }

    /// Whether the target can take one more receiving resync (its disk and
    /// its server's link).
    fn target_fits(&self, target: DiskId, balanced: bool) -> bool {
        let s = self.server(target);
        self.disk_free(target)
            && self.receiving.get(&s).copied().unwrap_or(0) < self.cap(s, balanced)
    }

    fn source_fits(&self, source: DiskId, balanced: bool) -> bool {
        let s = self.server(source);
        self.disk_free(source) && self.sending.get(&s).copied().unwrap_or(0) < self.cap(s, balanced)
    }

    fn fits(&self, start: &Start, balanced: bool) -> bool {
        self.target_fits(start.target, balanced) && self.source_fits(start.source.disk, balanced)
    }

    fn add(&mut self, start: &Start) {
        *self.busy.entry(start.source.disk).or_insert(0) += 1;
        *self.busy.entry(start.target).or_insert(0) += 1;
        let (from, to) = (self.server(start.source.disk), self.server(start.target));
        *self.sending.entry(from).or_insert(0) += 1;
        *self.receiving.entry(to).or_insert(0) += 1;
    }

    fn remove(&mut self, start: &Start) {
        let (from, to) = (self.server(start.source.disk), self.server(start.target));
        for (map, key) in [(&mut self.sending, from), (&mut self.receiving, to)] {
            if let Some(n) = map.get_mut(&key) {
                *n = n.saturating_sub(1);
            }
        }
        for d in [start.source.disk, start.target] {
            if let Some(n) = self.busy.get_mut(&d) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// A queued job as the scheduler sees it.
struct Queued {
    job: JobId,
    target: DiskId,
    /// Healthy legs of its mirrored disk: fewer is more urgent.
    healthy: usize,
    /// The healthy legs it may copy from, preferred first (off draining
    /// disks, then fewest resyncs to go); the busy count is looked at when
    /// the source is picked.
    sources: Vec<ChunkRef>,
}

impl Cluster {
    /// Starts queued jobs whose disks have room, so that no disk takes part
    /// in more than `per_disk_limit` running resyncs and scrubs together (a
    /// scrub on a disk a queued job needs is ended first: resyncs come
    /// first, see `scrub.rs`). The order, the link caps and the swaps that
    /// keep as many disks busy as possible are described in the module.
    /// Returns the started jobs.
    pub fn start_jobs(&mut self, per_disk_limit: u32) -> (Vec<JobId>, Changes) {
        assert!(per_disk_limit > 0);
        // Resyncs come first: scrubs give way on the disks queued resyncs
        // need (`scrub.rs`); the others count as busy.
        self.preempt_scrubs();
        let plan = self.plan_starts(per_disk_limit);
        let mut started = Vec::new();
        let mut changes = Changes::default();
        for start in plan {
            let job = self.jobs.get_mut(&start.job).expect("listed");
            job.source = Some(start.source);
            job.state = JobState::Running;
            changes.jobs.insert(start.job);
            started.push(start.job);
        }
        (started, self.commit(changes))
    }

    /// The queued jobs that may start, in priority order (module, rule 1),
    /// with the rounds their busiest resource needs.
    fn queued_jobs(
        &self,
        slots: &Slots,
        load: &HashMap<DiskId, u32>,
    ) -> Vec<(Queued, Reverse<u64>)> {
        let load_of = |d: DiskId| load.get(&d).copied().unwrap_or(0);
        // The resyncs each server's link must still carry each way (as for
        // the disks: targets, and chosen or forced sources).
        let mut sends: HashMap<ServerId, u64> = HashMap::new();
        let mut receives: HashMap<ServerId, u64> = HashMap::new();
        for (target, source) in self.active_resync_disks() {
            *receives.entry(slots.server(target)).or_insert(0) += 1;
            if let Some(d) = source {
                *sends.entry(slots.server(d)).or_insert(0) += 1;
            }
        }
        // Rounds a resource needs: its resyncs to go over those it runs at
        // once.
        let limit = u64::from(slots.limit);
        let disk_rounds = |d: DiskId| u64::from(load_of(d)).div_ceil(limit);
        let link_rounds = |map: &HashMap<ServerId, u64>, s: ServerId| {
            let cap = u64::from(slots.cap(s, false)).max(1);
            map.get(&s).copied().unwrap_or(0).div_ceil(cap)
        };
        type Key = (usize, Reverse<u64>, Reverse<u32>, JobId);
        // A releasing volume's jobs wait for its attachment to end
        // (`executor.rs`).
        let mut queued: Vec<(Key, Queued)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued && !self.releasing(j.volume))
            .map(|j| {
                let md = &self.volumes[&j.volume].mirrored_disks[j.mirrored_disk as usize];
                let healthy = md.legs.iter().filter(|l| l.state == LegState::Active);
                let target = load_of(j.target.disk);
                let source = healthy
                    .clone()
                    .map(|l| load_of(l.chunk.disk))
                    .min()
                    .unwrap_or(0);
                let rounds = healthy
                    .clone()
                    .map(|l| {
                        disk_rounds(l.chunk.disk)
                            .max(link_rounds(&sends, slots.server(l.chunk.disk)))
                    })
                    .min()
                    .unwrap_or(0)
                    .max(disk_rounds(j.target.disk))
                    .max(link_rounds(&receives, slots.server(j.target.disk)));
                // Sources that failed a copy are passed over while another
                // healthy leg remains.
                let fresh: Vec<ChunkRef> = healthy
                    .clone()
                    .map(|l| l.chunk)
                    .filter(|c| !j.failed_sources.contains(c))
                    .collect();
                let mut sources = if fresh.is_empty() {
                    healthy.map(|l| l.chunk).collect()
                } else {
                    fresh
                };
                sources.sort_by_key(|c| (self.is_draining(c.disk), load_of(c.disk), *c));
                let key = (
                    md.healthy_legs(),
                    Reverse(rounds),
                    Reverse(target + source),
                    j.id,
                );
                let q = Queued {
                    job: j.id,
                    target: j.target.disk,
                    healthy: key.0,
                    sources,
                };
                (key, q)
            })
            .collect();
        queued.sort_by_key(|(key, _)| *key);
        queued.into_iter().map(|(key, q)| (q, key.1)).collect()
    }

    /// The starts of this pass (see the module).
    fn plan_starts(&self, per_disk_limit: u32) -> Vec<Start> {
        let mut slots = Slots::new(self, per_disk_limit);
        let load = self.resyncs_bound_per_disk();
        let queued = self.queued_jobs(&slots, &load);
        let mut plan: Vec<Option<Start>> = Vec::new();
        let mut waiting: Vec<usize> = Vec::new();
        // Greedy, class by class of equal urgency and busiest disk: the
        // balanced pass, then up to the links' capacity.
        let mut rest: &[(Queued, Reverse<u64>)] = &queued;
        let mut offset = 0;
        while let Some((first, busiest)) = rest.first() {
            let class_key = (first.healthy, *busiest);
            let split = rest
                .iter()
                .position(|(q, b)| (q.healthy, *b) != class_key)
                .unwrap_or(rest.len());
            let mut class: Vec<usize> = (offset..offset + split).collect();
            rest = &rest[split..];
            offset += split;
            for balanced in [true, false] {
                class.retain(|&i| {
                    let q = &queued[i].0;
                    if !slots.target_fits(q.target, balanced) {
                        return true;
                    }
                    let source = q
                        .sources
                        .iter()
                        .filter(|s| slots.source_fits(s.disk, balanced))
                        // Stable: among equally busy sources the preferred
                        // order of `sources` stands.
                        .min_by_key(|s| (self.is_draining(s.disk), slots.busy(s.disk)));
                    let Some(&source) = source else { return true };
                    let start = Start {
                        job: q.job,
                        source,
                        target: q.target,
                    };
                    slots.add(&start);
                    plan.push(Some(start));
                    false
                });
            }
            waiting.extend(class);
        }
        augment(&mut slots, &queued, &mut plan, &waiting, &load);
        plan.into_iter().flatten().collect()
    }
}

/// Rule 3 of the module: alternating paths that start one more queued job,
/// or give a disk with more resyncs to go the slot of one with fewer.
/// `waiting` indexes the jobs of `queued` the greedy start left.
fn augment(
    slots: &mut Slots,
    queued: &[(Queued, Reverse<u64>)],
    plan: &mut Vec<Option<Start>>,
    waiting: &[usize],
    load: &HashMap<DiskId, u32>,
) {
    if waiting.is_empty() {
        return;
    }
    let mut search = Search {
        slots,
        queued,
        plan,
        planned_on: HashMap::new(),
        options_on: HashMap::new(),
        in_plan: BTreeSet::new(),
        healthy: queued.iter().map(|(q, _)| (q.job, q.healthy)).collect(),
        load,
        visited: BTreeSet::new(),
        budget: SEARCH_STEPS_PER_JOB.saturating_mul(queued.len()),
    };
    // Every queued job, started by the greedy pass or not, may take part
    // in a path (a started one from another source).
    for (i, (q, _)) in queued.iter().enumerate() {
        search.options_on.entry(q.target).or_default().push(i);
        for s in &q.sources {
            search.options_on.entry(s.disk).or_default().push(i);
        }
    }
    for p in 0..search.plan.len() {
        let start = search.plan[p].expect("the greedy start drops none");
        search.in_plan.insert(start.job);
        search
            .planned_on
            .entry(start.source.disk)
            .or_default()
            .push(p);
        search.planned_on.entry(start.target).or_default().push(p);
    }
    // The disks with waiting work and a free slot, most resyncs to go
    // first.
    let mut idle: Vec<DiskId> = waiting
        .iter()
        .flat_map(|&i| {
            let q = &queued[i].0;
            std::iter::once(q.target).chain(q.sources.iter().map(|s| s.disk))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let load_of = |d: DiskId| load.get(&d).copied().unwrap_or(0);
    idle.sort_by_key(|&d| (Reverse(load_of(d)), d));
    for d in idle {
        while search.budget > 0 && search.slots.disk_free(d) {
            search.visited.clear();
            search.visited.insert(d);
            if !search.cover(d, SEARCH_DEPTH, load_of(d)) {
                break;
            }
        }
    }
}

/// Swaps one path may make (starts dropped for others).
const SEARCH_DEPTH: u32 = 6;
/// The search's steps (starts weighed) per queued job and pass: bounds a
/// pass's work on large pools, where most idle disks find no path.
const SEARCH_STEPS_PER_JOB: usize = 256;

/// The state of rule 3's search: the plan as it stands, changed in place
/// and undone on the way back.
struct Search<'s, 'a> {
    slots: &'s mut Slots<'a>,
    queued: &'s [(Queued, Reverse<u64>)],
    plan: &'s mut Vec<Option<Start>>,
    /// The plan's starts on each disk (entries of dropped starts stay,
    /// `plan` says `None` for them).
    planned_on: HashMap<DiskId, Vec<usize>>,
    /// The queued jobs that may use each disk, as target or source.
    options_on: HashMap<DiskId, Vec<usize>>,
    in_plan: BTreeSet<JobId>,
    /// Each queued job's urgency (`Queued::healthy`).
    healthy: HashMap<JobId, usize>,
    load: &'s HashMap<DiskId, u32>,
    /// Disks on the current path.
    visited: BTreeSet<DiskId>,
    budget: usize,
}

impl Search<'_, '_> {
    fn load(&self, d: DiskId) -> u32 {
        self.load.get(&d).copied().unwrap_or(0)
    }

    fn push(&mut self, start: Start) {
        self.slots.add(&start);
        let p = self.plan.len();
        self.plan.push(Some(start));
        self.planned_on
            .entry(start.source.disk)
            .or_default()
            .push(p);
        self.planned_on.entry(start.target).or_default().push(p);
        self.in_plan.insert(start.job);
    }

    fn pop(&mut self) {
        let start = self.plan.pop().flatten().expect("pushed last");
        for d in [start.target, start.source.disk] {
            self.planned_on.get_mut(&d).and_then(|v| v.pop());
        }
        self.in_plan.remove(&start.job);
        self.slots.remove(&start);
    }

    fn drop_start(&mut self, p: usize) -> Start {
        let start = self.plan[p].take().expect("a planned start");
        self.slots.remove(&start);
        self.in_plan.remove(&start.job);
        start
    }

    fn restore(&mut self, p: usize, start: Start) {
        self.slots.add(&start);
        self.in_plan.insert(start.job);
        self.plan[p] = Some(start);
    }

    /// Gives disk `d`, which has a free slot, a start: one that fits at
    /// once, or one whose other disk is freed by dropping a start there,
    /// whose other disk in turn is covered again the same way (up to
    /// `depth` drops) or may stay uncovered because fewer than `floor`
    /// resyncs are bound to it. Returns whether the plan changed; if not,
    /// it is as it was.
    fn cover(&mut self, d: DiskId, depth: u32, floor: u32) -> bool {
        let options = self.options_on.get(&d).cloned().unwrap_or_default();
        for i in options {
            let q = &self.queued[i].0;
            if self.in_plan.contains(&q.job) {
                continue;
            }
            let starts: Vec<Start> = q
                .sources
                .iter()
                .filter(|s| q.target == d || s.disk == d)
                .map(|&source| Start {
                    job: q.job,
                    source,
                    target: q.target,
                })
                .collect();
            let healthy = q.healthy;
            for start in starts {
                if self.budget == 0 {
                    return false;
                }
                self.budget -= 1;
                if self.slots.fits(&start, false) {
                    self.push(start);
                    return true;
                }
                let other = if start.target == d {
                    start.source.disk
                } else {
                    start.target
                };
                if depth == 0 || self.visited.contains(&other) || self.slots.disk_free(other) {
                    // A free disk that does not fit is held by a link.
                    continue;
                }
                let on_other = self.planned_on.get(&other).cloned().unwrap_or_default();
                for p in on_other {
                    let Some(f) = self.plan[p] else { continue };
                    // A start is never dropped for a less urgent one.
                    let f_healthy = self.healthy.get(&f.job).copied().unwrap_or(0);
                    if f_healthy < healthy {
                        continue;
                    }
                    let w = if f.target == other {
                        f.source.disk
                    } else {
                        f.target
                    };
                    if self.visited.contains(&w) {
                        continue;
                    }
                    let f = self.drop_start(p);
                    if self.slots.fits(&start, false) {
                        self.push(start);
                        if self.load(w) < floor {
                            return true;
                        }
                        self.visited.insert(w);
                        if self.cover(w, depth - 1, floor) {
                            return true;
                        }
                        self.visited.remove(&w);
                        self.pop();
                    }
                    self.restore(p, f);
                }
            }
        }
        false
    }
}
