//! What a run is given: the scenario, the pool's shape and speeds
//! ([`SimConfig`]), and the seeded PRNG ([`Rng`]) every random choice draws
//! from.

use serde::Serialize;
use vsky_model::SecretSource;

// For the doc links only (`Scenario`'s docs are also the CLI's help, so
// they keep their plain form).
#[cfg(doc)]
use crate::{dirty_bytes, run_moves, run_return};

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
    /// The volumes' own I/O each live disk is asked for, bytes per second
    /// (0: none). A disk shares its bandwidth fairly between this stream
    /// and each resync on it (see `fluid::rates`): the foreground gets
    /// its demand, or an equal share if that is less, and the resyncs
    /// split the rest. [`run_foreground`](crate::run_foreground) reports
    /// what the resyncs take from it.
    pub foreground_bytes_per_second: f64,
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
            foreground_bytes_per_second: 0.0,
        }
    }
}
