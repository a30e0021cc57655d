//! Scrubs of detached volumes against a real manager on loopback: the
//! manager schedules them (`--scrub-interval`), the storage agent holding
//! a mirrored disk's first leg reads every leg (its own in place, the
//! others over NBD) and compares them, and the manager turns the verdicts
//! into events; a leg that cannot be read is replaced.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use vsky_api::Client;
use vsky_api::types::{CreateVolume, Event, LegState, VolumeDetail};
use vsky_manager::RecoveryConfig;

mod common;

use common::*;

/// A manager that scrubs every detached mirrored disk once a second, and
/// three storage agents with one file-backed disk each.
async fn scrubbing_cluster(dir: &std::path::Path) -> LocalCluster {
    let recovery = RecoveryConfig {
        scrub_interval: Some(Duration::from_secs(1)),
        ..patient_recovery()
    };
    LocalCluster::start_with(dir, recovery, 3, 8).await
}

/// A detached volume of one 2-way mirrored disk (3 MiB of data).
async fn volume(admin: &Client, name: &str) -> VolumeDetail {
    admin
        .create_volume(&CreateVolume {
            name: name.into(),
            size_bytes: 3 * MIB,
            replicas: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Every event so far.
async fn events(admin: &Client) -> Vec<Event> {
    let mut all = Vec::new();
    let mut since = 0;
    loop {
        let page = admin.events(since, None, Duration::ZERO).await.unwrap();
        if page.events.is_empty() {
            return all;
        }
        since = page.next;
        all.extend(page.events);
    }
}

fn about<'a>(events: &'a [Event], kind: &str, volume: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.kind == kind && e.volume.as_deref() == Some(volume))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_volumes_are_scrubbed_and_mismatches_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = scrubbing_cluster(dir.path()).await;
    let admin = cluster.admin();
    let clean = volume(&admin, "clean").await;
    let bad = volume(&admin, "bad").await;
    let meta = CHUNK - bad.data_bytes_per_mirrored_disk;

    // Three sectors of one leg's data area go bad (its metadata area may
    // differ: it is not compared).
    let leg = &bad.layout[0].legs[1];
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&leg.disk_path)
        .unwrap();
    let data = leg.offset_bytes + meta;
    for at in [data, data + 100 * 512 + 7, data + 2 * MIB + 1] {
        disk.write_all_at(&[0xa5; 3], at).unwrap();
    }
    disk.write_all_at(&[0x5a; 64], leg.offset_bytes).unwrap();
    disk.sync_all().unwrap();

    eventually("the bad volume's scrub reports 3 sectors", async || {
        about(&events(&admin).await, "scrub_mismatch", "bad")
            .iter()
            .any(|e| e.message.contains(": 3 sectors differ"))
    })
    .await;
    eventually("the clean volume's scrub passes", async || {
        !about(&events(&admin).await, "scrub_done", "clean").is_empty()
    })
    .await;
    let all = events(&admin).await;
    assert!(
        about(&all, "scrub_mismatch", "clean").is_empty(),
        "{:?}",
        about(&all, "scrub_mismatch", "clean")
    );
    let started = about(&all, "scrub_started", "clean");
    assert!(!started.is_empty());
    // Run by the server of the first leg.
    assert_eq!(
        started[0].server.as_deref(),
        Some(clean.layout[0].legs[0].server.as_str())
    );
    let mismatch = about(&all, "scrub_mismatch", "bad")[0];
    assert_eq!(mismatch.severity, "warning");
    assert_eq!(
        mismatch.server.as_deref(),
        Some(bad.layout[0].legs[0].server.as_str())
    );
    // Mismatches are reported, not repaired: the legs stay.
    let after = admin.volume("bad").await.unwrap();
    assert!(
        after.layout[0]
            .legs
            .iter()
            .all(|l| l.state == LegState::Active)
    );
    assert!(after.layout[0].last_scrub_unix_s.is_some());
    assert!(
        admin.volume("clean").await.unwrap().layout[0]
            .last_scrub_unix_s
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leg_that_cannot_be_read_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = scrubbing_cluster(dir.path()).await;
    let admin = cluster.admin();
    let v = volume(&admin, "v").await;
    let meta = CHUNK - v.data_bytes_per_mirrored_disk;
    let victim = v.layout[0].legs[0].clone();
    // The scrub's executor reads its own leg in place: its disk now ends a
    // MiB into the leg's data area.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim.disk_path)
        .unwrap()
        .set_len(victim.offset_bytes + meta + MIB)
        .unwrap();

    eventually("the unreadable leg reported", async || {
        !about(&events(&admin).await, "scrub_unreadable", "v").is_empty()
    })
    .await;
    let all = events(&admin).await;
    let e = about(&all, "scrub_unreadable", "v")[0];
    assert_eq!(e.severity, "warning");
    assert!(
        e.message.contains(&format!("leg 0 on {}", victim.server)),
        "{}",
        e.message
    );
    eventually("the leg replaced by a copy of the other", async || {
        admin.volume("v").await.is_ok_and(|v| {
            let legs = &v.layout[0].legs;
            (legs[0].disk_id, legs[0].chunk_index) != (victim.disk_id, victim.chunk_index)
                && legs.iter().all(|l| l.state == LegState::Active)
        })
    })
    .await;
    // The event is logged right after the change that shows the leg
    // active, so it may come a moment later.
    eventually("the rebuild_done event", async || {
        !about(&events(&admin).await, "rebuild_done", "v").is_empty()
    })
    .await;
}
