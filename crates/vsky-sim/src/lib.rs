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
//! an unscheduled rebuild (no per-disk limit), plus the ideal bound.

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
    /// One disk fails; a second disk on another server fails a third of
    /// the way into the rebuild (chosen so no mirrored disk loses two legs).
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
    /// Data to copy ÷ aggregate bandwidth under the per-disk limit (every
    /// resync occupies a source and a target disk; the network caps it too).
    pub ideal_seconds: f64,
    pub speedup_vs_dedicated_spare: f64,
    pub fraction_of_ideal: f64,
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
    let bytes = scheduled.outcome.bytes_copied as f64;
    let live_disks = (disks - failed_disks) as f64;
    let live_servers =
        (config.servers - usize::from(config.scenario == Scenario::ServerLoss)) as f64;
    let one_chunk = pool.settings().data_bytes_per_chunk() as f64
        / config
            .disk_bytes_per_second
            .min(config.network_bytes_per_second);
    // Each resync reads one disk and writes another, so the disks together
    // move at most half their summed bandwidth; the network and a single
    // chunk's copy time bound it too.
    let ideal_seconds = (bytes / (live_disks * config.disk_bytes_per_second / 2.0))
        .max(bytes / (live_servers * config.network_bytes_per_second))
        .max(one_chunk);
    let dedicated_spare_seconds =
        (config.chunks_per_disk * config.chunk_bytes) as f64 / config.disk_bytes_per_second;
    Ok(Report {
        config: config.clone(),
        disks,
        failed_disks,
        legs_to_rebuild,
        speedup_vs_dedicated_spare: dedicated_spare_seconds / scheduled.outcome.restore_seconds,
        fraction_of_ideal: ideal_seconds / scheduled.outcome.restore_seconds,
        scheduled: scheduled.outcome,
        unscheduled: unscheduled.outcome,
        dedicated_spare_seconds,
        ideal_seconds,
    })
}

struct Run {
    outcome: Outcome,
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
    // Full checks are O(cluster); on big pools they run every 64 steps and
    // at the end, the per-disk limit on every step.
    let legs: usize = c
        .volumes()
        .map(|v| v.mirrored_disks.len() * usize::from(v.replicas))
        .sum();
    let full_every = if legs > 50_000 { 64 } else { 1 };
    let mut done: HashMap<JobId, f64> = HashMap::new();
    let mut jobs_seen: BTreeSet<JobId> = BTreeSet::new();
    let mut now = 0.0f64;
    let mut second_pending = config.scenario == Scenario::SecondFailure;
    let total_first = {
        let (planned, _) = c.plan_repairs(&mut rng);
        planned.len()
    };
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
        // jobs are done.
        let finished = c.jobs().filter(|j| j.state == JobState::Done).count();
        if second_pending && finished * 3 >= total_first {
            second_pending = false;
            let first_server = match fault {
                Fault::Disk(d) => c.disk(*d).ok().map(|d| d.server),
                Fault::Server(_) => None,
            };
            let avoid = critical_disks(&c);
            let victim = random_used_disk(&c, &mut rng, first_server, &avoid)
                .ok_or("no disk left for the second failure")?;
            apply(&mut c, &Fault::Disk(victim))?;
            continue;
        }
        now += dt;
        for (job, rate) in running.iter().zip(&rates) {
            let copied = done.entry(job.id).or_insert(0.0);
            *copied += rate * dt;
            if *copied >= job.bytes_total as f64 * (1.0 - 1e-9) {
                c.job_progress(job.id, job.bytes_total)
                    .map_err(|e| e.to_string())?;
                c.finish_job(job.id).map_err(|e| e.to_string())?;
                outcome.bytes_copied += job.bytes_total;
            }
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
    outcome.failed_jobs = c.jobs().filter(|j| j.state == JobState::Failed).count();
    Ok(Run { outcome })
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
            }
        }
    }
}
