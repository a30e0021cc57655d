//! Replacement legs and resync scheduling through the public `Cluster` API.

use std::collections::BTreeSet;

mod common;

use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB, PoolSpec};

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
    let mut c = PoolSpec::new(4, 2).build();
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
    let mut c = PoolSpec::new(5, 2).build();
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
    let mut c = PoolSpec::new(6, 1).build();
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

/// `servers` servers of one disk and a 3-way volume "v" of one mirrored
/// disk whose first leg's disk failed.
fn three_way_with_a_failed_leg(servers: usize, secrets: &mut CountingSecrets) -> Cluster {
    let mut c = PoolSpec::new(servers, 1).build();
    volume(&mut c, "v", 1, 3, secrets);
    let first = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0].chunk;
    c.fail_disk(first.disk).unwrap();
    c
}

/// A failing target fails its job and the leg gets another replacement; a
/// failing source sends the job back to the queue to copy from elsewhere.
#[test]
fn second_failures_during_a_resync() {
    let mut secrets = CountingSecrets::default();
    let mut c = three_way_with_a_failed_leg(6, &mut secrets);
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
    let mut c = PoolSpec::new(12, 2).build();
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

/// A copy whose source cannot be read starts again from another healthy
/// leg, onto the same target; with every healthy leg tried, from any of
/// them once more. The failed sources survive a reload.
#[test]
fn a_copy_whose_source_fails_starts_again_from_another_leg() {
    let mut secrets = CountingSecrets::default();
    let mut c = three_way_with_a_failed_leg(5, &mut secrets);
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert_eq!(jobs.len(), 1);
    let id = jobs[0];
    assert_eq!(
        c.copy_source_failed(id, "x").unwrap_err().kind(),
        ErrorKind::Conflict,
        "a queued job reads nothing yet"
    );
    c.start_jobs(1);
    let first = c.job(id).unwrap().source.expect("a source");
    let target = c.job(id).unwrap().target;
    let (changes, another) = c.copy_source_failed(id, "source unreachable").unwrap();
    assert!(another && changes.jobs.contains(&id));
    let job = c.job(id).unwrap();
    assert_eq!(
        (job.state, job.source, job.target),
        (JobState::Queued, None, target)
    );
    assert_eq!(job.failed_sources, vec![first]);
    check(&c, 1);
    c.start_jobs(1);
    let second = c.job(id).unwrap().source.expect("a source");
    assert_ne!(second, first, "the other healthy leg");
    // Both healthy legs failed a copy: either is tried again.
    let (_, another) = c.copy_source_failed(id, "source unreachable").unwrap();
    assert!(!another);
    let reloaded = Cluster::load(c.records()).unwrap();
    assert_eq!(
        reloaded.job(id).unwrap().failed_sources,
        vec![first, second]
    );
    c.start_jobs(1);
    assert!(c.job(id).unwrap().source.is_some(), "not stuck");
    c.finish_job(id).unwrap();
    assert_eq!(c.job(id).unwrap().error, None, "done clears the last error");
    check(&c, 1);
}

/// Two failed disks under one 3-way mirrored disk: a replacement must not
/// go to the server of the other failed leg, whose leg comes back if that
/// server's failure was only a pause (`leg_returned`), leaving two live
/// legs on one server. Only the second failed leg's server has a spare
/// disk, so that is the one place a careless planner finds for the first.
#[test]
fn a_replacement_avoids_the_server_of_another_failed_leg() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 1, 3, &mut secrets);
    let legs: Vec<DiskId> = c.volume_by_name("v").unwrap().mirrored_disks[0]
        .legs
        .iter()
        .map(|l| l.chunk.disk)
        .collect();
    let server_of = |c: &Cluster, d: DiskId| c.disk(d).unwrap().server;
    let spare_on = c.server(server_of(&c, legs[1])).unwrap().name.clone();
    c.add_disk(NewDisk {
        server: spare_on,
        path: "/dev/spare".into(),
        size_bytes: MIB + 16 * CHUNK,
        class: None,
    })
    .unwrap();
    c.fail_disk(legs[0]).unwrap();
    c.fail_disk(legs[1]).unwrap();
    c.plan_repairs(&mut secrets);
    let md = &c.volume_by_name("v").unwrap().mirrored_disks[0];
    let servers: BTreeSet<ServerId> = md
        .legs
        .iter()
        .map(|l| server_of(&c, l.chunk.disk))
        .collect();
    assert_eq!(servers.len(), 3, "{md:?}");
    c.check_invariants().unwrap();
}
