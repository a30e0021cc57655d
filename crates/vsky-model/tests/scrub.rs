//! Scrubs: which mirrored disks are scrubbed, when, by whom and how (an
//! attached volume's head checks it, a storage agent compares a detached
//! one's legs), under the per-disk limit with the resyncs (which go first),
//! and what a verdict does.

mod common;

use vsky_model::*;
use vsky_testkit::pool::PoolSpec;

const HOUR: u64 = 3600;

/// A detached volume of `mirrored_disks` 2-way mirrored disks.
fn volume(c: &mut Cluster, name: &str, mirrored_disks: u64) -> VolumeId {
    common::volume(c, name, mirrored_disks, 2, &mut CountingSecrets::default())
}

fn disks_of(c: &Cluster, v: VolumeId, m: usize) -> Vec<DiskId> {
    c.volume(v).unwrap().mirrored_disks[m]
        .legs
        .iter()
        .map(|l| l.chunk.disk)
        .collect()
}

fn server_of(c: &Cluster, d: DiskId) -> ServerId {
    c.disk(d).unwrap().server
}

fn check(c: &Cluster, limit: u32) {
    c.check_invariants().unwrap();
    c.check_recovery_invariants(limit).unwrap();
}

#[test]
fn a_detached_mirrored_disk_is_scrubbed_by_its_first_legs_server_once_per_interval() {
    let mut c = PoolSpec::new(3, 1).build();
    let v = volume(&mut c, "v", 1);
    let generation = c.generation();
    let started = c.start_scrubs(1000, HOUR, 1);
    assert_eq!(started.len(), 1);
    let run = started[0].run;
    assert_eq!((started[0].volume, started[0].mirrored_disk), (v, 0));
    let disks = disks_of(&c, v, 0);
    assert_eq!(run.executor, server_of(&c, disks[0]));
    assert_eq!(run.started_unix_s, 1000);
    assert_ne!(c.generation(), generation, "the executor's long-poll wakes");
    assert_eq!(c.scrub(v, 0), Some(&run));
    assert_eq!(c.scrubs().count(), 1);

    // The executor is told, with every leg; its own is read in place.
    let view = c.agent_view(run.executor);
    assert_eq!(view.scrubs.len(), 1);
    let spec = &view.scrubs[0];
    assert_eq!(
        (spec.scrub, spec.volume.as_str(), spec.mirrored_disk),
        (run.id, "v", 0)
    );
    assert_eq!(spec.legs.len(), 2);
    assert!(spec.legs[0].local_disk_path.is_some());
    assert!(spec.legs[1].local_disk_path.is_none());
    // The other legs stay exported for it to read.
    let other = server_of(&c, disks[1]);
    assert!(c.agent_view(other).scrubs.is_empty());
    assert!(
        c.agent_view(other)
            .exports
            .iter()
            .any(|e| e.chunk == spec.legs[1].chunk)
    );
    // A scrub occupies the disks of all its legs.
    let busy = c.running_per_disk();
    assert!(disks.iter().all(|d| busy.get(d) == Some(&1)));
    check(&c, 1);

    // Running: not started twice.
    assert!(c.start_scrubs(1001, HOUR, 1).is_empty());
    let changes = c.finish_scrub(v, 0, run.id, 1010, &[]).unwrap();
    assert!(changes.volumes.contains(&v), "the scrub time is stored");
    assert_eq!(
        c.volume(v).unwrap().mirrored_disks[0].last_scrub_unix_s,
        Some(1010)
    );
    assert!(c.scrubs().next().is_none());
    assert!(c.agent_view(run.executor).scrubs.is_empty());
    // A second report of the same scrub is stale.
    assert_eq!(
        c.finish_scrub(v, 0, run.id, 1011, &[]).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    // Not due again before the interval is over.
    assert!(c.start_scrubs(1010 + HOUR - 1, HOUR, 1).is_empty());
    let again = c.start_scrubs(1010 + HOUR, HOUR, 1);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].run.id, run.id);
    check(&c, 1);

    // The time survives a reload; running scrubs do not (they are planned
    // again).
    let loaded = Cluster::load(c.records()).unwrap();
    assert_eq!(
        loaded.volume(v).unwrap().mirrored_disks[0].last_scrub_unix_s,
        Some(1010)
    );
    assert!(loaded.scrubs().next().is_none());
}

#[test]
fn an_attached_mirrored_disk_is_checked_by_its_head_under_the_same_limit() {
    let mut c = PoolSpec::new(4, 1).build();
    let a = volume(&mut c, "a", 1);
    c.attach_volume("a", "s3").unwrap();
    let head = c.server_by_name("s3").unwrap().id;
    let started = c.start_scrubs(0, HOUR, 1);
    assert_eq!(started.len(), 1);
    let run = started[0].run;
    assert_eq!((started[0].volume, run.executor), (a, head));
    assert_eq!(run.method, ScrubMethod::RaidCheck);
    // The head is told, with the method; it holds the mirror.
    let view = c.agent_view(head);
    assert_eq!(view.scrubs.len(), 1);
    assert_eq!(view.scrubs[0].method, ScrubMethod::RaidCheck);
    // md reads every leg: their disks are busy, like a resync's.
    let busy = c.running_per_disk();
    assert!(disks_of(&c, a, 0).iter().all(|d| busy.get(d) == Some(&1)));
    check(&c, 1);
    // The verdict ends it like any scrub.
    c.finish_scrub(a, 0, run.id, 10, &[]).unwrap();
    assert_eq!(
        c.volume(a).unwrap().mirrored_disks[0].last_scrub_unix_s,
        Some(10)
    );
    // Detaching ends a running check: the comparison that follows is a
    // new run, by a storage agent.
    let again = c.start_scrubs(10 + HOUR, HOUR, 1)[0].run;
    c.force_detach_volume("a", &mut CountingSecrets::default())
        .unwrap();
    assert!(c.scrub(a, 0).is_none());
    let compare = c.start_scrubs(10 + HOUR, HOUR, 1)[0].run;
    assert_ne!(compare.id, again.id);
    assert_eq!(compare.method, ScrubMethod::CompareLegs);
    check(&c, 1);
}

#[test]
fn degraded_and_rebuilding_mirrored_disks_are_not_scrubbed() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    let d = volume(&mut c, "d", 1);
    // Leg 1 fails with its disk.
    let victim = disks_of(&c, d, 0)[1];
    c.fail_disk(victim).unwrap();
    assert!(
        c.start_scrubs(0, HOUR, 8).is_empty(),
        "a degraded mirrored disk waits"
    );
    // Its repair runs: still not.
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert!(!jobs.is_empty());
    c.start_jobs(8);
    assert!(c.start_scrubs(1, HOUR, 8).is_empty());
    for job in jobs {
        c.finish_job(job).unwrap();
    }
    // Healthy again: due.
    assert!(c.start_scrubs(2, HOUR, 8).iter().any(|s| s.volume == d));
    check(&c, 8);
}

#[test]
fn no_scrub_is_given_to_a_failed_server() {
    let mut c = PoolSpec::new(4, 1).build();
    volume(&mut c, "a", 1);
    c.attach_volume("a", "s3").unwrap();
    c.fail_server("s3").unwrap();
    assert!(
        c.start_scrubs(0, HOUR, 8).is_empty(),
        "its head cannot check it"
    );
}

#[test]
fn a_scrub_ends_when_its_volume_is_attached_and_does_not_come_back() {
    let mut c = PoolSpec::new(3, 1).build();
    let v = volume(&mut c, "v", 1);
    let run = c.start_scrubs(0, HOUR, 1)[0].run;
    // Attached to the comparing server itself: same executor, but a head
    // may now write into the legs being compared.
    let executor = c.server(run.executor).unwrap().name.clone();
    c.attach_volume("v", &executor).unwrap();
    assert!(c.scrubs().next().is_none());
    assert!(c.agent_view(run.executor).scrubs.is_empty());
    assert_eq!(
        c.finish_scrub(v, 0, run.id, 5, &[]).unwrap_err().kind(),
        ErrorKind::Conflict,
        "a verdict the head may have written into is refused"
    );
    c.force_detach_volume("v", &mut CountingSecrets::default())
        .unwrap();
    assert!(c.scrub(v, 0).is_none(), "the old run stays over");
    let next = c.start_scrubs(6, HOUR, 1);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].run.id, run.id);
    // Deleting the volume ends it too.
    c.delete_volume("v").unwrap();
    assert!(c.scrubs().next().is_none());
    assert!(c.start_scrubs(7, HOUR, 1).is_empty());
    check(&c, 1);
}

#[test]
fn scrubs_share_the_per_disk_limit() {
    // Three disks: two 2-way mirrored disks share at least one.
    let mut c = PoolSpec::new(3, 1).build();
    volume(&mut c, "x", 1);
    volume(&mut c, "y", 1);
    assert_eq!(c.start_scrubs(0, HOUR, 1).len(), 1);
    check(&c, 1);
    let mut c2 = PoolSpec::new(3, 1).build();
    volume(&mut c2, "x", 1);
    volume(&mut c2, "y", 1);
    assert_eq!(c2.start_scrubs(0, HOUR, 2).len(), 2);
    check(&c2, 2);
}

#[test]
fn resyncs_go_first_and_end_the_scrubs_in_their_way() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    let x = volume(&mut c, "x", 1);
    let x_disks = disks_of(&c, x, 0);
    // A volume with a leg on the third disk.
    let third = c
        .disks()
        .map(|d| d.id)
        .find(|d| !x_disks.contains(d))
        .unwrap();
    let mut n = 0;
    while !c.volumes().any(|v| {
        v.id != x
            && v.mirrored_disks[0]
                .legs
                .iter()
                .any(|l| l.chunk.disk == third)
    }) {
        volume(&mut c, &format!("z{n}"), 1);
        n += 1;
    }
    let run = c
        .start_scrubs(0, HOUR, 1)
        .into_iter()
        .find(|s| s.volume == x)
        .expect("x is scrubbed first (lowest id)")
        .run;

    // The third disk fails: its legs are rebuilt from and onto x's disks
    // (the only ones left), where x's scrub runs.
    c.fail_disk(third).unwrap();
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert!(!jobs.is_empty());
    let generation = c.generation();
    let (started, _) = c.start_jobs(1);
    assert_eq!(started.len(), 1, "one resync fits on two disks at k=1");
    assert!(c.scrub(x, 0).is_none(), "the scrub gave way");
    assert!(c.agent_view(run.executor).scrubs.is_empty());
    assert_ne!(c.generation(), generation);
    check(&c, 1);
    // While resyncs run or wait on its disks, the scrub does not start.
    assert!(c.start_scrubs(1, HOUR, 1).is_empty());
    for _ in 0..jobs.len() {
        let running = common::running_jobs(&c);
        for job in running {
            c.finish_job(job).unwrap();
        }
        c.start_jobs(1);
        check(&c, 1);
    }
    assert!(c.jobs().all(|j| !j.is_active()));
    // Then it does, still due.
    assert!(c.start_scrubs(2, HOUR, 1).iter().any(|s| s.volume == x));
    check(&c, 1);
}

#[test]
fn unreadable_legs_are_failed_and_replaced_never_revived() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    let v = volume(&mut c, "v", 1);
    let run = c.start_scrubs(0, HOUR, 1)[0].run;
    // A slot the mirrored disk does not have: refused, nothing changes.
    let generation = c.generation();
    assert_eq!(
        c.finish_scrub(v, 0, run.id, 10, &[5]).unwrap_err().kind(),
        ErrorKind::BadInput
    );
    assert_eq!(c.generation(), generation);
    assert_eq!(c.scrub(v, 0), Some(&run));

    c.finish_scrub(v, 0, run.id, 10, &[1]).unwrap();
    let md = &c.volume(v).unwrap().mirrored_disks[0];
    assert_eq!(md.last_scrub_unix_s, Some(10));
    assert_eq!(md.legs[0].state, LegState::Active);
    assert_eq!(md.legs[1].state, LegState::Failed);
    let bad = md.legs[1].chunk;
    assert_eq!(
        c.leg_returned(LegAddr {
            volume: v,
            mirrored_disk: 0,
            leg: 1,
        })
        .unwrap_err()
        .kind(),
        ErrorKind::Conflict,
        "a leg that cannot be read is only replaced"
    );
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert_eq!(jobs.len(), 1);
    let job = c.job(jobs[0]).unwrap();
    assert_eq!((job.volume, job.leg, job.replaced), (v, 1, bad));
    check(&c, 1);
}

#[test]
fn never_scrubbed_then_oldest_first() {
    // Two disks: every scrub needs both, so one runs at a time.
    let mut c = PoolSpec::new(2, 1).build();
    let p = volume(&mut c, "p", 1);
    let q = volume(&mut c, "q", 1);
    let first = c.start_scrubs(0, 100, 1);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].volume, p, "never scrubbed, lowest id");
    c.finish_scrub(p, 0, first[0].run.id, 10, &[]).unwrap();
    let second = c.start_scrubs(10, 100, 1);
    assert_eq!(second[0].volume, q, "never scrubbed goes before scrubbed");
    c.finish_scrub(q, 0, second[0].run.id, 20, &[]).unwrap();
    assert!(c.start_scrubs(109, 100, 1).is_empty());
    // Both due: the one scrubbed longest ago first.
    let third = c.start_scrubs(500, 100, 1);
    assert_eq!(third[0].volume, p);
    check(&c, 1);
}

#[test]
fn a_failed_or_stuck_scrub_is_tried_again_later() {
    let mut c = PoolSpec::new(3, 1).build();
    let v = volume(&mut c, "v", 1);
    let run = c.start_scrubs(0, 7 * 24 * HOUR, 1)[0].run;
    let generation = c.generation();
    let changes = c.scrub_failed(v, 0, run.id, 30).unwrap();
    assert!(changes.is_empty(), "nothing to store");
    assert_ne!(c.generation(), generation, "the executor forgets it");
    assert!(c.agent_view(run.executor).scrubs.is_empty());
    assert_eq!(
        c.volume(v).unwrap().mirrored_disks[0].last_scrub_unix_s,
        None
    );
    assert!(c.start_scrubs(30 + 599, 7 * 24 * HOUR, 1).is_empty());
    let retry = c.start_scrubs(30 + 600, 7 * 24 * HOUR, 1);
    assert_eq!(retry.len(), 1);

    // A run whose executor never answers is given up after a day.
    let t = 30 + 600;
    assert!(
        c.start_scrubs(t + 24 * HOUR - 1, 7 * 24 * HOUR, 1)
            .is_empty()
    );
    assert!(c.scrub(v, 0).is_some());
    assert!(c.start_scrubs(t + 24 * HOUR, 7 * 24 * HOUR, 1).is_empty());
    assert!(c.scrub(v, 0).is_none());
    assert_eq!(
        c.start_scrubs(t + 24 * HOUR + 600, 7 * 24 * HOUR, 1).len(),
        1
    );
    check(&c, 1);
}
