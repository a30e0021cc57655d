//! Helpers shared by the agent's integration tests; the manager, the
//! storage agents and their disks come from `vsky_testkit`.

// Each test file uses its own subset of these helpers and re-exports.
#![allow(dead_code, unused_imports)]

use std::time::{Duration, Instant};

pub use vsky_testkit::agents::{AgentHandle, LocalCluster, disk_image, storage_agent_config};
pub use vsky_testkit::free_port;
pub use vsky_testkit::in_process::{InProcessManager, patient_recovery};
pub use vsky_testkit::pool::{CHUNK, MIB};
pub use vsky_testkit::rest::client;
pub use vsky_testkit::tokens::{ADMIN_TOKEN, AGENT_TOKEN};

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
