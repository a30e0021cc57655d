//! The test plays the agents over the agent API: heartbeats (plain, or
//! carrying resync reports) and a background task that keeps servers alive.

use std::time::{Duration, Instant};

use vsky_api::Client;
use vsky_api::types::{Heartbeat, ResyncReport, ServerState};

/// A heartbeat that reports nothing.
pub fn beat(server: &str) -> Heartbeat {
    Heartbeat {
        server: server.into(),
        ..Heartbeat::default()
    }
}

/// A heartbeat from `server` reporting one resync's progress (`done`: the
/// copy finished).
pub fn resync_beat(server: &str, job: u64, bytes_done: u64, done: bool) -> Heartbeat {
    let mut b = beat(server);
    b.resyncs = vec![ResyncReport {
        job,
        bytes_done,
        done,
        error: None,
        failed_source: None,
    }];
    b
}

/// Heartbeats for `servers` every 200 ms until dropped. Errors are ignored
/// (a failover client simply retries on the next round).
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    pub fn start(agent: Client, servers: Vec<String>) -> Self {
        KeepAlive(tokio::spawn(async move {
            loop {
                for s in &servers {
                    let _ = agent.heartbeat(&beat(s)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `check` every 100 ms until it gives a value; panics after 30 s.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The kinds of every event logged so far, oldest first.
pub async fn kinds(admin: &Client) -> Vec<String> {
    admin
        .events(0, None, Duration::ZERO)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// The kinds of the events about `volume`, oldest first.
pub async fn volume_kinds(admin: &Client, volume: &str) -> Vec<String> {
    admin
        .events(0, None, Duration::ZERO)
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.volume.as_deref() == Some(volume))
        .map(|e| e.kind)
        .collect()
}

/// The status, code and message of the manager's refusal.
pub fn refusal(e: vsky_api::ClientError) -> (u16, String, String) {
    match e {
        vsky_api::ClientError::Api {
            status,
            code,
            message,
        } => (status, code, message),
        e => panic!("expected the manager's refusal, got {e}"),
    }
}

/// How many events of `kind` were logged so far.
pub async fn count_kind(admin: &Client, kind: &str) -> usize {
    kinds(admin).await.iter().filter(|k| *k == kind).count()
}

/// How many legs of `volume` are on `server`.
pub async fn legs_on(admin: &Client, volume: &str, server: &str) -> usize {
    admin
        .volume(volume)
        .await
        .unwrap()
        .layout
        .iter()
        .flat_map(|md| &md.legs)
        .filter(|l| l.server == server)
        .count()
}

/// Waits until the manager shows `server` failed.
pub async fn server_failed(admin: &Client, server: &str, what: &str) {
    eventually(what, async || {
        admin
            .server(server)
            .await
            .ok()
            .filter(|s| s.state == ServerState::Failed)
    })
    .await;
}
