//! REST integration tests against a real `vsky-manager` process on
//! loopback: authentication, bad input, the full volume lifecycle, agent
//! endpoints, TLS, metrics and the OpenAPI document.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vsky_api::types::*;
use vsky_api::{Client, ClientConfig};

fn raw() -> reqwest::Client {
    reqwest::Client::new()
}

async fn status_and_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Requests without a valid token get 401, agent tokens cannot use admin
/// endpoints (403), a bound agent token acts for its own server only, and
/// health plus the OpenAPI document stay open.
#[tokio::test]
async fn authentication_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let http = raw();
    for path in [
        "/api/v1/cluster",
        "/api/v1/volumes",
        "/api/v1/servers",
        "/metrics",
        "/api/v1/agent/desired-state?server=x",
    ] {
        let (status, body) =
            status_and_body(http.get(format!("{}{path}", m.url)).send().await.unwrap()).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["code"], "unauthorized");
    }
    let (status, _) = status_and_body(
        http.get(format!("{}/api/v1/cluster", m.url))
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        http.get(format!("{}/api/v1/health", m.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/api/v1/openapi.json", m.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let agent = m.client(AGENT_TOKEN);
    let err = agent.list_volumes().await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));
    let reg = |name: &str| RegisterAgent {
        server: name.into(),
        address: format!("127.0.0.1:{}", 30000 + name.len()),
        labels: Default::default(),
        disks: vec![],
        storage_only: false,
    };
    agent.register_agent(&reg("anything")).await.unwrap();
    let bound = m.client(BOUND_AGENT_TOKEN);
    bound.register_agent(&reg("s0")).await.unwrap();
    assert_eq!(
        bound.register_agent(&reg("s1x")).await.unwrap_err().code(),
        Some("forbidden")
    );
}

/// A metrics token reads /metrics and nothing else; agent tokens do not
/// read /metrics.
#[tokio::test]
async fn metrics_tokens_only_read_metrics() {
    let dir = tempfile::tempdir().unwrap();
    const SCRAPER: &str = "metrics-token-for-tests-0123456";
    std::fs::write(dir.path().join("metrics.token"), format!("{SCRAPER}\n")).unwrap();
    let metrics_file = dir.path().join("metrics.token");
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &[
            "--chunk-size",
            "8MiB",
            "--metrics-token-file",
            metrics_file.to_str().unwrap(),
        ],
    );
    let http = raw();
    let get = |path: &str, token: &str| {
        http.get(format!("{}{path}", m.url))
            .bearer_auth(token)
            .send()
    };
    let resp = get("/metrics", SCRAPER).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("vsky_rebuilds_running"));
    for path in [
        "/api/v1/cluster",
        "/api/v1/events",
        "/api/v1/agent/desired-state?server=s0",
    ] {
        let (status, body) = status_and_body(get(path, SCRAPER).await.unwrap()).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body["code"], "forbidden");
    }
    let (status, _) = status_and_body(get("/metrics", AGENT_TOKEN).await.unwrap()).await;
    assert_eq!(status, 403, "agent tokens do not read metrics");
    assert_eq!(get("/metrics", ADMIN_TOKEN).await.unwrap().status(), 200);
}

/// Bad input of every kind gets a 4xx with a stable code and changes
/// nothing.
#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1).chunks(10)).await;
    let before = admin.cluster().await.unwrap();
    // A fresh client per request: the manager answers an oversized body
    // before reading it and closes that connection, which a pooled client
    // could otherwise reuse for the next case.
    let http = raw();
    let post = |path: &str, body: String, ctype: Option<&str>| {
        let mut r = raw()
            .post(format!("{}{path}", m.url))
            .bearer_auth(ADMIN_TOKEN)
            .body(body);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        r.send()
    };
    let json_ct = Some("application/json");
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 1, "bogus": 1}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            "{not json".into(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 1}).to_string(),
            None,
            415,
            "unsupported_media_type",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": "10GiB"}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": -1}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "bad/name", "size_bytes": 4096}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 0}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 4096, "replicas": 1}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 4096, "replicas": 4}).to_string(),
            json_ct,
            507,
            "not_enough_servers",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": u64::MAX}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 1u64 << 40}).to_string(),
            json_ct,
            507,
            "not_enough_space",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 4096, "class": "nvme"}).to_string(),
            json_ct,
            507,
            "not_enough_space",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 4096, "near_server": "nope"}).to_string(),
            json_ct,
            404,
            "not_found",
        ),
        (
            "/api/v1/volumes",
            json!({"name": "v", "size_bytes": 4096, "stripe": {"width": 2, "unit_bytes": 3000}})
                .to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/servers",
            json!({"name": "s0", "address": "127.0.0.1:1"}).to_string(),
            json_ct,
            409,
            "already_exists",
        ),
        (
            "/api/v1/servers",
            json!({"name": "x", "address": "no-port"}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/disks",
            json!({"server": "s0", "path": "relative", "size_bytes": 1u64 << 30}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/disks",
            json!({"server": "s0", "path": "/dev/../etc/passwd", "size_bytes": 1u64 << 30})
                .to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/disks",
            json!({"server": "s0", "path": "/dev/tiny", "size_bytes": 4096}).to_string(),
            json_ct,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/disks",
            json!({"server": "ghost", "path": "/dev/x", "size_bytes": 1u64 << 30}).to_string(),
            json_ct,
            404,
            "not_found",
        ),
        (
            "/api/v1/disks",
            json!({"server": "s0", "path": disk_path(0), "size_bytes": 1u64 << 30}).to_string(),
            json_ct,
            409,
            "already_exists",
        ),
        (
            "/api/v1/volumes/ghost/attach",
            json!({"server": "s0"}).to_string(),
            json_ct,
            404,
            "not_found",
        ),
        (
            "/api/v1/volumes/ghost/resize",
            json!({"size_bytes": 1}).to_string(),
            json_ct,
            404,
            "not_found",
        ),
        (
            "/api/v1/disks/abc/fail",
            String::new(),
            None,
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/volumes",
            "x".repeat(2 << 20),
            json_ct,
            413,
            "payload_too_large",
        ),
    ];
    for (path, body, ctype, want_status, want_code) in cases {
        let shown = body.chars().take(80).collect::<String>();
        let (status, body) = status_and_body(post(path, body, ctype).await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str().unwrap_or("")),
            (want_status, want_code),
            "{path} {shown} → {body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body["request_id"].as_str().is_some());
    }
    let (status, body) = status_and_body(
        http.get(format!("{}/api/v1/nowhere", m.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str().unwrap()), (404, "not_found"));
    let (status, _) = status_and_body(
        http.put(format!("{}/api/v1/volumes", m.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(admin.cluster().await.unwrap(), before, "nothing changed");
}

/// Create → show layout → attach → grow → detach → delete → wipe, on a
/// 4 servers × 2 disks pool, with every leg pair on distinct servers.
#[tokio::test]
async fn volume_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(4, 2).racks(2)).await;
    let s = admin.cluster().await.unwrap();
    assert_eq!(
        (s.servers, s.disks, s.capacity_bytes),
        (4, 8, 8 * 16 * CHUNK)
    );

    // 100 MiB over 7 MiB data chunks → 15 mirrored disks.
    let v = admin
        .create_volume(&volume("vm1", 100 * MIB))
        .await
        .unwrap();
    assert_eq!(v.volume.size_bytes, 100 * MIB);
    assert_eq!(v.layout.len(), 15);
    assert_eq!(v.data_bytes_per_mirrored_disk, CHUNK - MIB);
    for md in &v.layout {
        let servers: BTreeSet<_> = md.legs.iter().map(|l| l.server.clone()).collect();
        assert_eq!(servers.len(), 2, "legs on distinct servers: {md:?}");
        let racks: BTreeSet<_> = md
            .legs
            .iter()
            .map(|l| l.server.trim_start_matches('s').parse::<u32>().unwrap() % 2)
            .collect();
        assert_eq!(racks.len(), 2, "legs in distinct racks: {md:?}");
        assert!(
            md.legs
                .iter()
                .all(|l| l.state == LegState::Active && l.offset_bytes >= MIB)
        );
    }
    let shown = admin.volume("vm1").await.unwrap();
    assert_eq!(shown, v);
    let listed = admin.list_volumes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].health, VolumeHealth::Healthy);
    let raw_show: Value = raw()
        .get(format!("{}/api/v1/volumes/vm1", m.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !raw_show.to_string().contains("export_name"),
        "export secrets never reach the admin view"
    );

    assert_eq!(
        admin
            .create_volume(&volume("vm1", MIB))
            .await
            .unwrap_err()
            .code(),
        Some("already_exists")
    );
    let attached = admin.attach_volume("vm1", "s1").await.unwrap();
    assert_eq!(attached.volume.attached_to.as_deref(), Some("s1"));
    admin.attach_volume("vm1", "s1").await.unwrap();
    assert_eq!(
        admin.attach_volume("vm1", "s2").await.unwrap_err().code(),
        Some("attached_elsewhere")
    );
    assert_eq!(
        admin.delete_volume("vm1").await.unwrap_err().code(),
        Some("conflict")
    );
    assert_eq!(
        admin.remove_server("s1").await.unwrap_err().code(),
        Some("conflict")
    );

    // The head's desired state carries the layout with export secrets; a
    // storage server's carries its exports.
    let head = m
        .client(AGENT_TOKEN)
        .desired_state("s1", None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(head.volumes.len(), 1);
    assert_eq!(head.volumes[0].mirrored_disks.len(), 15);
    let exports: usize = futures_count(&m, 4).await;
    assert_eq!(exports, 30, "every leg is exported by exactly one server");

    // vm1 is attached: without waiting for its (played) head to serve the
    // new size (tests/grow.rs plays that).
    let grown = admin
        .resize_volume("vm1", 200 * MIB, Some(0))
        .await
        .unwrap();
    assert_eq!(
        (grown.volume.size_bytes, grown.layout.len()),
        (200 * MIB, 29)
    );
    assert_eq!(
        grown.layout[..15],
        v.layout[..],
        "growing keeps existing legs"
    );
    assert_eq!(
        admin
            .resize_volume("vm1", 10 * MIB, Some(0))
            .await
            .unwrap_err()
            .code(),
        Some("invalid_argument")
    );

    admin.detach_volume("vm1").await.unwrap();
    admin.detach_volume("vm1").await.unwrap();
    // Releasing until the head (s1) reports its devices gone.
    assert_eq!(
        admin.delete_volume("vm1").await.unwrap_err().code(),
        Some("conflict")
    );
    m.client(AGENT_TOKEN)
        .heartbeat(&Heartbeat {
            server: "s1".into(),
            assembled: Some(vec![]),
            ..Default::default()
        })
        .await
        .unwrap();
    admin.delete_volume("vm1").await.unwrap();
    assert_eq!(
        admin.volume("vm1").await.unwrap_err().code(),
        Some("not_found")
    );
    let s = admin.cluster().await.unwrap();
    assert_eq!((s.used_bytes, s.releasing_bytes), (0, 58 * CHUNK));

    // Freed chunks come back only once their agents report them wiped.
    for server in 0..4 {
        let name = format!("s{server}");
        let desired = m
            .client(AGENT_TOKEN)
            .desired_state(&name, None, Duration::ZERO)
            .await
            .unwrap();
        let wiped: Vec<WipedChunk> = desired
            .wipes
            .iter()
            .map(|w| WipedChunk {
                chunk: w.chunk,
                release: w.release,
            })
            .collect();
        m.client(AGENT_TOKEN)
            .heartbeat(&Heartbeat {
                server: name,
                wiped,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let s = admin.cluster().await.unwrap();
    assert_eq!((s.releasing_bytes, s.free_bytes), (0, s.capacity_bytes));

    // Failing a disk fails its legs; removing a used disk is refused.
    let v = admin.create_volume(&volume("vm2", 20 * MIB)).await.unwrap();
    let disk = v.layout[0].legs[0].disk_id;
    assert_eq!(
        admin.remove_disk(disk).await.unwrap_err().code(),
        Some("conflict")
    );
    admin.fail_disk(disk).await.unwrap();
    // Its legs failed; the recovery loop may already have given them new
    // chunks (rebuilding), but none stays on the failed disk.
    let v = admin.volume("vm2").await.unwrap();
    assert_ne!(v.volume.health, VolumeHealth::Healthy);
    assert!(
        v.layout
            .iter()
            .flat_map(|md| &md.legs)
            .all(|l| l.disk_id != disk || l.state == LegState::Failed)
    );
    let s = admin.cluster().await.unwrap();
    assert_eq!(
        s.mirrored_disks_degraded + s.mirrored_disks_rebuilding,
        v.volume.mirrored_disks_degraded + v.volume.mirrored_disks_rebuilding
    );
    admin.delete_volume("vm2").await.unwrap();
    admin.remove_disk(disk).await.unwrap();
    assert_eq!(
        admin.disk(disk).await.unwrap_err().code(),
        Some("not_found")
    );
}

async fn futures_count(m: &ManagerProcess, servers: usize) -> usize {
    let mut n = 0;
    for s in 0..servers {
        n += m
            .client(AGENT_TOKEN)
            .desired_state(&format!("s{s}"), None, Duration::ZERO)
            .await
            .unwrap()
            .exports
            .len();
    }
    n
}

/// An agent's long-poll wakes as soon as the cluster changes.
#[tokio::test]
async fn desired_state_long_poll_wakes_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1).chunks(8)).await;
    let agent = m.client(AGENT_TOKEN);
    let first = agent
        .desired_state("s0", None, Duration::ZERO)
        .await
        .unwrap();
    let poll = tokio::spawn({
        let agent = agent.clone();
        async move {
            agent
                .desired_state("s0", Some(first.generation), Duration::from_secs(50))
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "nothing changed yet");
    admin.create_volume(&volume("v", 30 * MIB)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("long-poll woke")
        .unwrap();
    assert_ne!(next.generation, first.generation);
    assert!(!next.exports.is_empty());
}

/// TLS: a client trusting the CA file talks HTTPS; plain HTTP to the TLS
/// port gets no answer.
#[tokio::test]
async fn tls_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = self_signed_cert(dir.path());
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    assert!(m.url.starts_with("https://"));
    let client = Client::new(ClientConfig {
        manager_url: m.url.clone(),
        token: Some(ADMIN_TOKEN.into()),
        ca_file: Some(cert_path),
        timeout: None,
    })
    .unwrap();
    assert_eq!(client.cluster().await.unwrap().servers, 0);
    let untrusting = Client::new(ClientConfig {
        manager_url: m.url.clone(),
        token: Some(ADMIN_TOKEN.into()),
        ..Default::default()
    })
    .unwrap();
    assert!(
        untrusting.cluster().await.is_err(),
        "an unknown CA is refused"
    );
    let plain = m.url.replace("https://", "http://");
    assert!(
        raw()
            .get(format!("{plain}/api/v1/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_err()
    );
}

/// Metrics expose capacity and request counts; the OpenAPI document lists
/// every route.
#[tokio::test]
async fn metrics_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1).chunks(8)).await;
    admin.create_volume(&volume("v", 10 * MIB)).await.unwrap();
    let text = metrics(&m).await;
    assert!(
        text.contains(&format!("vsky_capacity_bytes {}", 3 * 8 * CHUNK)),
        "{text}"
    );
    assert!(text.contains("vsky_volumes 1"));
    assert!(text.contains("vsky_mirrored_disks_degraded 0"));
    assert!(
        text.contains(
            "vsky_http_requests_total{method=\"POST\",route=\"/api/v1/volumes\",status=\"201\"} 1"
        ),
        "{text}"
    );
    let doc: Value = raw()
        .get(format!("{}/api/v1/openapi.json", m.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    for path in [
        "/api/v1/volumes",
        "/api/v1/volumes/{name}/attach",
        "/api/v1/agent/desired-state",
        "/api/v1/disks/{id}/fail",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    assert!(doc["components"]["schemas"].get("VolumeDetail").is_some());
}

/// Groups (XAPI SRs) and volume metadata over REST: create (idempotent per
/// uuid), list volumes by group, set and unset keys, delete when empty.
#[tokio::test]
async fn groups_and_volume_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1).chunks(8)).await;
    let sr = CreateGroup {
        name: "sr-1".into(),
        uuid: Some("0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e3f".into()),
        display_name: Some("Pool SR".into()),
        description: "for VMs".into(),
    };
    admin.create_group(&sr).await.unwrap();
    admin.create_group(&sr).await.unwrap();
    let other = CreateGroup {
        uuid: Some("0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e40".into()),
        ..sr.clone()
    };
    assert_eq!(
        admin.create_group(&other).await.unwrap_err().code(),
        Some("already_exists")
    );
    let not_a_uuid = CreateGroup {
        name: "sr-2".into(),
        uuid: Some("0d6c5e1e-sr".into()),
        ..sr.clone()
    };
    let e = admin.create_group(&not_a_uuid).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_argument"));
    assert!(e.to_string().contains("group uuid"), "{e}");
    let mut keys = std::collections::BTreeMap::new();
    keys.insert("vdi-type".to_string(), "user".to_string());
    let v = admin
        .create_volume(&CreateVolume {
            name: "vdi-1".into(),
            size_bytes: 10 * MIB,
            group: Some("sr-1".into()),
            display_name: Some("my disk".into()),
            keys,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (v.volume.group.as_deref(), v.volume.display_name.as_str()),
        (Some("sr-1"), "my disk")
    );
    admin.create_volume(&volume("outside", MIB)).await.unwrap();
    let in_sr = admin.list_volumes_in("sr-1").await.unwrap();
    assert_eq!(
        in_sr.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["vdi-1"]
    );
    assert_eq!(
        admin.list_volumes_in("ghost").await.unwrap_err().code(),
        Some("not_found")
    );
    let g = admin.group("sr-1").await.unwrap();
    assert_eq!(
        (g.volumes, g.virtual_size_bytes, g.physical_bytes),
        (1, 10 * MIB, 2 * 2 * CHUNK)
    );
    let mut update = UpdateVolume {
        description: Some("changed".into()),
        unset_keys: vec!["vdi-type".into()],
        ..Default::default()
    };
    update
        .set_keys
        .insert("is_a_snapshot".into(), "false".into());
    let v = admin.update_volume("vdi-1", &update).await.unwrap();
    assert_eq!(v.volume.description, "changed");
    assert_eq!(v.volume.keys.keys().collect::<Vec<_>>(), ["is_a_snapshot"]);
    let renamed = admin
        .update_group(
            "sr-1",
            &UpdateGroup {
                display_name: Some("Renamed".into()),
                description: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.display_name, "Renamed");
    assert_eq!(
        admin.delete_group("sr-1").await.unwrap_err().code(),
        Some("conflict")
    );
    admin.delete_volume("vdi-1").await.unwrap();
    admin.delete_group("sr-1").await.unwrap();
    assert_eq!(admin.list_groups().await.unwrap().len(), 0);
}

/// A wipe report frees a chunk only for the release it was made for: a
/// retried report of an earlier release, or one without a release id (an
/// older agent), leaves a chunk freed again releasing until its new
/// release is wiped.
#[tokio::test]
async fn wipe_reports_free_only_the_current_release() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    let agent = m.client(AGENT_TOKEN);
    register_pool(&admin, &pool(2, 1).chunks(1)).await;
    let report = |server: &str, wiped: Vec<WipedChunk>, unnumbered: Vec<ChunkId>| Heartbeat {
        server: server.into(),
        wiped,
        wiped_chunks: unnumbered,
        ..Default::default()
    };
    let releasing = async || admin.cluster().await.unwrap().releasing_bytes / CHUNK;
    // Both chunks used, freed, and their wipes for that release listed.
    let free_round = async |name: &str| -> Vec<WipedChunk> {
        admin.create_volume(&volume(name, MIB)).await.unwrap();
        admin.delete_volume(name).await.unwrap();
        let mut wiped = Vec::new();
        for s in ["s0", "s1"] {
            let desired = agent.desired_state(s, None, Duration::ZERO).await.unwrap();
            assert_eq!(desired.wipes.len(), 1);
            assert_ne!(desired.wipes[0].release, 0, "a release id");
            wiped.push(WipedChunk {
                chunk: desired.wipes[0].chunk,
                release: desired.wipes[0].release,
            });
        }
        wiped
    };

    let first = free_round("a").await;
    assert_eq!(releasing().await, 2);
    // An older agent's report carries no release id: ignored.
    agent
        .heartbeat(&report("s0", vec![], vec![first[0].chunk]))
        .await
        .unwrap();
    assert_eq!(releasing().await, 2);
    for (s, w) in ["s0", "s1"].into_iter().zip(&first) {
        agent.heartbeat(&report(s, vec![*w], vec![])).await.unwrap();
    }
    assert_eq!(releasing().await, 0);

    // The same chunks reused and freed again: new releases.
    let second = free_round("b").await;
    assert_eq!(
        (second[0].chunk, second[1].chunk),
        (first[0].chunk, first[1].chunk)
    );
    assert!(second[0].release != first[0].release);
    // The first reports, delivered again (a retried heartbeat), and a
    // release-less one free nothing: the chunks were not wiped since.
    for (s, w) in ["s0", "s1"].into_iter().zip(&first) {
        agent
            .heartbeat(&report(s, vec![*w], vec![w.chunk]))
            .await
            .unwrap();
    }
    assert_eq!(releasing().await, 2);
    for (s, w) in ["s0", "s1"].into_iter().zip(&second) {
        agent.heartbeat(&report(s, vec![*w], vec![])).await.unwrap();
    }
    let s = admin.cluster().await.unwrap();
    assert_eq!((s.releasing_bytes, s.free_bytes), (0, s.capacity_bytes));
}
