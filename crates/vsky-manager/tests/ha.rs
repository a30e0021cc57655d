//! High availability on etcd: several real `vsky-manager` processes on one
//! real 3-member etcd cluster (loopback), with leaders killed, paused and
//! deposed, and etcd members killed.
//!
//! What must hold, whatever happens:
//! - every acknowledged change exists exactly once afterwards;
//! - no chunk is ever allocated twice (checked through the API and directly
//!   on the records in etcd, which `Cluster::load` would also refuse);
//! - a standby takes over within the lease TTL (plus a poll and a margin);
//! - a deposed leader's writes are refused, and it becomes a standby;
//! - work in flight survives a failover: a rebuild running when the leader
//!   is killed stays `Running` on the new leader (not requeued, not planned
//!   again, no second replacement chunk), its executor's reports complete
//!   it there, the new leader's recovery loop starts the queued ones, and
//!   servers that kept heartbeating get a fresh grace period instead of
//!   being declared failed (`a_rebuild_in_progress_survives_kill_9_of_the_leader`,
//!   with the test playing the agents as `tests/recovery.rs` does).
//!
//! The tests share one lock: each runs its own etcd cluster and managers,
//! and running them one at a time keeps lease timings honest on a
//! two-core machine. Without etcd they print a skip message (and fail
//! under CI).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::*;
use common::*;
use vsky_api::ClientError;
use vsky_manager::etcd_client::EtcdConfig;
use vsky_manager::store::Store;
use vsky_manager::store::etcd::EtcdStore;
use vsky_model::{Cluster, Records};

/// A tokio mutex: the guard is held across awaits, and a failed test must
/// not poison it for the others.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// Reads the records straight from etcd, bypassing every manager.
fn records_in_etcd(store_url: &str) -> Records {
    let store = EtcdStore::connect(&EtcdConfig::from_url(store_url).unwrap()).unwrap();
    store.load().unwrap().expect("the store is initialised")
}

/// No chunk used twice, checked on the raw records, then by the model.
fn assert_chunks_unique(records: &Records) {
    let mut used = BTreeSet::new();
    for v in &records.volumes {
        for md in &v.mirrored_disks {
            for leg in &md.legs {
                assert!(
                    used.insert((leg.chunk.disk.0, leg.chunk.index)),
                    "chunk {:?} allocated twice (volume {})",
                    leg.chunk,
                    v.name
                );
            }
        }
    }
    Cluster::load(records.clone()).expect("the stored records are consistent");
}

/// Waits until exactly one of `managers` leads; returns its index.
async fn leader_of(managers: &[&HaManager]) -> usize {
    let start = Instant::now();
    loop {
        let mut leaders = Vec::new();
        for (i, m) in managers.iter().enumerate() {
            if let Some((r, _)) = m.role().await
                && r == "leader"
            {
                leaders.push(i);
            }
        }
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(leaders.len() <= 1, "two managers lead at once: {leaders:?}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no manager leads"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bound on a takeover: the lease runs out, a standby notices within a
/// poll (≤ 1 s), reloads and announces; plus a margin for a loaded machine.
fn takeover_bound() -> Duration {
    Duration::from_secs(TEST_LEASE_TTL_SECONDS) + Duration::from_secs(4)
}

/// Goal: `kill -9` of the leading manager in the middle of a stream of
/// volume creates loses no acknowledged create, duplicates none, and never
/// allocates a chunk twice; a standby leads within the lease TTL.
/// Method: four concurrent create streams through a failover client over
/// both managers; kill the leader after some creates; keep creating on the
/// new leader; then compare every acknowledged answer with the stored
/// state, through the API and in etcd directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_during_creates_loses_and_duplicates_nothing() {
    let _one = serial().await;
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let etcd = EtcdCluster::start(etcd_bin, 3);
    let url = etcd.store_url("kill9");
    let dir = tempfile::tempdir().unwrap();
    let mut first = HaManager::start(dir.path(), &url, &["--chunk-size", "8MiB"]);
    let second = HaManager::start(dir.path(), &url, &[]);
    assert_eq!(
        leader_of(&[&first, &second]).await,
        0,
        "the first manager leads"
    );
    let client = client_of(&[&first, &second]);
    register_pool(&client, &pool(6, 2).chunks(60).racks(3)).await;

    let acked: Arc<Mutex<BTreeMap<String, vsky_api::types::VolumeDetail>>> = Arc::default();
    let ambiguous: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for s in 0..4 {
        let (client, acked, ambiguous, stop) = (
            client.clone(),
            Arc::clone(&acked),
            Arc::clone(&ambiguous),
            Arc::clone(&stop),
        );
        streams.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("s{s}-v{i}");
                i += 1;
                match client.create_volume(&volume(&name, 7 * MIB)).await {
                    Ok(v) => {
                        acked.lock().unwrap().insert(name, v);
                    }
                    // The create may or may not have landed; either is
                    // fine, as long as it is there at most once.
                    Err(ClientError::Transport { .. }) => ambiguous.lock().unwrap().push(name),
                    Err(ClientError::Api { code, .. }) if code == "store_unavailable" => {
                        ambiguous.lock().unwrap().push(name)
                    }
                    Err(e) => panic!("create {name}: {e}"),
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    let killed = Instant::now();
    let took = wait_role(&second, "leader", takeover_bound()).await;
    let before = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < before + 20 {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "creates did not resume on the new leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in streams {
        s.await.unwrap();
    }
    eprintln!(
        "takeover after kill -9: {took:?} (lease TTL {TEST_LEASE_TTL_SECONDS} s); {} creates acknowledged, {} ambiguous",
        acked.lock().unwrap().len(),
        ambiguous.lock().unwrap().len()
    );

    // Every acknowledged create is there, exactly as answered.
    let acked = acked.lock().unwrap().clone();
    let listed = client.list_volumes().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|v| v.name.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a volume listed twice");
    for (name, answered) in &acked {
        assert_eq!(&client.volume(name).await.unwrap(), answered, "{name}");
    }
    let ambiguous = ambiguous.lock().unwrap().clone();
    for name in &names {
        assert!(
            acked.contains_key(*name) || ambiguous.iter().any(|a| a == name),
            "{name} exists but was never requested"
        );
    }
    // No chunk twice: through the API, then on the records in etcd.
    let mut used = BTreeSet::new();
    for name in &names {
        for md in client.volume(name).await.unwrap().layout {
            for leg in md.legs {
                assert!(used.insert((leg.disk_id, leg.chunk_index)), "{leg:?} twice");
            }
        }
    }
    let records = records_in_etcd(&url);
    assert_eq!(records.volumes.len(), names.len());
    assert_chunks_unique(&records);

    // The killed manager comes back as a standby that serves the same state.
    let again = HaManager::start(dir.path(), &url, &[]);
    wait_role(&again, "standby", Duration::from_secs(5)).await;
    assert_eq!(
        again.direct().list_volumes().await.unwrap().len(),
        names.len()
    );
}

/// Goal: a leader paused past its lease (SIGSTOP) is deposed: a standby
/// takes over, and when the old leader continues, its writes are refused
/// and it turns standby, following the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_and_becomes_a_standby() {
    let _one = serial().await;
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let etcd = EtcdCluster::start(etcd_bin, 3);
    let url = etcd.store_url("pause");
    let dir = tempfile::tempdir().unwrap();
    let old = HaManager::start(dir.path(), &url, &["--chunk-size", "8MiB"]);
    let new = HaManager::start(dir.path(), &url, &[]);
    assert_eq!(leader_of(&[&old, &new]).await, 0);
    let client = client_of(&[&old, &new]);
    register_pool(&client, &pool(4, 2).chunks(30)).await;
    client
        .create_volume(&volume("before", 7 * MIB))
        .await
        .unwrap();
    drop(client);

    old.signal("STOP");
    let took = wait_role(&new, "leader", takeover_bound()).await;
    eprintln!("takeover after SIGSTOP: {took:?}");
    // (A paused process still accepts connections, so a client that tried
    // it first would wait for its timeout: write to the new leader.)
    let after = new
        .direct()
        .create_volume(&volume("after", 7 * MIB))
        .await
        .unwrap();
    old.signal("CONT");

    // Straight away, without failover: the old leader must not write.
    let create = |name: &str| serde_json::json!({"name": name, "size_bytes": 7 * MIB});
    let (status, code, message) = old
        .post_raw("/api/v1/volumes", create("from-the-deposed"))
        .await;
    assert_eq!((status, code.as_str()), (503, "not_leader"), "{message}");
    let start = Instant::now();
    while old.role().await != Some(("standby".into(), Some(new.url.clone()))) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the deposed leader did not turn standby naming the new leader: {:?}",
            old.role().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its refusal names the leader, and its reads follow the new leader.
    let (status, code, message) = old.post_raw("/api/v1/volumes", create("again")).await;
    assert_eq!((status, code.as_str()), (503, "not_leader"), "{message}");
    assert!(message.contains(&new.url), "{message}");
    let start = Instant::now();
    while old.direct().volume("after").await.ok().as_ref() != Some(&after) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the standby does not follow"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that asks the standby first follows it to the leader.
    let client = client_of(&[&old, &new]);
    client
        .create_volume(&volume("via-standby", 7 * MIB))
        .await
        .unwrap();
    assert_eq!(client.current_url(), format!("{}/", new.url));
    let records = records_in_etcd(&url);
    let names: BTreeSet<&str> = records.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["after", "before", "via-standby"].into());
    assert_chunks_unique(&records);
}

/// Goal: a rebuild in progress survives `kill -9` of the leader (issue #7):
/// the new leader resumes the resync jobs from the store instead of
/// redoing or forgetting them, its recovery loop goes on scheduling, and
/// the servers that kept heartbeating are not declared failed for the
/// heartbeats the new leader never saw.
/// Method: four servers, one disk each, a detached 2-replica volume; the
/// test plays the agents (heartbeats through a failover client over both
/// managers). s3 goes silent past `--server-grace`: its legs are replaced,
/// one rebuild runs (each job occupies two of the three remaining disks
/// and a disk takes part in one resync at a time) and the others queue.
/// The executor reports partial progress, then the leader is killed.
/// What the new leader shows: the same jobs, the running one still
/// `Running` (not requeued) with the same executor, source, target and
/// stored progress, the queued ones still `Queued`, exactly one active job
/// per lost leg slot, the volume's layout unchanged (no second replacement
/// chunk); it accepts the executor's further reports (and measures a rate
/// from them), completes the job on its `done`, and starts the next queued
/// job itself, re-planning nothing. At the end: one `Done` job per lost
/// leg, every leg active, no chunk used twice in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_in_progress_survives_kill_9_of_the_leader() {
    use common::agents::{KeepAlive, eventually, resync_beat};
    use vsky_api::types::{LegState, RebuildState, ServerState};

    let _one = serial().await;
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let etcd = EtcdCluster::start(etcd_bin, 3);
    let url = etcd.store_url("rebuild");
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(2);
    let first = HaManager::start(
        dir.path(),
        &url,
        &["--chunk-size", "8MiB", "--server-grace", "2s"],
    );
    let second = HaManager::start(dir.path(), &url, &["--server-grace", "2s"]);
    let mut managers = [first, second];
    let lead = leader_of(&[&managers[0], &managers[1]]).await;
    let admin = client_of(&[&managers[0], &managers[1]]);
    let agent = agent_client_of(&[&managers[0], &managers[1]]);
    register_pool(&admin, &pool(4, 1)).await;
    let alive = ["s0", "s1", "s2"];
    let _alive = KeepAlive::start(agent.clone(), alive.map(String::from).to_vec());
    let mut req = volume("v", 4 * 7 * MIB);
    req.replicas = Some(2);
    let created = admin.create_volume(&req).await.unwrap();
    let lost: BTreeSet<(u32, u8)> = created
        .layout
        .iter()
        .flat_map(|md| {
            md.legs
                .iter()
                .enumerate()
                .filter(|(_, l)| l.server == "s3")
                .map(move |(l, _)| (md.index as u32, l as u8))
        })
        .collect();
    assert!(lost.len() >= 2, "fixture: s3 holds several legs: {lost:?}");

    // s3 never speaks: failed after its grace, its legs replaced; one
    // rebuild runs, the others wait for its disks.
    let running = eventually("s3's legs replaced and one rebuild running", async || {
        let list = admin.rebuilds(false).await.ok()?;
        (list.running == 1 && list.queued + 1 == lost.len())
            .then(|| {
                list.rebuilds
                    .into_iter()
                    .find(|r| r.state == RebuildState::Running)
            })
            .flatten()
    })
    .await;
    let executor = running
        .executor
        .clone()
        .expect("a running job has an executor");
    assert_eq!(
        executor, running.target.server,
        "detached: the target copies"
    );
    let quarter = running.bytes_total / 4;
    agent
        .heartbeat(&resync_beat(&executor, running.id, quarter, false))
        .await
        .unwrap();
    let before = admin.rebuilds(false).await.unwrap();
    assert_eq!(
        before
            .rebuilds
            .iter()
            .find(|r| r.id == running.id)
            .unwrap()
            .bytes_done,
        quarter
    );
    let planned = admin.volume("v").await.unwrap();
    assert!(
        planned
            .layout
            .iter()
            .flat_map(|md| &md.legs)
            .all(|l| l.server != "s3"),
        "every lost leg has its replacement chunk"
    );

    managers[lead].kill9();
    let killed = Instant::now();
    let new = &managers[1 - lead];
    let took = wait_role(new, "leader", takeover_bound()).await;
    let direct = new.direct();

    // The jobs as the old leader left them: same ids, states, executor,
    // chunks and stored progress; one active job per lost slot; the layout
    // is the one planned before (no second replacement chunk).
    let after = direct.rebuilds(false).await.unwrap();
    let strip = |list: &vsky_api::types::RebuildList| {
        list.rebuilds
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.rate_bytes_per_second = None;
                r.eta_seconds = None;
                r
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "the new leader resumes the jobs as stored"
    );
    let slots: BTreeSet<(u32, u8)> = after
        .rebuilds
        .iter()
        .map(|r| (r.mirrored_disk, r.leg))
        .collect();
    assert_eq!(slots, lost, "exactly one active job per lost leg slot");
    assert_eq!(slots.len(), after.rebuilds.len());
    assert_eq!(direct.volume("v").await.unwrap(), planned);

    // The executor goes on reporting, now to the new leader (through the
    // failover client): progress is accepted and measured.
    let half = running.bytes_total / 2;
    agent
        .heartbeat(&resync_beat(&executor, running.id, half, false))
        .await
        .unwrap();
    let resumed = killed.elapsed();
    let shown = |list: vsky_api::types::RebuildList| {
        list.rebuilds
            .into_iter()
            .find(|r| r.id == running.id)
            .unwrap()
    };
    let job = shown(direct.rebuilds(false).await.unwrap());
    assert_eq!(
        (job.state, job.bytes_done),
        (RebuildState::Running, half),
        "the job must still run on the new leader (did it fail the live servers?): {job:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    agent
        .heartbeat(&resync_beat(&executor, running.id, 3 * quarter, false))
        .await
        .unwrap();
    let job = shown(direct.rebuilds(false).await.unwrap());
    assert_eq!(job.bytes_done, 3 * quarter);
    assert!(
        job.rate_bytes_per_second.is_some_and(|r| r > 0.0),
        "the new leader measures the rate from its own samples: {job:?}"
    );

    // Past a whole grace period after the takeover, the servers that kept
    // heartbeating (through the failover) are still online: the new leader
    // gave each a fresh grace period instead of counting from heartbeats it
    // never received.
    let since_takeover = killed.elapsed().saturating_sub(took);
    tokio::time::sleep((grace + Duration::from_secs(1)).saturating_sub(since_takeover)).await;
    for s in alive {
        assert_eq!(
            direct.server(s).await.unwrap().state,
            ServerState::Online,
            "{s} was declared failed by the new leader"
        );
    }
    let events = direct.events(0, None, Duration::ZERO).await.unwrap().events;
    assert!(
        !events.iter().any(|e| e.kind == "server_failed"),
        "the new leader failed a server: {events:?}"
    );

    // Done, reported to the new leader: the leg is active and the next
    // queued job starts, scheduled by the new leader's recovery loop.
    agent
        .heartbeat(&resync_beat(
            &executor,
            running.id,
            running.bytes_total,
            true,
        ))
        .await
        .unwrap();
    let done_at = Instant::now();
    let next = eventually(
        "the new leader to start the next queued rebuild",
        async || {
            direct
                .rebuilds(false)
                .await
                .ok()?
                .rebuilds
                .into_iter()
                .find(|r| r.state == RebuildState::Running)
        },
    )
    .await;
    let next_started = done_at.elapsed();
    assert_ne!(next.id, running.id);
    let slot = planned.layout[running.mirrored_disk as usize].legs[running.leg as usize].clone();
    let leg = &direct.volume("v").await.unwrap().layout[running.mirrored_disk as usize].legs
        [running.leg as usize];
    assert_eq!(leg.state, LegState::Active);
    assert_eq!(
        (leg.disk_id, leg.chunk_index),
        (slot.disk_id, slot.chunk_index)
    );

    // The rest, one running job at a time, each reported by its executor.
    loop {
        let list = direct.rebuilds(false).await.unwrap();
        if list.rebuilds.is_empty() {
            break;
        }
        let job = eventually("a rebuild to run", async || {
            direct
                .rebuilds(false)
                .await
                .ok()?
                .rebuilds
                .into_iter()
                .find(|r| r.state == RebuildState::Running)
        })
        .await;
        let by = job.executor.clone().unwrap();
        agent
            .heartbeat(&resync_beat(&by, job.id, job.bytes_total / 2, false))
            .await
            .unwrap();
        agent
            .heartbeat(&resync_beat(&by, job.id, job.bytes_total, true))
            .await
            .unwrap();
    }
    eprintln!(
        "rebuild across kill -9: takeover {took:?}, executor's report accepted by the new leader {resumed:?}, next queued rebuild started by it {next_started:?} after the first one's done ({} lost legs)",
        lost.len()
    );

    // Nothing redone twice or forgotten: one Done job per lost leg, none
    // failed, and the new leader planned nothing (it only started what the
    // old one had queued).
    let all = admin.rebuilds(true).await.unwrap();
    assert!(
        all.rebuilds.iter().all(|r| r.state == RebuildState::Done),
        "{all:?}"
    );
    let done: BTreeSet<(u32, u8)> = all
        .rebuilds
        .iter()
        .map(|r| (r.mirrored_disk, r.leg))
        .collect();
    assert_eq!(done, lost);
    assert_eq!(all.rebuilds.len(), lost.len(), "one job per lost leg");
    let ids: BTreeSet<u64> = before.rebuilds.iter().map(|r| r.id).collect();
    assert_eq!(
        all.rebuilds.iter().map(|r| r.id).collect::<BTreeSet<_>>(),
        ids
    );
    let events = direct.events(0, None, Duration::ZERO).await.unwrap().events;
    assert!(
        !events.iter().any(|e| e.kind == "rebuild_queued"),
        "the new leader planned a lost leg again: {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.kind == "rebuild_started" && e.rebuild == Some(running.id)),
        "the new leader restarted the running job: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "rebuild_started" && e.rebuild == Some(next.id)),
        "the new leader's recovery loop started the queued job: {events:?}"
    );
    let finished = admin.volume("v").await.unwrap();
    for (m, md) in finished.layout.iter().enumerate() {
        for (l, leg) in md.legs.iter().enumerate() {
            let was = &planned.layout[m].legs[l];
            assert_eq!(leg.state, LegState::Active, "{m}/{l}");
            assert_eq!(
                (leg.disk_id, leg.chunk_index),
                (was.disk_id, was.chunk_index)
            );
        }
    }
    let records = records_in_etcd(&url);
    assert_eq!(records.jobs.len(), lost.len());
    assert_chunks_unique(&records);
}

/// Goal: the store itself fences a deposed leader, whatever the HTTP layer
/// believes: once its lease is gone, its commit fails with `NotLeader`,
/// naming the new leader, and writes nothing. A commit from state that is
/// no longer the stored one fails too (the revision guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_fenced_by_lease_and_revision() {
    use vsky_manager::etcd_client::Op;
    use vsky_manager::leader::Election;
    use vsky_manager::store::StoreError;
    use vsky_model::{NewDisk, NewServer, Settings};

    let _one = serial().await;
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let etcd = EtcdCluster::start(etcd_bin, 3);
    let url = etcd.store_url("fence");
    let config = EtcdConfig::from_url(&url).unwrap();
    let ttl = Duration::from_secs(2);

    let store_a = EtcdStore::connect(&config).unwrap();
    let mut election_a = Election::new(store_a.clone(), "http://a.invalid".into(), ttl);
    assert!(election_a.try_acquire().unwrap());
    let mut a = Cluster::new(Settings::new(8 << 20)).unwrap();
    store_a.initialise(&a).unwrap();
    let server = |name: &str| NewServer {
        name: name.into(),
        address: format!("{name}.invalid:10809"),
        labels: Default::default(),
    };
    let (_, changes) = a.add_server(server("s0")).unwrap();
    store_a.commit(&a, &changes).unwrap();

    // B cannot lead while A's lease lives.
    let store_b = EtcdStore::connect(&config).unwrap();
    let mut election_b = Election::new(store_b.clone(), "http://b.invalid".into(), ttl);
    assert!(!election_b.try_acquire().unwrap());
    let mut b = Cluster::load(store_b.load().unwrap().unwrap()).unwrap();
    let (_, changes) = b.add_server(server("from-b")).unwrap();
    assert!(matches!(
        store_b.commit(&b, &changes),
        Err(StoreError::NotLeader { leader: Some(ref l) }) if l == "http://a.invalid"
    ));

    // A's lease runs out (A is "paused": it sends no keepalive); B wins.
    let start = Instant::now();
    while !election_b.try_acquire().unwrap() {
        assert!(start.elapsed() < Duration::from_secs(10), "B never leads");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A still believes it leads; etcd refuses its write.
    let (_, changes) = a
        .add_disk(NewDisk {
            server: "s0".into(),
            path: "/dev/vdb".into(),
            size_bytes: 100 << 20,
            class: None,
        })
        .unwrap();
    match store_a.commit(&a, &changes) {
        Err(StoreError::NotLeader { leader }) => {
            assert_eq!(leader.as_deref(), Some("http://b.invalid"))
        }
        other => panic!("a deposed leader's commit must be refused: {other:?}"),
    }
    let stored = store_b.load().unwrap().unwrap();
    assert!(stored.disks.is_empty(), "the refused commit wrote nothing");

    // The revision guard: B's in-memory state must be the stored one. Move
    // the guard key behind B's back (as a write B did not see would), and
    // B's next commit is refused; after a reload it goes through.
    let mut b = Cluster::load(stored).unwrap();
    let (_, changes) = b.add_server(server("b1")).unwrap();
    store_b.commit(&b, &changes).unwrap();
    store_b
        .client()
        .txn(
            &[],
            &[Op::Put {
                key: store_b.commit_key(),
                value: b"{}".to_vec(),
                lease: 0,
            }],
            &[],
        )
        .unwrap();
    let (_, changes) = b.add_server(server("b2")).unwrap();
    assert!(matches!(
        store_b.commit(&b, &changes),
        Err(StoreError::Conflict(_))
    ));
    let mut b = Cluster::load(store_b.load().unwrap().unwrap()).unwrap();
    assert!(
        b.servers().all(|s| s.name != "b2"),
        "the refused commit wrote nothing"
    );
    let (_, changes) = b.add_server(server("b2")).unwrap();
    store_b.commit(&b, &changes).unwrap();
    assert_chunks_unique(&store_b.load().unwrap().unwrap());
}

/// Goal: managers ride out the loss of one etcd member; with two lost,
/// writes fail with a clear error and nothing is corrupted; service comes
/// back when the quorum does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_member_loss_and_quorum_loss() {
    let _one = serial().await;
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let mut etcd = EtcdCluster::start(etcd_bin, 3);
    let url = etcd.store_url("quorum");
    let dir = tempfile::tempdir().unwrap();
    let a = HaManager::start(dir.path(), &url, &["--chunk-size", "8MiB"]);
    let b = HaManager::start(dir.path(), &url, &[]);
    leader_of(&[&a, &b]).await;
    let client = client_of(&[&a, &b]);
    register_pool(&client, &pool(4, 2).chunks(30)).await;
    let mut acked = vec![client.create_volume(&volume("v0", 7 * MIB)).await.unwrap()];

    // One member down: the managers use the others.
    etcd.kill(0);
    for i in 1..4 {
        acked.push(
            client
                .create_volume(&volume(&format!("v{i}"), 7 * MIB))
                .await
                .unwrap(),
        );
    }

    // Two down: no quorum. Writes fail with a clear error; reads still
    // answer from memory.
    etcd.kill(1);
    let short = client_of(&[&a, &b]).with_failover_wait(Duration::from_secs(2));
    let err = short
        .create_volume(&volume("no-quorum", 7 * MIB))
        .await
        .unwrap_err();
    let code = err.code().unwrap_or_default().to_string();
    assert!(
        code == "store_unavailable" || code == "not_leader",
        "unexpected error without quorum: {err}"
    );
    assert!(
        err.to_string().contains("etcd") || err.to_string().contains("no manager leads"),
        "the error should say what is wrong: {err}"
    );
    assert!(
        a.direct().list_volumes().await.is_ok() || b.direct().list_volumes().await.is_ok(),
        "reads keep answering"
    );

    // Quorum back: service returns on its own.
    etcd.restart(0);
    etcd.restart(1);
    etcd.wait_healthy(Duration::from_secs(30));
    let start = Instant::now();
    let last = loop {
        match client.create_volume(&volume("after-quorum", 7 * MIB)).await {
            Ok(v) => break v,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "service did not return with the quorum: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    acked.push(last);
    for v in &acked {
        assert_eq!(&client.volume(&v.volume.name).await.unwrap(), v);
    }
    let records = records_in_etcd(&url);
    // "no-quorum" may or may not have landed (its outcome was unknown).
    assert!(records.volumes.len() == acked.len() || records.volumes.len() == acked.len() + 1);
    assert_chunks_unique(&records);
}

/// Goal: `vsky-manager migrate` copies a cluster from redb to etcd and
/// back, losing nothing, and refuses a non-empty target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_redb_to_etcd_and_back() {
    let _one = serial().await;
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let etcd = EtcdCluster::start(etcd_bin, 3);
    let url = etcd.store_url("migrated");
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(4, 2).chunks(30).racks(2)).await;
    for i in 0..5 {
        admin
            .create_volume(&volume(&format!("v{i}"), (i + 1) * 7 * MIB))
            .await
            .unwrap();
    }
    admin.attach_volume("v1", "s2").await.unwrap();
    admin.delete_volume("v3").await.unwrap();
    let summary = admin.cluster().await.unwrap();
    let volumes = admin.list_volumes().await.unwrap();
    drop(m);

    let migrate = |from: &str, to: &str| {
        std::process::Command::new(MANAGER)
            .args(["migrate", "--from", from, "--to", to])
            .output()
            .unwrap()
    };
    let data = dir.path().join("data");
    let out = migrate(data.to_str().unwrap(), &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrated"));
    // A second migration into the same prefix is refused.
    let out = migrate(data.to_str().unwrap(), &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ha_dir = tempfile::tempdir().unwrap();
    let ha = HaManager::start(ha_dir.path(), &url, &[]);
    wait_role(&ha, "leader", Duration::from_secs(10)).await;
    assert_eq!(ha.direct().cluster().await.unwrap(), summary);
    assert_eq!(ha.direct().list_volumes().await.unwrap(), volumes);
    ha.direct()
        .create_volume(&volume("on-etcd", 7 * MIB))
        .await
        .unwrap();
    // Migrating away from a store a manager runs on is refused.
    let back = tempfile::tempdir().unwrap();
    let back_data = back.path().join("data");
    let out = migrate(&url, back_data.to_str().unwrap());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop every manager"));
    let summary = ha.direct().cluster().await.unwrap();
    let volumes = ha.direct().list_volumes().await.unwrap();
    drop(ha);
    // SIGKILL leaves the leader key until its lease expires.
    let start = Instant::now();
    let out = loop {
        let out = migrate(&url, back_data.to_str().unwrap());
        if out.status.success() || start.elapsed() > Duration::from_secs(10) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = ManagerProcess::start(MANAGER, back.path(), &[]);
    assert_eq!(m.admin().cluster().await.unwrap(), summary);
    assert_eq!(m.admin().list_volumes().await.unwrap(), volumes);
    assert_chunks_unique(&records_in_etcd(&url));
}

/// Bad `--store` values and an unreachable etcd are refused at start-up
/// with messages that say what to do.
#[test]
fn bad_store_options_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write_tokens(dir.path());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(MANAGER)
            .arg("--token-file")
            .arg(dir.path().join("admin.token"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let local = |args: &[&str]| {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        run(&all)
    };
    assert!(local(&["--store", "http://127.0.0.1:2379"]).contains("etcd://HOST:PORT"));
    assert!(local(&["--store", "etcd://127.0.0.1"]).contains("port is required"));
    let e = local(&["--store", "etcd://127.0.0.1:1"]);
    assert!(
        e.contains("cannot reach etcd") && e.contains("quorum"),
        "{e}"
    );
    let e = local(&["--store", "etcd://127.0.0.1:1", "--etcd-ca-file", "/x.pem"]);
    assert!(e.contains("etcds://"), "{e}");
    let e = local(&["--store", "etcd://127.0.0.1:1", "--lease-ttl", "1"]);
    assert!(e.contains("2 to 60 seconds"), "{e}");
    let e = local(&["--store", "etcd://127.0.0.1:1", "--data-dir", "/tmp/x"]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = run(&["--store", "etcd://127.0.0.1:1", "--listen", "0.0.0.0:0"]);
    assert!(e.contains("--advertise-url"), "{e}");
}
