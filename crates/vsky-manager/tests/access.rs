//! Roles against a real `vsky-manager` process: a server whose agent runs
//! with `--storage-only` cannot head a volume, whoever asks (an admin or
//! the agent), a `storage-only` agent token can neither attach volumes nor
//! register its server as a head, and a detach is two-phase: the leg
//! secrets the head knew are replaced once the head reports its devices
//! gone (graceful), or at once (forced: the fencing operation); no other
//! server attaches in between.

mod common;

use common::agents::refusal;
use common::*;
use vsky_api::types::*;
use vsky_api::{Client, ClientError};

/// A server's address as the pool registers it (`s2` → index 2).
fn address(server: &str) -> String {
    server_address(server[1..].parse().unwrap())
}

fn registration(server: &str, storage_only: bool) -> RegisterAgent {
    RegisterAgent {
        server: server.into(),
        address: address(server),
        labels: Default::default(),
        disks: vec![],
        storage_only,
    }
}

/// Servers s0..s3 (s0, s1 and s3 with a disk of 4 chunks) and volume "v":
/// one 2-way mirrored disk.
async fn pool_and_volume(admin: &Client) {
    register_pool(admin, &pool(4, 1).disks_of(2, 0).chunks(4)).await;
    admin
        .create_volume(&CreateVolume {
            name: "v".into(),
            size_bytes: CHUNK - MIB,
            replicas: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The status, code and message of a refusal.
fn assert_storage_only(e: ClientError, server: &str) {
    let (status, code, message) = refusal(e);
    assert_eq!((status, code.as_str()), (409, "storage_only"), "{message}");
    assert!(
        message.contains(&format!("server '{server}'")) && message.contains("--storage-only"),
        "the message names the server and the flag: {message}"
    );
}

async fn attached_to(admin: &Client) -> Option<String> {
    admin.volume("v").await.unwrap().volume.attached_to
}

#[tokio::test]
async fn a_storage_only_server_cannot_head_a_volume_whoever_asks() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    pool_and_volume(&admin).await;
    let agent = m.client(BOUND_AGENT_TOKEN);

    // s0's agent starts with --storage-only: neither the admin nor the
    // agent itself can attach a volume there.
    agent
        .register_agent(&registration("s0", true))
        .await
        .unwrap();
    assert!(admin.server("s0").await.unwrap().storage_only);
    assert_storage_only(admin.attach_volume("v", "s0").await.unwrap_err(), "s0");
    assert_storage_only(
        agent.agent_attach("s0", "v", false).await.unwrap_err(),
        "s0",
    );
    assert_eq!(attached_to(&admin).await, None, "a refusal changes nothing");
    let desired = agent
        .desired_state("s0", None, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(desired.volumes.is_empty());

    // The same agent restarted without --storage-only may head again.
    agent
        .register_agent(&registration("s0", false))
        .await
        .unwrap();
    assert!(!admin.server("s0").await.unwrap().storage_only);
    agent.agent_attach("s0", "v", false).await.unwrap();
    assert_eq!(attached_to(&admin).await.as_deref(), Some("s0"));
    agent.agent_detach("s0", "v").await.unwrap();
    // Its heartbeat says the devices are gone: released.
    agent.heartbeat(&assembled("s0", &[])).await.unwrap();

    // A server whose agent never said (added by an admin) may head.
    admin.attach_volume("v", "s3").await.unwrap();
    admin.detach_volume("v").await.unwrap();
}

#[tokio::test]
async fn a_storage_only_token_cannot_make_its_server_a_head() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    pool_and_volume(&admin).await;
    let storage = m.client(STORAGE_AGENT_TOKEN);

    // Before its agent registers, the admin could take s2 for a head; its
    // token still cannot attach.
    let (status, code, message) =
        refusal(storage.agent_attach("s2", "v", false).await.unwrap_err());
    assert_eq!((status, code.as_str()), (403, "forbidden"), "{message}");
    assert!(message.contains("storage-only"), "{message}");

    // Its agent must say --storage-only.
    let (status, code, message) = refusal(
        storage
            .register_agent(&registration("s2", false))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (403, "forbidden"), "{message}");
    assert!(message.contains("--storage-only"), "{message}");
    storage
        .register_agent(&registration("s2", true))
        .await
        .unwrap();
    assert_storage_only(admin.attach_volume("v", "s2").await.unwrap_err(), "s2");
    let (status, ..) = refusal(storage.agent_attach("s2", "v", false).await.unwrap_err());
    assert_eq!(status, 403);
    // Still bound to its own server.
    let (status, ..) = refusal(
        storage
            .register_agent(&registration("s3", true))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    assert_eq!(attached_to(&admin).await, None);
}

/// Every secret export name a server's desired state lists.
async fn names_told(agent: &Client, server: &str) -> std::collections::BTreeSet<String> {
    let d = agent
        .desired_state(server, None, std::time::Duration::ZERO)
        .await
        .unwrap();
    let legs = d
        .volumes
        .iter()
        .flat_map(|v| v.mirrored_disks.iter().flatten());
    d.exports
        .iter()
        .map(|e| e.export_name.clone())
        .chain(legs.map(|l| l.export_name.clone()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// A heartbeat from `server` saying which volumes it has assembled.
fn assembled(server: &str, volumes: &[&str]) -> Heartbeat {
    Heartbeat {
        server: server.into(),
        assembled: Some(volumes.iter().map(|v| v.to_string()).collect()),
        ..Default::default()
    }
}

async fn state(admin: &Client) -> Option<AttachmentState> {
    admin.volume("v").await.unwrap().volume.attachment_state
}

/// The kinds of the events about volume "v", oldest first.
async fn volume_events(admin: &Client) -> Vec<String> {
    common::agents::volume_kinds(admin, "v").await
}

#[tokio::test]
async fn a_graceful_detach_replaces_the_secrets_once_the_head_reports_its_devices_gone() {
    let dir = tempfile::tempdir().unwrap();
    // No scrubs: a never-scrubbed volume is due at once, and whether a
    // recovery pass starts its scrub before the detach is a race that would
    // add `scrub_started` to the event list checked below.
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &["--chunk-size", "8MiB", "--scrub-interval", "0"],
    );
    let admin = m.admin();
    pool_and_volume(&admin).await;
    let agent = m.client(AGENT_TOKEN);
    admin.attach_volume("v", "s2").await.unwrap();
    let known = names_told(&agent, "s2").await;
    assert_eq!(known.len(), 2, "the head knows both legs' names");
    let storage_names = async || {
        let mut exported = std::collections::BTreeSet::new();
        for s in ["s0", "s1", "s3"] {
            exported.extend(names_told(&agent, s).await);
        }
        exported
    };

    // Releasing: the head is told to tear down, the legs stay exported
    // under the names it knows (its teardown's writes succeed).
    let detail = admin.detach_volume("v").await.unwrap();
    assert_eq!(
        detail.volume.attachment_state,
        Some(AttachmentState::Releasing)
    );
    assert_eq!(detail.volume.attached_to.as_deref(), Some("s2"));
    assert!(
        names_told(&agent, "s2").await.is_empty(),
        "nothing to assemble"
    );
    assert_eq!(storage_names().await, known);

    // No other server may attach meanwhile; the message says what to do.
    let (status, code, message) = refusal(admin.attach_volume("v", "s3").await.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (409, "releasing_elsewhere"),
        "{message}"
    );
    assert!(
        message.contains("'s2'") && message.contains("vsky volume detach --force v"),
        "{message}"
    );
    let (status, code, _) = refusal(agent.agent_attach("s3", "v", false).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "releasing_elsewhere"));

    // A heartbeat that still lists the volume, or another server's, ends
    // nothing; a plain heartbeat of another server neither.
    agent.heartbeat(&assembled("s2", &["v"])).await.unwrap();
    agent.heartbeat(&assembled("s3", &[])).await.unwrap();
    agent
        .heartbeat(&Heartbeat {
            server: "s0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(state(&admin).await, Some(AttachmentState::Releasing));
    assert_eq!(storage_names().await, known);

    // The head reports its devices gone: detached, and new names.
    agent.heartbeat(&assembled("s2", &[])).await.unwrap();
    assert_eq!(state(&admin).await, None);
    assert_eq!(attached_to(&admin).await, None);
    let exported = storage_names().await;
    assert_eq!(exported.len(), 2, "both legs stay exported");
    assert!(
        exported.is_disjoint(&known),
        "no storage server exports a name the former head knew"
    );
    assert_eq!(
        volume_events(&admin).await,
        [
            "volume_created",
            "volume_attached",
            "volume_releasing",
            "volume_detached"
        ]
    );
    admin.attach_volume("v", "s3").await.unwrap();
}

#[tokio::test]
async fn attaching_again_on_the_releasing_head_keeps_the_attachment() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    pool_and_volume(&admin).await;
    let agent = m.client(AGENT_TOKEN);
    agent.agent_attach("s2", "v", false).await.unwrap();
    let known = names_told(&agent, "s2").await;
    agent.agent_detach("s2", "v").await.unwrap();
    assert_eq!(state(&admin).await, Some(AttachmentState::Releasing));
    // The deactivate failed (busy) and is retried as an activate here.
    let detail = agent.agent_attach("s2", "v", false).await.unwrap();
    assert_eq!(
        detail.volume.attachment_state,
        Some(AttachmentState::Attached)
    );
    assert_eq!(names_told(&agent, "s2").await, known, "nothing ended");
    // A late report of the failed teardown ends nothing.
    agent.heartbeat(&assembled("s2", &[])).await.unwrap();
    assert_eq!(state(&admin).await, Some(AttachmentState::Attached));
}

#[tokio::test]
async fn a_forced_detach_fences_at_once_from_either_state() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    pool_and_volume(&admin).await;
    let agent = m.client(AGENT_TOKEN);
    for release_first in [false, true] {
        admin.attach_volume("v", "s2").await.unwrap();
        let known = names_told(&agent, "s2").await;
        if release_first {
            admin.detach_volume("v").await.unwrap();
        }
        let detail = admin.force_detach_volume("v").await.unwrap();
        assert_eq!(detail.volume.attached_to, None);
        assert_eq!(detail.volume.attachment_state, None);
        let mut exported = std::collections::BTreeSet::new();
        for s in ["s0", "s1", "s3"] {
            exported.extend(names_told(&agent, s).await);
        }
        assert!(exported.is_disjoint(&known), "the old head is fenced");
        // Idempotent, and no event for nothing.
        admin.force_detach_volume("v").await.unwrap();
    }
    let kinds = volume_events(&admin).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "volume_force_detached")
            .count(),
        2,
        "{kinds:?}"
    );
    // The body is an object with known fields only.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/volumes/v/detach", m.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"forced": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn an_agent_that_cannot_report_its_devices_releases_at_its_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    pool_and_volume(&admin).await;
    let agent = m.client(AGENT_TOKEN);
    agent.agent_attach("s2", "v", false).await.unwrap();
    agent.agent_detach("s2", "v").await.unwrap();
    // An agent from before two-phase detach sends no `assembled`.
    agent
        .heartbeat(&Heartbeat {
            server: "s2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(attached_to(&admin).await, None);
}

/// A head that stops speaking for longer than `--head-grace` loses its
/// volume to an attach elsewhere (XCP-ng HA restarting the VM on another
/// host): the legs get new names first (the old head is fenced), then the
/// volume moves. While the head speaks, the attach is refused.
#[tokio::test]
async fn a_silent_head_is_fenced_and_its_volume_taken_over_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
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
    pool_and_volume(&admin).await;
    let agent = m.client(AGENT_TOKEN);
    admin.attach_volume("v", "s2").await.unwrap();
    let known = names_told(&agent, "s2").await;
    assert_eq!(known.len(), 2);

    // The head speaks: past the grace, its volume stays.
    let alive = common::agents::KeepAlive::start(agent.clone(), vec!["s2".into()]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (status, code, _) = refusal(agent.agent_attach("s3", "v", false).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "attached_elsewhere"));
    let (_, code, _) = refusal(admin.attach_volume("v", "s3").await.unwrap_err());
    assert_eq!(code, "attached_elsewhere");
    assert_eq!(names_told(&agent, "s2").await, known, "nothing fenced");

    // Silent past the grace: the attach fences and moves.
    drop(alive);
    let detail = common::agents::eventually("the takeover", async || {
        agent.agent_attach("s3", "v", false).await.ok()
    })
    .await;
    assert_eq!(detail.volume.attached_to.as_deref(), Some("s3"));
    assert!(names_told(&agent, "s2").await.is_empty());
    let mut exported = std::collections::BTreeSet::new();
    for s in ["s0", "s1", "s3"] {
        exported.extend(names_told(&agent, s).await);
    }
    assert_eq!(exported.len(), 2);
    assert!(exported.is_disjoint(&known), "the old head is fenced");
    let kinds = volume_events(&admin).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "volume_taken_over").count(),
        1,
        "{kinds:?}"
    );
}
