//! Durability: after `kill -9` and a restart, every acknowledged change is
//! there, and no chunk is ever allocated twice.

mod common;

use std::collections::BTreeSet;

use common::*;
use vsky_api::types::AttachmentState;

#[tokio::test]
async fn kill_9_and_restart_keeps_every_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(4, 2).chunks(24)).await;
    let mut created = Vec::new();
    for i in 0..6 {
        created.push(
            admin
                .create_volume(&volume(&format!("v{i}"), (5 + i) * 7 * MIB))
                .await
                .unwrap(),
        );
    }
    admin.attach_volume("v1", "s2").await.unwrap();
    admin.delete_volume("v3").await.unwrap();
    let summary = admin.cluster().await.unwrap();
    m.kill9();

    let m = ManagerProcess::start(MANAGER, dir.path(), &[]);
    let admin = m.admin();
    assert_eq!(
        admin.cluster().await.unwrap(),
        summary,
        "summary identical after the crash"
    );
    for (i, v) in created.iter().enumerate() {
        let got = admin.volume(&v.volume.name).await;
        if i == 3 {
            assert_eq!(got.unwrap_err().code(), Some("not_found"));
            continue;
        }
        let mut want = v.clone();
        if i == 1 {
            want.volume.attached_to = Some("s2".into());
            want.volume.attachment_state = Some(AttachmentState::Attached);
        }
        assert_eq!(got.unwrap(), want);
    }
    // New allocations never reuse a chunk that is in use.
    let more = admin
        .create_volume(&volume("after", 30 * MIB))
        .await
        .unwrap();
    let mut used = BTreeSet::new();
    for v in admin.list_volumes().await.unwrap() {
        for md in admin.volume(&v.name).await.unwrap().layout {
            for leg in md.legs {
                assert!(
                    used.insert((leg.disk_id, leg.chunk_index)),
                    "chunk used twice: {leg:?}"
                );
            }
        }
    }
    assert!(more.layout.len() >= 5);
}

/// A different chunk size for an existing store is refused at start-up.
#[test]
fn chunk_size_is_fixed_once_the_store_exists() {
    let dir = tempfile::tempdir().unwrap();
    drop(ManagerProcess::start(
        MANAGER,
        dir.path(),
        &["--chunk-size", "8MiB"],
    ));
    let out = std::process::Command::new(MANAGER)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--chunk-size",
            "16MiB",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(dir.path().join("admin.token"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chunk size"), "{stderr}");
}

/// Regression (found in review): a request that chains several model
/// changes and fails part-way must leave nothing behind, in memory or on
/// disk. A registration whose second disk is invalid used to leave its
/// server in memory only, so a later disk added to it made the store
/// unloadable after a restart.
#[tokio::test]
async fn a_failed_multi_step_request_leaves_nothing_behind() {
    use vsky_api::types::{AgentDisk, CreateDisk, RegisterAgent};
    let dir = tempfile::tempdir().unwrap();
    let mut m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let agent = m.client(AGENT_TOKEN);
    let disk = |path: &str| AgentDisk {
        path: path.into(),
        size_bytes: 1 << 30,
        class: None,
        label: None,
        problem: None,
    };
    let req = RegisterAgent {
        server: "node9".into(),
        address: "127.0.0.1:30009".into(),
        labels: Default::default(),
        disks: vec![disk("/dev/vdb"), disk("relative/path")],
        storage_only: false,
    };
    assert_eq!(
        agent.register_agent(&req).await.unwrap_err().code(),
        Some("invalid_argument")
    );
    let admin = m.admin();
    assert_eq!(
        admin.server("node9").await.unwrap_err().code(),
        Some("not_found")
    );
    let add = CreateDisk {
        server: "node9".into(),
        path: "/dev/vdc".into(),
        size_bytes: 1 << 30,
        class: None,
    };
    assert_eq!(
        admin.create_disk(&add).await.unwrap_err().code(),
        Some("not_found")
    );
    let before = admin.cluster().await.unwrap();
    m.kill9();
    let m = ManagerProcess::start(MANAGER, dir.path(), &[]);
    assert_eq!(m.admin().cluster().await.unwrap(), before);
}
