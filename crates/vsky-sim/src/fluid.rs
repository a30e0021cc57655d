//! The fluid model: drives the manager's own planning pass and
//! `finish_job` over simulated time ([`simulate`]), every running resync
//! copying at its bottleneck's share of disk and network bandwidth
//! ([`rates`]), and jumping from one completion (or fault) to the next.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use vsky_model::*;

use crate::checks::{check, check_redundancy, shared_domains};
use crate::config::{Rng, Scenario, SimConfig};
use crate::pool::{critical_disks, random_used_disk};

/// How one rebuild went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// From the fault to every mirrored disk having its replicas healthy.
    pub restore_seconds: f64,
    /// Most resyncs any disk took part in at one time.
    pub peak_resyncs_per_disk: u32,
    pub bytes_copied: u64,
    pub jobs: usize,
    pub failed_jobs: usize,
    /// With a foreground load (`SimConfig::foreground_bytes_per_second`):
    /// the foreground bytes the disks could not serve because resyncs
    /// shared them, summed over the disks and the rebuild.
    pub foreground_lost_bytes: f64,
    /// The least foreground throughput any disk served at any time during
    /// the run (the demand if no disk fell short).
    pub foreground_slowest_bytes_per_second: f64,
}

/// What starts a run, chosen once per seed so every engine run sees the
/// same: a fault, or an admin's request to move legs. The second failure of
/// `SecondFailure` and `DrainFailure` is chosen when it happens (it must
/// avoid the disks that are critical at that moment).
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    Disk(DiskId),
    Server(String),
    /// A server whose failed legs were held for its grace period (see
    /// `go_silent` in `server_return.rs`) is declared failed for its
    /// silence.
    SilentServer(String),
    /// Nothing fails: the server is drained (`drain_server`), and every
    /// step plans moves off it (`plan_drains`).
    Drain(String),
    /// Nothing fails: whenever no job is active, `rebalance(max, …)` plans
    /// up to that many moves, until a call plans none.
    Rebalance(usize),
    /// Nothing fails: every step calls the manager's background policy,
    /// `auto_rebalance`, which keeps a window of moves in flight.
    AutoRebalance(AutoRebalance),
}

pub(crate) struct Run {
    pub(crate) outcome: Outcome,
    pub(crate) limit: u32,
    /// Live disks and servers after the first fault (the most there are
    /// during the rebuild).
    pub(crate) live_disks: usize,
    pub(crate) live_servers: usize,
    /// Of the live disks, those that may receive a copy (not draining).
    pub(crate) target_disks: usize,
    /// Degraded mirrored disks with a single healthy leg, and the disk of
    /// that leg: each must be read from that disk at least once.
    pub(crate) forced: BTreeSet<ForcedSource>,
    pub(crate) tally: Tally,
}

/// A degraded mirrored disk with a single healthy leg, and the disk of
/// that leg: the only source its resync can read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ForcedSource {
    pub(crate) volume: VolumeId,
    pub(crate) mirrored_disk: u32,
    pub(crate) disk: DiskId,
}

/// What a run counts beyond [`Outcome`], for the moves' report.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) moves_seen: usize,
    pub(crate) moves_done: usize,
    pub(crate) repairs_done: usize,
    /// When the drained server first held no leg.
    pub(crate) drained_seconds: Option<f64>,
    /// When the last move ended.
    pub(crate) last_move_seconds: f64,
    /// The fewest active legs any mirrored disk had at a check.
    pub(crate) min_active_legs: usize,
    /// `Rebalance`: calls of `rebalance` (or `auto_rebalance`) that
    /// planned moves.
    pub(crate) passes: usize,
    /// Legs each disk holds at the end beyond those it held at the start
    /// (disks that gained some).
    pub(crate) gained: HashMap<DiskId, usize>,
    /// The disk the second failure struck.
    pub(crate) struck: Option<DiskId>,
    /// `Cluster::fill_spread` at the end.
    pub(crate) fill_spread_after: f64,
    /// [`shared_domains`] at the end.
    pub(crate) shared_domains_after: usize,
}

/// Records, after a fault, the degraded mirrored disks that have only one
/// healthy leg left (their resync source is forced).
fn note_forced_sources(c: &Cluster, forced: &mut BTreeSet<ForcedSource>) {
    for v in c.volumes() {
        for (m, md) in v.mirrored_disks.iter().enumerate() {
            let mut active = md.legs.iter().filter(|l| l.state == LegState::Active);
            if let (Some(only), None) = (active.next(), active.next())
                && md.legs.len() > 1
            {
                forced.insert(ForcedSource {
                    volume: v.id,
                    mirrored_disk: m as u32,
                    disk: only.chunk.disk,
                });
            }
        }
    }
}

/// One planning pass, as the manager's recovery loop makes it
/// (`Cluster::recovery_pass`: repairs, moves off draining disks, for
/// `Fault::AutoRebalance` the background policy, then the starts under
/// the per-disk limit), after, for `Fault::Rebalance` (while
/// `rebalancing`, and only when no job is active), the admin's rebalance
/// request, which the manager serves between its passes. The hold is the
/// one the fault set (`go_silent`, `apply`).
fn plan(
    c: &mut Cluster,
    fault: &Fault,
    limit: u32,
    rng: &mut Rng,
    rebalancing: &mut bool,
    tally: &mut Tally,
) -> (Vec<JobId>, Changes) {
    let mut planned = Vec::new();
    let mut changes = Changes::default();
    if let Fault::Rebalance(max) = fault
        && *rebalancing
        && c.jobs().all(|j| !j.is_active())
    {
        let (moves, more) = c.rebalance(*max, rng);
        changes.merge(more);
        if moves.is_empty() {
            *rebalancing = false;
        } else {
            tally.passes += 1;
            planned.extend(moves.iter().map(|m| m.job));
        }
    }
    let config = PassConfig {
        per_disk_limit: limit,
        held: c.repair_hold().clone(),
        auto_rebalance: match fault {
            Fault::AutoRebalance(policy) => Some(*policy),
            _ => None,
        },
        scrubs: None,
    };
    let (pass, more) = c.recovery_pass(&config, rng);
    changes.merge(more);
    if pass.rebalance_moves > 0 {
        tally.passes += 1;
    }
    planned.extend(pass.planned);
    (planned, changes)
}

/// The storage agents wipe the chunks released on live disks (a moved
/// leg's old chunk, an abandoned move's new one), and they are free again
/// (`chunks_wiped`). A wipe is quick next to a chunk's copy, so it is
/// taken as immediate. (Chunks of failed disks are never wiped.)
fn wipe_released(c: &mut Cluster, disks: &BTreeSet<DiskId>) -> Result<(), String> {
    for &id in disks {
        let Ok(disk) = c.disk(id) else { continue };
        let server = disk.server;
        if disk.state != DiskState::Online
            || disk.releasing.is_empty()
            || c.server(server)
                .is_none_or(|s| s.state != ServerState::Online)
        {
            continue;
        }
        let chunks: Vec<WipedChunk> = disk
            .releasing
            .iter()
            .map(|(&index, &release)| WipedChunk {
                chunk: ChunkRef { disk: id, index },
                release,
            })
            .collect();
        c.chunks_wiped(server, &chunks).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Legs (chunks in use) on a server's disks.
pub(crate) fn legs_on_server(c: &Cluster, server: ServerId) -> u64 {
    c.disks_of(server).map(|d| c.disk_usage(d.id).legs).sum()
}

/// Drives the real planner and scheduler until every mirrored disk is whole
/// again and every move is done, checking the invariants along the way.
pub(crate) fn simulate(
    config: &SimConfig,
    mut c: Cluster,
    fault: &Fault,
    limit: u32,
    second_seed: u64,
) -> Result<Run, String> {
    let mut rng = Rng::new(second_seed);
    let mut outcome = Outcome {
        foreground_slowest_bytes_per_second: config.foreground_bytes_per_second,
        ..Outcome::default()
    };
    let mut tally = Tally {
        min_active_legs: usize::MAX,
        ..Tally::default()
    };
    let replicas = usize::from(config.replicas);
    apply(&mut c, fault)?;
    let mut failures = usize::from(matches!(
        fault,
        Fault::Disk(_) | Fault::Server(_) | Fault::SilentServer(_)
    ));
    // Each failure (a disk, or a server: legs sit on distinct servers)
    // takes at most one leg of a mirrored disk, and moves take none.
    let floor = |failures: usize| replicas.saturating_sub(failures).max(1);
    let drained = match fault {
        Fault::Drain(name) => Some(c.server_by_name(name).map_err(|e| e.to_string())?.id),
        _ => None,
    };
    let mut forced = BTreeSet::new();
    note_forced_sources(&c, &mut forced);
    let legs_before: HashMap<DiskId, u64> =
        c.disks().map(|d| (d.id, c.disk_usage(d.id).legs)).collect();
    let live = |d: &Disk| {
        d.state == DiskState::Online
            && c.server(d.server)
                .is_some_and(|s| s.state == ServerState::Online)
    };
    let live_disks = c.disks().filter(|d| live(d)).count();
    let target_disks = c
        .disks()
        .filter(|d| live(d) && !c.is_draining(d.id))
        .count();
    let live_servers = c
        .servers()
        .filter(|s| s.state == ServerState::Online)
        .count();
    // Full checks are O(cluster); on big pools they run every 64 steps
    // (every 1024 past a million legs, where a rebalance takes tens of
    // thousands of steps) and at the end. The per-disk limit is checked on
    // every step, and so is the redundancy of the volumes a step touched.
    let legs: usize = c
        .volumes()
        .map(|v| v.mirrored_disks.len() * usize::from(v.replicas))
        .sum();
    let full_every = match legs {
        0..=50_000 => 1,
        50_001..=1_000_000 => 64,
        _ => 1024,
    };
    let mut done: HashMap<JobId, f64> = HashMap::new();
    let mut jobs_seen: BTreeSet<JobId> = BTreeSet::new();
    let mut moves_seen: BTreeSet<JobId> = BTreeSet::new();
    let mut finished = 0usize;
    let mut now = 0.0f64;
    let mut second_pending = matches!(
        config.scenario,
        Scenario::SecondFailure | Scenario::DrainFailure
    );
    let mut rebalancing = true;
    let total_first = {
        let (planned, _) = plan(&mut c, fault, limit, &mut rng, &mut rebalancing, &mut tally);
        planned.len()
    };
    let second_at = total_first as f64 * c.settings().data_bytes_per_chunk() as f64 / 3.0;
    let mut copied_bytes = 0.0f64;
    tally.min_active_legs = check_redundancy(c.volumes(), floor(failures))?;
    if let Some(server) = drained
        && legs_on_server(&c, server) == 0
    {
        tally.drained_seconds = Some(0.0);
    }
    for step in 0u64.. {
        let (planned, changes) = plan(&mut c, fault, limit, &mut rng, &mut rebalancing, &mut tally);
        let mut touched = changes.volumes;
        let mut released = changes.disks;
        jobs_seen.extend(planned);
        for job in c.jobs().filter(|j| j.is_active()) {
            jobs_seen.insert(job.id);
            if matches!(job.kind, JobKind::Move { .. }) {
                moves_seen.insert(job.id);
            }
        }
        let busy = c.running_per_disk();
        let peak = busy.values().copied().max().unwrap_or(0);
        outcome.peak_resyncs_per_disk = outcome.peak_resyncs_per_disk.max(peak);
        if limit != u32::MAX && peak > limit {
            return Err(format!(
                "a disk is in {peak} resyncs, over the limit {limit}"
            ));
        }
        if step % full_every == 0 {
            check(&c, limit)?;
            let fewest = check_redundancy(c.volumes(), floor(failures))?;
            tally.min_active_legs = tally.min_active_legs.min(fewest);
        }
        let running: Vec<ResyncJob> = c
            .jobs()
            .filter(|j| j.state == JobState::Running)
            .cloned()
            .collect();
        if running.is_empty() {
            if c.jobs().any(|j| j.state == JobState::Queued) {
                return Err("queued resyncs but none can start: the scheduler is stuck".into());
            }
            break;
        }
        let pairs: Vec<(DiskId, DiskId)> = running
            .iter()
            .map(|j| {
                (
                    j.source.expect("running jobs have a source").disk,
                    j.target.disk,
                )
            })
            .collect();
        let rates = rates(config, &c, &pairs);
        let foreground = foreground_shortfall(config, &pairs);
        let mut dt = f64::INFINITY;
        for (job, rate) in running.iter().zip(&rates) {
            let left = job.bytes_total as f64 - done.get(&job.id).copied().unwrap_or(0.0);
            dt = dt.min(left / rate);
        }
        // The second failure strikes once a third of the first rebuild's
        // (or the drain's) bytes are copied (possibly in the middle of
        // this step).
        let flow: f64 = rates.iter().sum();
        let mut strike = false;
        if second_pending {
            let to_go = (second_at - copied_bytes).max(0.0);
            if to_go <= flow * dt {
                dt = to_go / flow;
                strike = true;
            }
        }
        now += dt;
        copied_bytes += flow * dt;
        outcome.foreground_lost_bytes += foreground.lost_per_second * dt;
        outcome.foreground_slowest_bytes_per_second = outcome
            .foreground_slowest_bytes_per_second
            .min(foreground.slowest);
        for (job, rate) in running.iter().zip(&rates) {
            let copied = done.entry(job.id).or_insert(0.0);
            *copied += rate * dt;
            if *copied >= job.bytes_total as f64 * (1.0 - 1e-9) {
                c.job_progress(job.id, job.bytes_total)
                    .map_err(|e| e.to_string())?;
                let changes = c.finish_job(job.id).map_err(|e| e.to_string())?;
                touched.extend(changes.volumes);
                released.extend(changes.disks);
                outcome.bytes_copied += job.bytes_total;
                finished += 1;
                if matches!(job.kind, JobKind::Move { .. }) {
                    tally.moves_done += 1;
                    tally.last_move_seconds = now;
                } else {
                    tally.repairs_done += 1;
                }
            }
        }
        if strike {
            second_pending = false;
            let first_server = match fault {
                Fault::Disk(d) => c.disk(*d).ok().map(|d| d.server),
                Fault::Drain(_) => drained,
                Fault::Server(_)
                | Fault::SilentServer(_)
                | Fault::Rebalance(_)
                | Fault::AutoRebalance(_) => None,
            };
            let avoid = critical_disks(&c);
            let victim = random_used_disk(&c, &mut rng, first_server, &avoid)
                .ok_or("no disk left for the second failure")?;
            let changes = c.fail_disk(victim).map_err(|e| e.to_string())?;
            touched.extend(changes.volumes);
            released.extend(changes.disks);
            failures += 1;
            tally.struck = Some(victim);
            note_forced_sources(&c, &mut forced);
            // A resync that lost its source went back to the queue and
            // starts over.
            done.retain(|id, _| c.job(*id).is_ok_and(|j| j.state == JobState::Running));
        }
        wipe_released(&mut c, &released)?;
        let fewest =
            check_redundancy(touched.iter().filter_map(|v| c.volume(*v)), floor(failures))?;
        tally.min_active_legs = tally.min_active_legs.min(fewest);
        if let Some(server) = drained
            && tally.drained_seconds.is_none()
            && legs_on_server(&c, server) == 0
        {
            tally.drained_seconds = Some(now);
        }
    }
    check(&c, limit)?;
    tally.min_active_legs = tally
        .min_active_legs
        .min(check_redundancy(c.volumes(), floor(failures))?);
    // Every mirrored disk ends with R active legs (on distinct servers:
    // `check_invariants`), and the drained server with none.
    let mut not_whole = c.volumes().flat_map(|v| {
        v.mirrored_disks
            .iter()
            .enumerate()
            .filter(|(_, md)| {
                md.legs.len() != usize::from(v.replicas)
                    || md.legs.iter().any(|l| l.state != LegState::Active)
            })
            .map(|(m, _)| (v.name.clone(), m))
    });
    let first = not_whole.next();
    let not_whole = first.iter().count() + not_whole.count();
    let left = drained.map_or(0, |server| legs_on_server(&c, server));
    if let Some((volume, m)) = first {
        return Err(format!(
            "{not_whole} mirrored disks ended without {replicas} active legs (first: {volume} mirrored disk {m}), {left} legs left on the drained server: out of room?"
        ));
    }
    if left > 0 || (drained.is_some() && tally.drained_seconds.is_none()) {
        return Err(format!(
            "the drain ended with {left} legs on the server: out of room?"
        ));
    }
    tally.fill_spread_after = c.fill_spread();
    tally.shared_domains_after = shared_domains(&c);
    for d in c.disks() {
        let gained = c.disk_usage(d.id).legs.saturating_sub(legs_before[&d.id]);
        if gained > 0 {
            tally.gained.insert(d.id, gained as usize);
        }
    }
    outcome.restore_seconds = now;
    outcome.jobs = jobs_seen.len();
    // Every job ended (none is active): those not finished failed. (The
    // model keeps a bounded history, so it is not counted there.)
    outcome.failed_jobs = jobs_seen.len() - finished;
    tally.moves_seen = moves_seen.len();
    Ok(Run {
        outcome,
        limit,
        live_disks,
        live_servers,
        target_disks,
        forced,
        tally,
    })
}

fn apply(c: &mut Cluster, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::Disk(d) => c.fail_disk(*d).map(drop),
        Fault::Server(s) => c.fail_server(s).map(drop),
        // As the manager's recovery step: declared failed, then the next
        // planning pass holds nothing for it (it holds only servers not
        // failed).
        Fault::SilentServer(s) => c.fail_silent_server(s).map(|_| {
            c.set_repair_hold(BTreeSet::new());
        }),
        Fault::Drain(s) => c.drain_server(s).map(drop),
        Fault::Rebalance(_) | Fault::AutoRebalance(_) => Ok(()),
    }
    .map_err(|e| e.to_string())
}

/// The copy rate of each running copy (source disk, target disk): its
/// bottleneck among its source disk, target disk, source server's outbound
/// and target server's inbound network, each shared equally among the
/// copies using it. With a foreground load, a disk first serves its
/// foreground share ([`foreground_share`]) and the copies split the rest.
pub(crate) fn rates(config: &SimConfig, c: &Cluster, running: &[(DiskId, DiskId)]) -> Vec<f64> {
    let server_of = |d: DiskId| c.disk(d).expect("running copies use known disks").server;
    let disk_users = disk_users(running);
    let mut out_users: HashMap<ServerId, u32> = HashMap::new();
    let mut in_users: HashMap<ServerId, u32> = HashMap::new();
    for &(source, target) in running {
        *out_users.entry(server_of(source)).or_default() += 1;
        *in_users.entry(server_of(target)).or_default() += 1;
    }
    let disk = config.disk_bytes_per_second;
    let per_copy = |d: DiskId| {
        let n = disk_users[&d];
        (disk - foreground_share(config, n)) / f64::from(n)
    };
    running
        .iter()
        .map(|&(source, target)| {
            let net = config.network_bytes_per_second;
            per_copy(source)
                .min(per_copy(target))
                .min(net / f64::from(out_users[&server_of(source)]))
                .min(net / f64::from(in_users[&server_of(target)]))
        })
        .collect()
}

/// Running copies per disk (as source or target).
fn disk_users(running: &[(DiskId, DiskId)]) -> HashMap<DiskId, u32> {
    let mut users: HashMap<DiskId, u32> = HashMap::new();
    for &(source, target) in running {
        *users.entry(source).or_default() += 1;
        *users.entry(target).or_default() += 1;
    }
    users
}

/// What a disk in `copies` resyncs serves of its foreground demand: a fair
/// share, the disk's bandwidth over the streams (the foreground and each
/// copy), or the demand if that is less. (The copies may be slowed
/// elsewhere and leave some of their share unused; the foreground demand
/// is taken as fixed, so it does not grow into it.)
pub(crate) fn foreground_share(config: &SimConfig, copies: u32) -> f64 {
    let demand = config.foreground_bytes_per_second;
    demand.min(config.disk_bytes_per_second / f64::from(copies + 1))
}

/// The foreground the resyncs take at one moment.
pub(crate) struct Shortfall {
    /// Summed over the disks, bytes per second.
    pub(crate) lost_per_second: f64,
    /// The least any disk serves.
    pub(crate) slowest: f64,
}

/// The foreground shortfall while `running` copies run (disks without
/// copies serve their whole demand).
pub(crate) fn foreground_shortfall(config: &SimConfig, running: &[(DiskId, DiskId)]) -> Shortfall {
    let demand = config.foreground_bytes_per_second;
    let mut out = Shortfall {
        lost_per_second: 0.0,
        slowest: demand,
    };
    for &n in disk_users(running).values() {
        let served = foreground_share(config, n);
        out.lost_per_second += demand - served;
        out.slowest = out.slowest.min(served);
    }
    out
}
