//! The recovery loop's planning pass, and which silent servers it fails.
//!
//! [`Cluster::recovery_pass`] is one pass as the manager's recovery loop
//! (`vsky-manager/src/recovery.rs`) makes it, once a second and after
//! every change, and as `vsky-sim` makes it on every simulated step:
//! 1. the servers in their grace period hold their failed legs
//!    ([`Cluster::set_repair_hold`]; failed servers hold nothing);
//! 2. a replacement for every failed leg ([`Cluster::plan_repairs`]), a
//!    move for every leg on a draining disk or server
//!    ([`Cluster::plan_drains`]) and, with a background policy, a window
//!    of rebalancing moves while no repair or drain runs
//!    ([`Cluster::auto_rebalance`]);
//! 3. the queued resyncs whose disks are free start
//!    ([`Cluster::start_jobs`], under the per-disk limit, repairs first);
//! 4. with a scrub interval, the scrubs that are due start on the disks
//!    the resyncs left free ([`Cluster::start_scrubs`]);
//! 5. it lists the draining disks and servers that hold no leg any more.
//!
//! [`Cluster::silent_servers`] says which servers' silence to report and
//! which to declare failed; the manager measures the silence with its
//! clock and fails them (`fail_silent_server`) before the pass.

use std::collections::BTreeSet;
use std::time::Duration;

use super::moves::AutoRebalance;
use super::scrub::StartedScrub;
use super::{Changes, Cluster};
use crate::SecretSource;
use crate::entities::ServerState;
use crate::ids::{DiskId, JobId, ServerId};

/// What a pass may do.
#[derive(Clone, Debug, PartialEq)]
pub struct PassConfig {
    /// Resyncs (and scrubs) one physical disk takes part in at a time.
    pub per_disk_limit: u32,
    /// Servers in their grace period: their failed legs wait (failed
    /// servers among them are ignored).
    pub held: BTreeSet<ServerId>,
    /// The background rebalance policy; `None`: only admin requests.
    pub auto_rebalance: Option<AutoRebalance>,
    /// When scrubs are due; `None`: none starts.
    pub scrubs: Option<ScrubClock>,
}

/// The clock and interval for [`Cluster::start_scrubs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubClock {
    pub now_unix_s: u64,
    /// Each mirrored disk is scrubbed this often (at least 1).
    pub interval_s: u64,
}

/// What a pass planned and started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassOutcome {
    /// Jobs planned, in order: repairs, drain moves, rebalancing moves.
    pub planned: Vec<JobId>,
    /// Of `planned`, the moves the background policy planned.
    pub rebalance_moves: usize,
    /// Jobs started.
    pub started: Vec<JobId>,
    /// Scrubs started.
    pub scrubs: Vec<StartedScrub>,
    /// Draining servers and disks that hold no leg now, servers in order,
    /// each followed by its own emptied disks (a draining server is listed
    /// alone, not its disks).
    pub drained: Vec<Drained>,
}

/// A draining server or disk that holds no leg any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    Server(ServerId),
    Disk(DiskId),
}

/// A server not heard from for long enough to tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SilentServer {
    pub id: ServerId,
    pub name: String,
    pub silent_for: Duration,
    /// Past its grace period while it holds legs: declare it failed.
    pub fail: bool,
}

impl Cluster {
    /// One planning pass of the recovery loop (see the module). The
    /// changes include those of the hold, the plans and the starts.
    pub fn recovery_pass(
        &mut self,
        config: &PassConfig,
        secrets: &mut dyn SecretSource,
    ) -> (PassOutcome, Changes) {
        let limit = config.per_disk_limit;
        let held = config
            .held
            .iter()
            .copied()
            .filter(|s| {
                self.server(*s)
                    .is_some_and(|s| s.state != ServerState::Failed)
            })
            .collect();
        self.set_repair_hold(held);
        let mut out = PassOutcome::default();
        let (planned, mut changes) = self.plan_repairs(secrets);
        out.planned = planned;
        let (moves, more) = self.plan_drains(secrets);
        out.planned.extend(moves);
        changes.merge(more);
        if let Some(policy) = config.auto_rebalance {
            let (moves, more) = self.auto_rebalance(policy, limit, secrets);
            changes.merge(more);
            out.rebalance_moves = moves.len();
            out.planned.extend(moves.iter().map(|m| m.job));
        }
        let (started, more) = self.start_jobs(limit);
        out.started = started;
        changes.merge(more);
        // Scrubs take what the resyncs left.
        if let Some(clock) = config.scrubs {
            out.scrubs = self.start_scrubs(clock.now_unix_s, clock.interval_s.max(1), limit);
        }
        out.drained = self.drained();
        (out, changes)
    }

    /// Draining servers and disks that hold no leg any more (see
    /// [`PassOutcome::drained`]).
    pub fn drained(&self) -> Vec<Drained> {
        let mut out = Vec::new();
        let empty = |d: DiskId| self.drain_progress(d).legs_left == 0;
        for s in self.servers() {
            if s.draining {
                if self.disks_of(s.id).all(|d| empty(d.id)) {
                    out.push(Drained::Server(s.id));
                }
                continue;
            }
            out.extend(
                self.disks_of(s.id)
                    .filter(|d| d.draining && empty(d.id))
                    .map(|d| Drained::Disk(d.id)),
            );
        }
        out
    }

    /// The servers not failed whose silence (`silent_for`, measured by the
    /// caller's clock) reached `report_after` or the grace period, in
    /// server order. One silent for `grace` or longer is to be declared
    /// failed if it still holds legs (live ones, or failed ones waiting
    /// for it); one holding none is only reported: failing it would
    /// replace nothing, and a failed server stays failed.
    pub fn silent_servers(
        &self,
        silent_for: impl Fn(ServerId) -> Duration,
        report_after: Duration,
        grace: Duration,
    ) -> Vec<SilentServer> {
        let report_after = report_after.min(grace);
        self.servers()
            .filter(|s| s.state != ServerState::Failed)
            .filter_map(|s| {
                let age = silent_for(s.id);
                (age >= report_after).then(|| SilentServer {
                    id: s.id,
                    name: s.name.clone(),
                    silent_for: age,
                    fail: age >= grace && self.server_holds_legs(s.id),
                })
            })
            .collect()
    }
}
