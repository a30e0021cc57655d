//! The local API's per-domain activations against a real manager and real
//! storage agents on loopback, with a played head: this host has no
//! device-mapper, so a task stands in for the reconcile loop (it "assembles"
//! what the manager's desired state lists by recording a device in the
//! shared state, and reports it in heartbeats, as the agent does). What is
//! tested is everything above the kernel: the table, the file, and what
//! the manager is asked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use vsky_api::types::{AttachmentState, CreateServer, CreateVolume, Heartbeat};
use vsky_testkit::agents::LocalCluster;
use vsky_testkit::free_port;
use vsky_testkit::pool::{CHUNK, MIB};
use vsky_testkit::tokens::AGENT_TOKEN;

use super::*;
use crate::shared::Assembled;

const TOKEN: &str = "local-api-token-for-tests-0123";
const HEAD: &str = "head";

/// Plays the head's reconcile loop until `stop` fires: makes the shared
/// state's assembled volumes follow the manager's desired state and
/// reports them.
async fn play_head(agent: Client, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        if let Ok(desired) = agent.desired_state(HEAD, None, Duration::ZERO).await {
            let want: BTreeSet<String> = desired.volumes.iter().map(|v| v.name.clone()).collect();
            let changed = {
                let mut assembled = shared.assembled.lock_unpoisoned();
                let before: BTreeSet<String> = assembled.keys().cloned().collect();
                assembled.retain(|v, _| want.contains(v));
                for v in &want {
                    assembled.entry(v.clone()).or_insert_with(|| Assembled {
                        device: PathBuf::from(format!("/dev/mapper/vsky-{v}")),
                        size_bytes: 0,
                    });
                }
                before != want
            };
            shared.set_present(want.clone());
            if changed {
                shared.assembly.send_modify(|n| *n += 1);
            }
            let _ = agent
                .heartbeat(&Heartbeat {
                    server: HEAD.into(),
                    assembled: Some(want.into_iter().collect()),
                    ..Default::default()
                })
                .await;
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// A manager with two storage agents, the played head's server, volumes
/// "v" and "w" (one mirrored disk each).
async fn cluster(dir: &Path) -> LocalCluster {
    let cluster = LocalCluster::start(dir, 2, 8).await;
    let admin = cluster.admin();
    admin
        .create_server(&CreateServer {
            name: HEAD.into(),
            address: "127.0.0.1:9".into(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    for name in ["v", "w"] {
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
    cluster
}

/// The local API of the played head, with its table in `file`.
struct LocalApi {
    base: String,
    http: reqwest::Client,
    shared: Arc<Shared>,
    _stop_api: oneshot::Sender<()>,
    _stop_head: oneshot::Sender<()>,
}

impl LocalApi {
    async fn start(cluster: &LocalCluster, file: &Path, present: &[&str]) -> LocalApi {
        let shared = Arc::new(Shared::default());
        // What a restarted agent finds in the kernel.
        *shared.present.lock_unpoisoned() = present.iter().map(|v| v.to_string()).collect();
        let port = free_port();
        let agent = cluster.client(AGENT_TOKEN);
        let ctx = Context {
            client: agent.clone(),
            server: HEAD.into(),
            head: true,
            shared: shared.clone(),
        };
        let (stop_api, api_stopped) = oneshot::channel::<()>();
        spawn(
            ApiConfig {
                listen: format!("127.0.0.1:{port}").parse().unwrap(),
                token: TOKEN.into(),
                activations_file: file.to_path_buf(),
            },
            ctx,
            async move {
                let _ = api_stopped.await;
            },
        )
        .await
        .unwrap();
        let (stop_head, head_stopped) = oneshot::channel::<()>();
        tokio::spawn(play_head(agent, shared.clone(), head_stopped));
        LocalApi {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            shared,
            _stop_api: stop_api,
            _stop_head: stop_head,
        }
    }

    /// POSTs `body` (none: `None`) to `/v1/volumes/{volume}/{action}`.
    async fn post(&self, volume: &str, action: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/volumes/{volume}/{action}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn list(&self) -> Value {
        self.http
            .get(format!("{}/v1/volumes", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Whom the manager has `volume` attached to, and in which state.
async fn attachment(
    cluster: &LocalCluster,
    volume: &str,
) -> (Option<String>, Option<AttachmentState>) {
    let v = cluster.admin().volume(volume).await.unwrap().volume;
    (v.attached_to, v.attachment_state)
}

fn file_table(file: &Path) -> Activations {
    match activations::load(file) {
        Loaded::Table(t) => t,
        other => panic!("the activations file: {other:?}"),
    }
}

/// A VM and a dom0 reader activate one volume: they share the device; the
/// first deactivate leaves it (and the manager's attachment), the last
/// releases it. Close releases only what nobody holds; the table is on
/// file after every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_goes_with_the_last_domain() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let file = dir.path().join("run/activations.json");
    let api = LocalApi::start(&cluster, &file, &[]).await;

    let (status, body) = api.post("v", "attach", Some(json!({"domain": "7"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device"], "/dev/mapper/vsky-v");
    assert_eq!(body["activations"], 1);
    let (status, body) = api
        .post(
            "v",
            "attach",
            Some(json!({"domain": "u0-reader", "mode": "ro"})),
        )
        .await;
    assert_eq!(
        (status, body["activations"].clone()),
        (200, json!(2)),
        "{body}"
    );
    // The same domain again is the same activation.
    let (status, body) = api
        .post("v", "attach", Some(json!({"domain": "7", "mode": "rw"})))
        .await;
    assert_eq!(
        (status, body["activations"].clone()),
        (200, json!(2)),
        "{body}"
    );
    assert_eq!(
        api.list().await,
        json!([{"name": "v", "device": "/dev/mapper/vsky-v", "domains": {"7": "rw", "u0-reader": "ro"}}])
    );
    assert_eq!(file_table(&file).holders("v").unwrap().count(), 2);

    // The VM shuts down (xapi deactivates twice, then detaches): the
    // reader keeps the device and the attachment.
    for action in ["deactivate", "deactivate", "detach"] {
        let (status, body) = api.post("v", "detach", Some(json!({"domain": "7"}))).await;
        assert_eq!(status, 200, "{action}: {body}");
        assert_eq!(
            body,
            json!({"name": "v", "remaining": 1, "released": false}),
            "{action}"
        );
    }
    // Close names no domain: it must not release the reader's volume.
    let (status, body) = api
        .post("v", "detach", Some(json!({"if_unused": true})))
        .await;
    assert_eq!(
        (status, body["released"].clone()),
        (200, json!(false)),
        "{body}"
    );
    assert_eq!(
        attachment(&cluster, "v").await,
        (Some(HEAD.into()), Some(AttachmentState::Attached))
    );
    assert!(api.shared.assembled.lock_unpoisoned().contains_key("v"));
    assert!(file_table(&file).holds("v", "u0-reader") && !file_table(&file).holds("v", "7"));

    // The last one goes: torn down and released in the manager.
    let (status, body) = api
        .post("v", "detach", Some(json!({"domain": "u0-reader"})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"name": "v", "remaining": 0, "released": true}));
    assert_eq!(attachment(&cluster, "v").await.0, None);
    assert!(api.shared.gone("v"));
    assert_eq!(file_table(&file), Activations::default());
    // Repeated, and a close after it: nothing left, still fine.
    for body in [json!({"domain": "u0-reader"}), json!({"if_unused": true})] {
        let (status, answer) = api.post("v", "detach", Some(body)).await;
        assert_eq!(
            (status, answer["released"].clone()),
            (200, json!(true)),
            "{answer}"
        );
    }

    // A live migration's source: once the volume is active on another
    // host, the cleanup's repeated deactivate and detach answer and leave
    // that host's attachment alone.
    let admin = cluster.admin();
    admin
        .create_server(&CreateServer {
            name: "dest".into(),
            address: "127.0.0.1:10".into(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    admin.attach_volume("v", "dest").await.unwrap();
    for body in [json!({"domain": "7"}), json!({"if_unused": true})] {
        let (status, answer) = api.post("v", "detach", Some(body.clone())).await;
        assert_eq!(
            (status, answer["released"].clone()),
            (200, json!(true)),
            "{body}: {answer}"
        );
    }
    assert_eq!(
        attachment(&cluster, "v").await,
        (Some("dest".into()), Some(AttachmentState::Attached))
    );
    admin.detach_volume("v").await.unwrap();
    // (dest plays no head: end its release as a heartbeat would.)
    cluster
        .client(AGENT_TOKEN)
        .heartbeat(&Heartbeat {
            server: "dest".into(),
            assembled: Some(vec![]),
            ..Default::default()
        })
        .await
        .unwrap();

    // An old caller (no body) is domain "" and read-write; a detach
    // without a body ends every activation.
    let (status, body) = api.post("w", "attach", None).await;
    assert_eq!(
        (status, body["activations"].clone()),
        (200, json!(1)),
        "{body}"
    );
    let (status, _) = api.post("w", "attach", Some(json!({"domain": "3"}))).await;
    assert_eq!(status, 200);
    let (status, body) = api.post("w", "detach", None).await;
    assert_eq!(
        body,
        json!({"name": "w", "remaining": 0, "released": true}),
        "{status}"
    );
    assert_eq!(attachment(&cluster, "w").await.0, None);

    // Bad requests change nothing.
    for (action, bad) in [
        ("attach", json!({"domain": "7", "mode": "rx"})),
        ("attach", json!({"domian": "7"})),
        ("attach", json!({"domain": "a\nb"})),
        ("detach", json!({"domain": "7", "if_unused": true})),
        (
            "detach",
            json!({"domain": "x".repeat(activations::MAX_DOMAIN_LEN + 1)}),
        ),
    ] {
        let (status, body) = api.post("v", action, Some(bad.clone())).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("bad_request")),
            "{bad}"
        );
    }
    assert_eq!(attachment(&cluster, "v").await.0, None);
}

/// A restarted agent reads its table: a device still assembled keeps its
/// holders (a deactivate of one leaves it), entries of volumes whose
/// devices went are dropped; an admin's detach through the manager makes
/// the entries stale, and the next activation starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let file = dir.path().join("activations.json");
    let mut before = Activations::default();
    before.activate("v", "7", Mode::ReadWrite);
    before.activate("v", "8", Mode::ReadOnly);
    before.activate("gone", "7", Mode::ReadWrite);
    activations::save(&file, &before).unwrap();
    cluster
        .client(AGENT_TOKEN)
        .agent_attach(HEAD, "v", false)
        .await
        .unwrap();

    let api = LocalApi::start(&cluster, &file, &["v"]).await;
    let table = file_table(&file);
    assert_eq!(table.holders("gone"), None, "dropped at start: no device");
    assert_eq!(table.holders("v").unwrap().count(), 2);
    let (status, body) = api.post("v", "detach", Some(json!({"domain": "8"}))).await;
    assert_eq!(
        body,
        json!({"name": "v", "remaining": 1, "released": false}),
        "{status}"
    );
    assert_eq!(attachment(&cluster, "v").await.0.as_deref(), Some(HEAD));

    // The admin detaches it through the manager: the device goes without
    // the local API. Domain 7's entry is stale then: a new activation by 9
    // and its deactivate release the volume.
    cluster.admin().detach_volume("v").await.unwrap();
    let start = tokio::time::Instant::now();
    while attachment(&cluster, "v").await.0.is_some() || !api.shared.gone("v") {
        assert!(start.elapsed() < Duration::from_secs(30), "never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = api.post("v", "attach", Some(json!({"domain": "9"}))).await;
    assert_eq!(status, 200);
    let (status, body) = api.post("v", "detach", Some(json!({"domain": "9"}))).await;
    assert_eq!(
        body,
        json!({"name": "v", "remaining": 0, "released": true}),
        "{status}"
    );
}

/// An unreadable table is set aside; every assembled volume is then held
/// by an unknown domain: no domain's deactivate tears it down (409, the
/// attachment stays), a close leaves it, and a detach without a body (the
/// admin's) releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_table_never_tears_down_on_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let file = dir.path().join("activations.json");
    std::fs::write(&file, b"{\"format\": 1, \"volumes\": {\"v\": {\"dom").unwrap();
    cluster
        .client(AGENT_TOKEN)
        .agent_attach(HEAD, "v", false)
        .await
        .unwrap();

    let api = LocalApi::start(&cluster, &file, &["v"]).await;
    assert!(
        dir.path().join("activations.json.unreadable").exists(),
        "kept for a look"
    );
    assert!(file_table(&file).holders("v").unwrap().unknown);
    for _ in 0..2 {
        let (status, body) = api.post("v", "detach", Some(json!({"domain": "7"}))).await;
        assert_eq!(
            (status, body["code"].clone()),
            (409, json!("activations_unknown")),
            "{body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains("without a body"),
            "{body}"
        );
    }
    let (status, body) = api
        .post("v", "detach", Some(json!({"if_unused": true})))
        .await;
    assert_eq!(
        body,
        json!({"name": "v", "remaining": 1, "released": false}),
        "{status}"
    );
    assert_eq!(attachment(&cluster, "v").await.0.as_deref(), Some(HEAD));
    let (status, body) = api.post("v", "detach", None).await;
    assert_eq!(
        body,
        json!({"name": "v", "remaining": 0, "released": true}),
        "{status}"
    );
    assert_eq!(attachment(&cluster, "v").await.0, None);
    assert_eq!(file_table(&file), Activations::default());
}
