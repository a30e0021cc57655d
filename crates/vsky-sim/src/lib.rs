//! `vsky-sim`: VastSky's recovery under simulated time.
//!
//! The simulator builds a pool with the real model (`vsky-model`), fills it
//! with volumes through the real allocator, injects a fault, and then drives
//! the real repair planner and resync scheduler (`Cluster::plan_repairs`,
//! `Cluster::start_jobs`, `Cluster::finish_job`) exactly as the manager
//! does, only with simulated disks and network instead of agents. Nothing of
//! the recovery logic is copied here: this crate only decides how fast each
//! running resync copies.
//!
//! Time is fluid: every running resync copies at the rate its bottleneck
//! allows (its source and target disks' bandwidth shared among their running
//! resyncs, and its servers' network bandwidth shared likewise); the
//! simulation jumps from one resync completion (or fault) to the next. Runs
//! are deterministic for a seed: the seed picks the volume sizes and the
//! faulty disks, and everything else is deterministic code.
//!
//! Every run checks the invariants (see [`check`]) and is reported next to
//! two baselines computed in the same run, on the same pool and faults:
//! dedicated-spare RAID1 (one spare disk resyncs the whole failed disk) and
//! an unscheduled rebuild (no per-disk limit), plus two lower bounds (see
//! [`Bounds`]): the issue's fluid ideal, and the tighter one that counts
//! whole chunks and the disks that must serve as sources.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use vsky_model::*;

/// A small, fast, seedable PRNG (SplitMix64); no dependency, stable across
/// platforms and versions, which keeps published figures reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

impl SecretSource for Rng {
    fn export_secret(&mut self) -> String {
        format!("{:016x}", self.next_u64())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One disk fails.
    DiskLoss,
    /// One whole server (all its disks) fails.
    ServerLoss,
    /// One disk fails; a second disk on another server fails once a third
    /// of the first rebuild's bytes are copied (chosen so no mirrored disk
    /// loses two legs).
    SecondFailure,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    pub servers: usize,
    pub disks_per_server: usize,
    pub racks: usize,
    pub chunk_bytes: u64,
    pub chunks_per_disk: u64,
    /// Fraction of all chunks used by volume legs before the fault.
    pub fill: f64,
    pub replicas: u8,
    pub disk_bytes_per_second: f64,
    /// Per server, each direction.
    pub network_bytes_per_second: f64,
    /// Resyncs a disk takes part in at once (k).
    pub per_disk_limit: u32,
    pub seed: u64,
    pub scenario: Scenario,
}

impl SimConfig {
    /// The defaults used for docs/benchmarks.md: 1 GiB chunks on 1 TiB
    /// disks half full, 2 replicas, 200 MB/s disks, 10 GbE, k = 1.
    pub fn standard(servers: usize, scenario: Scenario, seed: u64) -> Self {
        SimConfig {
            servers,
            disks_per_server: 10,
            racks: 8.min(servers),
            chunk_bytes: 1 << 30,
            chunks_per_disk: 1023,
            fill: 0.5,
            replicas: 2,
            disk_bytes_per_second: 200e6,
            network_bytes_per_second: 1.25e9,
            per_disk_limit: 1,
            seed,
            scenario,
        }
    }
}

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
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub config: SimConfig,
    pub disks: usize,
    pub failed_disks: usize,
    pub legs_to_rebuild: usize,
    pub scheduled: Outcome,
    pub unscheduled: Outcome,
    /// One spare disk resyncing the whole failed disk at disk speed.
    pub dedicated_spare_seconds: f64,
    /// Data to copy ÷ aggregate bandwidth (every resync occupies a source
    /// and a target disk; the network caps it too): `bounds.fluid_seconds`.
    pub ideal_seconds: f64,
    /// The tightest lower bound (`bounds.seconds`).
    pub bound_seconds: f64,
    pub bounds: Bounds,
    pub speedup_vs_dedicated_spare: f64,
    /// `ideal_seconds` ÷ scheduled restore time.
    pub fraction_of_ideal: f64,
    /// `bound_seconds` ÷ scheduled restore time.
    pub fraction_of_bound: f64,
}

/// Lower bounds on the time to restore redundancy, for the faults of the
/// scheduled run (no schedule, however clever, can beat any of them).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bounds {
    /// One chunk's copy at full speed: a disk's or a server link's
    /// bandwidth, whichever is lower.
    pub chunk_seconds: f64,
    /// The issue's ideal, fluid: data to copy ÷ aggregate bandwidth. Each
    /// resync reads one disk and writes another, so the live disks move at
    /// most half their summed bandwidth; the live servers' links cap it too,
    /// and nothing finishes before one chunk's copy. It lets a chunk's copy
    /// spread over many disks, which a resync cannot do.
    pub fluid_seconds: f64,
    /// Whole chunks under the per-disk limit k: a resync holds its source
    /// and its target for at least one chunk time, and at most
    /// ⌊k · live disks / 2⌋ resyncs run at once, so the resyncs need at
    /// least ⌈resyncs / ⌊k · live disks / 2⌋⌉ chunk times (any schedule can
    /// be cut into that many "tracks" of non-overlapping resyncs). Without
    /// a limit this is one chunk time.
    pub rounds_seconds: f64,
    /// Forced sources: a disk holding the only healthy leg of n degraded
    /// mirrored disks must read n chunks whatever the schedule (and its
    /// server must send them).
    pub source_seconds: f64,
    /// The largest such n.
    pub busiest_source_reads: usize,
    /// The largest of the above.
    pub seconds: f64,
}

/// Builds the pool and fills it with volumes of 1..=64 mirrored disks.
pub fn build_pool(config: &SimConfig, rng: &mut Rng) -> Result<Cluster, String> {
    let settings = Settings::new(config.chunk_bytes);
    let disk_bytes = settings.disk_header_bytes + config.chunks_per_disk * config.chunk_bytes;
    let mut c = Cluster::new(settings).map_err(|e| e.to_string())?;
    for s in 0..config.servers {
        let mut labels = BTreeMap::new();
        if config.racks > 0 {
            labels.insert("rack".to_string(), format!("r{}", s % config.racks));
        }
        let name = format!("s{s}");
        let address = format!("10.{}.{}.{}:10809", s >> 16, (s >> 8) & 255, s & 255);
        c.add_server(NewServer {
            name: name.clone(),
            address,
            labels,
        })
        .map_err(|e| e.to_string())?;
        for d in 0..config.disks_per_server {
            let disk = NewDisk {
                server: name.clone(),
                path: format!("/dev/disk{d}"),
                size_bytes: disk_bytes,
                class: None,
            };
            c.add_disk(disk).map_err(|e| e.to_string())?;
        }
    }
    let total_chunks = (config.servers * config.disks_per_server) as u64 * config.chunks_per_disk;
    let mut legs_left = (total_chunks as f64 * config.fill) as u64;
    let per_chunk = c.settings().data_bytes_per_chunk();
    let mut i = 0;
    while legs_left >= u64::from(config.replicas) {
        let max = (legs_left / u64::from(config.replicas)).min(64);
        let mirrored = 1 + rng.below(max);
        let new = NewVolume {
            name: format!("v{i}"),
            size_bytes: mirrored * per_chunk,
            replicas: Some(config.replicas),
            ..Default::default()
        };
        c.create_volume(new, rng)
            .map_err(|e| format!("filling the pool: {e}"))?;
        legs_left -= mirrored * u64::from(config.replicas);
        i += 1;
    }
    Ok(c)
}

/// Picks a random disk that holds legs.
fn random_used_disk(
    c: &Cluster,
    rng: &mut Rng,
    avoid_server: Option<ServerId>,
    avoid_disks: &BTreeSet<DiskId>,
) -> Option<DiskId> {
    let candidates: Vec<DiskId> = c
        .disks()
        .filter(|d| {
            c.disk_usage(d.id).legs > 0
                && Some(d.server) != avoid_server
                && !avoid_disks.contains(&d.id)
        })
        .map(|d| d.id)
        .collect();
    (!candidates.is_empty()).then(|| candidates[rng.below(candidates.len() as u64) as usize])
}

/// Disks holding the last healthy leg of a degraded mirrored disk: failing
/// one of them would be a second failure in one mirrored disk.
fn critical_disks(c: &Cluster) -> BTreeSet<DiskId> {
    let mut out = BTreeSet::new();
    for v in c.volumes() {
        for md in &v.mirrored_disks {
            if md.legs.iter().any(|l| l.state != LegState::Active) {
                out.extend(
                    md.legs
                        .iter()
                        .filter(|l| l.state == LegState::Active)
                        .map(|l| l.chunk.disk),
                );
            }
        }
    }
    out
}

/// The faults of a scenario, chosen once per seed so every engine run sees
/// the same ones. The second failure of `SecondFailure` is chosen when it
/// happens (it must avoid the disks that are critical at that moment).
#[derive(Clone, Debug)]
enum Fault {
    Disk(DiskId),
    Server(String),
}

/// Runs one scenario with the per-disk limit and without, and reports both
/// with the baselines.
pub fn run(config: &SimConfig) -> Result<Report, String> {
    let mut rng = Rng::new(config.seed);
    let pool = build_pool(config, &mut rng)?;
    pool.check_invariants()?;
    let first = random_used_disk(&pool, &mut rng, None, &BTreeSet::new())
        .ok_or("the pool holds no legs")?;
    let fault = match config.scenario {
        Scenario::ServerLoss => {
            let server = pool.disk(first).map_err(|e| e.to_string())?.server;
            Fault::Server(pool.server(server).expect("disk's server").name.clone())
        }
        _ => Fault::Disk(first),
    };
    let second_seed = rng.next_u64();
    let scheduled = simulate(
        config,
        pool.clone(),
        &fault,
        config.per_disk_limit,
        second_seed,
    )?;
    let unscheduled = simulate(config, pool.clone(), &fault, u32::MAX, second_seed)?;

    let disks = config.servers * config.disks_per_server;
    let failed_disks = match &fault {
        Fault::Disk(_) => 1,
        Fault::Server(_) => config.disks_per_server,
    } + usize::from(config.scenario == Scenario::SecondFailure);
    let legs_to_rebuild = scheduled.outcome.jobs - scheduled.outcome.failed_jobs;
    let bounds = bounds(config, &pool, &scheduled);
    let dedicated_spare_seconds =
        (config.chunks_per_disk * config.chunk_bytes) as f64 / config.disk_bytes_per_second;
    let restore = scheduled.outcome.restore_seconds;
    Ok(Report {
        config: config.clone(),
        disks,
        failed_disks,
        legs_to_rebuild,
        speedup_vs_dedicated_spare: dedicated_spare_seconds / restore,
        fraction_of_ideal: bounds.fluid_seconds / restore,
        fraction_of_bound: bounds.seconds / restore,
        ideal_seconds: bounds.fluid_seconds,
        bound_seconds: bounds.seconds,
        bounds,
        scheduled: scheduled.outcome,
        unscheduled: unscheduled.outcome,
        dedicated_spare_seconds,
    })
}

/// The lower bounds of [`Bounds`] for one run's faults.
fn bounds(config: &SimConfig, pool: &Cluster, run: &Run) -> Bounds {
    let disk_rate = config.disk_bytes_per_second;
    let net_rate = config.network_bytes_per_second;
    let chunk = pool.settings().data_bytes_per_chunk() as f64;
    let chunk_seconds = chunk / disk_rate.min(net_rate);
    let bytes = run.outcome.bytes_copied as f64;
    let resyncs = run.outcome.jobs - run.outcome.failed_jobs;
    let fluid_seconds = (bytes / (run.live_disks as f64 * disk_rate / 2.0))
        .max(bytes / (run.live_servers as f64 * net_rate))
        .max(chunk_seconds);
    let rounds = if run.limit == u32::MAX {
        1
    } else {
        let at_once = (u64::from(run.limit) * run.live_disks as u64 / 2).max(1);
        (resyncs as u64).div_ceil(at_once)
    };
    let rounds_seconds = rounds as f64 * chunk_seconds;
    let mut per_disk: HashMap<DiskId, usize> = HashMap::new();
    for (_, _, disk) in &run.forced {
        *per_disk.entry(*disk).or_default() += 1;
    }
    let mut per_server: HashMap<ServerId, usize> = HashMap::new();
    for (disk, n) in &per_disk {
        let server = pool.disk(*disk).expect("pool disks stay known").server;
        *per_server.entry(server).or_default() += n;
    }
    let busiest_source_reads = per_disk.values().copied().max().unwrap_or(0);
    let busiest_server_reads = per_server.values().copied().max().unwrap_or(0);
    let source_seconds = (busiest_source_reads as f64 * chunk / disk_rate)
        .max(busiest_server_reads as f64 * chunk / net_rate);
    Bounds {
        chunk_seconds,
        fluid_seconds,
        rounds_seconds,
        source_seconds,
        busiest_source_reads,
        seconds: fluid_seconds.max(rounds_seconds).max(source_seconds),
    }
}

struct Run {
    outcome: Outcome,
    limit: u32,
    /// Live disks and servers after the first fault (the most there are
    /// during the rebuild).
    live_disks: usize,
    live_servers: usize,
    /// Degraded mirrored disks with a single healthy leg, and the disk of
    /// that leg: each must be read from that disk at least once.
    forced: BTreeSet<(VolumeId, u32, DiskId)>,
}

/// Records, after a fault, the degraded mirrored disks that have only one
/// healthy leg left (their resync source is forced).
fn note_forced_sources(c: &Cluster, forced: &mut BTreeSet<(VolumeId, u32, DiskId)>) {
    for v in c.volumes() {
        for (m, md) in v.mirrored_disks.iter().enumerate() {
            let mut active = md.legs.iter().filter(|l| l.state == LegState::Active);
            if let (Some(only), None) = (active.next(), active.next())
                && md.legs.len() > 1
            {
                forced.insert((v.id, m as u32, only.chunk.disk));
            }
        }
    }
}

/// Drives the real planner and scheduler until every mirrored disk is whole
/// again, checking the invariants along the way.
fn simulate(
    config: &SimConfig,
    mut c: Cluster,
    fault: &Fault,
    limit: u32,
    second_seed: u64,
) -> Result<Run, String> {
    let mut rng = Rng::new(second_seed);
    let mut outcome = Outcome::default();
    apply(&mut c, fault)?;
    let mut forced = BTreeSet::new();
    note_forced_sources(&c, &mut forced);
    let live_disks = c
        .disks()
        .filter(|d| {
            d.state == DiskState::Online
                && c.server(d.server)
                    .is_some_and(|s| s.state == ServerState::Online)
        })
        .count();
    let live_servers = c
        .servers()
        .filter(|s| s.state == ServerState::Online)
        .count();
    // Full checks are O(cluster); on big pools they run every 64 steps and
    // at the end, the per-disk limit on every step.
    let legs: usize = c
        .volumes()
        .map(|v| v.mirrored_disks.len() * usize::from(v.replicas))
        .sum();
    let full_every = if legs > 50_000 { 64 } else { 1 };
    let mut done: HashMap<JobId, f64> = HashMap::new();
    let mut jobs_seen: BTreeSet<JobId> = BTreeSet::new();
    let mut finished = 0usize;
    let mut now = 0.0f64;
    let mut second_pending = config.scenario == Scenario::SecondFailure;
    let total_first = {
        let (planned, _) = c.plan_repairs(&mut rng);
        planned.len()
    };
    let second_at = total_first as f64 * c.settings().data_bytes_per_chunk() as f64 / 3.0;
    let mut copied_bytes = 0.0f64;
    for step in 0u64.. {
        let (planned, _) = c.plan_repairs(&mut rng);
        jobs_seen.extend(planned);
        c.start_jobs(limit);
        jobs_seen.extend(c.jobs().filter(|j| j.is_active()).map(|j| j.id));
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
        let rates = rates(config, &c, &running);
        let mut dt = f64::INFINITY;
        for (job, rate) in running.iter().zip(&rates) {
            let left = job.bytes_total as f64 - done.get(&job.id).copied().unwrap_or(0.0);
            dt = dt.min(left / rate);
        }
        // The second failure strikes once a third of the first rebuild's
        // bytes are copied (possibly in the middle of this step).
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
        for (job, rate) in running.iter().zip(&rates) {
            let copied = done.entry(job.id).or_insert(0.0);
            *copied += rate * dt;
            if *copied >= job.bytes_total as f64 * (1.0 - 1e-9) {
                c.job_progress(job.id, job.bytes_total)
                    .map_err(|e| e.to_string())?;
                c.finish_job(job.id).map_err(|e| e.to_string())?;
                outcome.bytes_copied += job.bytes_total;
                finished += 1;
            }
        }
        if strike {
            second_pending = false;
            let first_server = match fault {
                Fault::Disk(d) => c.disk(*d).ok().map(|d| d.server),
                Fault::Server(_) => None,
            };
            let avoid = critical_disks(&c);
            let victim = random_used_disk(&c, &mut rng, first_server, &avoid)
                .ok_or("no disk left for the second failure")?;
            apply(&mut c, &Fault::Disk(victim))?;
            note_forced_sources(&c, &mut forced);
            // A resync that lost its source went back to the queue and
            // starts over.
            done.retain(|id, _| c.job(*id).is_ok_and(|j| j.state == JobState::Running));
        }
    }
    check(&c, limit)?;
    for v in c.volumes() {
        for md in &v.mirrored_disks {
            if md.legs.iter().any(|l| l.state != LegState::Active) {
                return Err(format!("{} ended with a leg that is not active", v.name));
            }
        }
    }
    outcome.restore_seconds = now;
    outcome.jobs = jobs_seen.len();
    // Every job ended (none is active): those not finished failed. (The
    // model keeps a bounded history, so it is not counted there.)
    outcome.failed_jobs = jobs_seen.len() - finished;
    Ok(Run {
        outcome,
        limit,
        live_disks,
        live_servers,
        forced,
    })
}

fn apply(c: &mut Cluster, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::Disk(d) => c.fail_disk(*d).map(drop),
        Fault::Server(s) => c.fail_server(s).map(drop),
    }
    .map_err(|e| e.to_string())
}

/// The copy rate of each running resync: its bottleneck among its source
/// disk, target disk, source server's outbound and target server's inbound
/// network, each shared equally among the resyncs using it.
fn rates(config: &SimConfig, c: &Cluster, running: &[ResyncJob]) -> Vec<f64> {
    let server_of = |d: DiskId| c.disk(d).expect("running jobs use known disks").server;
    let mut disk_users: HashMap<DiskId, u32> = HashMap::new();
    let mut out_users: HashMap<ServerId, u32> = HashMap::new();
    let mut in_users: HashMap<ServerId, u32> = HashMap::new();
    for j in running {
        let source = j.source.expect("running jobs have a source");
        *disk_users.entry(source.disk).or_default() += 1;
        *disk_users.entry(j.target.disk).or_default() += 1;
        *out_users.entry(server_of(source.disk)).or_default() += 1;
        *in_users.entry(server_of(j.target.disk)).or_default() += 1;
    }
    running
        .iter()
        .map(|j| {
            let source = j.source.expect("running");
            let disk = config.disk_bytes_per_second;
            let net = config.network_bytes_per_second;
            (disk / f64::from(disk_users[&source.disk]))
                .min(disk / f64::from(disk_users[&j.target.disk]))
                .min(net / f64::from(out_users[&server_of(source.disk)]))
                .min(net / f64::from(in_users[&server_of(j.target.disk)]))
        })
        .collect()
}

/// The invariants every run must keep (checked outside the code under
/// test, TigerBeetle-style):
/// - the model's own consistency (no chunk used twice, exact accounting,
///   legs of a mirrored disk on distinct servers);
/// - every syncing leg has exactly one active resync, and no disk takes part
///   in more than `limit` resyncs;
/// - no mirrored disk loses its last healthy leg (the scenarios never fail
///   more than R−1 legs of one mirrored disk).
pub fn check(c: &Cluster, limit: u32) -> Result<(), String> {
    c.check_invariants()?;
    c.check_recovery_invariants(limit)?;
    match c.lost_mirrored_disks() {
        0 => Ok(()),
        n => Err(format!("{n} mirrored disks lost every leg")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(scenario: Scenario, seed: u64) -> SimConfig {
        SimConfig {
            servers: 12,
            disks_per_server: 4,
            racks: 3,
            chunk_bytes: 64 << 20,
            chunks_per_disk: 64,
            fill: 0.5,
            replicas: 2,
            disk_bytes_per_second: 200e6,
            network_bytes_per_second: 1.25e9,
            per_disk_limit: 1,
            seed,
            scenario,
        }
    }

    /// Same seed, same report: the simulator is deterministic.
    #[test]
    fn runs_are_deterministic() {
        let a = serde_json::to_string(&run(&small(Scenario::DiskLoss, 7)).unwrap()).unwrap();
        let b = serde_json::to_string(&run(&small(Scenario::DiskLoss, 7)).unwrap()).unwrap();
        assert_eq!(a, b);
    }

    /// Every scenario over a batch of seeds: invariants hold throughout
    /// (checked inside `run`), everything is rebuilt, the per-disk limit is
    /// kept, and rebuilding across the pool beats a dedicated spare.
    #[test]
    fn scenarios_restore_redundancy_within_the_limits() {
        for seed in 0..8 {
            for scenario in [
                Scenario::DiskLoss,
                Scenario::ServerLoss,
                Scenario::SecondFailure,
            ] {
                let r = run(&small(scenario, seed))
                    .unwrap_or_else(|e| panic!("{scenario:?} seed {seed}: {e}"));
                assert!(
                    r.scheduled.peak_resyncs_per_disk <= 1,
                    "{scenario:?} seed {seed}"
                );
                assert!(r.legs_to_rebuild > 0);
                assert!(
                    r.speedup_vs_dedicated_spare > 1.0,
                    "{scenario:?} seed {seed}: {r:?}"
                );
                assert!(
                    r.fraction_of_ideal <= 1.0 + 1e-9,
                    "the ideal is a lower bound: {r:?}"
                );
                assert!(
                    r.fraction_of_bound <= 1.0 + 1e-9 && r.bound_seconds >= r.ideal_seconds,
                    "the bound is a lower bound, at least the ideal: {r:?}"
                );
                // (The second failure may strike other disks in the
                // unscheduled run, so only the others compare.)
                assert!(
                    scenario == Scenario::SecondFailure
                        || r.unscheduled.restore_seconds >= r.bounds.fluid_seconds * (1.0 - 1e-9),
                    "the unscheduled run is bounded too: {r:?}"
                );
            }
        }
    }

    /// Issue #6's targets, at 100 servers × 10 disks after a disk loss:
    /// at least 50× faster than dedicated-spare RAID1, and at least 0.8 of
    /// the lower bound. The simulator is deterministic, so this asserts
    /// simulated seconds, not timings of this machine. It also pins why the
    /// fluid ideal cannot be met: 511 whole-chunk resyncs on 999 disks at
    /// one resync per disk need two chunk times, twice the fluid figure.
    #[test]
    fn hundred_servers_disk_loss_meets_the_issue_targets() {
        let r = run(&SimConfig::standard(100, Scenario::DiskLoss, 1)).unwrap();
        assert!(r.speedup_vs_dedicated_spare >= 50.0, "{r:?}");
        assert!(r.fraction_of_bound >= 0.8, "{r:?}");
        assert!(
            r.bounds.rounds_seconds >= 1.9 * r.bounds.fluid_seconds,
            "{r:?}"
        );
        assert!(r.scheduled.peak_resyncs_per_disk <= 1);
    }
}
