//! The rebuild scenarios (`DiskLoss`, `ServerLoss`, `SecondFailure`):
//! [`run`] drives them with the per-disk limit and without, next to
//! dedicated-spare RAID1 and the bounds.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::bounds::{Bounds, bounds};
use crate::config::{Rng, Scenario, SimConfig};
use crate::fluid::{Fault, Outcome, simulate};
use crate::pool::{build_pool, random_used_disk};

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

/// The first fault of a rebuild scenario: a random disk that holds legs,
/// or (`ServerLoss`) its server.
pub(crate) fn first_fault(
    config: &SimConfig,
    pool: &vsky_model::Cluster,
    rng: &mut Rng,
) -> Result<Fault, String> {
    let first =
        random_used_disk(pool, rng, None, &BTreeSet::new()).ok_or("the pool holds no legs")?;
    let fault = match config.scenario {
        Scenario::ServerLoss => {
            let server = pool.disk(first).map_err(|e| e.to_string())?.server;
            Fault::Server(pool.server(server).expect("disk's server").name.clone())
        }
        _ => Fault::Disk(first),
    };
    Ok(fault)
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
    let fault = first_fault(config, &pool, &mut rng)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::small;

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
