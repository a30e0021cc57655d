//! Growing an attached volume against a real `vsky-manager` process, with
//! the test playing its head: the answer waits until the head reports
//! serving the new size (or says it has not, 504, and the grow stays), and
//! a grow whose head has been silent past its grace is refused with
//! nothing allocated. The kernel half (the head's table swap under I/O)
//! runs in the VM lab (`vsky-lab`, scenario `online-grow`).

mod common;

use std::time::Duration;

use common::agents::refusal;
use common::*;
use vsky_api::Client;
use vsky_api::types::*;

/// One mirrored disk's data with the suite's 8 MiB chunks.
const DATA: u64 = CHUNK - MIB;

/// A manager with `--head-grace 2s`, servers s0..s3 of one disk each, and
/// volume "v" (one 2-way mirrored disk) attached to s0.
async fn attached_volume(dir: &std::path::Path) -> (ManagerProcess, Client, Client) {
    let m = ManagerProcess::start(
        MANAGER,
        dir,
        &[
            "--chunk-size",
            "8MiB",
            "--scrub-interval",
            "0",
            "--head-grace",
            "2s",
        ],
    );
    let admin = m.admin();
    register_pool(&admin, &pool(4, 1)).await;
    admin
        .create_volume(&CreateVolume {
            name: "v".into(),
            size_bytes: DATA,
            replicas: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    admin.attach_volume("v", "s0").await.unwrap();
    let agent = m.client(AGENT_TOKEN);
    (m, admin, agent)
}

/// A heartbeat of head s0 serving "v" at `size`.
fn serving(size: u64) -> Heartbeat {
    Heartbeat {
        server: "s0".into(),
        assembled: Some(vec!["v".into()]),
        served: vec![ServedVolume {
            volume: "v".into(),
            size_bytes: size,
        }],
        ..Default::default()
    }
}

async fn event_kinds(admin: &Client) -> Vec<String> {
    common::agents::volume_kinds(admin, "v").await
}

/// The grow answers once the head serves the new size; the volume shows
/// the size served, and the event log tells the grow was applied.
#[tokio::test]
async fn the_grow_of_an_attached_volume_answers_once_the_head_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, admin, agent) = attached_volume(dir.path()).await;
    agent.heartbeat(&serving(DATA)).await.unwrap();
    assert_eq!(
        admin.volume("v").await.unwrap().volume.served_bytes,
        Some(DATA)
    );

    let grow = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.resize_volume("v", 3 * DATA, None).await })
    };
    // The head learns of the grow from its desired state, and reports the
    // old size until it has applied it.
    let desired = common::agents::eventually("the grown layout", async || {
        let d = agent.desired_state("s0", None, Duration::ZERO).await.ok()?;
        (d.volumes.first()?.mirrored_disks.len() == 3).then_some(d)
    })
    .await;
    assert_eq!(desired.volumes[0].size_bytes, 3 * DATA);
    agent.heartbeat(&serving(DATA)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!grow.is_finished(), "answered before the head served it");
    agent.heartbeat(&serving(3 * DATA)).await.unwrap();
    let detail = grow.await.unwrap().unwrap();
    assert_eq!(detail.volume.size_bytes, 3 * DATA);
    assert_eq!(detail.volume.served_bytes, Some(3 * DATA));
    let kinds = event_kinds(&admin).await;
    assert!(kinds.contains(&"volume_resized".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"volume_grown_online".to_string()),
        "{kinds:?}"
    );
}

/// A head that does not apply the grow within the wait gets a 504 that
/// says so; the grow stays (a repeat only waits), and the volume keeps
/// serving its old size until the head applies it.
#[tokio::test]
async fn a_grow_the_head_does_not_apply_in_time_says_so_and_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, admin, agent) = attached_volume(dir.path()).await;
    agent.heartbeat(&serving(DATA)).await.unwrap();
    let (status, code, message) = refusal(
        admin
            .resize_volume("v", 2 * DATA, Some(1))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, code.as_str()),
        (504, "grow_not_applied"),
        "{message}"
    );
    assert!(
        message.contains("'s0'") && message.contains(&format!("{DATA} bytes")),
        "{message}"
    );
    let v = admin.volume("v").await.unwrap();
    assert_eq!(
        (v.volume.size_bytes, v.volume.served_bytes),
        (2 * DATA, Some(DATA))
    );
    // Asking again does not allocate again; it answers once applied.
    agent.heartbeat(&serving(2 * DATA)).await.unwrap();
    let again = admin.resize_volume("v", 2 * DATA, None).await.unwrap();
    assert_eq!(again.layout.len(), 2);
    // --no-wait answers at once; more than the limit is refused.
    let now = admin.resize_volume("v", 3 * DATA, Some(0)).await.unwrap();
    assert_eq!(
        (now.volume.size_bytes, now.volume.served_bytes),
        (3 * DATA, Some(2 * DATA))
    );
    let (status, _, message) = refusal(
        admin
            .resize_volume(
                "v",
                4 * DATA,
                Some(vsky_model::limits::GROW_APPLY_WAIT_SECONDS + 1),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400, "{message}");
    assert_eq!(admin.volume("v").await.unwrap().volume.size_bytes, 3 * DATA);
}

/// A head silent past its grace cannot apply a grow: refused, nothing
/// allocated, the volume keeps its size. Detached, it grows.
#[tokio::test]
async fn the_grow_of_a_volume_whose_head_is_silent_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, admin, agent) = attached_volume(dir.path()).await;
    agent.heartbeat(&serving(DATA)).await.unwrap();
    let free = admin.cluster().await.unwrap().free_bytes;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, code, message) =
        refusal(admin.resize_volume("v", 3 * DATA, None).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "conflict"), "{message}");
    assert!(
        message.contains("silent") && message.contains("s0"),
        "{message}"
    );
    assert!(
        message.contains("vsky volume detach --force v"),
        "{message}"
    );
    let v = admin.volume("v").await.unwrap();
    assert_eq!((v.volume.size_bytes, v.layout.len()), (DATA, 1));
    assert_eq!(admin.cluster().await.unwrap().free_bytes, free);
    assert!(
        !event_kinds(&admin)
            .await
            .contains(&"volume_resized".to_string())
    );
}

/// The clients' extra wait for a resize answer covers the manager's.
#[test]
fn clients_wait_longer_than_the_manager() {
    assert!(
        vsky_api::RESIZE_EXTRA_WAIT
            > Duration::from_secs(vsky_model::limits::GROW_APPLY_WAIT_SECONDS)
    );
}
