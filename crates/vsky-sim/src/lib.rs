//! `vsky-sim`: VastSky's recovery under simulated time.
//!
//! The simulator builds a pool with the real model (`vsky-model`), fills it
//! with volumes through the real allocator, injects a fault, and then drives
//! the manager's own planning pass (`Cluster::recovery_pass`: repair
//! planner, drains, background rebalance, resync scheduler) and
//! `Cluster::finish_job` exactly as the manager does, only with simulated
//! disks and network instead of agents. Nothing of the recovery logic is
//! copied here: this crate only decides how fast each running resync
//! copies.
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
//! [`Bounds`]): the fluid ideal, and the tighter one that counts
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
//! servers (`Rebalance`). The same loop drives them: each step serves the
//! admin's `rebalance` requests, calls `recovery_pass` (which plans the
//! drains' moves) and `finish_job`, and checks on every step that no
//! mirrored disk has fewer than R active legs while nothing failed
//! (`check_redundancy`). They are
//! reported next to a naive drain that moves one leg at a time and the
//! same lower bounds.
//!
//! [`run_foreground`] runs the rebuilds under a foreground load on every
//! disk (the volumes' own I/O), at k = 1, k = 2 and without a limit, and
//! reports the foreground throughput the resyncs took: what the per-disk
//! limit buys, next to what it costs in rebuild time.
//!
//! One module per concern: `config` (what a run is given), `pool` (the
//! filled pool), `fluid` (the fluid model: `simulate`, `rates`), `bounds`,
//! one module per scenario runner (`rebuild`, `server_return`, `moves`,
//! `foreground`), and `checks`. The crate's API is re-exported here.

mod bounds;
mod checks;
mod clones;
mod config;
mod fluid;
mod foreground;
mod moves;
mod pool;
mod rebuild;
mod server_return;

#[cfg(test)]
mod tests;

pub use bounds::Bounds;
pub use checks::{check, shared_domains};
pub use clones::{ClonePattern, ClonesConfig, ClonesReport, run_clones};
pub use config::{Rng, Scenario, SimConfig};
pub use fluid::Outcome;
pub use foreground::{ForegroundReport, ForegroundRun, run_foreground};
pub use moves::{MoveOutcome, MoveReport, run_moves};
pub use pool::build_pool;
pub use rebuild::{Report, run};
pub use server_return::{ReturnReport, dirty_bytes, run_return};
