//! Who runs a resync (head or storage agent), what the agents are told, and
//! how attaching, detaching and deleting a volume move its jobs.

mod common;

use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB, PoolSpec};

/// Creates volume "v": one 2-way mirrored disk.
fn one_mirrored_disk(c: &mut Cluster, secrets: &mut CountingSecrets) {
    c.create_volume(
        NewVolume {
            name: "v".into(),
            size_bytes: CHUNK - MIB,
            replicas: Some(2),
            ..Default::default()
        },
        secrets,
    )
    .unwrap();
}

/// One volume of one 2-way mirrored disk whose leg 0 failed and was
/// replaced; returns the job and its target's server.
fn degraded(c: &mut Cluster, secrets: &mut CountingSecrets) -> (JobId, ServerId) {
    one_mirrored_disk(c, secrets);
    let victim = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    c.fail_disk(victim).unwrap();
    let (jobs, _) = c.plan_repairs(secrets);
    assert_eq!(jobs.len(), 1);
    let target = c.job(jobs[0]).unwrap().target;
    (jobs[0], c.disk(target.disk).unwrap().server)
}

fn exported(c: &Cluster, server: ServerId, chunk: ChunkRef) -> bool {
    c.agent_view(server)
        .exports
        .iter()
        .any(|e| e.chunk == chunk)
}

#[test]
fn a_detached_volume_is_copied_by_the_target_server() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    let (job, target_server) = degraded(&mut c, &mut secrets);
    let target = c.job(job).unwrap().target;
    // Queued: nobody copies, and the new chunk is not exported.
    assert_eq!(c.job_executor(job), None);
    assert!(c.agent_view(target_server).copies.is_empty());
    assert!(!exported(&c, target_server, target));

    c.start_jobs(1);
    assert_eq!(c.job_executor(job), Some(Executor::Storage(target_server)));
    let view = c.agent_view(target_server);
    assert_eq!(view.copies.len(), 1);
    let copy = &view.copies[0];
    assert_eq!((copy.job, copy.target), (job, target));
    assert_eq!(Some(copy.source.chunk), c.job(job).unwrap().source);
    assert!(
        !exported(&c, target_server, target),
        "nobody may open a chunk being copied into"
    );
    // The source stays exported: the copier reads it.
    let source = copy.source.chunk;
    let source_server = c.disk(source.disk).unwrap().server;
    assert!(exported(&c, source_server, source));

    let generation = c.generation();
    let changes = c.job_progress(job, 1000).unwrap();
    assert!(changes.jobs.contains(&job), "progress is stored");
    assert_eq!(
        c.generation(),
        generation,
        "progress does not wake every agent's long-poll"
    );
    c.finish_job(job).unwrap();
    assert!(c.agent_view(target_server).copies.is_empty());
    assert!(exported(&c, target_server, target));
    c.check_invariants().unwrap();
    c.check_recovery_invariants(1).unwrap();
}

#[test]
fn attaching_hands_a_running_copy_to_the_head_through_the_queue() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    let (job, target_server) = degraded(&mut c, &mut secrets);
    let target = c.job(job).unwrap().target;
    c.start_jobs(1);
    c.job_progress(job, 5000).unwrap();

    let head = c.server_by_name("s3").unwrap().id;
    c.attach_volume("v", "s3").unwrap();
    let j = c.job(job).unwrap();
    assert_eq!(j.state, JobState::Queued, "a change of executor requeues");
    assert_eq!((j.bytes_done, j.source), (0, None));
    assert!(c.agent_view(target_server).copies.is_empty());
    assert!(!exported(&c, target_server, target));
    let leg = |c: &Cluster| {
        c.agent_view(head).volumes[0].mirrored_disks[0]
            .iter()
            .find(|l| l.chunk == target)
            .unwrap()
            .resync_job
    };
    assert_eq!(leg(&c), None, "a queued leg stays out of the mirror");

    c.start_jobs(1);
    assert_eq!(c.job_executor(job), Some(Executor::Head(head)));
    assert_eq!(leg(&c), Some(job));
    assert!(exported(&c, target_server, target));
    assert!(c.agent_view(target_server).copies.is_empty());

    // A graceful detach gives it back to the queue at once, but it waits
    // there while the head tears down (the head may still write the
    // target through its mirror, so no storage agent copies into it).
    c.release_volume("v").unwrap();
    assert_eq!(c.job(job).unwrap().state, JobState::Queued);
    c.start_jobs(1);
    assert_eq!(c.job(job).unwrap().state, JobState::Queued);
    assert_eq!(c.job_executor(job), None);
    assert!(c.agent_view(target_server).copies.is_empty());
    assert!(
        exported(&c, target_server, target),
        "the head may still have the new leg open while it tears down"
    );
    c.check_recovery_invariants(1).unwrap();

    // Once the head reports its devices gone, the storage agent copies it,
    // again via the queue.
    let head = c
        .volume_by_name("v")
        .unwrap()
        .attachment
        .as_ref()
        .unwrap()
        .head;
    c.head_reports_assembled(head, Some(&[]), &mut secrets)
        .unwrap();
    assert_eq!(c.job(job).unwrap().state, JobState::Queued);
    assert!(!exported(&c, target_server, target));
    c.start_jobs(1);
    assert_eq!(c.job_executor(job), Some(Executor::Storage(target_server)));
    c.check_recovery_invariants(1).unwrap();
}

#[test]
fn deleting_a_volume_ends_its_jobs() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    let (job, _) = degraded(&mut c, &mut secrets);
    c.start_jobs(1);
    c.delete_volume("v").unwrap();
    let j = c.job(job).unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(c.job_executor(job), None);
    // Nothing left to schedule, and the records still load.
    assert!(c.start_jobs(1).0.is_empty());
    Cluster::load(c.records()).unwrap();
    c.check_invariants().unwrap();
    c.check_recovery_invariants(1).unwrap();
}

/// A server still "holds" a failed leg until the leg is replaced: a silent
/// server whose legs all failed must still be declared failed after its
/// grace period, or its legs would wait for it forever.
#[test]
fn a_server_holds_its_failed_legs_until_they_are_replaced() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    one_mirrored_disk(&mut c, &mut secrets);
    let head = c.server_by_name("s3").unwrap().id;
    c.attach_volume("v", "s3").unwrap();
    let chunk = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0].chunk;
    let server = c.disk(chunk.disk).unwrap().server;
    assert_ne!(server, head, "fixture: the head holds no leg here");
    c.report_leg_failed(head, "v", 0, 0).unwrap();
    assert!(
        c.server_holds_legs(server),
        "failed, not replaced: still held"
    );
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert_eq!(jobs.len(), 1);
    assert!(
        !c.server_holds_legs(server),
        "replaced: its chunk is released"
    );
}

#[test]
fn legs_on_a_server_in_its_grace_period_wait() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    one_mirrored_disk(&mut c, &mut secrets);
    let head = c.server_by_name("s3").unwrap().id;
    c.attach_volume("v", "s3").unwrap();
    let legs = &c.volume_by_name("v").unwrap().mirrored_disks[0].legs;
    let victim = c.disk(legs[0].chunk.disk).unwrap().server;
    assert_ne!(victim, head, "fixture: the head holds no leg here");
    c.report_leg_failed(head, "v", 0, 0).unwrap();

    // Held: the failed leg is not replaced while its server may return.
    c.set_repair_hold([victim].into());
    assert!(c.plan_repairs(&mut secrets).0.is_empty());
    assert!(c.plan_repairs(&mut secrets).0.is_empty(), "still held");
    // Released (it proved alive, or was declared failed): replaced now.
    c.set_repair_hold(Default::default());
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert_eq!(jobs.len(), 1);
    c.check_recovery_invariants(1).unwrap();
}

#[test]
fn a_failed_disk_is_replaced_even_on_a_held_server() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    one_mirrored_disk(&mut c, &mut secrets);
    let disk = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    let server = c.disk(disk).unwrap().server;
    c.set_repair_hold([server].into());
    c.fail_disk(disk).unwrap();
    assert_eq!(
        c.plan_repairs(&mut secrets).0.len(),
        1,
        "a dead disk does not come back"
    );
}

/// A server the recovery loop failed for its silence serves again when its
/// agent speaks; an admin's verdict stands.
#[test]
fn a_silent_server_returns_to_service_but_an_admins_verdict_stands() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    one_mirrored_disk(&mut c, &mut secrets);
    let id = |c: &Cluster, n: &str| c.server_by_name(n).unwrap().id;
    let state = |c: &Cluster, n: &str| c.server_by_name(n).unwrap().state;

    c.fail_silent_server("s0").unwrap();
    assert_eq!(state(&c, "s0"), ServerState::Failed);
    c.plan_repairs(&mut secrets);
    let changes = c.server_returned(id(&c, "s0")).unwrap();
    assert!(!changes.servers.is_empty());
    assert_eq!(state(&c, "s0"), ServerState::Online);
    assert!(
        c.server_returned(id(&c, "s0")).unwrap().is_empty(),
        "idempotent"
    );
    // It takes new chunks again: 4 replicas need all 4 servers.
    c.create_volume(
        NewVolume {
            name: "wide".into(),
            size_bytes: CHUNK - MIB,
            replicas: Some(4),
            ..Default::default()
        },
        &mut secrets,
    )
    .unwrap();

    // An admin's verdict stands, also over an earlier silence verdict.
    c.fail_server("s1").unwrap();
    c.fail_silent_server("s2").unwrap();
    c.fail_server("s2").unwrap();
    for s in ["s1", "s2"] {
        assert!(c.server_returned(id(&c, s)).unwrap().is_empty());
        assert_eq!(state(&c, s), ServerState::Failed, "{s}");
    }
    c.check_invariants().unwrap();
    Cluster::load(c.records()).unwrap();
}

/// A leg that failed while it was still being synced holds an incomplete
/// copy: it is never brought back as healthy, only replaced, and the flag
/// survives a reload from the store.
#[test]
fn a_leg_that_failed_mid_sync_is_never_revived() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    let (job, target_server) = degraded(&mut c, &mut secrets);
    // The head: a server holding no leg of the volume.
    let holders: Vec<ServerId> = c.volume_by_name("v").unwrap().mirrored_disks[0]
        .legs
        .iter()
        .map(|l| c.disk(l.chunk.disk).unwrap().server)
        .collect();
    let head_name = ["s0", "s1", "s2", "s3"]
        .into_iter()
        .find(|n| !holders.contains(&c.server_by_name(n).unwrap().id))
        .unwrap();
    let head = c.server_by_name(head_name).unwrap().id;
    c.attach_volume("v", head_name).unwrap();
    c.start_jobs(1);
    let slot = c.job(job).unwrap().leg;
    // The head loses the new leg mid-rebuild: the job fails.
    c.report_leg_failed(head, "v", 0, slot).unwrap();
    assert_eq!(c.job(job).unwrap().state, JobState::Failed);
    let reloaded = Cluster::load(c.records()).unwrap();
    for c in [&c, &reloaded] {
        assert!(
            c.failed_legs_on(target_server).is_empty(),
            "an incomplete copy is no candidate for a return"
        );
    }
    let v = c.volume_by_name("v").unwrap().id;
    let addr = LegAddr {
        volume: v,
        mirrored_disk: 0,
        leg: slot,
    };
    assert!(c.leg_returned(addr).is_err());
    // It is replaced instead; the replacement starts clean.
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert_eq!(jobs.len(), 1);
    let leg = &c.volume_by_name("v").unwrap().mirrored_disks[0].legs[usize::from(slot)];
    assert!(!leg.never_synced);
    c.check_recovery_invariants(1).unwrap();
}
