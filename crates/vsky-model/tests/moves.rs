//! Moving healthy legs (drain and rebalance) through the public API.

use std::collections::BTreeSet;

mod common;

use vsky_model::*;
use vsky_testkit::pool::PoolSpec;

fn volume(c: &mut Cluster, name: &str, mirrored: u64, secrets: &mut CountingSecrets) {
    common::volume(c, name, mirrored, 2, secrets);
}

fn check(c: &Cluster) {
    c.check_invariants().unwrap();
    c.check_recovery_invariants(1).unwrap();
}

/// Runs the scheduler until no job is active, finishing every running job
/// at once; checks the invariants and that no mirrored disk ever has fewer
/// than `min_healthy` healthy legs.
fn run_jobs(c: &mut Cluster, min_healthy: usize) -> usize {
    let mut rounds = 0;
    while c.jobs().any(|j| j.is_active()) {
        rounds += 1;
        assert!(rounds < 1000, "jobs never end");
        c.start_jobs(1);
        check(c);
        let running = common::running_jobs(c);
        for id in running {
            c.finish_job(id).unwrap();
            check(c);
        }
        for v in c.volumes() {
            for md in &v.mirrored_disks {
                assert!(
                    md.healthy_legs() >= min_healthy,
                    "{} lost redundancy",
                    v.name
                );
            }
        }
    }
    rounds
}

fn servers_of(c: &Cluster, md: &MirroredDisk) -> BTreeSet<ServerId> {
    md.legs
        .iter()
        .map(|l| c.disk(l.chunk.disk).unwrap().server)
        .collect()
}

/// Draining a server moves every leg off it while each mirrored disk keeps
/// both healthy copies; the server ends empty and can be removed.
#[test]
fn server_drain_empties_it_without_losing_redundancy() {
    let mut c = PoolSpec::new(4, 2).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "a", 10, &mut secrets);
    volume(&mut c, "b", 6, &mut secrets);
    let s0 = c.server_by_name("s0").unwrap().id;
    let on_s0: u64 = c.disks_of(s0).map(|d| c.disk_usage(d.id).legs).sum();
    assert!(on_s0 > 0);
    c.drain_server("s0").unwrap();
    let (jobs, _) = c.plan_drains(&mut secrets);
    assert_eq!(jobs.len() as u64, on_s0, "one move per leg, all at once");
    assert!(
        c.plan_drains(&mut secrets).0.is_empty(),
        "a mirrored disk has one move at a time"
    );
    check(&c);
    // Mirrored disks with a move have an extra, syncing slot.
    let a = c.volume_by_name("a").unwrap();
    assert!(a.mirrored_disks.iter().any(|md| md.legs.len() == 3));
    run_jobs(&mut c, 2);
    for v in c.volumes() {
        for md in &v.mirrored_disks {
            assert_eq!(md.legs.len(), 2);
            assert!(!servers_of(&c, md).contains(&s0));
            assert_eq!(servers_of(&c, md).len(), 2);
        }
    }
    for d in c.disks_of(s0) {
        assert_eq!(c.drain_progress(d.id), DrainProgress::default());
    }
    let released: u64 = c
        .disks_of(s0)
        .map(|d| c.disk_usage(d.id).releasing_chunks)
        .sum();
    assert_eq!(released, on_s0, "moved-away chunks are wiped before reuse");
    c.remove_server("s0").unwrap();
    check(&c);
}

/// A draining disk takes no new chunks; stopping the drain lets it take
/// them again.
#[test]
fn draining_disk_gets_no_new_chunks() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    let d0 = c.disks().next().unwrap().id;
    c.drain_disk(d0).unwrap();
    assert!(c.is_draining(d0));
    volume(&mut c, "v", 4, &mut secrets);
    assert_eq!(c.disk_usage(d0).legs, 0);
    c.stop_drain_disk(d0).unwrap();
    volume(&mut c, "w", 4, &mut secrets);
    assert_eq!(c.disk_usage(d0).legs, 4);
    check(&c);
}

/// `servers` servers of one disk and a volume "v" of `mirrored` mirrored
/// disks, whose first leg's disk drains: the pool, its secrets, that disk
/// and the moves `plan_drains` planned off it.
fn draining_first_leg(
    servers: usize,
    mirrored: u64,
) -> (Cluster, CountingSecrets, DiskId, Vec<JobId>) {
    let mut c = PoolSpec::new(servers, 1).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", mirrored, &mut secrets);
    let from = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    c.drain_disk(from).unwrap();
    let (moves, _) = c.plan_drains(&mut secrets);
    (c, secrets, from, moves)
}

/// The moving leg fails during its move: the move carries on and becomes
/// its replacement; no second job is planned for that slot.
#[test]
fn moving_leg_failure_is_covered_by_its_move() {
    let (mut c, mut secrets, from, moves) = draining_first_leg(3, 1);
    assert_eq!(moves.len(), 1);
    c.fail_disk(from).unwrap();
    assert!(
        c.plan_repairs(&mut secrets).0.is_empty(),
        "the move is the repair"
    );
    check(&c);
    run_jobs(&mut c, 1);
    let md = &c.volume_by_name("v").unwrap().mirrored_disks[0];
    assert_eq!(md.legs.len(), 2);
    assert!(md.legs.iter().all(|l| l.state == LegState::Active));
    assert!(md.legs.iter().all(|l| l.chunk.disk != from));
    check(&c);
}

/// The target of a move fails: the extra slot goes away, the moving leg
/// stays, and the next pass plans the move again elsewhere.
#[test]
fn failed_move_target_is_abandoned_and_replanned() {
    let (mut c, mut secrets, from, moves) = draining_first_leg(4, 1);
    let target = c.job(moves[0]).unwrap().target.disk;
    c.start_jobs(1);
    c.fail_disk(target).unwrap();
    check(&c);
    let job = c.job(moves[0]).unwrap();
    assert_eq!(job.state, JobState::Failed);
    let md = &c.volume_by_name("v").unwrap().mirrored_disks[0];
    assert_eq!(md.legs.len(), 2, "the extra slot is gone");
    assert_eq!(md.healthy_legs(), 2);
    assert!(
        c.plan_repairs(&mut secrets).0.is_empty(),
        "nothing to repair"
    );
    let (again, _) = c.plan_drains(&mut secrets);
    assert_eq!(again.len(), 1);
    assert_ne!(c.job(again[0]).unwrap().target.disk, target);
    run_jobs(&mut c, 2);
    assert_eq!(c.drain_progress(from).legs_left, 0);
    check(&c);
}

/// A copy error reported for a move (`fail_job`) abandons it the same way.
#[test]
fn failed_move_copy_is_abandoned() {
    let (mut c, mut secrets, _, moves) = draining_first_leg(3, 2);
    c.start_jobs(1);
    let running = moves
        .iter()
        .copied()
        .find(|id| c.job(*id).unwrap().state == JobState::Running)
        .unwrap();
    c.fail_job(running, "read error").unwrap();
    check(&c);
    assert!(
        c.volumes()
            .all(|v| v.mirrored_disks.iter().all(|m| m.legs.len() <= 3))
    );
    assert!(c.plan_repairs(&mut secrets).0.is_empty());
}

/// Repairs go before moves: no move runs on a disk that a queued repair
/// could have used.
#[test]
fn repairs_start_before_moves() {
    let mut c = PoolSpec::new(6, 1).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 24, &mut secrets);
    c.drain_server("s0").unwrap();
    assert!(!c.plan_drains(&mut secrets).0.is_empty());
    c.fail_server("s1").unwrap();
    assert!(!c.plan_repairs(&mut secrets).0.is_empty());
    c.start_jobs(1);
    check(&c);
    // Jobs of mirrored disks with the fewest healthy legs are weighed
    // first, so a repair left queued was blocked by jobs at least as
    // urgent: its target, or every healthy source it could copy from, is
    // busy with such a job (a move counts when its mirrored disk lost a
    // leg too).
    let healthy = |j: &ResyncJob| {
        c.volume(j.volume).unwrap().mirrored_disks[j.mirrored_disk as usize].healthy_legs()
    };
    let busy_with = |most: usize| -> BTreeSet<DiskId> {
        c.jobs()
            .filter(|j| j.state == JobState::Running && healthy(j) <= most)
            .flat_map(|j| j.disks())
            .collect()
    };
    let mut queued_repairs = 0;
    for repair in c
        .jobs()
        .filter(|j| j.state == JobState::Queued && j.kind == JobKind::Repair)
    {
        queued_repairs += 1;
        let md = &c.volume(repair.volume).unwrap().mirrored_disks[repair.mirrored_disk as usize];
        let repair_busy = busy_with(md.healthy_legs());
        let sources_busy = md
            .legs
            .iter()
            .filter(|l| l.state == LegState::Active)
            .all(|l| repair_busy.contains(&l.chunk.disk));
        assert!(
            repair_busy.contains(&repair.target.disk) || sources_busy,
            "queued repair {} was not blocked by repairs",
            repair.id
        );
    }
    assert!(queued_repairs > 0, "the scenario must contend");
    run_jobs(&mut c, 1);
    check(&c);
}

/// Three servers of two disks, half full with a 30-mirrored-disk volume
/// "v", then two empty servers of two disks join.
fn grown_pool(secrets: &mut CountingSecrets) -> Cluster {
    let spec = PoolSpec::new(3, 2);
    let mut c = spec.build();
    volume(&mut c, "v", 30, secrets);
    spec.add_server(&mut c, 3, 2);
    spec.add_server(&mut c, 4, 2);
    c
}

/// After new servers join, rebalance moves legs from the full disks to the
/// new ones until no move narrows the gap; every move keeps legs on
/// distinct servers and redundancy never drops.
#[test]
fn rebalance_evens_out_after_servers_join() {
    let mut secrets = CountingSecrets::default();
    let mut c = grown_pool(&mut secrets);
    let before = c.fill_spread();
    assert!(before > 0.5, "new disks are empty: {before}");
    let (moves, _) = c.rebalance(usize::MAX, &mut secrets);
    assert!(!moves.is_empty());
    // Planning again while the moves run adds nothing: they count as done.
    assert!(c.rebalance(usize::MAX, &mut secrets).0.is_empty());
    run_jobs(&mut c, 2);
    let after = c.fill_spread();
    assert!(after <= 2.0 / 16.0 + 1e-9, "spread {before} -> {after}");
    for md in &c.volume_by_name("v").unwrap().mirrored_disks {
        assert_eq!(servers_of(&c, md).len(), 2);
    }
    assert!(
        c.rebalance(usize::MAX, &mut secrets).0.is_empty(),
        "balanced"
    );
    check(&c);
}

/// `max_moves` bounds one rebalance call.
#[test]
fn rebalance_is_bounded() {
    let spec = PoolSpec::new(2, 1);
    let mut c = spec.build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 8, &mut secrets);
    spec.add_server(&mut c, 2, 1);
    spec.add_server(&mut c, 3, 1);
    let (moves, _) = c.rebalance(3, &mut secrets);
    assert_eq!(moves.len(), 3);
    for m in &moves {
        assert_ne!(m.from, m.to);
    }
    check(&c);
}

/// The background policy keeps a window of moves in flight, topping it up
/// once half of it is done, and evens the pool out; it sizes the window to
/// the disks that can receive when none is given, and stays away while a
/// repair runs or the spread is under its threshold.
#[test]
fn auto_rebalance_keeps_a_window_in_flight() {
    let mut secrets = CountingSecrets::default();
    let mut c = grown_pool(&mut secrets);
    let policy = AutoRebalance {
        spread: 0.1,
        window: Some(4),
    };
    let (first, _) = c.auto_rebalance(policy, 1, &mut secrets);
    assert_eq!(first.len(), 4, "a full window");
    assert!(
        c.auto_rebalance(policy, 1, &mut secrets).0.is_empty(),
        "window full"
    );
    // Two of the four done: half the window is free, so it is topped up.
    c.start_jobs(1);
    let running: Vec<JobId> = c
        .jobs()
        .filter(|j| j.state == JobState::Running)
        .map(|j| j.id)
        .take(2)
        .collect();
    assert_eq!(running.len(), 2, "four new disks receive at once");
    c.finish_job(running[0]).unwrap();
    assert!(
        c.auto_rebalance(policy, 1, &mut secrets).0.is_empty(),
        "3 of 4 in flight: more than half"
    );
    c.finish_job(running[1]).unwrap();
    let (more, _) = c.auto_rebalance(policy, 1, &mut secrets);
    assert_eq!(more.len(), 2, "topped up to the window");
    check(&c);
    // To the end: each round finishes the running moves and tops up.
    let mut rounds = 0;
    loop {
        c.auto_rebalance(policy, 1, &mut secrets);
        if !c.jobs().any(|j| j.is_active()) {
            break;
        }
        rounds += 1;
        assert!(rounds < 1000, "the policy never ends");
        c.start_jobs(1);
        let running = common::running_jobs(&c);
        for id in running {
            c.finish_job(id).unwrap();
        }
        check(&c);
    }
    assert!(c.fill_spread() <= 0.1, "even within the threshold");

    // No window given: the receiving disks (the four new ones) times k.
    let mut c = grown_pool(&mut secrets);
    let sized = AutoRebalance {
        spread: 0.1,
        window: None,
    };
    assert_eq!(c.auto_rebalance(sized, 2, &mut secrets).0.len(), 8);

    // A repair goes first: nothing while one is queued or running.
    let spec = PoolSpec::new(3, 2);
    let mut c = spec.build();
    volume(&mut c, "v", 30, &mut secrets);
    spec.add_server(&mut c, 3, 2);
    let victim = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    c.fail_disk(victim).unwrap();
    assert!(
        c.auto_rebalance(policy, 1, &mut secrets).0.is_empty(),
        "degraded"
    );
    let (repairs, _) = c.plan_repairs(&mut secrets);
    assert!(!repairs.is_empty());
    assert!(
        c.auto_rebalance(policy, 1, &mut secrets).0.is_empty(),
        "repairing"
    );
    // Under the threshold: nothing either.
    let mut c = spec.build();
    volume(&mut c, "v", 30, &mut secrets);
    let quiet = AutoRebalance {
        spread: 0.99,
        window: None,
    };
    spec.add_server(&mut c, 3, 2);
    assert!(c.auto_rebalance(quiet, 1, &mut secrets).0.is_empty());
}

/// Moves survive a reload from the records (a manager restart) unchanged,
/// and a half-done drain finishes after it.
#[test]
fn moves_survive_reload() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 3, &mut secrets);
    let s0 = c.server_by_name("s0").unwrap().id;
    c.drain_server("s0").unwrap();
    c.plan_drains(&mut secrets);
    c.start_jobs(1);
    let mut c2 = Cluster::load(c.records()).unwrap();
    check(&c2);
    assert_eq!(
        c2.jobs().cloned().collect::<Vec<_>>(),
        c.jobs().cloned().collect::<Vec<_>>()
    );
    assert!(c2.server(s0).unwrap().draining);
    run_jobs(&mut c2, 2);
    assert!(c2.plan_drains(&mut secrets).0.is_empty());
    assert_eq!(
        c2.disks_of(s0)
            .map(|d| c2.drain_progress(d.id).legs_left)
            .sum::<u64>(),
        0
    );
}

/// Deleting a volume while its legs move ends the moves and releases
/// every chunk.
#[test]
fn delete_during_move_releases_everything() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 3, &mut secrets);
    c.drain_server("s0").unwrap();
    c.plan_drains(&mut secrets);
    c.start_jobs(1);
    c.delete_volume("v").unwrap();
    check(&c);
    assert!(c.jobs().all(|j| !j.is_active()));
    assert_eq!(c.disks().map(|d| c.disk_usage(d.id).legs).sum::<u64>(), 0);
}

/// A failed disk or server cannot be drained (its legs are being replaced).
#[test]
fn failed_disk_cannot_drain() {
    let mut c = PoolSpec::new(3, 1).build();
    let d0 = c.disks().next().unwrap().id;
    c.fail_disk(d0).unwrap();
    assert!(c.drain_disk(d0).is_err());
    c.fail_server("s1").unwrap();
    assert!(c.drain_server("s1").is_err());
}

/// A disk drained onto its own server's other disks: while the move runs
/// the new leg shares the moving leg's server, which the invariants allow
/// for the leg that leaves; afterwards the legs are on distinct servers.
#[test]
fn a_disk_drains_onto_its_own_servers_other_disks() {
    let mut c = PoolSpec::new(2, 2).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 4, &mut secrets);
    let s0 = c.server_by_name("s0").unwrap().id;
    let d0 = c.disks_of(s0).next().unwrap().id;
    let on_d0 = c.disk_usage(d0).legs;
    assert!(on_d0 > 0);
    c.drain_disk(d0).unwrap();
    let (moves, _) = c.plan_drains(&mut secrets);
    assert_eq!(moves.len() as u64, on_d0);
    check(&c);
    run_jobs(&mut c, 2);
    assert_eq!(c.drain_progress(d0).legs_left, 0);
    for md in &c.volume_by_name("v").unwrap().mirrored_disks {
        assert_eq!(servers_of(&c, md).len(), 2);
    }
    check(&c);
}

/// In a nearly full pool, a failure whose repairs find no room cancels the
/// queued moves (their chunks come back after the wipe) and no move is
/// planned until the repairs fit.
#[test]
fn repairs_take_the_room_of_queued_moves() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    // 16 chunks per disk, 3 disks: 20 legs leave 28 free.
    volume(&mut c, "v", 10, &mut secrets);
    volume(&mut c, "w", 12, &mut secrets);
    let free: u64 = c.disks().map(|d| c.disk_usage(d.id).free_chunks).sum();
    assert_eq!(free, 4);
    c.drain_server("s0").unwrap();
    let (moves, _) = c.plan_drains(&mut secrets);
    assert!(!moves.is_empty());
    // A leg fails on s1: its repair needs a chunk on s2 or s0 (draining).
    let victim = c.volume_by_name("v").unwrap().mirrored_disks[0]
        .legs
        .iter()
        .find(|l| c.disk(l.chunk.disk).unwrap().server != c.server_by_name("s0").unwrap().id)
        .unwrap()
        .chunk
        .disk;
    c.fail_disk(victim).unwrap();
    c.plan_repairs(&mut secrets);
    check(&c);
    assert!(
        c.jobs()
            .filter(|j| matches!(j.kind, JobKind::Move { .. }))
            .all(|j| j.state != JobState::Queued),
        "queued moves were cancelled"
    );
    assert!(
        c.plan_drains(&mut secrets).0.is_empty(),
        "no move while repairs lack room"
    );
}

/// The targets of a drain avoid every disk another of its moves must
/// read, not only the partners of the moves planned before. Two servers
/// hold a filler volume; then three empty ones take a volume of two
/// mirrored disks, so one of them (the one drained) holds a leg of each
/// and the other two one partner each, emptier than the filler's servers.
/// The first move's target must not be the second move's partner (idle
/// until that move is planned, and the least loaded disk): then every
/// disk takes part in one move, and the drain ends in one round instead
/// of two.
#[test]
fn drain_targets_avoid_every_moves_partner() {
    let spec = PoolSpec::new(5, 1)
        .disks_of(0, 0)
        .disks_of(1, 0)
        .disks_of(2, 0);
    let mut c = spec.build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "filler", 4, &mut secrets);
    for s in 0..3 {
        c.add_disk(spec.disk(s, 0)).unwrap();
    }
    volume(&mut c, "v", 2, &mut secrets);
    let filler = c.volume_by_name("filler").unwrap();
    let on_filler = |d: DiskId| {
        filler
            .mirrored_disks
            .iter()
            .any(|md| md.legs.iter().any(|l| l.chunk.disk == d))
    };
    let (drained, server) = c
        .disks()
        .find(|d| c.disk_usage(d.id).legs == 2 && !on_filler(d.id))
        .map(|d| (d.id, d.server))
        .unwrap();
    let name = c.server(server).unwrap().name.clone();
    c.drain_server(&name).unwrap();
    let (moves, _) = c.plan_drains(&mut secrets);
    assert_eq!(moves.len(), 2);
    let load = c.resyncs_bound_per_disk();
    assert_eq!(load.values().max(), Some(&1), "{load:?}");
    assert_eq!(run_jobs(&mut c, 2), 1);
    assert_eq!(c.drain_progress(drained).legs_left, 0);
}

/// Both legs of a mirrored disk drain: it gets one move at a time (the
/// other leg moves after it), never two extra slots.
#[test]
fn a_mirrored_disk_with_two_draining_legs_moves_one_at_a_time() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v", 6, &mut secrets);
    c.drain_server("s0").unwrap();
    c.drain_server("s1").unwrap();
    let (moves, _) = c.plan_drains(&mut secrets);
    assert!(!moves.is_empty());
    check(&c);
    let v = c.volume_by_name("v").unwrap();
    assert!(v.mirrored_disks.iter().all(|md| md.legs.len() <= 3));
    let mut ids: Vec<_> = moves
        .iter()
        .map(|id| c.job(*id).unwrap().mirrored_disk)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), moves.len(), "one move per mirrored disk");
    run_jobs(&mut c, 2);
    // The legs left on the other draining server move next.
    while !c.plan_drains(&mut secrets).0.is_empty() {
        run_jobs(&mut c, 2);
    }
    for s in ["s0", "s1"] {
        let id = c.server_by_name(s).unwrap().id;
        assert!(
            c.disks_of(id)
                .all(|d| c.drain_progress(d.id).legs_left == 0)
        );
    }
    check(&c);
}
