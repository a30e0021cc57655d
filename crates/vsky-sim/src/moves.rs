//! Moving healthy legs instead of replacing failed ones: draining a server
//! (`ServerDrain`, `DrainFailure`) and rebalancing onto new servers
//! (`Rebalance`), driven by [`run_moves`] next to a naive
//! one-leg-at-a-time drain and the bounds.

use std::collections::BTreeSet;

use serde::Serialize;
use vsky_model::*;

use crate::bounds::{Bounds, bounds};
use crate::checks::shared_domains;
use crate::config::{Rng, Scenario, SimConfig};
use crate::fluid::{Fault, Run, legs_on_server, simulate};
use crate::pool::{add_server, build_pool, random_used_disk};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{check, check_redundancy};
    use crate::server_return::held_pass;
    use crate::tests::small;

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
            c.recovery_pass(&held_pass(1, BTreeSet::new()), rng);
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
}
