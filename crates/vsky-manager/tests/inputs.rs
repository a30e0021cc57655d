//! Arbitrary input at the REST front door of a real `vsky-manager`: names,
//! labels, paths and whole JSON bodies made of arbitrary Unicode. Every
//! answer is a 2xx, a 4xx or a 507 (no room in the pool) with the JSON
//! error body — never another 5xx (a panic answers 500, a reload 503) —
//! and a refused request changes nothing the API shows.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any Unicode text, from empty to past every length limit, with
/// multi-byte characters anywhere.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..200).prop_map(String::from_iter),
        (0usize..70, 60usize..120, any::<char>()).prop_map(|(at, len, c)| {
            let mut s: String = "a".repeat(len);
            s.insert(at.min(len), c);
            s
        }),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One request a client could send: method, path, token, body.
#[derive(Clone, Debug)]
struct Request {
    method: &'static str,
    path: String,
    agent: bool,
    body: Option<Value>,
}

/// Requests whose fields are arbitrary text in otherwise well-formed
/// bodies, and arbitrary bodies on every route that takes one.
fn request() -> impl Strategy<Value = Request> {
    let post = |path: &str, body: Value| Request {
        method: "POST",
        path: path.to_string(),
        agent: false,
        body: Some(body),
    };
    prop_oneof![
        (text(), any::<u64>()).prop_map(move |(name, size)| post(
            "/api/v1/volumes",
            json!({"name": name, "size_bytes": size % (1 << 30)})
        )),
        (text(), any::<u64>()).prop_map(move |(name, size)| post(
            "/api/v1/volumes",
            json!({"name": name, "size_bytes": size % (1 << 30), "thin": true})
        )),
        (
            text(),
            prop::sample::select(vec!["snapshot", "clone", "revert"])
        )
            .prop_map(move |(name, op)| post(
                &format!("/api/v1/volumes/v0/{op}"),
                if op == "revert" {
                    json!({ "snapshot": name })
                } else {
                    json!({ "name": name })
                }
            )),
        (text(), text(), text(), text()).prop_map(move |(name, address, k, v)| post(
            "/api/v1/servers",
            json!({"name": name, "address": address, "labels": {k: v}})
        )),
        (text(), text(), text()).prop_map(move |(server, path, class)| post(
            "/api/v1/disks",
            json!({"server": server, "path": path, "size_bytes": 64 * MIB, "class": class})
        )),
        (text(), text(), text(), text()).prop_map(move |(name, uuid, d, desc)| post(
            "/api/v1/groups",
            json!({"name": name, "uuid": uuid, "display_name": d, "description": desc})
        )),
        (text(), text(), text(), text()).prop_map(|(d, desc, k, v)| Request {
            method: "PATCH",
            path: "/api/v1/volumes/v0".into(),
            agent: false,
            body: Some(json!({"display_name": d, "description": desc, "set_keys": {k: v}})),
        }),
        // The registration path reachable with an agent token (the panic
        // of #16 item 7 was reachable this way).
        (text(), text(), text(), text(), text()).prop_map(|(server, address, k, v, path)| {
            Request {
                method: "POST",
                path: "/api/v1/agent/register".into(),
                agent: true,
                body: Some(json!({
                    "server": server, "address": address, "labels": {k: v},
                    "disks": [{"path": path, "size_bytes": 64 * MIB}],
                })),
            }
        }),
        // Arbitrary bodies on every route that takes one.
        (
            prop::sample::select(vec![
                "/api/v1/volumes",
                "/api/v1/servers",
                "/api/v1/disks",
                "/api/v1/groups",
                "/api/v1/volumes/v0/attach",
                "/api/v1/volumes/v0/resize",
                "/api/v1/volumes/v0/snapshot",
                "/api/v1/volumes/v0/clone",
                "/api/v1/volumes/v0/revert",
                "/api/v1/pool/rebalance",
                "/api/v1/agent/register",
                "/api/v1/agent/heartbeat",
            ]),
            json_value(),
            any::<bool>(),
        )
            .prop_map(|(path, body, agent)| Request {
                method: "POST",
                path: path.into(),
                agent: agent || path.starts_with("/api/v1/agent"),
                body: Some(body),
            }),
        // Arbitrary names in the path (percent-encoded, as clients send them).
        (
            text(),
            prop::sample::select(vec!["volumes", "servers", "groups", "disks"])
        )
            .prop_map(|(name, kind)| Request {
                method: "GET",
                path: format!("/api/v1/{kind}/{}", percent_encoded(&name)),
                agent: false,
                body: None,
            }),
    ]
}

/// `text` as one URL path segment.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the API shows of the cluster: compared before and after a refusal.
async fn state(http: &reqwest::Client, url: &str) -> Value {
    let mut out = serde_json::Map::new();
    for what in ["servers", "disks", "volumes", "groups"] {
        let v: Value = http
            .get(format!("{url}/api/v1/{what}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.insert(what.into(), v);
    }
    Value::Object(out)
}

#[test]
fn arbitrary_input_gets_a_4xx_and_changes_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let http = reqwest::Client::new();
    rt.block_on(async {
        let admin = m.admin();
        register_pool(&admin, &pool(3, 1)).await;
        admin.create_volume(&volume("v0", 4 * MIB)).await.unwrap();
    });
    // Regression (#16 item 7): an over-long server name with a multi-byte
    // character across byte 16 panicked the validator, reachable with an
    // agent token through registration; the manager answered 503 and
    // reloaded its whole state from the store.
    rt.block_on(async {
        let name = format!("{}é{}", "a".repeat(15), "b".repeat(60));
        let resp = http
            .post(format!("{}/api/v1/agent/register", m.url))
            .bearer_auth(AGENT_TOKEN)
            .json(&json!({"server": name, "address": "127.0.0.1:1", "disks": []}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_argument")),
            "{body}"
        );
    });
    let config = ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(req in request())| {
        rt.block_on(async {
            let before = state(&http, &m.url).await;
            let url = format!("{}{}", m.url, req.path);
            let token = if req.agent { AGENT_TOKEN } else { ADMIN_TOKEN };
            let mut builder = match req.method {
                "POST" => http.post(&url),
                "PATCH" => http.patch(&url),
                _ => http.get(&url),
            }
            .bearer_auth(token);
            if let Some(body) = &req.body {
                builder = builder.json(body);
            }
            let resp = builder.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            // 507 is the one 5xx a valid request earns: the pool has no
            // room for it (a refusal like a 4xx, changing nothing).
            prop_assert!(status < 500 || status == 507, "{req:?} answered {status}: {body}");
            if status >= 400 {
                prop_assert!(body["code"].is_string(), "{req:?}: {status} without a JSON error: {body}");
                prop_assert_eq!(state(&http, &m.url).await, before, "{:?} was refused with {} but changed the cluster", req, status);
            }
            Ok(())
        })?;
    });
    // The manager is still healthy afterwards.
    rt.block_on(async {
        m.admin().list_volumes().await.unwrap();
    });
}
