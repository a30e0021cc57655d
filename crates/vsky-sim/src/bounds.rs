//! Lower bounds on the time to restore redundancy (or finish the moves),
//! which no schedule can beat: the fluid ideal, whole-chunk rounds under
//! the per-disk limit, forced sources and targets.

use std::collections::HashMap;

use serde::Serialize;
use vsky_model::*;

use crate::config::SimConfig;
use crate::fluid::Run;

/// Lower bounds on the time to restore redundancy, for the faults of the
/// scheduled run (no schedule, however clever, can beat any of them).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bounds {
    /// One chunk's copy at full speed: a disk's or a server link's
    /// bandwidth, whichever is lower.
    pub chunk_seconds: f64,
    /// The ideal, fluid: data to copy ÷ aggregate bandwidth. Each
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
    /// Moves only ([`run_moves`](crate::run_moves); 0 for rebuilds): a disk that ends with
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

/// The lower bounds of [`Bounds`] for one run's faults (or moves).
pub(crate) fn bounds(config: &SimConfig, pool: &Cluster, run: &Run) -> Bounds {
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
    for forced in &run.forced {
        *per_disk.entry(forced.disk).or_default() += 1;
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
