//! Concurrent create/delete churn against a real manager and four storage
//! agents on loopback (file disks, 4 MiB chunks): every freed chunk is
//! wiped and comes back, none stays `releasing`, and the capacity adds up
//! (`free + used + releasing = capacity`, per disk and for the pool) at
//! every moment, also after a disk fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vsky_api::Client;
use vsky_api::types::CreateVolume;

mod common;

use common::*;

const CLIENTS: usize = 4;
const PAIRS: usize = 100;

/// Checks the accounting in one cluster summary and one disk listing.
async fn check_capacity(admin: &Client) {
    let s = admin.cluster().await.unwrap();
    assert_eq!(
        s.free_bytes + s.used_bytes + s.releasing_bytes,
        s.capacity_bytes,
        "pool accounting: {s:?}"
    );
    let mut all = 0;
    for d in admin.list_disks().await.unwrap() {
        assert_eq!(
            d.free_chunks + d.legs + d.releasing_chunks,
            u64::from(d.chunk_count),
            "disk accounting: {d:?}"
        );
        all += u64::from(d.chunk_count) * s.chunk_size_bytes;
    }
    // Disks registered meanwhile are not in the summary, so only bound it.
    assert!(s.capacity_bytes + s.unavailable_bytes <= all, "{s:?}");
}

/// Creates a volume, waiting while the pool is short of wiped chunks (they
/// come back as the agents wipe them).
async fn create(admin: &Client, name: &str) {
    let start = Instant::now();
    loop {
        let req = CreateVolume {
            name: name.into(),
            size_bytes: MIB,
            ..Default::default()
        };
        match admin.create_volume(&req).await {
            Ok(_) => return,
            Err(e)
                if matches!(e.code(), Some("not_enough_space" | "not_enough_servers"))
                    && start.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("create {name}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_churn_frees_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 4, 8).await;
    let admin = cluster.admin();

    // The accounting holds at every moment of the churn.
    let done = Arc::new(AtomicBool::new(false));
    let checker = {
        let (admin, done) = (admin.clone(), done.clone());
        tokio::spawn(async move {
            let mut checks = 0;
            while !done.load(Ordering::Relaxed) {
                check_capacity(&admin).await;
                checks += 1;
            }
            checks
        })
    };
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let admin = cluster.admin();
            tokio::spawn(async move {
                for i in 0..PAIRS {
                    let name = format!("c{k}-{i}");
                    create(&admin, &name).await;
                    admin.delete_volume(&name).await.unwrap();
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let checks = checker.await.unwrap();
    eprintln!(
        "{} create/delete pairs in {:?}, {checks} accounting checks",
        CLIENTS * PAIRS,
        started.elapsed()
    );

    // Every freed chunk is wiped and back in the pool.
    eventually("every freed chunk wiped and free", async || {
        admin
            .cluster()
            .await
            .map(|c| c.releasing_bytes == 0 && c.free_bytes == c.capacity_bytes)
            .unwrap_or(false)
    })
    .await;
    check_capacity(&admin).await;

    // A disk fails under volumes: its chunks leave the capacity, the rest
    // still adds up, and what is freed on the serving disks comes back.
    let mut legs_on = std::collections::BTreeMap::<u64, u64>::new();
    for i in 0..4 {
        let v = admin
            .create_volume(&CreateVolume {
                name: format!("after-{i}"),
                size_bytes: MIB,
                ..Default::default()
            })
            .await
            .unwrap();
        for leg in &v.layout[0].legs {
            *legs_on.entry(leg.disk_id).or_default() += 1;
        }
    }
    let (&victim, _) = legs_on.iter().max_by_key(|(_, n)| **n).unwrap();
    let before = admin.cluster().await.unwrap();
    admin.fail_disk(victim).await.unwrap();
    let after = admin.cluster().await.unwrap();
    assert_eq!(after.unavailable_bytes, 8 * CHUNK);
    assert_eq!(after.capacity_bytes, before.capacity_bytes - 8 * CHUNK);
    check_capacity(&admin).await;
    for i in 0..4 {
        admin.delete_volume(&format!("after-{i}")).await.unwrap();
    }
    check_capacity(&admin).await;
    eventually("chunks freed on serving disks wiped", async || {
        admin
            .cluster()
            .await
            .map(|c| c.releasing_bytes == 0 && c.free_bytes == c.capacity_bytes)
            .unwrap_or(false)
    })
    .await;
    check_capacity(&admin).await;
}
