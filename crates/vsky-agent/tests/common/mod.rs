//! Fixtures shared by the agent's integration tests: a real manager on
//! loopback (in-process, redb in a temp dir) and storage agents serving
//! file-backed disks.

#![allow(dead_code)] // each test file uses its own subset

use std::sync::Arc;
use std::time::{Duration, Instant};

use vsky_agent::disks::DiskArg;
use vsky_agent::head::NbdTimeouts;
use vsky_api::{Client, ClientConfig};
use vsky_manager::store::redb::RedbStore;
use vsky_manager::{Manager, RecoveryConfig, Tokens};
use vsky_model::Settings;

pub const ADMIN: &str = "storage-test-admin-token-0123";
pub const AGENT: &str = "storage-test-agent-token-0123";
pub const MIB: u64 = 1 << 20;
pub const CHUNK: u64 = 4 * MIB;

/// A manager whose servers may stay silent (no agent) without being
/// declared failed.
pub async fn start_manager(dir: &std::path::Path) -> String {
    start_manager_with(
        dir,
        RecoveryConfig {
            server_grace: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await
}

pub async fn start_manager_with(dir: &std::path::Path, recovery: RecoveryConfig) -> String {
    std::fs::write(dir.join("admin"), ADMIN).unwrap();
    std::fs::write(dir.join("agent"), AGENT).unwrap();
    let store = RedbStore::open(&dir.join("data")).unwrap();
    let manager = Arc::new(Manager::open(Box::new(store), Settings::new(CHUNK), true).unwrap());
    let tokens = Tokens::load(&dir.join("admin"), Some(&dir.join("agent"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(vsky_manager::run(
        manager,
        tokens,
        listener,
        None,
        recovery,
        std::future::pending(),
    ));
    url
}

pub fn client(url: &str, token: &str) -> Client {
    Client::new(ClientConfig {
        manager_url: url.into(),
        token: Some(token.into()),
        ..Default::default()
    })
    .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A storage-only agent of server `name` on loopback `port`, serving `disk`.
pub fn storage_agent(
    url: &str,
    name: &str,
    port: u16,
    disk: std::path::PathBuf,
) -> vsky_agent::Config {
    vsky_agent::Config {
        client: ClientConfig {
            manager_url: url.to_string(),
            token: Some(AGENT.into()),
            ..Default::default()
        },
        server_name: name.to_string(),
        nbd_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        advertise: format!("127.0.0.1:{port}"),
        disks: vec![DiskArg {
            path: disk,
            class: None,
        }],
        labels: Default::default(),
        heartbeat_interval: Duration::from_millis(200),
        head: false,
        timeouts: NbdTimeouts {
            request: Duration::from_secs(5),
            dead_connection: Duration::from_secs(1),
            connect: Duration::from_secs(2),
        },
        api: None,
    }
}

pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn connect_retrying(address: &str, name: &str) -> vsky_nbd::client::Client {
    let start = Instant::now();
    loop {
        match vsky_nbd::client::Client::connect(address, name).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                panic!("export never appeared: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts `n` storage agents `s0`.. against the manager at `url`, each
/// serving one file-backed disk of 8 chunks in `dir`, and waits until all
/// have registered. Returns an admin client.
pub async fn storage_agents(url: &str, dir: &std::path::Path, n: usize) -> Client {
    for s in 0..n {
        let disk = dir.join(format!("disk{s}.img"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(MIB + 8 * CHUNK)
            .unwrap();
        let config = storage_agent(url, &format!("s{s}"), free_port(), disk);
        tokio::spawn(vsky_agent::run(config, std::future::pending()));
    }
    let admin = client(url, ADMIN);
    eventually(&format!("{n} agents registered"), async || {
        admin.cluster().await.map(|c| c.disks == n).unwrap_or(false)
    })
    .await;
    admin
}
