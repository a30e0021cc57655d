//! Test harness: real `vsky-manager` processes on loopback (from
//! `vsky_testkit::process`) with their own scratch directories, killed
//! (SIGKILL) when dropped, and pools registered through the REST API.

// Each test file uses its own subset of these helpers and re-exports.
#![allow(dead_code, unused_imports)]

pub mod agents;
pub mod etcd;

use std::path::{Path, PathBuf};

pub use vsky_testkit::pool::{MIB, PoolSpec, disk_path, server_address};
pub use vsky_testkit::process::{ManagerProcess, spawn_listening};
pub use vsky_testkit::rest::{register_pool, register_server};
pub use vsky_testkit::tokens::*;

/// The binary under test; Cargo names it only to this crate's tests.
pub const MANAGER: &str = env!("CARGO_BIN_EXE_vsky-manager");
/// Small chunks keep tests fast: 8 MiB chunks, 7 MiB of data each.
pub const CHUNK: u64 = 8 * MIB;

/// `servers` servers of `disks` disks of 16 chunks of this suite's
/// [`CHUNK`] (the managers here run with `--chunk-size 8MiB`).
pub fn pool(servers: usize, disks: usize) -> PoolSpec {
    PoolSpec::new(servers, disks).chunk_bytes(CHUNK)
}

/// A self-signed certificate for 127.0.0.1 and localhost, written into
/// `dir`: the paths of its PEM chain and key (the chain is its own CA).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A plain create-volume request: default replicas, no stripe or class.
pub fn volume(name: &str, size: u64) -> vsky_api::types::CreateVolume {
    vsky_api::types::CreateVolume {
        name: name.into(),
        size_bytes: size,
        ..Default::default()
    }
}

/// The manager's `/metrics` text, read with the admin token.
pub async fn metrics(m: &ManagerProcess) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", m.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
