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
//!
//! [`run_return`] runs the fault that replaces nothing: a server back within
//! its grace period. Its legs are held while it is away and return to catch
//! up only the regions written meanwhile ([`dirty_bytes`]); it is compared
//! with the same outage without a grace period and with a server that never
//! returns.
//!
//! [`run_moves`] runs the requests that move healthy legs instead of
//! replacing failed ones: draining a server (`ServerDrain`, and
//! `DrainFailure` with a disk failing mid-drain) and rebalancing onto new
//! servers (`Rebalance`). The same loop drives them: each step calls
//! `plan_repairs`, `plan_drains` (and `rebalance`), `start_jobs` and
//! `finish_job`, and checks on every step that no mirrored disk has fewer
//! than R active legs while nothing failed (`check_redundancy`). They are
//! reported next to a naive drain that moves one leg at a time and the
//! same lower bounds.
//!
//! Size: over 1000 lines, not split yet. Issue #15 item 2 splits it (config,
//! pool, fluid model, bounds, one module per scenario, checks).

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
    /// One server goes silent and comes back after `outage_seconds`, within
    /// its grace period: the heads report its legs failed, the manager holds
    /// them (no replacement), then they return and catch up only the
    /// regions written meanwhile. Reported with [`run_return`], next to the
    /// same outage without a grace period and a server that never returns.
    ServerReturn,
    /// An admin drains one server (`Cluster::drain_server`; the server
    /// `ServerLoss` fails for the seed): every leg on it moves to another
    /// disk (`Cluster::plan_drains`) while it keeps serving, so no mirrored
    /// disk ever has fewer than R healthy legs. Reported with
    /// [`run_moves`].
    ServerDrain,
    /// `ServerDrain`, and a disk of another server fails once a third of
    /// the drain's bytes are copied: its legs are repaired while the drain
    /// goes on, and both complete.
    DrainFailure,
    /// `new_servers` empty servers join a filled pool, and
    /// `Cluster::rebalance` moves legs from the fullest disks to the
    /// emptiest. Reported with [`run_moves`].
    Rebalance,
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
    /// `ServerReturn`: how long a silent server's failed legs are held
    /// before it is declared failed and they are replaced (the manager's
    /// `--server-grace`).
    pub grace_seconds: f64,
    /// `ServerReturn`: how long the server is away (less than the grace).
    pub outage_seconds: f64,
    /// `ServerReturn`: mean rate at which the volumes write to each
    /// mirrored disk while the server is away (see [`dirty_bytes`]).
    pub write_bytes_per_second: f64,
    /// dm-raid's write-intent bitmap region: the unit a returning leg
    /// catches up in (the head's `REGION_SECTORS`, 1 MiB).
    pub region_bytes: u64,
    /// `Rebalance`: empty servers (of `disks_per_server` disks each) added
    /// to the filled pool.
    pub new_servers: usize,
    /// `Rebalance`: the window of the manager's background policy
    /// (`Cluster::auto_rebalance`, `--auto-rebalance-moves`): moves queued
    /// or running at most. `None`: sized to the pool, as by default.
    pub rebalance_moves: Option<usize>,
    /// `Rebalance`: moves one admin request plans (`vsky pool rebalance
    /// --max-moves`, at most 10 000), asked again whenever no job is
    /// active, for the scheduled run.
    pub rebalance_request_moves: usize,
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
            grace_seconds: 60.0,
            outage_seconds: 30.0,
            write_bytes_per_second: 100e3,
            region_bytes: 1 << 20,
            new_servers: (servers / 10).max(1),
            rebalance_moves: None,
            rebalance_request_moves: 10_000,
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
    /// Moves only ([`run_moves`]; 0 for rebuilds): a disk that ends with
    /// n more chunks than it started with must write n chunks, and its
    /// server must receive them, whatever the schedule. This counts the
    /// layout the moves end in (for a rebalance, the new disks' share of
    /// the pool), so it holds for any schedule that ends there.
    pub target_seconds: f64,
    /// The largest such n.
    pub busiest_target_writes: usize,
    /// The largest of the above.
    pub seconds: f64,
}

/// Builds the pool and fills it with volumes of 1..=64 mirrored disks.
pub fn build_pool(config: &SimConfig, rng: &mut Rng) -> Result<Cluster, String> {
    let mut c = Cluster::new(Settings::new(config.chunk_bytes)).map_err(|e| e.to_string())?;
    for s in 0..config.servers {
        add_server(&mut c, config, s)?;
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

/// Adds server `s{s}` (rack `r{s mod racks}`) with its empty disks.
fn add_server(c: &mut Cluster, config: &SimConfig, s: usize) -> Result<(), String> {
    let disk_bytes = c.settings().disk_header_bytes + config.chunks_per_disk * config.chunk_bytes;
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
    Ok(())
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

/// Disks holding the healthy legs of a degraded mirrored disk (fewer than
/// R active legs): failing one of them would be a second failure in one
/// mirrored disk. (A moving mirrored disk, R active legs and a syncing
/// extra one, is not degraded.)
fn critical_disks(c: &Cluster) -> BTreeSet<DiskId> {
    let mut out = BTreeSet::new();
    for v in c.volumes() {
        for md in &v.mirrored_disks {
            if md.healthy_legs() < usize::from(v.replicas) {
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

/// What starts a run, chosen once per seed so every engine run sees the
/// same: a fault, or an admin's request to move legs. The second failure of
/// `SecondFailure` and `DrainFailure` is chosen when it happens (it must
/// avoid the disks that are critical at that moment).
#[derive(Clone, Debug)]
enum Fault {
    Disk(DiskId),
    Server(String),
    /// A server whose failed legs were held for its grace period (see
    /// [`go_silent`]) is declared failed for its silence.
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

/// Runs one scenario with the per-disk limit and without, and reports both
/// with the baselines.
pub fn run(config: &SimConfig) -> Result<Report, String> {
    match config.scenario {
        Scenario::ServerReturn => return Err("ServerReturn is reported by run_return".into()),
        Scenario::ServerDrain | Scenario::DrainFailure | Scenario::Rebalance => {
            return Err(format!("{:?} is reported by run_moves", config.scenario));
        }
        _ => {}
    }
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
        Fault::Server(_) | Fault::SilentServer(_) => config.disks_per_server,
        Fault::Drain(_) | Fault::Rebalance(_) | Fault::AutoRebalance(_) => 0,
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

/// The lower bounds of [`Bounds`] for one run's faults (or moves).
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
        // Every resync holds a target that may receive (a draining disk
        // may not), and a source.
        let at_once = (u64::from(run.limit) * run.live_disks as u64 / 2)
            .min(u64::from(run.limit) * run.target_disks as u64)
            .max(1);
        (resyncs as u64).div_ceil(at_once)
    };
    let rounds_seconds = rounds as f64 * chunk_seconds;
    let mut per_disk: HashMap<DiskId, usize> = HashMap::new();
    for (_, _, disk) in &run.forced {
        *per_disk.entry(*disk).or_default() += 1;
    }
    let (busiest_source_reads, source_seconds) = busiest(config, pool, chunk, &per_disk);
    // Moves only: the chunks each disk receives to end in the layout the
    // moves end in (for a rebalance, the new disks' share of the pool).
    let (busiest_target_writes, target_seconds) = if run.tally.moves_seen > 0 {
        busiest(config, pool, chunk, &run.tally.gained)
    } else {
        (0, 0.0)
    };
    Bounds {
        chunk_seconds,
        fluid_seconds,
        rounds_seconds,
        source_seconds,
        busiest_source_reads,
        target_seconds,
        busiest_target_writes,
        seconds: fluid_seconds
            .max(rounds_seconds)
            .max(source_seconds)
            .max(target_seconds),
    }
}

/// The most chunks one disk copies (`per_disk`: chunks per disk, read or
/// written), and the least time that takes at disk speed and at its
/// server's link speed (the server's disks' chunks together).
fn busiest(
    config: &SimConfig,
    pool: &Cluster,
    chunk: f64,
    per_disk: &HashMap<DiskId, usize>,
) -> (usize, f64) {
    let mut per_server: HashMap<ServerId, usize> = HashMap::new();
    for (disk, n) in per_disk {
        let server = pool.disk(*disk).expect("pool disks stay known").server;
        *per_server.entry(server).or_default() += n;
    }
    let disk_most = per_disk.values().copied().max().unwrap_or(0);
    let server_most = per_server.values().copied().max().unwrap_or(0);
    let seconds = (disk_most as f64 * chunk / config.disk_bytes_per_second)
        .max(server_most as f64 * chunk / config.network_bytes_per_second);
    (disk_most, seconds)
}

struct Run {
    outcome: Outcome,
    limit: u32,
    /// Live disks and servers after the first fault (the most there are
    /// during the rebuild).
    live_disks: usize,
    live_servers: usize,
    /// Of the live disks, those that may receive a copy (not draining).
    target_disks: usize,
    /// Degraded mirrored disks with a single healthy leg, and the disk of
    /// that leg: each must be read from that disk at least once.
    forced: BTreeSet<(VolumeId, u32, DiskId)>,
    tally: Tally,
}

/// What a run counts beyond [`Outcome`], for the moves' report.
#[derive(Clone, Debug, Default)]
struct Tally {
    moves_seen: usize,
    moves_done: usize,
    repairs_done: usize,
    /// When the drained server first held no leg.
    drained_seconds: Option<f64>,
    /// When the last move ended.
    last_move_seconds: f64,
    /// The fewest active legs any mirrored disk had at a check.
    min_active_legs: usize,
    /// `Rebalance`: calls of `rebalance` (or `auto_rebalance`) that
    /// planned moves.
    passes: usize,
    /// Legs each disk holds at the end beyond those it held at the start
    /// (disks that gained some).
    gained: HashMap<DiskId, usize>,
    /// The disk the second failure struck.
    struck: Option<DiskId>,
    /// `Cluster::fill_spread` at the end.
    fill_spread_after: f64,
    /// [`shared_domains`] at the end.
    shared_domains_after: usize,
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

/// One planning pass, as the manager's recovery step makes it: repairs,
/// then moves off draining disks, then (for `Fault::Rebalance`, while
/// `rebalancing` and only when no job is active) a rebalance pass, or (for
/// `Fault::AutoRebalance`) the background policy.
fn plan(
    c: &mut Cluster,
    fault: &Fault,
    limit: u32,
    rng: &mut Rng,
    rebalancing: &mut bool,
    tally: &mut Tally,
) -> (Vec<JobId>, Changes) {
    let (mut planned, mut changes) = c.plan_repairs(rng);
    let (moves, more) = c.plan_drains(rng);
    planned.extend(moves);
    changes.merge(more);
    if let Fault::AutoRebalance(policy) = fault {
        let (moves, more) = c.auto_rebalance(*policy, limit, rng);
        changes.merge(more);
        if !moves.is_empty() {
            tally.passes += 1;
            planned.extend(moves.iter().map(|m| m.job));
        }
    }
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
    (planned, changes)
}

/// Checks that every mirrored disk of `volumes` has at least `floor`
/// active legs (R while nothing failed: a move must never lower
/// redundancy; R − failures after some, and never 0: no data lost) and
/// returns the fewest seen.
fn check_redundancy<'a>(
    volumes: impl IntoIterator<Item = &'a Volume>,
    floor: usize,
) -> Result<usize, String> {
    let mut fewest = usize::MAX;
    for v in volumes {
        for (m, md) in v.mirrored_disks.iter().enumerate() {
            let active = md.healthy_legs();
            if active < floor {
                return Err(format!(
                    "{} mirrored disk {m} has {active} active legs, fewer than {floor}",
                    v.name
                ));
            }
            fewest = fewest.min(active);
        }
    }
    Ok(fewest)
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
fn legs_on_server(c: &Cluster, server: ServerId) -> u64 {
    c.disks_of(server).map(|d| c.disk_usage(d.id).legs).sum()
}

/// Drives the real planner and scheduler until every mirrored disk is whole
/// again and every move is done, checking the invariants along the way.
fn simulate(
    config: &SimConfig,
    mut c: Cluster,
    fault: &Fault,
    limit: u32,
    second_seed: u64,
) -> Result<Run, String> {
    let mut rng = Rng::new(second_seed);
    let mut outcome = Outcome::default();
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
        c.start_jobs(limit);
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
/// copies using it.
fn rates(config: &SimConfig, c: &Cluster, running: &[(DiskId, DiskId)]) -> Vec<f64> {
    let server_of = |d: DiskId| c.disk(d).expect("running copies use known disks").server;
    let mut disk_users: HashMap<DiskId, u32> = HashMap::new();
    let mut out_users: HashMap<ServerId, u32> = HashMap::new();
    let mut in_users: HashMap<ServerId, u32> = HashMap::new();
    for &(source, target) in running {
        *disk_users.entry(source).or_default() += 1;
        *disk_users.entry(target).or_default() += 1;
        *out_users.entry(server_of(source)).or_default() += 1;
        *in_users.entry(server_of(target)).or_default() += 1;
    }
    running
        .iter()
        .map(|&(source, target)| {
            let disk = config.disk_bytes_per_second;
            let net = config.network_bytes_per_second;
            (disk / f64::from(disk_users[&source]))
                .min(disk / f64::from(disk_users[&target]))
                .min(net / f64::from(out_users[&server_of(source)]))
                .min(net / f64::from(in_users[&server_of(target)]))
        })
        .collect()
}

// ---- a server back within its grace period ---------------------------

/// How one server outage ends, three ways, on one pool in one run.
#[derive(Clone, Debug, Serialize)]
pub struct ReturnReport {
    pub config: SimConfig,
    /// The server that goes away (the one `ServerLoss` fails for this seed).
    pub server: String,
    /// Its legs: reported failed by their heads, held for the grace period,
    /// active again when it returns.
    pub legs_returned: usize,
    /// The server returns after `outage_seconds`: its legs catch up the
    /// regions written meanwhile ([`dirty_bytes`]), at most k catch-ups per
    /// disk at once. `restore_seconds` counts from the server going away
    /// (outage + catch-up); `jobs` counts the legs with regions to copy.
    pub returned: Outcome,
    /// The same with every catch-up at once: what the heads' dm-raid does
    /// (the manager does not schedule catch-ups, only replacements).
    pub returned_unscheduled: Outcome,
    /// The catch-up alone, from the server's return, with and without k.
    pub catch_up_seconds: f64,
    pub catch_up_unscheduled_seconds: f64,
    /// The same outage without a grace period: the server is failed at once
    /// and every one of its legs rebuilt elsewhere (the `ServerLoss` path,
    /// with k).
    pub no_grace: Outcome,
    /// The server never comes back: its legs are held for the grace period,
    /// then it is declared failed (`fail_silent_server`) and they are
    /// rebuilt (with k); `restore_seconds` includes the grace period.
    pub never_back: Outcome,
    /// `no_grace.bytes_copied` ÷ `returned.bytes_copied`.
    pub bytes_saved_factor: f64,
}

/// The bytes a returned leg catches up: the bitmap regions written while
/// its server was away. Each mirrored disk is written at a rate drawn
/// uniformly from 0 to 2 × `write_bytes_per_second` (seeded; the mean is the
/// configured rate) for the whole outage; the bytes written are taken as
/// distinct and contiguous, rounded up to whole regions, and at most the
/// chunk's data. (A small random write dirties a whole region, so for such
/// workloads read the rate as regions dirtied × region size per second.)
pub fn dirty_bytes(config: &SimConfig, chunk_data_bytes: u64, rng: &mut Rng) -> u64 {
    let rate = config.write_bytes_per_second * rng.below(1 << 20) as f64 / f64::from(1u32 << 19);
    let regions = (rate * config.outage_seconds / config.region_bytes as f64).ceil() as u64;
    regions
        .saturating_mul(config.region_bytes)
        .min(chunk_data_bytes)
}

/// Runs `ServerReturn`: one server goes silent and returns within its
/// grace period, driven through the model exactly as the manager does
/// (`crates/vsky-manager/src/recovery.rs`, and `bring_back_legs` in its
/// agent handlers), next to the same outage without a grace period and a
/// server that never returns, on the same pool.
pub fn run_return(config: &SimConfig) -> Result<ReturnReport, String> {
    if !(config.outage_seconds >= 0.0 && config.outage_seconds < config.grace_seconds) {
        return Err(format!(
            "the outage ({} s) must be shorter than the grace period ({} s)",
            config.outage_seconds, config.grace_seconds
        ));
    }
    let mut rng = Rng::new(config.seed);
    let mut pool = build_pool(config, &mut rng)?;
    pool.check_invariants()?;
    // The server ServerLoss fails for this seed, and its planning seed.
    let first = random_used_disk(&pool, &mut rng, None, &BTreeSet::new())
        .ok_or("the pool holds no legs")?;
    let server = pool.disk(first).map_err(|e| e.to_string())?.server;
    let name = pool.server(server).expect("disk's server").name.clone();
    let second_seed = rng.next_u64();
    let mut dirty_rng = Rng::new(rng.next_u64());
    attach_heads(&mut pool, server)?;
    let limit = config.per_disk_limit;

    // Without a grace period: failed at once, every leg rebuilt.
    let no_grace = simulate(
        config,
        pool.clone(),
        &Fault::Server(name.clone()),
        limit,
        second_seed,
    )?
    .outcome;

    // Never back: held for the grace period, declared failed, rebuilt.
    let mut c = pool.clone();
    go_silent(&mut c, server, limit)?;
    let mut never_back = simulate(
        config,
        c,
        &Fault::SilentServer(name.clone()),
        limit,
        second_seed,
    )?
    .outcome;
    never_back.restore_seconds += config.grace_seconds;

    // Back within the grace period: as `bring_back_legs`, every failed leg
    // on the server not being replaced is active again; the next planning
    // pass holds nothing and must find nothing to replace.
    let mut c = pool;
    let legs = go_silent(&mut c, server, limit)?;
    let back = c.failed_legs_on(server);
    for &(volume, m, l, _) in &back {
        c.leg_returned(volume, m, l).map_err(|e| e.to_string())?;
    }
    c.set_repair_hold(BTreeSet::new());
    let (planned, _) = c.plan_repairs(&mut Rng::new(second_seed));
    if !planned.is_empty() {
        return Err(format!(
            "{} legs planned for replacement after their server returned",
            planned.len()
        ));
    }
    c.start_jobs(limit);
    check(&c, limit)?;
    let all_active = c.volumes().all(|v| {
        v.mirrored_disks
            .iter()
            .all(|md| md.legs.iter().all(|l| l.state == LegState::Active))
    });
    if back.len() != legs || !all_active {
        return Err(format!(
            "{} of {legs} legs returned, and not every leg is active again",
            back.len()
        ));
    }
    let per_chunk = c.settings().data_bytes_per_chunk();
    let mut copies = Vec::new();
    for &(volume, m, l, chunk) in &back {
        let bytes = dirty_bytes(config, per_chunk, &mut dirty_rng);
        let v = c
            .volume(volume)
            .ok_or("returned leg of an unknown volume")?;
        // dm-raid reads the regions from an in-sync leg.
        let source = v.mirrored_disks[m as usize]
            .legs
            .iter()
            .enumerate()
            .find(|&(i, leg)| i != usize::from(l) && leg.state == LegState::Active)
            .map(|(_, leg)| leg.chunk.disk)
            .ok_or("a returned leg has no in-sync partner to catch up from")?;
        if bytes > 0 {
            copies.push((source, chunk.disk, bytes));
        }
    }
    let bytes: u64 = copies.iter().map(|c| c.2).sum();
    let (catch_up_seconds, peak) = catch_up(config, &c, &copies, limit)?;
    let (catch_up_unscheduled_seconds, peak_unscheduled) = catch_up(config, &c, &copies, u32::MAX)?;
    let returned = |seconds: f64, peak: u32| Outcome {
        restore_seconds: config.outage_seconds + seconds,
        peak_resyncs_per_disk: peak,
        bytes_copied: bytes,
        jobs: copies.len(),
        failed_jobs: 0,
    };
    Ok(ReturnReport {
        config: config.clone(),
        server: name,
        legs_returned: back.len(),
        returned: returned(catch_up_seconds, peak),
        returned_unscheduled: returned(catch_up_unscheduled_seconds, peak_unscheduled),
        catch_up_seconds,
        catch_up_unscheduled_seconds,
        bytes_saved_factor: no_grace.bytes_copied as f64 / bytes.max(1) as f64,
        no_grace,
        never_back,
    })
}

/// Attaches every volume with a leg on `server` to a server holding
/// another of its legs: only a volume's head reports its legs failed.
fn attach_heads(c: &mut Cluster, server: ServerId) -> Result<(), String> {
    let mut heads = Vec::new();
    for v in c.volumes() {
        let legs = || v.mirrored_disks.iter().flat_map(|md| &md.legs);
        let server_of = |leg: &Leg| c.disk(leg.chunk.disk).map(|d| d.server).ok();
        if !legs().any(|l| server_of(l) == Some(server)) {
            continue;
        }
        let head = legs()
            .filter_map(server_of)
            .find(|s| *s != server)
            .ok_or_else(|| format!("{} has no leg off the failing server", v.name))?;
        let head = c.server(head).expect("leg's server").name.clone();
        heads.push((v.name.clone(), head));
    }
    for (volume, head) in heads {
        c.attach_volume(&volume, &head).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The server goes silent: the heads of its volumes report each of its
/// legs failed (`report_leg_failed`), and the manager holds them for the
/// grace period (`set_repair_hold` before `plan_repairs`), so nothing is
/// replaced. Returns how many legs failed.
fn go_silent(c: &mut Cluster, server: ServerId, limit: u32) -> Result<usize, String> {
    let addrs: Vec<(VolumeId, u32, u8)> = c
        .disks_of(server)
        .flat_map(|d| {
            c.legs_on_disk(d.id)
                .map(|(_, a)| (a.volume, a.mirrored_disk, a.leg))
        })
        .collect();
    let mut reports = Vec::new();
    for (volume, m, l) in addrs {
        let v = c.volume(volume).ok_or("leg of an unknown volume")?;
        let head = v
            .attachment
            .as_ref()
            .ok_or_else(|| format!("{} has no head to report its legs", v.name))?
            .head;
        reports.push((head, v.name.clone(), m, l));
    }
    for (head, volume, m, l) in &reports {
        c.report_leg_failed(*head, volume, *m, *l)
            .map_err(|e| e.to_string())?;
    }
    c.set_repair_hold(BTreeSet::from([server]));
    let (planned, _) = c.plan_repairs(&mut Rng::new(0));
    if !planned.is_empty() {
        return Err(format!(
            "{} legs of a server in its grace period planned for replacement",
            planned.len()
        ));
    }
    c.start_jobs(limit);
    check(c, limit)?;
    Ok(reports.len())
}

/// Runs catch-up copies (source disk, target disk, bytes) under the same
/// fluid rates as resyncs, at most `limit` per disk at once, each started
/// as soon as its disks allow, in order. Returns the time until the last
/// one ends and the most copies any disk took part in at once.
fn catch_up(
    config: &SimConfig,
    c: &Cluster,
    copies: &[(DiskId, DiskId, u64)],
    limit: u32,
) -> Result<(f64, u32), String> {
    let mut pending: Vec<usize> = (0..copies.len()).collect();
    let mut running: Vec<(usize, f64)> = Vec::new();
    let mut busy: HashMap<DiskId, u32> = HashMap::new();
    let mut now = 0.0f64;
    let mut peak = 0u32;
    loop {
        pending.retain(|&i| {
            let (source, target, _) = copies[i];
            let free = |d: DiskId| busy.get(&d).copied().unwrap_or(0) < limit;
            if free(source) && free(target) {
                *busy.entry(source).or_default() += 1;
                *busy.entry(target).or_default() += 1;
                running.push((i, 0.0));
                false
            } else {
                true
            }
        });
        peak = peak.max(busy.values().copied().max().unwrap_or(0));
        if limit != u32::MAX && peak > limit {
            return Err(format!(
                "a disk is in {peak} catch-ups, over the limit {limit}"
            ));
        }
        if running.is_empty() {
            if !pending.is_empty() {
                return Err("catch-ups pending but none can start".into());
            }
            return Ok((now, peak));
        }
        let pairs: Vec<(DiskId, DiskId)> = running
            .iter()
            .map(|&(i, _)| (copies[i].0, copies[i].1))
            .collect();
        let rates = rates(config, c, &pairs);
        let dt = running
            .iter()
            .zip(&rates)
            .map(|(&(i, done), rate)| (copies[i].2 as f64 - done) / rate)
            .fold(f64::INFINITY, f64::min);
        now += dt;
        let mut still = Vec::with_capacity(running.len());
        for ((i, done), rate) in running.into_iter().zip(&rates) {
            let done = done + rate * dt;
            if done >= copies[i].2 as f64 * (1.0 - 1e-9) {
                for d in [copies[i].0, copies[i].1] {
                    let n = busy.get_mut(&d).expect("busy disk");
                    *n -= 1;
                    if *n == 0 {
                        busy.remove(&d);
                    }
                }
            } else {
                still.push((i, done));
            }
        }
        running = still;
    }
}

// ---- moving healthy legs: drain and rebalance -------------------------

/// How one run of moves went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MoveOutcome {
    /// `ServerDrain`, `DrainFailure`: from the drain's start until the
    /// server holds no leg. `Rebalance`: until the last move ends.
    pub seconds: f64,
    /// Until no job is left (a failure's repairs may end after the drain).
    pub all_done_seconds: f64,
    /// Moves finished (each copied one chunk).
    pub moves: usize,
    /// Moves given up (their target failed); the leg moved later.
    pub moves_abandoned: usize,
    /// Repairs finished (after an injected failure).
    pub repairs: usize,
    pub bytes_copied: u64,
    /// Most resyncs (moves and repairs) any disk took part in at one time.
    pub peak_resyncs_per_disk: u32,
    /// The fewest active legs any mirrored disk had at any step: R
    /// throughout when nothing failed.
    pub min_active_legs: usize,
    /// `Rebalance`: calls of `rebalance` (admin requests) or
    /// `auto_rebalance` (background top-ups) that planned moves.
    pub passes: usize,
    /// `Cluster::fill_spread` at the end (disks that take new chunks).
    pub fill_spread_after: f64,
    /// Mirrored disks with two legs in one failure domain (rack) at the
    /// end (see [`MoveReport::shared_domains_before`]).
    pub shared_domains_after: usize,
}

/// A drain or a rebalance, next to a naive one-leg-at-a-time baseline
/// and the lower bounds.
#[derive(Clone, Debug, Serialize)]
pub struct MoveReport {
    pub config: SimConfig,
    /// Disks in the pool (for `Rebalance`, with the new servers').
    pub disks: usize,
    /// `ServerDrain`, `DrainFailure`: the drained server (the one
    /// `ServerLoss` fails for the seed).
    pub server: Option<String>,
    /// `DrainFailure`: the disk that failed mid-drain (`disk#7 on s3`).
    pub failed_disk: Option<String>,
    /// Legs on the drained server, or moves the rebalance made.
    pub legs_to_move: usize,
    /// With the per-disk limit k. `Rebalance`: an admin's requests,
    /// `rebalance(rebalance_request_moves)` whenever no job is active,
    /// until one plans nothing (one request plans every move of a pool of
    /// up to 100 servers).
    pub scheduled: MoveOutcome,
    /// `Rebalance` only: the manager's background policy,
    /// `auto_rebalance` on every step (a window of moves in flight).
    pub bounded_passes: Option<MoveOutcome>,
    /// One move at a time, each a chunk's copy at full speed: moves ×
    /// `bounds.chunk_seconds`.
    pub naive_seconds: f64,
    /// `bounds.fluid_seconds` of the scheduled run.
    pub ideal_seconds: f64,
    /// `bounds.seconds`.
    pub bound_seconds: f64,
    pub bounds: Bounds,
    pub speedup_vs_naive: f64,
    pub fraction_of_ideal: f64,
    pub fraction_of_bound: f64,
    /// `Cluster::fill_spread` before the moves.
    pub fill_spread_before: f64,
    /// Mirrored disks with two legs in one failure domain before the
    /// moves (the allocator avoids it when it can; a move should not add
    /// any).
    pub shared_domains_before: usize,
}

/// Mirrored disks with two legs on servers of one failure domain.
pub fn shared_domains(c: &Cluster) -> usize {
    let label = &c.settings().failure_domain_label;
    let domain = |leg: &Leg| {
        let server = c.disk(leg.chunk.disk).expect("leg's disk").server;
        c.server(server)
            .expect("disk's server")
            .failure_domain(label)
    };
    c.volumes()
        .flat_map(|v| &v.mirrored_disks)
        .filter(|md| {
            let domains: BTreeSet<String> = md.legs.iter().map(domain).collect();
            domains.len() < md.legs.len()
        })
        .count()
}

/// Runs `ServerDrain`, `DrainFailure` or `Rebalance`: the real
/// `drain_server`/`plan_drains` or `rebalance` under the same scheduler,
/// rates and invariant checks as the rebuilds (see `simulate`).
pub fn run_moves(config: &SimConfig) -> Result<MoveReport, String> {
    let mut rng = Rng::new(config.seed);
    let mut pool = build_pool(config, &mut rng)?;
    pool.check_invariants()?;
    let limit = config.per_disk_limit;
    // The server ServerLoss fails for this seed, and its planning seed.
    let first = random_used_disk(&pool, &mut rng, None, &BTreeSet::new())
        .ok_or("the pool holds no legs")?;
    let second_seed = rng.next_u64();
    let (fault, server, bounded) = match config.scenario {
        Scenario::ServerDrain | Scenario::DrainFailure => {
            let server = pool.disk(first).map_err(|e| e.to_string())?.server;
            let name = pool.server(server).expect("disk's server").name.clone();
            (Fault::Drain(name.clone()), Some(name), None)
        }
        Scenario::Rebalance => {
            if config.new_servers == 0 {
                return Err("Rebalance needs at least one new server".into());
            }
            if config.rebalance_moves == Some(0) || config.rebalance_request_moves == 0 {
                return Err("Rebalance needs at least one move per pass".into());
            }
            for s in config.servers..config.servers + config.new_servers {
                add_server(&mut pool, config, s)?;
            }
            pool.check_invariants()?;
            // The background policy evens the pool out completely (its
            // threshold at 0), as the admin's requests do.
            let policy = AutoRebalance {
                spread: 0.0,
                window: config.rebalance_moves,
            };
            let bounded = simulate(
                config,
                pool.clone(),
                &Fault::AutoRebalance(policy),
                limit,
                second_seed,
            )?;
            (
                Fault::Rebalance(config.rebalance_request_moves),
                None,
                Some(bounded),
            )
        }
        other => return Err(format!("{other:?} is reported by run or run_return")),
    };
    let fill_spread_before = pool.fill_spread();
    let legs_to_move = match &server {
        Some(name) => legs_on_server(&pool, pool.server_by_name(name).expect("listed").id) as usize,
        None => 0,
    };
    let scheduled = simulate(config, pool.clone(), &fault, limit, second_seed)?;
    let legs_to_move = if server.is_some() {
        legs_to_move
    } else {
        scheduled.tally.moves_done
    };
    let failed_disk = scheduled.tally.struck.map(|d| {
        let server = pool.disk(d).expect("pool disk").server;
        format!(
            "{d} on {}",
            pool.server(server).expect("disk's server").name
        )
    });
    let bounds = bounds(config, &pool, &scheduled);
    let drain = server.is_some();
    let outcome = |run: Run| -> Result<MoveOutcome, String> {
        let t = &run.tally;
        let seconds = if drain {
            t.drained_seconds.ok_or("the drain never ended")?
        } else {
            t.last_move_seconds
        };
        Ok(MoveOutcome {
            seconds,
            all_done_seconds: run.outcome.restore_seconds,
            moves: t.moves_done,
            moves_abandoned: t.moves_seen - t.moves_done,
            repairs: t.repairs_done,
            bytes_copied: run.outcome.bytes_copied,
            peak_resyncs_per_disk: run.outcome.peak_resyncs_per_disk,
            min_active_legs: t.min_active_legs,
            passes: t.passes,
            fill_spread_after: t.fill_spread_after,
            shared_domains_after: t.shared_domains_after,
        })
    };
    let naive_seconds = legs_to_move as f64 * bounds.chunk_seconds;
    let scheduled = outcome(scheduled)?;
    let time = scheduled.seconds;
    Ok(MoveReport {
        config: config.clone(),
        disks: pool.disks().count(),
        server,
        failed_disk,
        legs_to_move,
        bounded_passes: bounded.map(outcome).transpose()?,
        naive_seconds,
        ideal_seconds: bounds.fluid_seconds,
        bound_seconds: bounds.seconds,
        speedup_vs_naive: naive_seconds / time,
        fraction_of_ideal: bounds.fluid_seconds / time,
        fraction_of_bound: bounds.seconds / time,
        bounds,
        scheduled,
        fill_spread_before,
        shared_domains_before: shared_domains(&pool),
    })
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
            grace_seconds: 60.0,
            outage_seconds: 30.0,
            write_bytes_per_second: 100e3,
            region_bytes: 1 << 20,
            new_servers: 2,
            rebalance_moves: Some(16),
            rebalance_request_moves: 10_000,
        }
    }

    /// Same seed, same report: the simulator is deterministic.
    #[test]
    fn runs_are_deterministic() {
        let a = serde_json::to_string(&run(&small(Scenario::DiskLoss, 7)).unwrap()).unwrap();
        let b = serde_json::to_string(&run(&small(Scenario::DiskLoss, 7)).unwrap()).unwrap();
        assert_eq!(a, b);
        let config = small(Scenario::ServerReturn, 7);
        let a = serde_json::to_string(&run_return(&config).unwrap()).unwrap();
        let b = serde_json::to_string(&run_return(&config).unwrap()).unwrap();
        assert_eq!(a, b);
        for scenario in [Scenario::DrainFailure, Scenario::Rebalance] {
            let config = small(scenario, 7);
            let a = serde_json::to_string(&run_moves(&config).unwrap()).unwrap();
            let b = serde_json::to_string(&run_moves(&config).unwrap()).unwrap();
            assert_eq!(a, b);
        }
    }

    /// Each runner takes its own scenarios only.
    #[test]
    fn runners_refuse_other_scenarios() {
        for scenario in [
            Scenario::ServerDrain,
            Scenario::DrainFailure,
            Scenario::Rebalance,
        ] {
            assert!(run(&small(scenario, 1)).is_err());
        }
        for scenario in [Scenario::DiskLoss, Scenario::ServerReturn] {
            assert!(run_moves(&small(scenario, 1)).is_err());
        }
    }

    /// The redundancy check has teeth: a failed leg is one active leg
    /// short of R, and a mirrored disk with no active leg fails even the
    /// floor after a failure.
    #[test]
    fn redundancy_check_catches_a_missing_leg() {
        let config = small(Scenario::DiskLoss, 1);
        let mut c = build_pool(&config, &mut Rng::new(1)).unwrap();
        assert_eq!(check_redundancy(c.volumes(), 2), Ok(2));
        let disk = random_used_disk(&c, &mut Rng::new(2), None, &BTreeSet::new()).unwrap();
        c.fail_disk(disk).unwrap();
        assert!(check_redundancy(c.volumes(), 2).is_err());
        assert_eq!(check_redundancy(c.volumes(), 1), Ok(1));
        let partner = critical_disks(&c).into_iter().next().unwrap();
        c.fail_disk(partner).unwrap();
        assert!(check_redundancy(c.volumes(), 1).is_err());
    }

    /// Draining a server (issue: graceful drain), over a batch of seeds
    /// and with 2 and 3 replicas: `simulate` checks on every step that no
    /// mirrored disk has fewer than R active legs and no disk is in more
    /// than k resyncs, and at the end that every mirrored disk has R active
    /// legs on distinct servers and the server none. Here: every leg moved
    /// exactly once, by moves only, far faster than one at a time, and
    /// never faster than the bound.
    #[test]
    fn server_drain_keeps_redundancy_and_empties_the_server() {
        for replicas in [2, 3] {
            for seed in 0..6 {
                let mut config = small(Scenario::ServerDrain, seed);
                config.replicas = replicas;
                let r =
                    run_moves(&config).unwrap_or_else(|e| panic!("R={replicas} seed {seed}: {e}"));
                let s = &r.scheduled;
                assert!(r.legs_to_move > 0 && r.server.is_some(), "{r:?}");
                assert_eq!(s.moves, r.legs_to_move, "{r:?}");
                assert_eq!((s.repairs, s.moves_abandoned), (0, 0), "{r:?}");
                assert_eq!(s.min_active_legs, usize::from(replicas), "{r:?}");
                assert!(s.peak_resyncs_per_disk <= 1, "{r:?}");
                assert_eq!(s.seconds, s.all_done_seconds);
                assert!(
                    r.fraction_of_bound <= 1.0 + 1e-9 && r.bound_seconds >= r.ideal_seconds,
                    "{r:?}"
                );
                assert!(r.speedup_vs_naive > 2.0, "{r:?}");
                assert!(s.shared_domains_after <= r.shared_domains_before, "{r:?}");
            }
        }
    }

    /// A disk of another server fails a third of the way into the drain:
    /// its legs are repaired while the drain goes on (no mirrored disk
    /// loses more than that one leg: `simulate` checks it on every step),
    /// and the drain still completes.
    #[test]
    fn drain_completes_through_a_disk_failure() {
        for replicas in [2, 3] {
            for seed in 0..6 {
                let mut config = small(Scenario::DrainFailure, seed);
                config.replicas = replicas;
                let r =
                    run_moves(&config).unwrap_or_else(|e| panic!("R={replicas} seed {seed}: {e}"));
                let s = &r.scheduled;
                let failed = r.failed_disk.as_deref().expect("a disk failed");
                assert!(!failed.ends_with(r.server.as_deref().unwrap()), "{r:?}");
                assert!(s.repairs > 0, "{r:?}");
                assert_eq!(s.moves, r.legs_to_move, "{r:?}");
                assert_eq!(s.min_active_legs, usize::from(replicas) - 1, "{r:?}");
                assert!(s.peak_resyncs_per_disk <= 1, "{r:?}");
                assert!(s.seconds <= s.all_done_seconds, "{r:?}");
                assert!(r.fraction_of_bound <= 1.0 + 1e-9, "{r:?}");
            }
        }
    }

    /// Moves within one server: draining one disk (`drain_disk`), or
    /// rebalancing onto a disk added to a server that holds other legs,
    /// may place the new chunk on the moving leg's own server, and the
    /// model's invariants accept that while the move runs (the old leg
    /// leaves that server when it ends). Then the moves run to the end
    /// with every mirrored disk keeping R active legs.
    #[test]
    fn moves_within_a_server_keep_redundancy() {
        for seed in 0..4 {
            let config = small(Scenario::ServerDrain, seed);
            let mut rng = Rng::new(seed);
            let mut c = build_pool(&config, &mut rng).unwrap();
            let disk = random_used_disk(&c, &mut rng, None, &BTreeSet::new()).unwrap();
            c.drain_disk(disk).unwrap();
            c.plan_drains(&mut rng);
            c.check_invariants()
                .unwrap_or_else(|e| panic!("drain_disk, seed {seed}: {e}"));
            finish_moves(&mut c, &mut rng);
            assert_eq!(c.disk_usage(disk).legs, 0, "seed {seed}");

            let mut c = build_pool(&config, &mut Rng::new(seed)).unwrap();
            let size = c.settings().disk_header_bytes + config.chunks_per_disk * config.chunk_bytes;
            c.add_disk(NewDisk {
                server: "s3".into(),
                path: "/dev/new".into(),
                size_bytes: size,
                class: None,
            })
            .unwrap();
            c.rebalance(usize::MAX, &mut rng);
            c.check_invariants()
                .unwrap_or_else(|e| panic!("rebalance onto a new disk of s3, seed {seed}: {e}"));
            finish_moves(&mut c, &mut rng);
        }
    }

    /// Runs every move to the end, one round of whole copies at a time,
    /// checking the invariants and R active legs after each round.
    fn finish_moves(c: &mut Cluster, rng: &mut Rng) {
        for _ in 0..10_000 {
            c.plan_repairs(rng);
            c.plan_drains(rng);
            c.start_jobs(1);
            check(c, 1).unwrap();
            let running: Vec<JobId> = c
                .jobs()
                .filter(|j| j.state == JobState::Running)
                .map(|j| j.id)
                .collect();
            if running.is_empty() {
                assert!(c.jobs().all(|j| !j.is_active()), "stuck");
                return;
            }
            for id in running {
                c.finish_job(id).unwrap();
            }
            check(c, 1).unwrap();
            check_redundancy(c.volumes(), 2).unwrap();
        }
        panic!("moves never end");
    }

    /// New empty servers join: `rebalance` evens the pool out (admin
    /// requests or background passes) without ever lowering redundancy,
    /// within k, and the new disks' inbound share bounds the time.
    #[test]
    fn rebalance_evens_out_new_servers() {
        for seed in 0..6 {
            let mut config = small(Scenario::Rebalance, seed);
            // Odd seeds: requests too small for every move at once.
            if seed % 2 == 1 {
                config.rebalance_request_moves = 50;
            }
            let r = run_moves(&config).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let requests = &r.scheduled;
            let bounded = r.bounded_passes.as_ref().expect("bounded passes");
            assert!(r.fill_spread_before >= 0.4, "{r:?}");
            // Whole chunks: within two chunks of even.
            let chunk = 1.0 / config.chunks_per_disk as f64;
            for o in [requests, bounded] {
                assert!(
                    o.fill_spread_after <= 2.0 * chunk + 1e-9,
                    "seed {seed}: {r:?}"
                );
                assert!(o.moves > 0 && o.moves_abandoned == 0 && o.repairs == 0);
                assert_eq!(o.min_active_legs, 2, "{r:?}");
                assert!(o.peak_resyncs_per_disk <= 1, "{r:?}");
                assert!(o.seconds >= r.bound_seconds * (1.0 - 1e-9), "{r:?}");
                assert!(o.shared_domains_after <= r.shared_domains_before, "{r:?}");
            }
            assert_eq!(requests.moves, r.legs_to_move);
            assert!(requests.passes >= requests.moves.div_ceil(config.rebalance_request_moves));
            assert!(seed % 2 == 0 || requests.passes > 1, "{r:?}");
            assert!(bounded.passes >= bounded.moves.div_ceil(16));
            assert!(r.bounds.busiest_target_writes > 0 && r.bounds.target_seconds > 0.0);
        }
    }

    /// A server back within its grace period (issue #6): its legs are held
    /// while it is away (`run_return` fails if any is planned for
    /// replacement), all return, and catching up the regions written
    /// meanwhile copies far fewer bytes than rebuilding every leg, which is
    /// what the same outage costs without a grace period. Byte counts, not
    /// timings: deterministic.
    #[test]
    fn server_return_catches_up_far_fewer_bytes_than_a_rebuild() {
        for seed in 0..6 {
            let config = small(Scenario::ServerReturn, seed);
            let r = run_return(&config).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let chunk =
                (config.chunk_bytes - Settings::new(config.chunk_bytes).leg_meta_bytes) as f64;
            assert!(r.legs_returned > 0, "{r:?}");
            // Without a grace period every leg of the server is rebuilt whole.
            assert_eq!(r.no_grace.jobs, r.legs_returned, "{r:?}");
            assert_eq!(r.no_grace.failed_jobs, 0, "{r:?}");
            assert_eq!(
                r.no_grace.bytes_copied as f64,
                r.legs_returned as f64 * chunk,
                "{r:?}"
            );
            // 30 s at a mean 100 kB/s: a few 1 MiB regions of a 64 MiB chunk.
            assert!(
                r.returned.bytes_copied * 10 <= r.no_grace.bytes_copied,
                "seed {seed}: caught up {} bytes, rebuilt {}",
                r.returned.bytes_copied,
                r.no_grace.bytes_copied
            );
            assert!(r.returned.bytes_copied > 0 && r.bytes_saved_factor >= 10.0);
            assert_eq!(r.returned.bytes_copied, r.returned_unscheduled.bytes_copied);
            // Every copy is whole regions, at most 2 × rate × outage each.
            let most = (2.0 * config.write_bytes_per_second * config.outage_seconds
                / config.region_bytes as f64)
                .ceil() as u64
                * config.region_bytes;
            assert!(r.returned.bytes_copied <= r.legs_returned as u64 * most);
            assert_eq!(r.returned.bytes_copied % config.region_bytes, 0);
            assert!(r.returned.peak_resyncs_per_disk <= 1, "{r:?}");
            assert!(r.returned.restore_seconds > config.outage_seconds);
            // The catch-up cannot beat the returned server's inbound link.
            assert!(
                r.catch_up_unscheduled_seconds
                    >= r.returned.bytes_copied as f64 / config.network_bytes_per_second
                        * (1.0 - 1e-9)
            );
            // A server that never returns: the hold only delays the same
            // rebuild by the grace period.
            assert_eq!(r.never_back.bytes_copied, r.no_grace.bytes_copied);
            assert!(
                (r.never_back.restore_seconds - config.grace_seconds - r.no_grace.restore_seconds)
                    .abs()
                    < 1e-6,
                "{r:?}"
            );
        }
    }

    /// No writes while away: nothing to catch up, redundancy is back the
    /// moment the server is; an outage as long as the grace period is not
    /// a return.
    #[test]
    fn server_return_edges() {
        let mut config = small(Scenario::ServerReturn, 3);
        config.write_bytes_per_second = 0.0;
        let r = run_return(&config).unwrap();
        assert_eq!(r.returned.bytes_copied, 0);
        assert_eq!(r.returned.jobs, 0);
        assert_eq!(r.returned.restore_seconds, config.outage_seconds);
        config.outage_seconds = config.grace_seconds;
        assert!(run_return(&config).is_err());
        assert!(run(&config).is_err(), "run does not take ServerReturn");
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
