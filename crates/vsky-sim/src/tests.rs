//! Shared by the modules' tests: a small pool's [`SimConfig`], and the
//! checks that span every runner.

use crate::*;

/// The standard rates and timings on a small pool.
pub(crate) fn small(scenario: Scenario, seed: u64) -> SimConfig {
    SimConfig {
        disks_per_server: 4,
        racks: 3,
        chunk_bytes: 64 << 20,
        chunks_per_disk: 64,
        new_servers: 2,
        rebalance_moves: Some(16),
        ..SimConfig::standard(12, scenario, seed)
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
