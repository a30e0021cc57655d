//! The storage role against a real manager on loopback: three agents with
//! file-backed disks register, export exactly the chunks the manager
//! assigns under their secret names, confine each export to its chunk, and
//! wipe freed chunks before the manager reuses them.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use vsky_api::types::{CreateVolume, DesiredState};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_export_assigned_chunks_and_wipe_freed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 3, 8).await;
    let (admin, disks) = (cluster.admin(), &cluster.disks);
    assert_eq!(
        admin.cluster().await.unwrap().capacity_bytes,
        3 * 8 * CHUNK,
        "sizes read from the disk files"
    );

    let v = admin
        .create_volume(&CreateVolume {
            name: "v".into(),
            size_bytes: 9 * MIB,
            replicas: None,
            stripe: None,
            class: None,
            near_server: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(v.layout.len(), 3);

    // Every leg is reachable over NBD under its secret name, and writes land
    // in the right range of the right disk file.
    let agent = cluster.client(AGENT_TOKEN);
    let desired: Vec<DesiredState> = {
        let mut all = Vec::new();
        for s in 0..3 {
            all.push(
                agent
                    .desired_state(&format!("s{s}"), None, Duration::ZERO)
                    .await
                    .unwrap(),
            );
        }
        all
    };
    let servers = admin.list_servers().await.unwrap();
    for (s, d) in desired.iter().enumerate() {
        let address = servers
            .iter()
            .find(|x| x.name == format!("s{s}"))
            .unwrap()
            .address
            .clone();
        for e in &d.exports {
            let mut nbd = connect_retrying(&address, &e.export_name).await;
            assert_eq!(nbd.info().size_bytes, CHUNK);
            let pattern = vec![(e.chunk.index as u8) ^ 0x5a; 4096];
            nbd.write(CHUNK - 4096, &pattern, true).await.unwrap();
            let mut on_disk = vec![0u8; 4096];
            std::fs::File::open(&disks[s])
                .unwrap()
                .read_exact_at(&mut on_disk, e.offset_bytes + CHUNK - 4096)
                .unwrap();
            assert_eq!(on_disk, pattern);
            assert!(
                nbd.read(CHUNK - 4096, 8192).await.is_err(),
                "reads past the chunk are refused"
            );
        }
        assert!(
            vsky_nbd::client::Client::connect(address.as_str(), "not-a-secret")
                .await
                .is_err()
        );
    }

    // Deleting the volume: exports vanish, the chunks are wiped to zeros and
    // only then return to the pool.
    let first = &desired[0].exports[0];
    admin.delete_volume("v").await.unwrap();
    eventually("freed chunks wiped and returned", async || {
        admin
            .cluster()
            .await
            .map(|c| c.releasing_bytes == 0 && c.free_bytes == c.capacity_bytes)
            .unwrap_or(false)
    })
    .await;
    let mut buf = vec![1u8; CHUNK as usize];
    std::fs::File::open(&disks[0])
        .unwrap()
        .read_exact_at(&mut buf, first.offset_bytes)
        .unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "a freed chunk reads back as zeros"
    );
    let address = servers
        .iter()
        .find(|x| x.name == "s0")
        .unwrap()
        .address
        .clone();
    assert!(
        vsky_nbd::client::Client::connect(address.as_str(), &first.export_name)
            .await
            .is_err(),
        "a freed chunk's export is gone"
    );
}

/// The local API refuses callers without its token, lists nothing on a
/// storage-only agent, refuses attaches there (it cannot assemble), and
/// forwards detaches to the manager's agent endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_api_checks_tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let manager = InProcessManager::start(dir.path(), CHUNK).await;
    let url = manager.url.clone();
    let (nbd_port, api_port) = (free_port(), free_port());
    let disk = disk_image(&dir.path().join("disk.img"), 8, CHUNK);
    let token = "local-api-token-0123456789";
    let config = vsky_agent::Config {
        api: Some(vsky_agent::api::ApiConfig {
            listen: format!("127.0.0.1:{api_port}").parse().unwrap(),
            token: token.into(),
            activations_file: dir.path().join("activations.json"),
        }),
        ..storage_agent_config(&url, "solo", nbd_port, disk)
    };
    let _agent = AgentHandle::spawn(config);
    let base = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    eventually("local API up", async || {
        http.get(format!("{base}/v1/health")).send().await.is_ok()
    })
    .await;
    assert_eq!(
        http.get(format!("{base}/v1/volumes"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(format!("{base}/v1/volumes"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let list: serde_json::Value = http
        .get(format!("{base}/v1/volumes"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, serde_json::json!([]));
    let resp = http
        .post(format!("{base}/v1/volumes/v/attach"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "storage_only");
    // A detach of an unknown volume comes back with the manager's answer.
    let resp = http
        .post(format!("{base}/v1/volumes/ghost/detach"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}
