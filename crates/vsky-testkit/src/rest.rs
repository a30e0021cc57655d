//! Clients of a test manager, and pools registered through its REST API
//! with the names and sizes [`crate::pool`] gives a model pool.

use vsky_api::types::{CreateDisk, CreateServer};
use vsky_api::{Client, ClientConfig};

use crate::pool::PoolSpec;

/// A client of the manager at `url` with `token`.
pub fn client(url: &str, token: &str) -> Client {
    Client::new(ClientConfig {
        manager_url: url.to_string(),
        token: Some(token.to_string()),
        ..ClientConfig::default()
    })
    .expect("a valid client configuration")
}

/// Registers every server of `spec` with its disks, as an admin would.
/// The manager's chunk size must be `spec.chunk_bytes` for the disks to
/// hold `spec.chunks_per_disk` chunks.
pub async fn register_pool(admin: &Client, spec: &PoolSpec) {
    for (s, &disks) in spec.disks.iter().enumerate() {
        register_server(admin, spec, s, disks).await;
    }
}

/// Registers server `s` of `spec` with `disks` disks (a server beyond the
/// spec's: a pool that grows).
pub async fn register_server(admin: &Client, spec: &PoolSpec, s: usize, disks: usize) {
    let server = spec.server(s);
    admin
        .create_server(&CreateServer {
            name: server.name,
            address: server.address,
            labels: server.labels,
        })
        .await
        .expect("the manager adds the server");
    for d in 0..disks {
        let disk = spec.disk(s, d);
        admin
            .create_disk(&CreateDisk {
                server: disk.server,
                path: disk.path,
                size_bytes: disk.size_bytes,
                class: disk.class,
            })
            .await
            .expect("the manager adds the disk");
    }
}
