//! Recovery of a detached volume against a real manager on loopback: when a
//! server is declared failed, its legs get new chunks from the pool and the
//! storage agents holding them copy the data from the surviving legs over
//! NBD, under the per-disk limit, and the manager turns the legs active.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use vsky_api::types::{CreateVolume, RebuildState, VolumeDetail};

mod common;

use common::*;

/// Reads `len` bytes at `offset` of a disk file.
fn read_at(path: &str, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_servers_legs_are_copied_server_to_server() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 4, 8).await;
    let admin = cluster.admin();

    // Two mirrored disks of 3 MiB data each (4 MiB chunks, 1 MiB metadata).
    let v = admin
        .create_volume(&CreateVolume {
            name: "v".into(),
            size_bytes: 6 * MIB,
            replicas: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let data = v.data_bytes_per_mirrored_disk;
    let meta = CHUNK - data;
    // What a mirror would have written: the same data on both legs.
    for (k, md) in v.layout.iter().enumerate() {
        for leg in &md.legs {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&leg.disk_path)
                .unwrap()
                .write_all_at(&pattern(k as u8, data), leg.offset_bytes + meta)
                .unwrap();
        }
    }

    // The server holding mirrored disk 0's first leg fails.
    let victim = v.layout[0].legs[0].server.clone();
    let lost: usize = v
        .layout
        .iter()
        .map(|md| md.legs.iter().filter(|l| l.server == victim).count())
        .sum();
    admin.fail_server(&victim).await.unwrap();

    eventually("the lost legs rebuilt elsewhere", async || {
        admin.volume("v").await.is_ok_and(|v| {
            v.layout.iter().all(|md| {
                md.legs
                    .iter()
                    .all(|l| l.server != victim && l.state == vsky_api::types::LegState::Active)
            })
        })
    })
    .await;
    let after: VolumeDetail = admin.volume("v").await.unwrap();
    for (k, md) in after.layout.iter().enumerate() {
        for leg in &md.legs {
            assert_eq!(
                read_at(&leg.disk_path, leg.offset_bytes + meta, data),
                pattern(k as u8, data),
                "mirrored disk {k}: every leg, the copied ones too, holds the data"
            );
        }
    }
    let rebuilds = admin.rebuilds(true).await.unwrap();
    let done: Vec<_> = rebuilds
        .rebuilds
        .iter()
        .filter(|r| r.state == RebuildState::Done)
        .collect();
    assert_eq!(done.len(), lost, "one rebuild per lost leg: {rebuilds:?}");
    for r in &done {
        assert_eq!(r.bytes_done, r.bytes_total);
        assert_eq!(
            r.replaced.server, victim,
            "each replaces a leg of the failed server"
        );
    }
    let events = admin.events(0, None, Duration::ZERO).await.unwrap();
    let kinds: Vec<&str> = events.events.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["rebuild_queued", "rebuild_started", "rebuild_done"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    // Following the log: nothing new yet, so a short wait returns empty.
    let next = admin
        .events(events.next, None, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(next.events.is_empty());
    assert_eq!(next.next, events.next);
}
