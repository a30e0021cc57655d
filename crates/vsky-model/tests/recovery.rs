//! Replacement legs and resync scheduling through the public `Cluster` API.

use std::collections::BTreeSet;

mod common;

use common::pool;
use vsky_model::*;

fn volume(c: &mut Cluster, name: &str, mirrored: u64, replicas: u8, secrets: &mut CountingSecrets) {
    common::volume(c, name, mirrored, replicas, secrets);
}

fn check(c: &Cluster, k: u32) {
    c.check_invariants().unwrap();
    c.check_recovery_invariants(k).unwrap();
}

/// A failed disk's legs get new chunks on servers without another live leg
/// of their mirrored disk; the failed chunks are released; one job each.
#[test]
fn failed_disk_legs_are_replaced_elsewhere() {
    let mut c = pool(4, 2);
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 12, 2, &mut secrets);
    let victim = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    let on_victim = c.disk_usage(victim).legs;
    c.fail_disk(victim).unwrap();
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert_eq!(jobs.len() as u64, on_victim);
    assert!(
        c.plan_repairs(&mut secrets).0.is_empty(),
        "planning twice adds nothing"
    );
    for md in &c.volume_by_name("v").unwrap().mirrored_disks {
        let servers: BTreeSet<ServerId> = md
            .legs
            .iter()
            .map(|l| c.disk(l.chunk.disk).unwrap().server)
            .collect();
        assert_eq!(servers.len(), 2, "legs stay on distinct servers");
        assert!(md.legs.iter().all(|l| l.chunk.disk != victim));
    }
    assert_eq!(c.disk_usage(victim).releasing_chunks, on_victim);
    check(&c, 1);
}

/// With a limit of one resync per disk, no disk ever runs two; finishing
/// jobs frees disks for the next ones until everything is healthy.
#[test]
fn per_disk_limit_holds_until_all_healthy() {
    let mut c = pool(5, 2);
    let mut secrets = CountingSecrets::default();
    for i in 0..4 {
        volume(&mut c, &format!("v{i}"), 8, 2, &mut secrets);
    }
    c.fail_server("s0").unwrap();
    c.plan_repairs(&mut secrets);
    let total = c.jobs().count();
    let mut rounds = 0;
    while c.jobs().any(|j| j.is_active()) {
        rounds += 1;
        let (started, _) = c.start_jobs(1);
        check(&c, 1);
        assert!(
            !started.is_empty() || c.jobs().any(|j| j.state == JobState::Running),
            "no deadlock"
        );
        let running = common::running_jobs(&c);
        for id in running {
            c.job_progress(id, 1).unwrap();
            c.finish_job(id).unwrap();
        }
        check(&c, 1);
        assert!(rounds < 1000);
    }
    assert!(
        rounds > 1,
        "{total} jobs over 8 live disks cannot all run at once"
    );
    for v in c.volumes() {
        for md in &v.mirrored_disks {
            assert!(md.legs.iter().all(|l| l.state == LegState::Active));
        }
    }
}

/// Mirrored disks with the fewest healthy legs start first.
#[test]
fn fewest_healthy_legs_go_first() {
    let mut c = pool(6, 1);
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 1, 3, &mut secrets);
    volume(&mut c, "w", 1, 3, &mut secrets);
    // Fail two legs of v's mirrored disk and one of w's.
    c.attach_volume("v", "s0").unwrap();
    c.attach_volume("w", "s0").unwrap();
    let head = c.server_by_name("s0").unwrap().id;
    c.report_leg_failed(head, "v", 0, 0).unwrap();
    c.report_leg_failed(head, "v", 0, 1).unwrap();
    c.report_leg_failed(head, "w", 0, 0).unwrap();
    c.plan_repairs(&mut secrets);
    // Huge limit: everything starts; the order is what matters.
    let (started, _) = c.start_jobs(u32::MAX);
    let first = c.job(started[0]).unwrap();
    assert_eq!(
        c.volume(first.volume).unwrap().name,
        "v",
        "v has one healthy leg, w two"
    );
}

/// A failing target fails its job and the leg gets another replacement; a
/// failing source sends the job back to the queue to copy from elsewhere.
#[test]
fn second_failures_during_a_resync() {
    let mut c = pool(6, 1);
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 1, 3, &mut secrets);
    let legs: Vec<ChunkRef> = c.volume_by_name("v").unwrap().mirrored_disks[0]
        .legs
        .iter()
        .map(|l| l.chunk)
        .collect();
    c.fail_disk(legs[0].disk).unwrap();
    c.plan_repairs(&mut secrets);
    c.start_jobs(1);
    let job = c
        .jobs()
        .find(|j| j.state == JobState::Running)
        .unwrap()
        .clone();
    // The source dies: the job waits for another source (the third leg).
    c.fail_disk(job.source.unwrap().disk).unwrap();
    assert_eq!(c.job(job.id).unwrap().state, JobState::Queued);
    let (started, _) = c.start_jobs(1);
    assert_eq!(started, vec![job.id]);
    check(&c, 1);
    // The target dies: the job fails and a new target is planned.
    c.fail_disk(job.target.disk).unwrap();
    assert_eq!(c.job(job.id).unwrap().state, JobState::Failed);
    let (again, _) = c.plan_repairs(&mut secrets);
    assert_eq!(
        again.len(),
        2,
        "the failed target and the failed source both get replacements"
    );
    assert_eq!(c.lost_mirrored_disks(), 0);
    check(&c, 1);
    // Jobs survive a reload from records.
    let loaded = Cluster::load(c.records()).unwrap();
    assert_eq!(
        loaded.jobs().collect::<Vec<_>>(),
        c.jobs().collect::<Vec<_>>()
    );
    loaded.check_recovery_invariants(1).unwrap();
}

/// Replacement targets avoid disks already bound to a resync (rule 7):
/// when a disk dies in a pool with room, every resync gets its own target
/// disk, none of them a source, so with one resync per disk they all start
/// at once.
#[test]
fn replacements_avoid_busy_disks_and_start_together() {
    let mut c = pool(12, 2);
    let mut secrets = CountingSecrets::default();
    for i in 0..4 {
        volume(&mut c, &format!("v{i}"), 6, 2, &mut secrets);
    }
    let victim = c.volume_by_name("v0").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    c.fail_disk(victim).unwrap();
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert!(jobs.len() >= 2);
    let sources: BTreeSet<DiskId> = jobs
        .iter()
        .map(|id| {
            let job = c.job(*id).unwrap();
            let md = &c.volume(job.volume).unwrap().mirrored_disks[job.mirrored_disk as usize];
            md.legs
                .iter()
                .find(|l| l.state == LegState::Active)
                .unwrap()
                .chunk
                .disk
        })
        .collect();
    assert_eq!(
        sources.len(),
        jobs.len(),
        "partners spread: distinct sources"
    );
    let targets: BTreeSet<DiskId> = jobs
        .iter()
        .map(|id| c.job(*id).unwrap().target.disk)
        .collect();
    assert_eq!(targets.len(), jobs.len(), "one target disk per resync");
    assert!(targets.is_disjoint(&sources), "no target is a source");
    let (started, _) = c.start_jobs(1);
    assert_eq!(started.len(), jobs.len(), "all start in the first round");
    check(&c, 1);
}
