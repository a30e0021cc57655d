//! Cluster and disk identity through the real manager process: a cluster
//! id drawn once (also for a store from before ids) and kept across
//! restarts, and registrations judged disk by disk from their labels.

mod common;

use common::*;
use vsky_api::types::{AgentDisk, DiskLabel, DiskState, RegisterAgent};
use vsky_manager::store::Store;
use vsky_manager::store::redb::RedbStore;
use vsky_model::{Cluster, Settings};

fn register(server: &str, disks: Vec<AgentDisk>) -> RegisterAgent {
    RegisterAgent {
        server: server.into(),
        address: format!("127.0.0.1:2000{}", &server[1..]),
        labels: Default::default(),
        storage_only: true,
        disks,
    }
}

fn disk(path: &str, label: Option<DiskLabel>, problem: Option<&str>) -> AgentDisk {
    AgentDisk {
        path: path.into(),
        size_bytes: MIB + 8 * CHUNK,
        class: None,
        label,
        problem: problem.map(String::from),
    }
}

#[tokio::test]
async fn an_old_store_gets_a_cluster_id_once_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A store as managers before cluster ids wrote it.
        let store = RedbStore::open(&dir.path().join("data")).unwrap();
        store
            .initialise(&Cluster::new(Settings::new(CHUNK)).unwrap())
            .unwrap();
        assert_eq!(store.load().unwrap().unwrap().settings.cluster_id, "");
    }
    let mut m = ManagerProcess::start(MANAGER, dir.path(), &[]);
    let id = m.admin().cluster().await.unwrap().cluster_id;
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    m.kill9();
    let mut m = ManagerProcess::start(MANAGER, dir.path(), &[]);
    assert_eq!(m.admin().cluster().await.unwrap().cluster_id, id);
    m.kill9();

    // A new store is a new cluster.
    let other = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, other.path(), &[]);
    assert_ne!(m.admin().cluster().await.unwrap().cluster_id, id);
}

#[tokio::test]
async fn a_registration_serves_the_good_disks_and_refuses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    let agent = m.client(AGENT_TOKEN);
    let cluster_id = admin.cluster().await.unwrap().cluster_id;

    let answer = agent
        .register_agent(&register("s1", vec![disk("/dev/a", None, None)]))
        .await
        .unwrap();
    assert_eq!(answer.cluster_id, cluster_id);
    assert_eq!(answer.disks.len(), 1);
    let a = answer.disks[0].id;
    let ours = |disk_id: u64, server: &str| DiskLabel {
        cluster_id: cluster_id.clone(),
        disk_id,
        server: server.into(),
    };

    // s1 again, with a's label, a disk of another cluster, one it cannot
    // open and one labelled by s1 for s3: only a is served, the request
    // as a whole succeeds, and nothing but a's record exists.
    let foreign = DiskLabel {
        cluster_id: "00112233445566778899aabbccddeeff".into(),
        disk_id: 1,
        server: "s1".into(),
    };
    let answer = agent
        .register_agent(&register(
            "s1",
            vec![
                disk("/dev/a", Some(ours(a, "s1")), None),
                disk("/dev/b", Some(foreign), None),
                disk("/dev/c", None, Some("cannot open read-write: EIO")),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(answer.disks.len(), 1);
    let reasons: Vec<&str> = answer
        .refused_disks
        .iter()
        .map(|r| r.reason.as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("00112233445566778899aabbccddeeff"));
    assert!(reasons[0].contains(&cluster_id));
    assert!(reasons[1].contains("EIO"));
    let disks = admin.list_disks().await.unwrap();
    assert_eq!(disks.len(), 1, "{disks:?}");

    // Another server claims a's disk: refused, a stays online.
    let answer = agent
        .register_agent(&register(
            "s3",
            vec![disk("/dev/a", Some(ours(a, "s1")), None)],
        ))
        .await
        .unwrap();
    assert!(answer.disks.is_empty());
    assert!(answer.refused_disks[0].reason.contains("server 's1'"));
    assert_eq!(admin.disk(a).await.unwrap().state, DiskState::Online);

    // s1's a now reads blank after it was labelled: replaced, so failed.
    let answer = agent
        .register_agent(&register("s1", vec![disk("/dev/a", None, None)]))
        .await
        .unwrap();
    assert_eq!(answer.refused_disks[0].disk_id, Some(a));
    assert_eq!(admin.disk(a).await.unwrap().state, DiskState::Failed);
    let events = admin
        .events(0, None, std::time::Duration::ZERO)
        .await
        .unwrap()
        .events;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "disk_refused").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "disk_failed").count(),
        1,
        "{kinds:?}"
    );
}
