//! Disk and cluster identity against a real manager on loopback, with real
//! disk files: agents label blank disks; a disk another server (or another
//! cluster) labelled is refused and changes nothing; one bad disk of a
//! server is failed while its other disk keeps serving.

use std::path::Path;
use std::time::Duration;

use vsky_agent::label::{self, Decoded};
use vsky_api::Client;
use vsky_api::types::{CreateVolume, DiskState, Event};

mod common;

use common::*;

fn label_of(path: &Path) -> Decoded {
    label::read(&std::fs::File::open(path).unwrap()).unwrap()
}

fn agent(url: &str, name: &str, port: u16, disks: &[&Path]) -> vsky_agent::Config {
    let mut config = storage_agent_config(url, name, port, disks[0].to_path_buf());
    config.disks = disks
        .iter()
        .map(|p| vsky_agent::disks::DiskArg {
            path: p.to_path_buf(),
            class: None,
        })
        .collect();
    config
}

async fn events(admin: &Client) -> Vec<Event> {
    admin.events(0, None, Duration::ZERO).await.unwrap().events
}

/// Waits until the disk file carries a label of this cluster.
async fn labelled(admin: &Client, path: &Path) -> label::Label {
    let cluster_id = admin.cluster().await.unwrap().cluster_id;
    eventually(
        &format!("{} labelled", path.display()),
        async || matches!(label_of(path), Decoded::Label(l) if l.cluster_id == cluster_id),
    )
    .await;
    match label_of(path) {
        Decoded::Label(l) => l,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_disks_get_labelled_and_a_disk_two_servers_see_is_served_once() {
    let dir = tempfile::tempdir().unwrap();
    let manager = InProcessManager::start(dir.path(), CHUNK).await;
    let url = manager.url.clone();
    let admin = client(&url, ADMIN_TOKEN);
    let shared = disk_image(&dir.path().join("shared.img"), 8, CHUNK);
    let _s0 = AgentHandle::spawn(agent(&url, "s0", free_port(), &[&shared]));
    let l = labelled(&admin, &shared).await;
    assert_eq!(l.server, "s0");
    let cluster_id = admin.cluster().await.unwrap().cluster_id;
    assert_eq!(cluster_id.len(), 32, "{cluster_id}");
    let disks = admin.list_disks().await.unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(l.disk_id, disks[0].id);

    // s1 is given the same file (a LUN visible to two hosts): it registers,
    // but may not serve the disk, and s0's disk is untouched.
    let own = disk_image(&dir.path().join("own.img"), 8, CHUNK);
    let _s1 = AgentHandle::spawn(agent(&url, "s1", free_port(), &[&shared, &own]));
    eventually("s1's own disk registered", async || {
        admin.list_disks().await.unwrap().len() == 2
    })
    .await;
    labelled(&admin, &own).await;
    let disks = admin.list_disks().await.unwrap();
    let shared_path = shared.display().to_string();
    assert!(
        !disks
            .iter()
            .any(|d| d.server == "s1" && d.path == shared_path),
        "{disks:?}"
    );
    assert!(
        disks.iter().all(|d| d.state == DiskState::Online),
        "{disks:?}"
    );
    let refused: Vec<Event> = events(&admin)
        .await
        .into_iter()
        .filter(|e| e.kind == "disk_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].message.contains("server 's0'"),
        "{}",
        refused[0].message
    );
    assert_eq!(label_of(&shared), Decoded::Label(l), "the label is kept");
    // s1 learns nothing to export or wipe on the shared file.
    let desired = client(&url, AGENT_TOKEN)
        .desired_state("s1", None, Duration::ZERO)
        .await
        .unwrap();
    assert!(desired.exports.iter().all(|e| e.disk_path != shared_path));
    assert!(desired.wipes.iter().all(|w| w.disk_path != shared_path));
}

/// One disk of a server shrank: the manager fails that disk only (its legs
/// are rebuilt), and the server's other disk serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_disk_is_failed_and_the_other_serves() {
    let dir = tempfile::tempdir().unwrap();
    let manager = InProcessManager::start(dir.path(), CHUNK).await;
    let url = manager.url.clone();
    let admin = client(&url, ADMIN_TOKEN);
    let (good, bad) = (
        disk_image(&dir.path().join("good.img"), 8, CHUNK),
        disk_image(&dir.path().join("bad.img"), 8, CHUNK),
    );
    let port = free_port();
    let s0 = AgentHandle::spawn(agent(&url, "s0", port, &[&good, &bad]));
    let mut others = Vec::new();
    for s in 1..4 {
        let disk = disk_image(&dir.path().join(format!("d{s}.img")), 8, CHUNK);
        others.push(AgentHandle::spawn(agent(
            &url,
            &format!("s{s}"),
            free_port(),
            &[&disk],
        )));
    }
    eventually("5 disks registered", async || {
        admin.cluster().await.map(|c| c.disks == 5).unwrap_or(false)
    })
    .await;
    let bad_label = labelled(&admin, &bad).await;
    labelled(&admin, &good).await;
    admin
        .create_volume(&CreateVolume {
            name: "v".into(),
            size_bytes: 8 * (CHUNK - MIB),
            ..Default::default()
        })
        .await
        .unwrap();
    let disks = admin.list_disks().await.unwrap();
    let disk = |id: u64| disks.iter().find(|d| d.id == id).unwrap().clone();
    assert!(disk(bad_label.disk_id).legs > 0, "{disks:?}");

    // The disk shrinks while the agent is down; the agent starts again.
    s0.stop().await;
    std::fs::File::options()
        .write(true)
        .open(&bad)
        .unwrap()
        .set_len(MIB + 2 * CHUNK)
        .unwrap();
    let _s0 = AgentHandle::spawn(agent(&url, "s0", port, &[&good, &bad]));
    eventually("the shrunk disk failed", async || {
        admin
            .disk(bad_label.disk_id)
            .await
            .is_ok_and(|d| d.state == DiskState::Failed)
    })
    .await;
    let failed: Vec<Event> = events(&admin)
        .await
        .into_iter()
        .filter(|e| e.kind == "disk_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].message.contains("shrank"),
        "{}",
        failed[0].message
    );
    let good_disk = admin
        .list_disks()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.path == good.display().to_string())
        .unwrap();
    assert_eq!(good_disk.state, DiskState::Online);

    // The good disk serves: every export the manager lists for s0 is on it,
    // and answers over NBD.
    let desired = client(&url, AGENT_TOKEN)
        .desired_state("s0", None, Duration::ZERO)
        .await
        .unwrap();
    assert!(!desired.exports.is_empty() || good_disk.legs == 0);
    for e in &desired.exports {
        assert_eq!(e.disk_path, good.display().to_string());
        let mut nbd = connect_retrying(&format!("127.0.0.1:{port}"), &e.export_name).await;
        nbd.read(0, 4096).await.unwrap();
    }
    // The bad disk's legs are rebuilt elsewhere.
    eventually("the failed disk's legs rebuilt", async || {
        let d = admin.disk(bad_label.disk_id).await.unwrap();
        let c = admin.cluster().await.unwrap();
        d.legs_left == 0 && c.mirrored_disks_degraded == 0 && c.mirrored_disks_rebuilding == 0
    })
    .await;
    assert!(
        events(&admin)
            .await
            .iter()
            .any(|e| e.kind == "rebuild_done")
    );
}

/// A manager started on an empty store is a new cluster: an agent whose
/// disk carries the old cluster's label is refused there (loudly, naming
/// both ids), until an admin reinitializes the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_refuses_the_old_clusters_disks_until_reinitialized() {
    let dir = tempfile::tempdir().unwrap();
    let old_dir = dir.path().join("old");
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let old_manager = InProcessManager::start(&old_dir, CHUNK).await;
    let old_url = old_manager.url.clone();
    let old = client(&old_url, ADMIN_TOKEN);
    let disk = disk_image(&dir.path().join("disk.img"), 8, CHUNK);
    let port = free_port();
    let s0 = AgentHandle::spawn(agent(&old_url, "s0", port, &[&disk]));
    let old_label = labelled(&old, &disk).await;
    s0.stop().await;

    let new_manager = InProcessManager::start(&new_dir, CHUNK).await;
    let new_url = new_manager.url.clone();
    let new = client(&new_url, ADMIN_TOKEN);
    let new_id = new.cluster().await.unwrap().cluster_id;
    assert_ne!(new_id, old_label.cluster_id);
    let s0 = AgentHandle::spawn(agent(&new_url, "s0", port, &[&disk]));
    eventually("the refusal recorded", async || {
        events(&new).await.iter().any(|e| e.kind == "disk_refused")
    })
    .await;
    let refused = events(&new)
        .await
        .into_iter()
        .find(|e| e.kind == "disk_refused")
        .unwrap();
    for needle in [
        old_label.cluster_id.as_str(),
        new_id.as_str(),
        "reinitialize-disk --destroy-data",
    ] {
        assert!(refused.message.contains(needle), "{}", refused.message);
    }
    assert_eq!(new.cluster().await.unwrap().disks, 0);
    assert_eq!(
        label_of(&disk),
        Decoded::Label(old_label),
        "label untouched"
    );

    // The admin's explicit act: zero the disk, start the agent again.
    s0.stop().await;
    let (before, _) = vsky_agent::disks::reinitialize(&disk).unwrap();
    assert!(matches!(before, Decoded::Label(_)));
    let _s0 = AgentHandle::spawn(agent(&new_url, "s0", port, &[&disk]));
    let l = labelled(&new, &disk).await;
    assert_eq!(l.cluster_id, new_id);
    assert_eq!(new.cluster().await.unwrap().disks, 1);
}
