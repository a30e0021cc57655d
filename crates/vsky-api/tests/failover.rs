//! Client failover between several managers, against tiny fake managers on
//! loopback that answer canned HTTP responses and count requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vsky_api::{Client, ClientConfig, ClientError};

/// Serves `answer(base_url)` (status, JSON body) to every request; returns
/// the base URL and a request counter.
async fn fake(
    answer: impl Fn() -> (u16, String) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the head and a body of Content-Length bytes.
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answer();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, count)
}

const HEALTH: &str = r#"{"status":"ok","version":"0","role":"leader"}"#;

fn client(urls: &[&str]) -> Client {
    Client::new(ClientConfig {
        manager_url: urls.join(","),
        token: Some("t".into()),
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn a_standby_sends_the_client_to_the_leader_it_names() {
    let (leader, leader_hits) = fake(|| (204, String::new())).await;
    let named = leader.clone();
    let (standby, standby_hits) = fake(move || {
        (
            503,
            format!(r#"{{"code":"not_leader","message":"standby","leader":"{named}"}}"#),
        )
    })
    .await;
    // The leader is not even in the list: the standby's answer is enough.
    let c = client(&[&standby]);
    c.delete_group("g").await.unwrap();
    assert_eq!(standby_hits.load(Ordering::SeqCst), 1);
    assert_eq!(leader_hits.load(Ordering::SeqCst), 1);
    // Later requests go straight to the leader.
    c.delete_group("g").await.unwrap();
    assert_eq!(standby_hits.load(Ordering::SeqCst), 1);
    assert_eq!(c.current_url(), format!("{leader}/"));
}

#[tokio::test]
async fn unreachable_managers_are_skipped_and_errors_are_final() {
    let (up, hits) = fake(|| (200, HEALTH.into())).await;
    let c = client(&["http://127.0.0.1:1", &up]);
    assert_eq!(c.health().await.unwrap().role, "leader");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A manager's real refusal is not retried elsewhere.
    let (no, no_hits) = fake(|| {
        (
            409,
            r#"{"code":"already_exists","message":"exists"}"#.into(),
        )
    })
    .await;
    let (other, other_hits) = fake(|| (201, "{}".into())).await;
    let c = client(&[&no, &other]);
    let e = c.create_group(&Default::default()).await.unwrap_err();
    assert_eq!(e.code(), Some("already_exists"));
    assert_eq!(
        (
            no_hits.load(Ordering::SeqCst),
            other_hits.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
}

#[tokio::test]
async fn without_a_leader_the_client_retries_until_the_failover_wait() {
    let (standby, hits) =
        fake(|| (503, r#"{"code":"not_leader","message":"election"}"#.into())).await;
    let c = client(&[&standby]).with_failover_wait(Duration::from_millis(800));
    let e = c.create_group(&Default::default()).await.unwrap_err();
    assert_eq!(e.code(), Some("not_leader"));
    assert!(
        hits.load(Ordering::SeqCst) >= 3,
        "retried: {}",
        hits.load(Ordering::SeqCst)
    );
    // A single unreachable manager is reported at once.
    let c = client(&["http://127.0.0.1:1"]);
    let start = std::time::Instant::now();
    assert!(matches!(
        c.health().await,
        Err(ClientError::Transport { .. })
    ));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        Client::new(ClientConfig {
            manager_url: " , ".into(),
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        Client::new(ClientConfig {
            manager_url: "http://a:1,ftp://b".into(),
            ..Default::default()
        })
        .is_err()
    );
}

/// A manager that stopped while the body arrived (`shutting_down`) did
/// nothing: the change goes to the next manager, once.
#[tokio::test]
async fn a_stopping_manager_sends_the_change_to_the_next() {
    let (stopping, stopping_hits) = fake(|| {
        (
            503,
            r#"{"code":"shutting_down","message":"the manager is shutting down"}"#.into(),
        )
    })
    .await;
    let (other, other_hits) = fake(|| (204, String::new())).await;
    let c = client(&[&stopping, &other]);
    c.delete_group("g").await.unwrap();
    assert_eq!(
        (
            stopping_hits.load(Ordering::SeqCst),
            other_hits.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
}
