//! What a rebuild costs the volumes' own I/O ([`run_foreground`]): the
//! rebuild scenarios under a foreground load on every disk, with the
//! per-disk limit k = 1, k = 2 and none.
//!
//! Each live disk is asked for `foreground_bytes_per_second` by the
//! volumes throughout. A disk shares its bandwidth fairly between that
//! stream and each resync on it (`fluid::foreground_share`): with r
//! resyncs the foreground gets its demand or a (r + 1)-th of the disk,
//! whichever is less, and the resyncs split what is left. So k bounds what
//! a rebuild can take from any disk's volumes (at k = 1, half the disk),
//! and the price is a slower rebuild. The network is left to the resyncs:
//! the foreground is counted on disks only.

use serde::Serialize;

use crate::config::{Rng, Scenario, SimConfig};
use crate::fluid::{Outcome, simulate};
use crate::pool::build_pool;
use crate::rebuild::first_fault;

/// One rebuild under the foreground load, for one per-disk limit.
#[derive(Clone, Debug, Serialize)]
pub struct ForegroundRun {
    /// `None`: no limit (unscheduled).
    pub per_disk_limit: Option<u32>,
    pub outcome: Outcome,
    /// The foreground the pool was asked for while this rebuild ran
    /// (every live disk's demand × the rebuild's time).
    pub demand_bytes: f64,
}

impl ForegroundRun {
    /// Of the demand while the rebuild ran, the share the resyncs took.
    pub fn lost_share(&self) -> f64 {
        if self.demand_bytes > 0.0 {
            self.outcome.foreground_lost_bytes / self.demand_bytes
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ForegroundReport {
    pub config: SimConfig,
    /// The scheduled rebuild (k = `config.per_disk_limit`) without any
    /// foreground load, for reference.
    pub idle_pool: Outcome,
    /// k = 1, k = 2 and unscheduled, in that order.
    pub runs: Vec<ForegroundRun>,
}

/// Runs one rebuild scenario (`DiskLoss`, `ServerLoss` or
/// `SecondFailure`) on one pool and fault, without foreground load at the
/// configured k, then with `config.foreground_bytes_per_second` on every
/// disk at k = 1, k = 2 and without a limit.
pub fn run_foreground(config: &SimConfig) -> Result<ForegroundReport, String> {
    if !matches!(
        config.scenario,
        Scenario::DiskLoss | Scenario::ServerLoss | Scenario::SecondFailure
    ) {
        return Err(format!(
            "{:?} is not a rebuild: use disk-loss, server-loss or second-failure",
            config.scenario
        ));
    }
    if !(config.foreground_bytes_per_second > 0.0
        && config.foreground_bytes_per_second < config.disk_bytes_per_second)
    {
        return Err(format!(
            "the foreground load must be above 0 and below the disks' {} B/s",
            config.disk_bytes_per_second
        ));
    }
    let mut rng = Rng::new(config.seed);
    let pool = build_pool(config, &mut rng)?;
    let fault = first_fault(config, &pool, &mut rng)?;
    let second_seed = rng.next_u64();
    let idle = SimConfig {
        foreground_bytes_per_second: 0.0,
        ..config.clone()
    };
    let idle_pool = simulate(
        &idle,
        pool.clone(),
        &fault,
        config.per_disk_limit,
        second_seed,
    )?
    .outcome;
    let mut runs = Vec::new();
    for limit in [Some(1), Some(2), None] {
        let run = simulate(
            config,
            pool.clone(),
            &fault,
            limit.unwrap_or(u32::MAX),
            second_seed,
        )?;
        let demand_bytes = run.live_disks as f64
            * config.foreground_bytes_per_second
            * run.outcome.restore_seconds;
        runs.push(ForegroundRun {
            per_disk_limit: limit,
            outcome: run.outcome,
            demand_bytes,
        });
    }
    Ok(ForegroundReport {
        config: config.clone(),
        idle_pool,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::small;

    /// The per-disk limit bounds what a rebuild takes from the volumes: at
    /// k = 1 every disk keeps at least half its bandwidth for them, so a
    /// demand of half the disk is served in full; more resyncs per disk
    /// take more, and the rebuild without a limit takes the most. The
    /// foreground slows the rebuild down.
    #[test]
    fn the_per_disk_limit_bounds_the_foreground_lost() {
        for scenario in [Scenario::DiskLoss, Scenario::ServerLoss] {
            let mut config = small(scenario, 3);
            config.foreground_bytes_per_second = config.disk_bytes_per_second / 2.0;
            let r = run_foreground(&config).unwrap();
            let [k1, k2, none] = &r.runs[..] else {
                panic!("three runs: {r:?}")
            };
            assert_eq!(k1.outcome.foreground_lost_bytes, 0.0, "{r:?}");
            assert_eq!(
                k1.outcome.foreground_slowest_bytes_per_second,
                config.foreground_bytes_per_second
            );
            assert!(k2.outcome.foreground_lost_bytes > 0.0, "{r:?}");
            assert!(
                none.outcome.foreground_slowest_bytes_per_second
                    <= k2.outcome.foreground_slowest_bytes_per_second,
                "{r:?}"
            );
            assert!(none.outcome.peak_resyncs_per_disk >= 2, "{r:?}");
            assert!(
                k1.outcome.restore_seconds > r.idle_pool.restore_seconds,
                "{r:?}"
            );
        }
    }

    #[test]
    fn only_rebuilds_under_a_load_below_the_disk() {
        let mut config = small(Scenario::ServerDrain, 1);
        config.foreground_bytes_per_second = 1e6;
        assert!(run_foreground(&config).is_err());
        let mut config = small(Scenario::DiskLoss, 1);
        assert!(run_foreground(&config).is_err());
        config.foreground_bytes_per_second = config.disk_bytes_per_second;
        assert!(run_foreground(&config).is_err());
    }
}
