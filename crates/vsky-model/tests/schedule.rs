//! The resync scheduler (`cluster/schedule.rs`) through the public API:
//! rounds of starts, each finished before the next, as `vsky-sim` sees
//! them when every copy runs at disk speed.

use std::collections::HashMap;

mod common;

use vsky_model::*;
use vsky_testkit::pool::PoolSpec;

/// Starts a round, checks it, finishes it; returns the jobs started.
fn round(c: &mut Cluster, k: u32, link_cap: u32) -> usize {
    let (started, _) = c.start_jobs(k);
    c.check_recovery_invariants(k).unwrap();
    let mut sending: HashMap<ServerId, u32> = HashMap::new();
    let mut receiving: HashMap<ServerId, u32> = HashMap::new();
    for id in &started {
        let job = c.job(*id).unwrap();
        let source = job.source.expect("a started job has a source").disk;
        *sending.entry(c.disk(source).unwrap().server).or_default() += 1;
        *receiving
            .entry(c.disk(job.target.disk).unwrap().server)
            .or_default() += 1;
    }
    for (s, n) in sending.iter().chain(&receiving) {
        assert!(*n <= link_cap, "{s} carries {n} resyncs one way");
    }
    for id in &started {
        c.finish_job(*id).unwrap();
    }
    started.len()
}

/// After a server loss, every round keeps each server's link within what
/// it carries at full speed (6 of 10 disks), and the rebuild takes as many
/// rounds as its busiest disk has resyncs, or one more: the rounds keep
/// the disks with the most to go busy.
#[test]
fn rounds_keep_links_at_full_speed_and_the_busiest_disks_busy() {
    let mut c = PoolSpec::new(12, 10).chunks(24).racks(4).build();
    let mut secrets = CountingSecrets::default();
    for i in 0..60 {
        common::volume(&mut c, &format!("v{i}"), 10, 2, &mut secrets);
    }
    c.fail_server("s0").unwrap();
    let (planned, _) = c.plan_repairs(&mut secrets);
    assert!(planned.len() > 60, "{} repairs", planned.len());
    let busiest = c.resyncs_bound_per_disk().values().copied().max().unwrap();
    let mut rounds = 0;
    let mut done = 0;
    while c.jobs().any(|j| j.is_active()) {
        let n = round(&mut c, 1, 6);
        assert!(n > 0, "queued jobs but none started");
        done += n;
        rounds += 1;
    }
    assert_eq!(done, planned.len());
    assert!(
        rounds <= busiest + 1,
        "{rounds} rounds for a busiest disk of {busiest} resyncs"
    );
    assert_eq!(c.lost_mirrored_disks(), 0);
    c.check_invariants().unwrap();
}
