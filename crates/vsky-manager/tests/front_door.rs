//! The manager's front door against slow and hostile clients, with a real
//! `vsky-manager` process on loopback: stalled request lines, headers,
//! bodies and TLS handshakes are closed within their timeouts, connection
//! caps refuse the excess per source and in total while others are served,
//! long-polls outlast the timeouts, shutdown stays graceful; request bodies
//! must be JSON objects on every route; 400, 414 and 431 answers carry the
//! JSON error body.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Far above every timeout the tests set: a connection still open after
/// this was not going to be closed.
const CLOSE_BOUND: Duration = Duration::from_secs(20);

fn socket_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .parse()
        .unwrap()
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the manager closes the connection: what it sent, or `None`
/// when it kept the connection open for `bound`.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|()| out)
}

/// A raw answer's status and JSON body.
fn status_and_json(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Sends `request` on a new connection and reads the answer up to the close.
async fn exchange(to: SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(request).await.unwrap();
    let answer = read_until_closed(&mut s, CLOSE_BOUND)
        .await
        .expect("the manager closes after its answer");
    status_and_json(&answer)
}

fn get(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A request line, headers or body that stop arriving, and a connection
/// idle after its request, are closed within the timeouts (a stalled body
/// with a JSON 408), while long-polls held open longer than both timeouts
/// still answer.
#[tokio::test]
async fn stalled_clients_are_closed_and_long_polls_outlast_the_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &[
            "--chunk-size",
            "8MiB",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
        ],
    );
    let admin = m.admin();
    register_pool(&admin, &pool(1, 1).chunks(8)).await;
    let to = socket_addr(&m.url);
    let stalled_body = format!(
        "POST /api/v1/volumes HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": \"v"
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nothing sent", Vec::new()),
        ("partial request line", b"GET /api/v1/hea".to_vec()),
        (
            "partial headers",
            b"GET /api/v1/health HTTP/1.1\r\nHost: m\r\nX-Slow: 1".to_vec(),
        ),
        ("stalled body", stalled_body.into_bytes()),
        (
            "idle after a request",
            b"GET /api/v1/health HTTP/1.1\r\nHost: m\r\n\r\n".to_vec(),
        ),
    ];
    let mut stalled = Vec::new();
    for (what, bytes) in cases {
        stalled.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(to).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let answer = read_until_closed(&mut s, CLOSE_BOUND).await;
            (what, answer)
        }));
    }
    // Long-polls that wait three times the timeouts.
    let http = reqwest::Client::new();
    let desired = format!("{}/api/v1/agent/desired-state?server=s0", m.url);
    let first: Value = http
        .get(&desired)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generation = first["generation"].as_u64().unwrap();
    let events: Value = http
        .get(format!("{}/api/v1/events", m.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = events["next"].as_u64().unwrap();
    let started = Instant::now();
    let (poll, follow) = tokio::join!(
        http.get(format!("{desired}&generation={generation}&wait_ms=3000"))
            .bearer_auth(ADMIN_TOKEN)
            .send(),
        http.get(format!("{}/api/v1/events?since={next}&wait_ms=3000", m.url))
            .bearer_auth(ADMIN_TOKEN)
            .send(),
    );
    assert_eq!(poll.unwrap().status().as_u16(), 200);
    assert_eq!(follow.unwrap().status().as_u16(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the long-polls waited"
    );
    for task in stalled {
        let (what, answer) = task.await.unwrap();
        let answer = answer.unwrap_or_else(|| panic!("{what}: still open after {CLOSE_BOUND:?}"));
        if what == "stalled body" {
            let (status, body) = status_and_json(&answer);
            assert_eq!(
                (status, body["code"].as_str()),
                (408, Some("request_timeout"))
            );
            assert!(body["message"].as_str().unwrap().contains("--body-timeout"));
        }
        if what == "idle after a request" {
            assert!(answer.starts_with(b"HTTP/1.1 200 "), "{what}");
        }
    }
    assert!(admin.list_volumes().await.unwrap().is_empty());
}

/// A client that sends requests but reads none of the answers is dropped
/// once the manager could write nothing to it for --body-timeout.
#[tokio::test]
async fn clients_that_read_no_answers_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &["--body-timeout", "1s", "--header-timeout", "60s"],
    );
    let to = socket_addr(&m.url);
    let path = "/api/v1/openapi.json";
    let one = reqwest::get(format!("{}{path}", m.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    // Far more answer than the sockets' buffers hold (a few MiB on
    // loopback), asked for with pipelined requests.
    let requests = (64 << 20) / one + 1;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: m\r\n\r\n");
    s.write_all(request.repeat(requests).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = read_until_closed(&mut s, CLOSE_BOUND)
        .await
        .expect("the manager dropped the connection");
    assert!(
        got.len() < requests * one,
        "all {} bytes were sent",
        got.len()
    );
}

/// A TCP connection that never starts TLS, or stops mid-handshake, is
/// closed within --tls-handshake-timeout; HTTPS keeps working.
#[tokio::test]
async fn stalled_tls_handshakes_are_closed() {
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
            "--tls-handshake-timeout",
            "1s",
            "--header-timeout",
            "60s",
        ],
    );
    let to = socket_addr(&m.url);
    let mut silent = TcpStream::connect(to).await.unwrap();
    let mut partial = TcpStream::connect(to).await.unwrap();
    // The start of a TLS record carrying a ClientHello, and no more.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let client = vsky_api::Client::new(vsky_api::ClientConfig {
        manager_url: m.url.clone(),
        token: Some(ADMIN_TOKEN.into()),
        ca_file: Some(cert_path),
        timeout: None,
    })
    .unwrap();
    assert_eq!(client.cluster().await.unwrap().servers, 0);
    for (what, s) in [("silent", &mut silent), ("partial hello", &mut partial)] {
        assert!(
            read_until_closed(s, CLOSE_BOUND).await.is_some(),
            "{what}: still open after {CLOSE_BOUND:?}"
        );
    }
}

/// One source may hold --max-connections-per-source connections and all
/// together --max-connections; the excess is closed at once, while the
/// admitted ones (and other sources, below the total) are served.
#[tokio::test]
async fn connection_caps_refuse_the_excess_and_serve_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &[
            "--max-connections-per-source",
            "4",
            "--max-connections",
            "6",
            "--header-timeout",
            "60s",
        ],
    );
    let to = socket_addr(&m.url);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.1", to).await);
    }
    let mut excess = connect_from("127.0.0.1", to).await;
    assert_eq!(
        read_until_closed(&mut excess, CLOSE_BOUND).await.as_deref(),
        Some(&[][..]),
        "a fifth connection from one source is closed at once"
    );
    // Another source is served meanwhile (the total is 5 of 6 now), on a
    // connection it keeps.
    let mut other = connect_from("127.0.0.2", to).await;
    other
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: m\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(CLOSE_BOUND, other.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    held.push(connect_from("127.0.0.3", to).await);
    let mut over_total = connect_from("127.0.0.4", to).await;
    assert_eq!(
        read_until_closed(&mut over_total, CLOSE_BOUND)
            .await
            .as_deref(),
        Some(&[][..]),
        "a seventh connection in total is closed at once"
    );
    // Every admitted connection is still served.
    held.push(other);
    for mut s in held {
        s.write_all(&get("/api/v1/health")).await.unwrap();
        let answer = read_until_closed(&mut s, CLOSE_BOUND).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200 "),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// SIGTERM with idle, stalled and long-polling clients: the long-poll is
/// answered, a stalled body is cut off with 503 `shutting_down`, and the
/// manager exits at once instead of waiting out their timeouts.
#[tokio::test]
async fn shutdown_is_graceful_with_slow_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = ManagerProcess::start(
        MANAGER,
        dir.path(),
        &["--header-timeout", "120s", "--body-timeout", "120s"],
    );
    let to = socket_addr(&m.url);
    let _idle = TcpStream::connect(to).await.unwrap();
    let mut partial = TcpStream::connect(to).await.unwrap();
    partial
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: m\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut body = TcpStream::connect(to).await.unwrap();
    body.write_all(
        format!(
            "POST /api/v1/volumes HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let follow = tokio::spawn(
        http.get(format!(
            "{}/api/v1/events?since=1000000&wait_ms=60000",
            m.url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send(),
    );
    // Let the long-poll and the body reach their handlers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = m.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let answer = tokio::time::timeout(CLOSE_BOUND, follow)
        .await
        .expect("the long-poll is answered at shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let cut = read_until_closed(&mut body, CLOSE_BOUND)
        .await
        .expect("the stalled body's connection closes");
    let (status, json) = status_and_json(&cut);
    assert_eq!(
        (status, json["code"].as_str()),
        (503, Some("shutting_down"))
    );
    assert!(read_until_closed(&mut partial, CLOSE_BOUND).await.is_some());
    let deadline = Instant::now() + CLOSE_BOUND;
    let status = loop {
        if let Some(status) = m.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the manager did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

/// Every route that takes a body (taken from the OpenAPI document, so new
/// routes are covered) refuses a JSON array, and nested structs given as
/// arrays are refused too; nothing changes.
#[tokio::test]
async fn request_bodies_must_be_objects() {
    use utoipa::OpenApi;
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1).chunks(8)).await;
    admin.create_volume(&volume("v", 4 * MIB)).await.unwrap();
    let before = admin.list_volumes().await.unwrap();
    let doc = serde_json::to_value(vsky_manager::http::ApiDoc::openapi()).unwrap();
    let http = reqwest::Client::new();
    let mut routes = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_none() {
                continue;
            }
            routes += 1;
            // Path parameters name existing things where that matters.
            let url = format!(
                "{}{}",
                m.url,
                path.replace("{name}", "v").replace("{id}", "1")
            );
            for body in [json!(["v", 4194304]), json!([]), json!("v"), json!(42)] {
                let resp = http
                    .request(method.to_uppercase().parse().unwrap(), &url)
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let answer: Value = resp.json().await.unwrap();
                assert_eq!(
                    (status, answer["code"].as_str()),
                    (400, Some("invalid_argument")),
                    "{method} {path} {body} → {answer}"
                );
                assert!(
                    answer["message"].as_str().unwrap().contains("JSON object"),
                    "{method} {path} {body} → {answer}"
                );
            }
        }
    }
    assert!(routes >= 10, "only {routes} routes take a body");
    // Nested structs: a volume's stripe, a heartbeat's wiped chunks.
    for (path, body) in [
        (
            "/api/v1/volumes",
            json!({"name": "w", "size_bytes": 4194304, "stripe": [2, 65536]}),
        ),
        (
            "/api/v1/agent/heartbeat",
            json!({"server": "s0", "wiped": [[1, 0]]}),
        ),
    ] {
        let resp = http
            .post(format!("{}{path}", m.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(status, 400, "{path} {body} → {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("JSON object"),
            "{path} {body} → {answer}"
        );
    }
    assert_eq!(admin.list_volumes().await.unwrap(), before);
}

/// Heads hyper refuses before any handler runs (too large, too many
/// headers, not HTTP) and URIs over the bound get the JSON error body
/// every other error has.
#[tokio::test]
async fn oversized_and_malformed_heads_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &[]);
    let to = socket_addr(&m.url);
    let long_uri = get(&format!("/api/v1/volumes?x={}", "a".repeat(9 << 10)));
    let huge_header = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: m\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let many_headers = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: m\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: 1\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("long URI", long_uri, 414, "uri_too_long"),
        (
            "huge header",
            huge_header.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "too many headers",
            many_headers.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "not HTTP",
            b"HELLO THERE\r\n\r\n".to_vec(),
            400,
            "invalid_argument",
        ),
    ];
    for (what, request, want_status, want_code) in cases {
        let (status, body) = exchange(to, &request).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (want_status, Some(want_code)),
            "{what}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // Bounds just below pass.
    let (status, _) = exchange(to, &get("/api/v1/health")).await;
    assert_eq!(status, 200);
}
