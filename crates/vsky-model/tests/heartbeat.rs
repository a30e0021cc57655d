//! Agents' heartbeats (`Cluster::apply_heartbeat`) and the recovery loop's
//! planning pass (`Cluster::recovery_pass`, `Cluster::silent_servers`).
//!
//! The property tests play a hostile network and confused agents: a
//! heartbeat may come from any server, name any job, scrub run, leg or
//! chunk, past or present, and any report ever sent may be delivered again
//! later. Whatever arrives, the stale is dropped, never refused (a refused
//! heartbeat would block every later one of that agent), only a job's
//! executor moves it on, only a volume's head fails its legs, a report
//! delivered twice changes nothing the second time, and the invariants
//! (`check_invariants`, `check_recovery_invariants`) hold after every step.
//!
//! One rule is deliberately not here: progress may go backwards. The
//! model takes the executor's latest count (a resync the head's dm-raid
//! restarted counts from zero again; the manager's rate estimate starts
//! over then), and only the job's executor can report it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use vsky_model::*;
use vsky_testkit::pool::PoolSpec;

const LIMIT: u32 = 1;

fn pass_config(limit: u32, now_unix_s: u64) -> PassConfig {
    PassConfig {
        per_disk_limit: limit,
        held: BTreeSet::new(),
        auto_rebalance: None,
        scrubs: Some(ScrubClock {
            now_unix_s,
            interval_s: 1,
        }),
    }
}

fn check(c: &Cluster, limit: u32) {
    c.check_invariants().unwrap();
    c.check_recovery_invariants(limit).unwrap();
}

fn id(c: &Cluster, server: &str) -> ServerId {
    c.server_by_name(server).unwrap().id
}

fn apply(
    c: &mut Cluster,
    server: ServerId,
    report: &AgentReport,
    secrets: &mut CountingSecrets,
) -> (HeartbeatOutcome, Changes) {
    c.apply_heartbeat(server, report, 1000, secrets).unwrap()
}

/// A detached volume "v" of one 2-way mirrored disk whose leg 0's disk
/// failed, with the replacement running: (job, the server copying it).
fn running_repair(c: &mut Cluster, secrets: &mut CountingSecrets) -> (JobId, ServerId) {
    common::volume(c, "v", 1, 2, secrets);
    let victim = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    c.fail_disk(victim).unwrap();
    let (pass, _) = c.recovery_pass(&pass_config(LIMIT, 0), secrets);
    assert_eq!(pass.planned, pass.started);
    let job = pass.started[0];
    let executor = c.job_executor(job).unwrap().server();
    (job, executor)
}

fn resync(job: JobId, status: ResyncStatus) -> AgentReport {
    AgentReport {
        resyncs: vec![ResyncUpdate { job, status }],
        assembled: Some(Vec::new()),
        ..AgentReport::default()
    }
}

#[test]
fn only_the_executor_moves_a_job_on() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    let (job, executor) = running_repair(&mut c, &mut secrets);
    let other = c.servers().map(|s| s.id).find(|s| *s != executor).unwrap();
    for status in [
        ResyncStatus::Copying { bytes_done: 7 },
        ResyncStatus::Done,
        ResyncStatus::Failed { error: "no".into() },
    ] {
        let before = c.job(job).unwrap().clone();
        let generation = c.generation();
        let (out, changes) = apply(&mut c, other, &resync(job, status), &mut secrets);
        assert!(changes.is_empty());
        assert_eq!(c.generation(), generation);
        assert_eq!(c.job(job).unwrap(), &before);
        assert_eq!(out.dropped, [DroppedReport::NotExecutor { job }]);
        assert!(out.events.is_empty() && out.progress.is_empty());
    }

    let (out, _) = apply(
        &mut c,
        executor,
        &resync(job, ResyncStatus::Copying { bytes_done: 7 }),
        &mut secrets,
    );
    assert_eq!(out.progress, [(job, 7)]);
    assert_eq!(c.job(job).unwrap().bytes_done, 7);
    let (out, changes) = apply(
        &mut c,
        executor,
        &resync(job, ResyncStatus::Done),
        &mut secrets,
    );
    assert_eq!(
        out.events,
        [HeartbeatEvent::ResyncDone {
            job,
            volume: "v".into(),
            kind: JobKind::Repair,
        }]
    );
    assert!(changes.jobs.contains(&job));
    assert_eq!(c.job(job).unwrap().state, JobState::Done);
    assert_eq!(out.generation, c.generation());
    check(&c, LIMIT);
}

#[test]
fn a_copy_source_failure_counts_only_for_the_current_source() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    let (job, executor) = running_repair(&mut c, &mut secrets);
    let source = c.job(job).unwrap().source.unwrap();
    let earlier = ChunkRef {
        disk: source.disk,
        index: source.index + 1,
    };
    let failed = |source| ResyncStatus::SourceFailed {
        source,
        error: "unreadable".into(),
    };
    let (out, changes) = apply(
        &mut c,
        executor,
        &resync(job, failed(earlier)),
        &mut secrets,
    );
    assert_eq!(out.dropped, [DroppedReport::StaleCopySource { job }]);
    assert!(changes.is_empty());
    assert_eq!(c.job(job).unwrap().state, JobState::Running);

    let (out, _) = apply(&mut c, executor, &resync(job, failed(source)), &mut secrets);
    assert!(matches!(
        out.events[..],
        [HeartbeatEvent::ResyncSourceFailed { source: s, another_source: false, .. }] if s == source
    ));
    assert_eq!(c.job(job).unwrap().state, JobState::Queued);
    check(&c, LIMIT);
}

#[test]
fn only_the_head_fails_a_leg_and_only_while_its_slot_holds_the_reported_chunk() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    c.attach_volume("v", "s3").unwrap();
    let leg = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[1].chunk;
    let holder = c.disk(leg.disk).unwrap().server;
    let s3 = id(&c, "s3");
    let failure = |chunk| AgentReport {
        failed_legs: vec![LegFailure {
            volume: "v".into(),
            mirrored_disk: 0,
            leg: 1,
            chunk,
        }],
        assembled: Some(vec!["v".into()]),
        ..AgentReport::default()
    };
    let replaced = ChunkRef {
        disk: leg.disk,
        index: leg.index + 1,
    };

    let (out, changes) = apply(&mut c, s3, &failure(Some(replaced)), &mut secrets);
    assert_eq!(
        out.dropped,
        [DroppedReport::FailureOfReplacedChunk { volume: "v".into() }]
    );
    assert!(changes.is_empty());
    let not_head = c.servers().map(|s| s.id).find(|s| *s != s3).unwrap();
    let (out, changes) = apply(&mut c, not_head, &failure(Some(leg)), &mut secrets);
    assert!(matches!(
        out.dropped[..],
        [DroppedReport::StaleFailure { .. }]
    ));
    assert!(changes.is_empty());

    let (out, changes) = apply(&mut c, s3, &failure(Some(leg)), &mut secrets);
    assert_eq!(
        out.events,
        [HeartbeatEvent::LegFailed {
            volume: "v".into(),
            mirrored_disk: 0,
            leg: 1,
        }]
    );
    assert_eq!(out.suspects, [holder]);
    assert!(!changes.volumes.is_empty());
    // Again: the leg failed already; nothing new to tell.
    let (out, changes) = apply(&mut c, s3, &failure(None), &mut secrets);
    assert!(out.events.is_empty() && out.suspects.is_empty() && changes.is_empty());
    check(&c, LIMIT);
}

#[test]
fn a_server_wipes_only_its_own_chunks_and_a_quiet_heartbeat_changes_nothing() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    c.delete_volume("v").unwrap();
    let (disk, index, release) = c
        .disks()
        .find_map(|d| {
            let (&i, &r) = d.releasing.iter().next()?;
            Some((d.id, i, r))
        })
        .unwrap();
    let owner = c.disk(disk).unwrap().server;
    let stranger = c.servers().map(|s| s.id).find(|s| *s != owner).unwrap();
    let wipe = AgentReport {
        wiped: vec![WipedChunk {
            chunk: ChunkRef { disk, index },
            release,
        }],
        assembled: Some(Vec::new()),
        ..AgentReport::default()
    };
    assert!(!c.heartbeat_is_quiet(stranger, &wipe));
    let (out, changes) = apply(&mut c, stranger, &wipe, &mut secrets);
    assert_eq!((out.freed, changes.is_empty()), (0, true));
    let (out, changes) = apply(&mut c, owner, &wipe, &mut secrets);
    assert_eq!(out.freed, 1);
    assert!(changes.disks.contains(&disk));

    let quiet = AgentReport {
        assembled: Some(Vec::new()),
        ..AgentReport::default()
    };
    assert!(c.heartbeat_is_quiet(owner, &quiet));
    let generation = c.generation();
    let (out, changes) = apply(&mut c, owner, &quiet, &mut secrets);
    assert!(
        changes.is_empty()
            && out
                == HeartbeatOutcome {
                    generation,
                    ..Default::default()
                }
    );
}

#[test]
fn only_the_runs_executor_ends_a_scrub() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    let (pass, _) = c.recovery_pass(&pass_config(LIMIT, 1000), &mut secrets);
    let started = pass.scrubs[0];
    let run = started.run;
    let verdict = |scrub| AgentReport {
        scrubs: vec![ScrubVerdict {
            scrub,
            volume: "v".into(),
            mirrored_disk: 0,
            result: ScrubResult::Read {
                mismatched_sectors: 3,
                unreadable_legs: vec![1],
            },
        }],
        assembled: Some(Vec::new()),
        ..AgentReport::default()
    };
    let other = c
        .servers()
        .map(|s| s.id)
        .find(|s| *s != run.executor)
        .unwrap();
    for (server, scrub) in [(other, run.id), (run.executor, run.id + 1)] {
        let (out, changes) = apply(&mut c, server, &verdict(scrub), &mut secrets);
        assert!(matches!(
            out.dropped[..],
            [DroppedReport::StaleScrub { .. }]
        ));
        assert!(changes.is_empty() && out.scrubs_finished.is_empty());
        assert_eq!(c.scrub(started.volume, 0), Some(&run));
    }
    let (out, _) = apply(&mut c, run.executor, &verdict(run.id), &mut secrets);
    assert_eq!(
        out.scrubs_finished,
        [FinishedScrub {
            volume: "v".into(),
            mirrored_disk: 0,
            mismatched_sectors: 3,
        }]
    );
    assert!(matches!(
        &out.events[..],
        [HeartbeatEvent::ScrubUnreadable { legs, .. }] if legs.len() == 1 && legs[0].0 == 1
    ));
    assert_eq!(c.scrub(started.volume, 0), None);
    let md = &c.volume_by_name("v").unwrap().mirrored_disks[0];
    assert_eq!(md.legs[1].state, LegState::Failed);
    check(&c, LIMIT);
}

/// Storage agents report their comparison of a frozen layer's legs under
/// the layer's own name (a layer is no volume a user names): the verdict
/// ends the run, as a volume's does.
#[test]
fn a_frozen_layers_scrub_ends_with_its_executors_verdict() {
    let mut c = PoolSpec::new(3, 1)
        .chunk_bytes(256 << 20)
        .chunks(16)
        .build();
    let mut secrets = CountingSecrets::default();
    common::thin(&mut c, "v", 64 << 20, &mut secrets);
    c.snapshot_volume("v", "snap", 1, &mut secrets).unwrap();
    let layer = match &c.volume_by_name("snap").unwrap().role {
        VolumeRole::Snapshot { layer, .. } => *layer,
        other => panic!("a snapshot's role is {other:?}"),
    };
    let (pass, _) = c.recovery_pass(&pass_config(LIMIT, 1000), &mut secrets);
    let started = *pass
        .scrubs
        .iter()
        .find(|s| s.volume == layer)
        .expect("the frozen layer's mirrored disk is scrubbed");
    assert_eq!(started.run.method, ScrubMethod::CompareLegs);
    let name = c.volume(layer).unwrap().name.clone();
    let verdict = AgentReport {
        scrubs: vec![ScrubVerdict {
            scrub: started.run.id,
            volume: name.clone(),
            mirrored_disk: 0,
            result: ScrubResult::Read {
                mismatched_sectors: 0,
                unreadable_legs: vec![],
            },
        }],
        assembled: Some(Vec::new()),
        ..AgentReport::default()
    };
    let (out, _) = apply(&mut c, started.run.executor, &verdict, &mut secrets);
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    assert_eq!(
        out.scrubs_finished,
        [FinishedScrub {
            volume: name,
            mirrored_disk: 0,
            mismatched_sectors: 0,
        }]
    );
    assert_eq!(c.scrub(layer, 0), None);
    assert_eq!(
        c.volume(layer).unwrap().mirrored_disks[0].last_scrub_unix_s,
        Some(1000)
    );
    check(&c, LIMIT);
}

#[test]
fn a_release_ends_once_the_head_no_longer_lists_the_volume() {
    let mut c = PoolSpec::new(3, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    c.attach_volume("v", "s0").unwrap();
    c.release_volume("v").unwrap();
    let s0 = id(&c, "s0");
    let still = AgentReport {
        assembled: Some(vec!["v".into()]),
        ..AgentReport::default()
    };
    assert!(c.heartbeat_is_quiet(s0, &still));
    let gone = AgentReport {
        assembled: Some(Vec::new()),
        ..AgentReport::default()
    };
    assert!(!c.heartbeat_is_quiet(s0, &gone));
    let (out, _) = apply(&mut c, s0, &gone, &mut secrets);
    assert_eq!(
        out.events,
        [HeartbeatEvent::Released { volume: "v".into() }]
    );
    assert!(c.volume_by_name("v").unwrap().attachment.is_none());
}

#[test]
fn a_silent_server_is_failed_after_its_grace_only_if_it_holds_legs() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    let holds = |c: &Cluster, s: &Server| c.server_holds_legs(s.id);
    let with_legs = c.servers().find(|s| holds(&c, s)).unwrap().id;
    let without = c.servers().find(|s| !holds(&c, s)).unwrap().id;
    let (after, grace) = (Duration::from_secs(15), Duration::from_secs(60));
    let ages = |age: u64| {
        move |s: ServerId| {
            if s == with_legs || s == without {
                Duration::from_secs(age)
            } else {
                Duration::ZERO
            }
        }
    };
    assert!(c.silent_servers(ages(14), after, grace).is_empty());
    let silent = c.silent_servers(ages(15), after, grace);
    assert_eq!(silent.len(), 2);
    assert!(silent.iter().all(|s| !s.fail));
    let silent = c.silent_servers(ages(60), after, grace);
    let fail: Vec<ServerId> = silent.iter().filter(|s| s.fail).map(|s| s.id).collect();
    assert_eq!(fail, [with_legs]);
    // A grace shorter than the reporting delay reports at the grace.
    let silent = c.silent_servers(ages(5), after, Duration::from_secs(5));
    assert_eq!(silent.len(), 2);

    let name = c.server(with_legs).unwrap().name.clone();
    c.fail_silent_server(&name).unwrap();
    let silent = c.silent_servers(ages(60), after, grace);
    assert_eq!(silent.iter().map(|s| s.id).collect::<Vec<_>>(), [without]);
}

#[test]
fn a_pass_holds_the_legs_of_a_server_in_its_grace_period_and_says_when_a_drain_ends() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    let leg = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0].chunk;
    let holder = c.disk(leg.disk).unwrap().server;
    // The head: a server holding no leg of "v".
    let head = c.servers().find(|s| !c.server_holds_legs(s.id)).unwrap();
    let (head, head_name) = (head.id, head.name.clone());
    c.attach_volume("v", &head_name).unwrap();
    c.report_leg_failed(head, "v", 0, 0).unwrap();
    let mut config = pass_config(LIMIT, 0);
    config.scrubs = None;
    config.held = BTreeSet::from([holder]);
    let (pass, _) = c.recovery_pass(&config, &mut secrets);
    assert!(pass.planned.is_empty(), "held for its grace period");
    assert_eq!(c.repair_hold(), &BTreeSet::from([holder]));
    config.held.clear();
    let (pass, _) = c.recovery_pass(&config, &mut secrets);
    assert_eq!(pass.planned.len(), 1);
    assert_eq!(pass.started, pass.planned);
    check(&c, LIMIT);

    // Drain the (now empty of legs) disk that failed: it is listed drained.
    let empty = c
        .disks()
        .find(|d| c.disk_usage(d.id).legs == 0 && d.state == DiskState::Online)
        .unwrap()
        .id;
    c.drain_disk(empty).unwrap();
    let (pass, _) = c.recovery_pass(&config, &mut secrets);
    assert!(pass.drained.contains(&Drained::Disk(empty)));
}

// ---- properties ---------------------------------------------------------

/// One thing a report may say, with indexes resolved against the cluster
/// when it is sent (any job, leg, run or chunk, current or not).
#[derive(Clone, Debug)]
enum Item {
    Resync {
        job: usize,
        status: u8,
        bytes: u64,
        right_source: bool,
    },
    Failure {
        volume: usize,
        m: u32,
        leg: u8,
        chunk: u8,
    },
    Scrub {
        run: usize,
        right_id: bool,
        failed: bool,
        unreadable: Vec<u8>,
    },
    Wipe {
        disk: usize,
        release: u8,
    },
}

#[derive(Clone, Debug)]
enum Op {
    FailDisk(usize),
    Attach {
        volume: usize,
        server: usize,
    },
    Release {
        volume: usize,
    },
    Pass,
    /// A heartbeat from `server` or, with `insider`, from whoever may
    /// speak for the first item (the job's executor, the volume's head,
    /// the run's executor), so that reports are also accepted.
    Heartbeat {
        server: usize,
        insider: bool,
        items: Vec<Item>,
        assembled: Option<Vec<usize>>,
    },
    /// A report sent before, delivered again.
    Replay(usize),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (any::<usize>(), 0u8..4, 0u64..(8 << 20), any::<bool>()).prop_map(
            |(job, status, bytes, right_source)| Item::Resync {
                job,
                status,
                bytes,
                right_source
            }
        ),
        (any::<usize>(), 0u32..3, 0u8..4, 0u8..3).prop_map(|(volume, m, leg, chunk)| {
            Item::Failure {
                volume,
                m,
                leg,
                chunk,
            }
        }),
        (
            any::<usize>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(0u8..3, 0..2)
        )
            .prop_map(|(run, right_id, failed, unreadable)| Item::Scrub {
                run,
                right_id,
                failed,
                unreadable
            }),
        (any::<usize>(), 0u8..3).prop_map(|(disk, release)| Item::Wipe { disk, release }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => any::<usize>().prop_map(Op::FailDisk),
        2 => (any::<usize>(), 0usize..6).prop_map(|(volume, server)| Op::Attach { volume, server }),
        1 => any::<usize>().prop_map(|volume| Op::Release { volume }),
        3 => Just(Op::Pass),
        8 => (
            0usize..6,
            any::<bool>(),
            proptest::collection::vec(item(), 0..4),
            proptest::option::of(proptest::collection::vec(any::<usize>(), 0..3)),
        )
            .prop_map(|(server, insider, items, assembled)| Op::Heartbeat {
                server,
                insider,
                items,
                assembled
            }),
        2 => any::<usize>().prop_map(Op::Replay),
    ]
}

fn pick<T: Clone>(list: &[T], i: usize) -> Option<T> {
    (!list.is_empty()).then(|| list[i % list.len()].clone())
}

/// Resolves a heartbeat against the cluster as it is now.
fn build_report(
    c: &Cluster,
    server: usize,
    insider: bool,
    items: &[Item],
    assembled: &Option<Vec<usize>>,
) -> (ServerId, AgentReport) {
    let servers: Vec<ServerId> = c.servers().map(|s| s.id).collect();
    let mut from = servers[server % servers.len()];
    let jobs: Vec<JobId> = c.jobs().map(|j| j.id).collect();
    let volumes: Vec<String> = c.volumes().map(|v| v.name.clone()).collect();
    let runs: Vec<(VolumeId, u32, ScrubRun)> = c.scrubs().map(|(v, m, r)| (v, m, *r)).collect();
    let disks: Vec<DiskId> = c.disks().map(|d| d.id).collect();
    let mut report = AgentReport {
        assembled: assembled
            .as_ref()
            .map(|list| list.iter().filter_map(|i| pick(&volumes, *i)).collect()),
        ..AgentReport::default()
    };
    // The sizes served: the volume's, or half of it (a grow not applied).
    for i in assembled.iter().flatten() {
        if let Some(name) = pick(&volumes, *i) {
            let size = c.volume_by_name(&name).unwrap().size_bytes;
            report
                .served
                .push((name, if i % 2 == 0 { size } else { size / 2 }));
        }
    }
    for (n, it) in items.iter().enumerate() {
        let speaker = match it {
            Item::Resync {
                job,
                status,
                bytes,
                right_source,
            } => {
                let Some(job) = pick(&jobs, *job) else {
                    continue;
                };
                let j = c.job(job).unwrap();
                let status = match status {
                    0 => ResyncStatus::Copying { bytes_done: *bytes },
                    1 => ResyncStatus::Done,
                    2 => ResyncStatus::Failed {
                        error: "copy failed".into(),
                    },
                    _ => ResyncStatus::SourceFailed {
                        source: if *right_source {
                            j.source.unwrap_or(j.replaced)
                        } else {
                            j.replaced
                        },
                        error: "source unreadable".into(),
                    },
                };
                report.resyncs.push(ResyncUpdate { job, status });
                c.job_executor(job).map(|e| e.server())
            }
            Item::Failure {
                volume,
                m,
                leg,
                chunk,
            } => {
                let Some(name) = pick(&volumes, *volume) else {
                    continue;
                };
                let v = c.volume_by_name(&name).unwrap();
                let slot = v
                    .mirrored_disks
                    .get(*m as usize)
                    .and_then(|md| md.legs.get(usize::from(*leg)))
                    .map(|l| l.chunk);
                let chunk = match (chunk, slot) {
                    (0, _) | (_, None) => None,
                    (1, slot) => slot,
                    (_, Some(s)) => Some(ChunkRef {
                        disk: s.disk,
                        index: s.index + 1,
                    }),
                };
                report.failed_legs.push(LegFailure {
                    volume: name,
                    mirrored_disk: *m,
                    leg: *leg,
                    chunk,
                });
                v.attachment.as_ref().map(|a| a.head)
            }
            Item::Scrub {
                run,
                right_id,
                failed,
                unreadable,
            } => {
                let Some((volume, m, run)) = pick(&runs, *run) else {
                    continue;
                };
                report.scrubs.push(ScrubVerdict {
                    scrub: if *right_id { run.id } else { run.id + 1 },
                    volume: c.volume_label(volume),
                    mirrored_disk: m,
                    result: if *failed {
                        ScrubResult::NotDone {
                            error: "a leg is unreachable".into(),
                        }
                    } else {
                        ScrubResult::Read {
                            mismatched_sectors: 0,
                            unreadable_legs: unreadable.clone(),
                        }
                    },
                });
                Some(run.executor)
            }
            Item::Wipe { disk, release } => {
                let Some(disk) = pick(&disks, *disk) else {
                    continue;
                };
                let d = c.disk(disk).unwrap();
                let Some((&index, &current)) = d.releasing.iter().next() else {
                    continue;
                };
                let release = match release {
                    0 => current,
                    1 => current + 1,
                    _ => UNNUMBERED_RELEASE,
                };
                report.wiped.push(WipedChunk {
                    chunk: ChunkRef { disk, index },
                    release,
                });
                Some(d.server)
            }
        };
        if insider
            && n == 0
            && let Some(s) = speaker
        {
            from = s;
        }
    }
    (from, report)
}

/// What each job, leg and scrub run looked like, to say who could speak.
struct Before {
    executors: Vec<(JobId, Option<Executor>)>,
    heads: Vec<(String, Option<ServerId>)>,
    runs: Vec<(String, u32, ScrubRun)>,
    /// Whether the speaker had attachments being released.
    releasing: bool,
    /// Each volume's served size and whether it was attached (not
    /// releasing) to the speaker.
    served: Vec<(String, Option<u64>, bool)>,
    records: String,
    generation: u64,
}

fn before(c: &Cluster, from: ServerId) -> Before {
    Before {
        releasing: c.releasing_on(from).next().is_some(),
        served: c
            .volumes()
            .map(|v| {
                let a = v.attachment.as_ref();
                (
                    v.name.clone(),
                    a.and_then(|a| a.served_bytes),
                    a.is_some_and(|a| a.head == from && !a.is_releasing()),
                )
            })
            .collect(),
        executors: c.jobs().map(|j| (j.id, c.job_executor(j.id))).collect(),
        heads: c
            .volumes()
            .map(|v| (v.name.clone(), v.attachment.as_ref().map(|a| a.head)))
            .collect(),
        runs: c
            .scrubs()
            .map(|(v, m, r)| (c.volume_label(v), m, *r))
            .collect(),
        records: format!("{:?}", c.records()),
        generation: c.generation(),
    }
}

/// Checks one applied heartbeat against the rules.
fn check_heartbeat(
    c: &Cluster,
    b: &Before,
    from: ServerId,
    report: &AgentReport,
    out: &HeartbeatOutcome,
) -> Result<(), TestCaseError> {
    let executes = |job: JobId| {
        b.executors
            .iter()
            .any(|(j, e)| *j == job && e.map(|e| e.server()) == Some(from))
    };
    for e in &out.events {
        if let Some(job) = e.job() {
            prop_assert!(executes(job), "{job} moved on by {from}, not its executor");
        }
        if let HeartbeatEvent::GrowApplied { volume, .. } = e {
            prop_assert!(
                b.served.iter().any(|(v, _, head)| v == volume && *head),
                "a grow of {volume} applied by {from}, not its head"
            );
        }
        if let HeartbeatEvent::LegFailed { volume, .. } = e {
            prop_assert!(
                b.heads.iter().any(|(v, h)| v == volume && *h == Some(from)),
                "a leg of {volume} failed by {from}, not its head"
            );
        }
    }
    for (job, _) in &out.progress {
        prop_assert!(executes(*job), "progress of {job} from {from}");
        let j = c.job(*job).unwrap();
        prop_assert!(j.bytes_done <= j.bytes_total);
    }
    for s in &out.scrubs_finished {
        prop_assert!(
            b.runs
                .iter()
                .any(|(v, m, r)| *v == s.volume && *m == s.mirrored_disk && r.executor == from),
            "a scrub of {} ended by {from}, not its executor",
            s.volume
        );
    }
    // Only the head's report sets a volume's served size, to what it said.
    for (name, before, head) in &b.served {
        let Some(a) = c
            .volume_by_name(name)
            .ok()
            .and_then(|v| v.attachment.clone())
        else {
            continue;
        };
        let said = report
            .served
            .iter()
            .rev()
            .find(|(v, _)| v == name)
            .map(|(_, s)| *s);
        match said {
            Some(size) if *head => prop_assert_eq!(a.served_bytes, Some(size)),
            _ => prop_assert_eq!(
                a.served_bytes,
                *before,
                "{} served changed by {}",
                name,
                from
            ),
        }
    }
    // A report that names only jobs others execute, and nothing else,
    // changes nothing at all.
    let only_foreign_resyncs = report.wiped.is_empty()
        && report
            .served
            .iter()
            .all(|(v, _)| !b.served.iter().any(|(n, _, head)| n == v && *head))
        && report.failed_legs.is_empty()
        && report.scrubs.is_empty()
        && report.resyncs.iter().all(|r| !executes(r.job))
        && !b.releasing;
    if only_foreign_resyncs {
        prop_assert_eq!(c.generation(), b.generation);
        prop_assert_eq!(&format!("{:?}", c.records()), &b.records);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever the agents report, in whatever order, however often: no
    /// heartbeat is refused, only those allowed to speak change anything
    /// (`check_heartbeat`), a report delivered twice in a row changes
    /// nothing the second time, and the invariants hold after every step,
    /// the planning passes' included.
    #[test]
    fn hostile_heartbeats_keep_the_rules_and_the_invariants(
        ops in proptest::collection::vec(op(), 1..50)
    ) {
        let mut c = PoolSpec::new(6, 2).build();
        let mut secrets = CountingSecrets::default();
        for (i, replicas) in [2u8, 2, 3].into_iter().enumerate() {
            common::volume(&mut c, &format!("v{i}"), 2, replicas, &mut secrets);
        }
        c.attach_volume("v0", "s0").unwrap();
        let mut sent: Vec<(ServerId, AgentReport)> = Vec::new();
        let mut now = 1000;
        for op in ops {
            let volumes: Vec<String> = c.volumes().map(|v| v.name.clone()).collect();
            let (from, report) = match op {
                Op::FailDisk(d) => {
                    let disks: Vec<DiskId> = c.disks().map(|d| d.id).collect();
                    if let Some(d) = pick(&disks, d) {
                        c.fail_disk(d).unwrap();
                    }
                    check(&c, LIMIT);
                    continue;
                }
                Op::Attach { volume, server } => {
                    if let Some(v) = pick(&volumes, volume) {
                        let _ = c.attach_volume(&v, &format!("s{server}"));
                    }
                    continue;
                }
                Op::Release { volume } => {
                    if let Some(v) = pick(&volumes, volume) {
                        let _ = c.release_volume(&v);
                    }
                    continue;
                }
                Op::Pass => {
                    now += 10;
                    let (pass, _) = c.recovery_pass(&pass_config(LIMIT, now), &mut secrets);
                    for job in &pass.started {
                        prop_assert_eq!(c.job(*job).unwrap().state, JobState::Running);
                    }
                    check(&c, LIMIT);
                    continue;
                }
                Op::Heartbeat { server, insider, items, assembled } => {
                    build_report(&c, server, insider, &items, &assembled)
                }
                Op::Replay(i) => match pick(&sent, i) {
                    Some(old) => old,
                    None => continue,
                },
            };
            let b = before(&c, from);
            let (out, _) = c
                .apply_heartbeat(from, &report, now, &mut secrets)
                .map_err(|e| TestCaseError::fail(format!("{report:?} from {from} refused: {e}")))?;
            prop_assert_eq!(out.generation, c.generation());
            check_heartbeat(&c, &b, from, &report, &out)?;
            check(&c, LIMIT);

            let generation = c.generation();
            let records = format!("{:?}", c.records());
            let (again, changes) = c
                .apply_heartbeat(from, &report, now, &mut secrets)
                .map_err(|e| TestCaseError::fail(format!("{report:?} from {from} refused the second time: {e}")))?;
            // (A report naming one job twice sets its progress to each
            // count in turn, and so writes the job again, unchanged.)
            let jobs: BTreeSet<JobId> = report.resyncs.iter().map(|r| r.job).collect();
            if jobs.len() == report.resyncs.len() {
                prop_assert!(changes.is_empty(), "a repeated report changed {:?}", changes);
            }
            prop_assert!(again.events.is_empty(), "a repeated report told {:?}", again.events);
            prop_assert_eq!(c.generation(), generation);
            prop_assert_eq!(format!("{:?}", c.records()), records);
            sent.push((from, report));
        }
    }

    /// Planning passes under the per-disk limit, between random failures,
    /// drains and the executors' completions, keep the recovery
    /// invariants, and start only what the limit allows.
    #[test]
    fn recovery_passes_keep_the_recovery_invariants(
        limit in 1u32..3,
        steps in proptest::collection::vec((0u8..4, any::<usize>()), 1..40),
    ) {
        let mut c = PoolSpec::new(6, 2).build();
        let mut secrets = CountingSecrets::default();
        for i in 0..4 {
            common::volume(&mut c, &format!("v{i}"), 2, 2, &mut secrets);
        }
        let policy = AutoRebalance { spread: 0.0, window: Some(2) };
        for (n, (what, i)) in steps.into_iter().enumerate() {
            let disks: Vec<DiskId> = c.disks().map(|d| d.id).collect();
            let d = disks[i % disks.len()];
            match what {
                0 => { let _ = c.fail_disk(d); }
                1 => { let _ = c.drain_disk(d); }
                2 => {
                    for job in common::running_jobs(&c) {
                        let executor = c.job_executor(job).unwrap().server();
                        let report = resync(job, ResyncStatus::Done);
                        c.apply_heartbeat(executor, &report, 0, &mut secrets).unwrap();
                    }
                }
                _ => {}
            }
            let config = PassConfig {
                per_disk_limit: limit,
                held: BTreeSet::new(),
                auto_rebalance: Some(policy),
                scrubs: Some(ScrubClock { now_unix_s: n as u64 * 100, interval_s: 50 }),
            };
            let (pass, _) = c.recovery_pass(&config, &mut secrets);
            prop_assert!(pass.rebalance_moves <= pass.planned.len());
            for job in pass.planned.iter().chain(&pass.started) {
                prop_assert!(c.job(*job).is_ok());
            }
            for drained in &pass.drained {
                if let Drained::Disk(d) = drained {
                    prop_assert_eq!(c.drain_progress(*d).legs_left, 0);
                }
            }
            c.check_invariants().map_err(TestCaseError::fail)?;
            c.check_recovery_invariants(limit).map_err(TestCaseError::fail)?;
        }
    }
}
