//! A token grants its role and nothing more, against a real manager and
//! real storage agents on loopback: a storage-only agent's server cannot
//! head a volume (through the admin endpoint or its own agent endpoint),
//! and the end of an attachment gives every leg a new secret export name,
//! so the storage agents cut the connections a former head opened and
//! refuse its names: after a graceful detach only once the head reports its
//! devices gone (its teardown must still reach the legs), after a forced
//! detach (fencing) at once.

use std::time::Duration;

use vsky_api::ClientError;
use vsky_api::types::{AttachmentState, CreateServer, CreateVolume, DesiredState, Heartbeat};

mod common;

use common::*;

/// Creates volume `name`: one 2-way mirrored disk.
async fn one_mirrored_disk(admin: &vsky_api::Client, name: &str) {
    admin
        .create_volume(&CreateVolume {
            name: name.into(),
            size_bytes: CHUNK - MIB,
            replicas: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn assert_storage_only(e: ClientError, server: &str) {
    let ClientError::Api {
        status,
        code,
        message,
    } = e
    else {
        panic!("expected the manager's refusal, got {e}");
    };
    assert_eq!((status, code.as_str()), (409, "storage_only"), "{message}");
    assert!(
        message.contains(&format!("'{server}'")) && message.contains("--storage-only"),
        "the message names the server and the flag: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_only_agents_server_cannot_head_a_volume() {
    let dir = tempfile::tempdir().unwrap();
    // Real agents started with head: false, i.e. `--storage-only`.
    let cluster = LocalCluster::start(dir.path(), 2, 8).await;
    let admin = cluster.admin();
    one_mirrored_disk(&admin, "v").await;
    assert!(
        admin.server("s0").await.unwrap().storage_only,
        "the agent's role is recorded at registration"
    );

    assert_storage_only(admin.attach_volume("v", "s0").await.unwrap_err(), "s0");
    let agent = cluster.client(AGENT_TOKEN);
    assert_storage_only(
        agent.agent_attach("s1", "v", false).await.unwrap_err(),
        "s1",
    );
    let v = admin.volume("v").await.unwrap();
    assert_eq!(
        v.volume.attached_to, None,
        "a refused attach changes nothing"
    );
    for s in ["s0", "s1"] {
        let desired = agent.desired_state(s, None, Duration::ZERO).await.unwrap();
        assert!(desired.volumes.is_empty(), "nothing for {s} to assemble");
    }
}

/// The export names of volume `v`'s legs as its head is told them.
async fn head_legs(agent: &vsky_api::Client, head: &str) -> Vec<vsky_api::types::LegSpec> {
    let desired: DesiredState = agent
        .desired_state(head, None, Duration::ZERO)
        .await
        .unwrap();
    desired.volumes[0].mirrored_disks[0].clone()
}

/// Waits until the connection is cut (a read fails).
async fn assert_cut(c: &mut vsky_nbd::client::Client, server: &str) {
    let cut = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if c.read(MIB, 4096).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        cut.is_ok(),
        "the old head's connection to {server} stays open"
    );
}

/// The played head's heartbeat: which volumes it has assembled.
fn assembled(volumes: &[&str]) -> Heartbeat {
    Heartbeat {
        server: "head".into(),
        assembled: Some(volumes.iter().map(|v| v.to_string()).collect()),
        ..Default::default()
    }
}

/// A manager, two real storage agents, a played head server "head" and a
/// spare server "other", and volume "v" attached to "head" with both legs
/// opened by the head and written through.
async fn attached_and_open(
    dir: &std::path::Path,
) -> (
    LocalCluster,
    vsky_api::Client,
    Vec<vsky_api::types::LegSpec>,
    Vec<vsky_nbd::client::Client>,
) {
    let cluster = LocalCluster::start(dir, 2, 8).await;
    let admin = cluster.admin();
    // Heads as an admin adds them; this test plays their agents.
    for (name, port) in [("head", 9), ("other", 7)] {
        admin
            .create_server(&CreateServer {
                name: name.into(),
                address: format!("127.0.0.1:{port}"),
                labels: Default::default(),
            })
            .await
            .unwrap();
    }
    one_mirrored_disk(&admin, "v").await;
    let agent = cluster.client(AGENT_TOKEN);
    agent.agent_attach("head", "v", false).await.unwrap();
    let old = head_legs(&agent, "head").await;
    assert_eq!(old.len(), 2);
    let mut conns = Vec::new();
    for leg in &old {
        let mut c = connect_retrying(&leg.server_address, &leg.export_name).await;
        c.write(MIB, &[0xa5; 4096], true).await.unwrap();
        conns.push(c);
    }
    (cluster, admin, old, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_detach_cuts_the_old_names_only_once_the_head_reports_its_devices_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, admin, old, mut conns) = attached_and_open(dir.path()).await;
    let agent = cluster.client(AGENT_TOKEN);

    let detail = agent.agent_detach("head", "v").await.unwrap();
    assert_eq!(
        detail.volume.attachment_state,
        Some(AttachmentState::Releasing)
    );
    // Another server cannot attach while the head releases.
    let e = admin.attach_volume("v", "other").await.unwrap_err();
    assert_eq!(e.code(), Some("releasing_elsewhere"), "{e}");

    // The head tears down (its desired state no longer lists the volume)
    // and its last writes through the old names still land, however long
    // the storage agents have had to apply the new desired state; a
    // heartbeat that still lists the volume changes nothing.
    let desired = agent
        .desired_state("head", None, Duration::ZERO)
        .await
        .unwrap();
    assert!(desired.volumes.is_empty(), "the head is told to tear down");
    agent.heartbeat(&assembled(&["v"])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in &mut conns {
        c.write(MIB, &[0x5a; 4096], true).await.unwrap();
        assert_eq!(c.read(MIB, 4096).await.unwrap(), vec![0x5a; 4096]);
    }
    for leg in &old {
        vsky_nbd::client::Client::connect(leg.server_address.as_str(), &leg.export_name)
            .await
            .expect("the old name still opens the leg while releasing");
    }

    // The head reports its devices gone: detached; the storage agents cut
    // the old connections and refuse the old names.
    agent.heartbeat(&assembled(&[])).await.unwrap();
    assert_eq!(admin.volume("v").await.unwrap().volume.attached_to, None);
    for (leg, mut c) in old.iter().zip(conns) {
        assert_cut(&mut c, &leg.server).await;
        assert!(
            vsky_nbd::client::Client::connect(leg.server_address.as_str(), &leg.export_name)
                .await
                .is_err(),
            "the old name still opens the leg on {}",
            leg.server
        );
    }

    // The data stays, under names the old head never learnt: the next
    // head reads what was written last.
    agent.agent_attach("other", "v", false).await.unwrap();
    let new = head_legs(&agent, "other").await;
    for (leg, before) in new.iter().zip(&old) {
        assert_eq!(leg.chunk, before.chunk, "the same chunks");
        assert_ne!(leg.export_name, before.export_name);
        let mut c = connect_retrying(&leg.server_address, &leg.export_name).await;
        assert_eq!(c.read(MIB, 4096).await.unwrap(), vec![0x5a; 4096]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_detach_cuts_the_old_heads_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, admin, old, conns) = attached_and_open(dir.path()).await;
    let agent = cluster.client(AGENT_TOKEN);

    // The head is dead or cut off: an admin fences it. Nothing from the
    // head is needed.
    let detail = admin.force_detach_volume("v").await.unwrap();
    assert_eq!(detail.volume.attached_to, None);
    for (leg, mut c) in old.iter().zip(conns) {
        assert_cut(&mut c, &leg.server).await;
        assert!(
            c.write(MIB, &[0xee; 4096], true).await.is_err(),
            "a fenced head's write must fail"
        );
        assert!(
            vsky_nbd::client::Client::connect(leg.server_address.as_str(), &leg.export_name)
                .await
                .is_err(),
            "the old name still opens the leg on {}",
            leg.server
        );
    }
    // Another head takes over and reads what the old one wrote before.
    agent.agent_attach("other", "v", false).await.unwrap();
    for leg in head_legs(&agent, "other").await {
        let mut c = connect_retrying(&leg.server_address, &leg.export_name).await;
        assert_eq!(c.read(MIB, 4096).await.unwrap(), vec![0xa5; 4096]);
    }
}
