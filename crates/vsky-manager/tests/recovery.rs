//! The recovery loop against a real `vsky-manager` process on loopback,
//! with the test playing the agents over the agent API: the grace period
//! for silent servers, the hold and return of legs a head reported failed,
//! stale and foreign reports, executors' progress, heads' scrubs, and the
//! event log.

mod common;

use std::time::Duration;

use common::agents::{
    KeepAlive, beat, count_kind, eventually, kinds, legs_on, resync_beat, server_failed,
};
use common::*;
use vsky_api::Client;
use vsky_api::types::{
    ChunkId, FailedLeg, LegState, RebuildState, ScrubMethod, ScrubReport, VolumeDetail,
};

fn chunk_of(v: &VolumeDetail, m: usize, l: usize) -> ChunkId {
    let leg = &v.layout[m].legs[l];
    ChunkId {
        disk_id: leg.disk_id,
        index: leg.chunk_index,
    }
}

/// Waits for a running rebuild and returns it.
async fn running_rebuild(admin: &Client, what: &str) -> vsky_api::types::Rebuild {
    eventually(what, async || {
        admin
            .rebuilds(false)
            .await
            .unwrap()
            .rebuilds
            .into_iter()
            .find(|r| r.state == RebuildState::Running)
    })
    .await
}

/// A manager with `--server-grace GRACE`, four servers of one disk, and a
/// 2-replica volume "v" of `size` bytes.
async fn manager_with_volume(grace: &str, size: u64) -> (tempfile::TempDir, ManagerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &["--chunk-size", "8MiB", "--server-grace", grace],
    );
    let admin = m.admin();
    register_pool(&admin, &pool(4, 1)).await;
    let mut req = volume("v", size);
    req.replicas = Some(2);
    admin.create_volume(&req).await.unwrap();
    (dir, m)
}

/// s3 never speaks: after the grace period it is declared failed and its
/// legs are replaced; the storage servers of the new chunks run the copies
/// (the volume is detached), and only a job's executor can move it on.
#[tokio::test]
async fn a_silent_server_is_failed_after_its_grace_period_and_its_legs_rebuilt() {
    let (_dir, m) = manager_with_volume("2s", 4 * 7 * MIB).await;
    let (admin, agent) = (m.admin(), m.client(AGENT_TOKEN));
    let _alive = KeepAlive::start(agent.clone(), vec!["s0".into(), "s1".into(), "s2".into()]);
    let lost = legs_on(&admin, "v", "s3").await;
    assert!(lost > 0, "fixture: s3 holds legs");

    server_failed(&admin, "s3", "s3 declared failed").await;
    eventually("every lost leg's rebuild to start", async || {
        let list = admin.rebuilds(false).await.unwrap();
        (list.running + list.queued == lost && list.running > 0).then_some(list)
    })
    .await;
    assert!(kinds(&admin).await.contains(&"server_failed".to_string()));

    // Finish every job as its executor, one running job at a time (queued
    // ones start as their disks free up); a report from anyone else is
    // dropped.
    loop {
        let list = admin.rebuilds(false).await.unwrap();
        if list.rebuilds.is_empty() {
            break;
        }
        let job = running_rebuild(&admin, "a job to run").await;
        let executor = job.executor.clone().expect("a running job has an executor");
        assert_eq!(executor, job.target.server, "detached: the target copies");
        let stranger = ["s0", "s1", "s2"]
            .into_iter()
            .find(|s| *s != executor)
            .unwrap();
        let report = |server: &str, bytes_done: u64, done: bool| {
            resync_beat(server, job.id, bytes_done, done)
        };
        agent
            .heartbeat(&report(stranger, job.bytes_total, true))
            .await
            .unwrap();
        let still = admin.rebuilds(false).await.unwrap();
        assert!(
            still.rebuilds.iter().any(|r| r.id == job.id),
            "a non-executor cannot finish a job"
        );
        agent
            .heartbeat(&report(&executor, job.bytes_total / 2, false))
            .await
            .unwrap();
        let shown = admin.rebuilds(false).await.unwrap();
        assert_eq!(
            shown
                .rebuilds
                .iter()
                .find(|r| r.id == job.id)
                .unwrap()
                .bytes_done,
            job.bytes_total / 2
        );
        agent
            .heartbeat(&report(&executor, job.bytes_total, true))
            .await
            .unwrap();
    }
    let v = admin.volume("v").await.unwrap();
    for md in &v.layout {
        assert!(
            md.legs
                .iter()
                .all(|l| l.state == LegState::Active && l.server != "s3")
        );
    }
    let all = admin.rebuilds(true).await.unwrap();
    assert_eq!(
        all.rebuilds
            .iter()
            .filter(|r| r.state == RebuildState::Done)
            .count(),
        lost
    );
    let metrics = metrics(&m).await;
    assert!(metrics.contains("vsky_rebuilds_running 0"), "{metrics}");
    assert!(metrics.contains("vsky_rebuilds_queued 0"), "{metrics}");
    assert!(metrics.contains("vsky_moves 0"), "{metrics}");
    assert!(metrics.contains("vsky_disks_draining 0"), "{metrics}");
    assert!(metrics.contains("vsky_disk_fill_spread_ratio"), "{metrics}");

    // s3's agent speaks again: failed for its silence, it serves again.
    agent.heartbeat(&beat("s3")).await.unwrap();
    assert_eq!(
        admin.server("s3").await.unwrap().state,
        vsky_api::types::ServerState::Online
    );
    assert!(kinds(&admin).await.contains(&"server_back".to_string()));
    // An admin's verdict stands although the agent keeps talking.
    admin.fail_server("s2").await.unwrap();
    agent.heartbeat(&beat("s2")).await.unwrap();
    assert_eq!(
        admin.server("s2").await.unwrap().state,
        vsky_api::types::ServerState::Failed
    );
}

/// A head reports a leg failed. A report about another chunk is dropped;
/// a real one holds the leg while its server may come back; the server
/// speaking again brings the leg back (once); failing again, it is
/// replaced, with the head as the executor of the attached volume.
#[tokio::test]
async fn reported_legs_are_held_brought_back_once_then_replaced() {
    let (_dir, m) = manager_with_volume("60m", 7 * MIB).await;
    let (admin, agent) = (m.admin(), m.client(AGENT_TOKEN));
    let v = admin.volume("v").await.unwrap();
    let holder = v.layout[0].legs[1].server.clone();
    let head = ["s0", "s1", "s2", "s3"]
        .into_iter()
        .find(|s| v.layout[0].legs.iter().all(|l| l.server != *s))
        .unwrap();
    admin.attach_volume("v", head).await.unwrap();

    let report = |chunk: ChunkId| {
        let mut b = beat(head);
        b.failed_legs = vec![FailedLeg {
            volume: "v".into(),
            mirrored_disk: 0,
            leg: 1,
            chunk: Some(chunk),
        }];
        b
    };
    // About a chunk the slot does not hold: dropped.
    let other = ChunkId {
        disk_id: chunk_of(&v, 0, 1).disk_id,
        index: chunk_of(&v, 0, 1).index + 5,
    };
    agent.heartbeat(&report(other)).await.unwrap();
    assert_eq!(
        admin.volume("v").await.unwrap().layout[0].legs[1].state,
        LegState::Active
    );

    // The real failure: failed, and held while its server is silent.
    agent.heartbeat(&report(chunk_of(&v, 0, 1))).await.unwrap();
    assert_eq!(
        admin.volume("v").await.unwrap().layout[0].legs[1].state,
        LegState::Failed
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        admin.rebuilds(true).await.unwrap().rebuilds.is_empty(),
        "no replacement while the server may come back"
    );
    // The server speaks: the leg is back in place.
    agent.heartbeat(&beat(&holder)).await.unwrap();
    let back = admin.volume("v").await.unwrap();
    assert_eq!(back.layout[0].legs[1].state, LegState::Active);
    assert_eq!(back.layout[0].legs[1].server, holder);
    assert!(kinds(&admin).await.contains(&"legs_returned".to_string()));

    // It fails again although its server is alive: replaced now.
    agent.heartbeat(&report(chunk_of(&v, 0, 1))).await.unwrap();
    agent.heartbeat(&beat(&holder)).await.unwrap();
    let job = running_rebuild(&admin, "the replacement to run").await;
    assert_eq!(
        job.executor.as_deref(),
        Some(head),
        "attached: the head resyncs"
    );
    assert_eq!(job.replaced.server, holder);
    let now = admin.volume("v").await.unwrap();
    assert_eq!(now.layout[0].legs[1].state, LegState::Syncing);
    assert_ne!(now.layout[0].legs[1].server, holder);
    // The head's desired state lists the new leg with its job.
    let desired = agent
        .desired_state(head, None, Duration::ZERO)
        .await
        .unwrap();
    let leg = &desired.volumes[0].mirrored_disks[0][1];
    assert_eq!(leg.resync_job, Some(job.id));

    // A failure report about the old chunk (the kernel still holds its dead
    // device until the swap) must not fail the new leg.
    agent.heartbeat(&report(chunk_of(&v, 0, 1))).await.unwrap();
    assert_eq!(
        admin.volume("v").await.unwrap().layout[0].legs[1].state,
        LegState::Syncing
    );
}

#[tokio::test]
async fn bad_event_and_rebuild_queries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &[]);
    let http = reqwest::Client::new();
    for query in [
        "events?limit=0",
        "events?limit=5000",
        "events?since=abc",
        "events?wait_ms=-1",
        "events?colour=red",
        "rebuilds?all=maybe",
        "rebuilds?state=running",
    ] {
        let resp = http
            .get(format!("{}/api/v1/{query}", m.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{query}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_argument", "{query}: {body}");
    }
    // Agent tokens do not read the admin views.
    let resp = http
        .get(format!("{}/api/v1/events", m.url))
        .bearer_auth(AGENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

/// Scrubs with `--scrub-interval`: an attached volume's head is asked for
/// dm-raid checks of its mirrors (the storage servers are not), and the
/// verdicts it sends end the runs: events, the scrub time, a failed check
/// tried again later. A storage server cannot end a head's check.
#[tokio::test]
async fn an_attached_volumes_head_checks_its_mirrors_when_the_manager_asks() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &["--chunk-size", "8MiB", "--scrub-interval", "1s"],
    );
    let (admin, agent) = (m.admin(), m.client(AGENT_TOKEN));
    register_pool(&admin, &pool(4, 1)).await;
    let mut req = volume("v", 2 * 7 * MIB);
    req.replicas = Some(2);
    admin.create_volume(&req).await.unwrap();
    admin.attach_volume("v", "s3").await.unwrap();
    let _alive = KeepAlive::start(agent.clone(), (0..4).map(|s| format!("s{s}")).collect());

    // One or both mirrored disks are listed (they may share a disk, k = 1).
    let specs = eventually("the head to be asked for a check", async || {
        let d = agent
            .desired_state("s3", None, Duration::ZERO)
            .await
            .unwrap();
        (!d.scrubs.is_empty()).then_some(d.scrubs)
    })
    .await;
    assert!(
        specs
            .iter()
            .all(|s| s.method == ScrubMethod::RaidCheck && s.volume == "v")
    );
    for s in 0..3 {
        let d = agent
            .desired_state(&format!("s{s}"), None, Duration::ZERO)
            .await
            .unwrap();
        assert!(
            d.scrubs.is_empty(),
            "no storage agent compares an attached volume's legs"
        );
    }
    let running = metrics(&m).await;
    assert!(
        running.contains(&format!("vsky_scrubs_running {}", specs.len())),
        "{running}"
    );
    let check = &specs[0];
    let report = |mismatched_sectors, error: Option<&str>| ScrubReport {
        volume: "v".into(),
        mirrored_disk: check.mirrored_disk,
        mismatched_sectors,
        scrub: Some(check.scrub),
        unreadable_legs: vec![],
        error: error.map(String::from),
    };
    // Only the head may end it.
    let mut foreign = beat("s0");
    foreign.scrubs = vec![report(0, None)];
    agent.heartbeat(&foreign).await.unwrap();
    let mut verdict = beat("s3");
    verdict.scrubs = vec![report(16, None)];
    agent.heartbeat(&verdict).await.unwrap();
    let k = check.mirrored_disk as usize;
    let v = admin.volume("v").await.unwrap();
    assert!(
        v.layout[k].last_scrub_unix_s.is_some(),
        "the scrub time is kept"
    );
    let events = admin.events(0, None, Duration::ZERO).await.unwrap().events;
    let mismatch: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "scrub_mismatch")
        .collect();
    assert_eq!(mismatch.len(), 1, "one verdict, from the head: {events:?}");
    assert!(
        mismatch[0].message.contains("16 sectors differ") && mismatch[0].message.contains("s3")
    );
    assert!(kinds(&admin).await.contains(&"scrub_started".to_string()));
    // Sent again with the next heartbeat (the agent cannot know it
    // arrived): not counted twice.
    agent.heartbeat(&verdict).await.unwrap();
    assert_eq!(count_kind(&admin, "scrub_mismatch").await, 1);

    // A check that cannot run (the kernel is resyncing the mirror) is
    // reported failed: an event, and the run ends.
    let other = eventually("a check of the other mirrored disk", async || {
        let d = agent
            .desired_state("s3", None, Duration::ZERO)
            .await
            .unwrap();
        d.scrubs.into_iter().find(|s| s.scrub != check.scrub)
    })
    .await;
    let mut failed = beat("s3");
    failed.scrubs = vec![ScrubReport {
        volume: "v".into(),
        mirrored_disk: other.mirrored_disk,
        mismatched_sectors: 0,
        scrub: Some(other.scrub),
        unreadable_legs: vec![],
        error: Some("the mirror is not in sync (rebuilding or degraded)".into()),
    }];
    agent.heartbeat(&failed).await.unwrap();
    assert!(kinds(&admin).await.contains(&"scrub_failed".to_string()));
    let d = agent
        .desired_state("s3", None, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        d.scrubs.iter().all(|s| s.scrub != other.scrub),
        "the failed run ended"
    );
}

/// One rebuild, from the list of all of them.
async fn rebuild(admin: &Client, id: u64) -> vsky_api::types::Rebuild {
    admin
        .rebuilds(true)
        .await
        .unwrap()
        .rebuilds
        .into_iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("rebuild {id} listed"))
}

/// A storage agent's copy that cannot read its source says so: the job
/// starts again from another healthy leg onto the same new chunk (event
/// `rebuild_source_failed`), a late report about the old source changes
/// nothing, and the copy from the new source completes the rebuild.
#[tokio::test]
async fn a_copy_whose_source_cannot_be_read_starts_again_from_another_leg() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let (admin, agent) = (m.admin(), m.client(AGENT_TOKEN));
    register_pool(&admin, &pool(5, 1)).await;
    let mut req = volume("v", 7 * MIB);
    req.replicas = Some(3);
    let v = admin.create_volume(&req).await.unwrap();
    let _alive = KeepAlive::start(agent.clone(), (0..5).map(|s| format!("s{s}")).collect());
    admin.fail_disk(v.layout[0].legs[0].disk_id).await.unwrap();
    let first = running_rebuild(&admin, "the copy to start").await;
    let executor = first.executor.clone().expect("a storage agent copies");
    let from = first.source.clone().expect("a chosen source");
    let chunk = |l: &vsky_api::types::ChunkLocation| ChunkId {
        disk_id: l.disk_id,
        index: l.chunk_index,
    };
    let report = |source: &vsky_api::types::ChunkLocation| {
        let mut b = beat(&executor);
        b.resyncs = vec![vsky_api::types::ResyncReport {
            job: first.id,
            bytes_done: 0,
            done: false,
            error: Some("gave up after 5 attempts: source unreachable".into()),
            failed_source: Some(chunk(source)),
        }];
        b
    };
    agent.heartbeat(&report(&from)).await.unwrap();
    let again = eventually("the copy to start again from another leg", async || {
        let r = rebuild(&admin, first.id).await;
        (r.state == RebuildState::Running && r.source.as_ref() != Some(&from)).then_some(r)
    })
    .await;
    assert_eq!(again.target, first.target, "same new chunk");
    assert_eq!(again.executor.as_deref(), Some(executor.as_str()));
    assert_eq!(count_kind(&admin, "rebuild_source_failed").await, 1);
    // The same report again (a lost acknowledgement): stale now.
    agent.heartbeat(&report(&from)).await.unwrap();
    let still = rebuild(&admin, first.id).await;
    assert_eq!(
        (still.state, still.source),
        (RebuildState::Running, again.source.clone())
    );
    assert_eq!(count_kind(&admin, "rebuild_source_failed").await, 1);
    agent
        .heartbeat(&resync_beat(&executor, first.id, again.bytes_total, true))
        .await
        .unwrap();
    let done = rebuild(&admin, first.id).await;
    assert_eq!(done.state, RebuildState::Done);
    assert!(kinds(&admin).await.contains(&"rebuild_done".to_string()));
}
