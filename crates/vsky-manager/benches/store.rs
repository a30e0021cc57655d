//! Volume-create throughput and latency of a manager on etcd (a real
//! 3-member cluster on loopback) against one on the embedded redb store,
//! as ratios from one run (timings on shared machines are noisy; ratios
//! from the same run are what `docs/benchmarks.md` records).
//!
//! Run: `cargo bench -p vsky-manager --bench store` (needs `/usr/bin/etcd`).
//! Both managers run the release binary with the same pool; each create
//! is one REST call that commits durably (redb fsync; etcd raft quorum
//! write, fsynced by each member) before answering.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::etcd::{EtcdCluster, HaManager, etcd_binary};
use common::{MANAGER, ManagerProcess, pool, register_pool, volume};
use vsky_api::Client;

/// Sequential creates for latency, then concurrent ones for throughput.
const SEQUENTIAL: usize = 200;
const CONCURRENT_TASKS: usize = 8;
const CONCURRENT_EACH: usize = 50;

struct Figures {
    p50: Duration,
    p99: Duration,
    sequential_per_second: f64,
    concurrent_per_second: f64,
}

async fn measure(client: &Client, tag: &str) -> Figures {
    register_pool(client, &pool(8, 4).chunks(400).racks(4)).await;
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    let start = Instant::now();
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        client
            .create_volume(&volume(&format!("{tag}-seq-{i}"), 7 << 20))
            .await
            .unwrap();
        latencies.push(t.elapsed());
    }
    let sequential = start.elapsed();
    latencies.sort();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT_TASKS)
        .map(|t| {
            let client = client.clone();
            let tag = tag.to_string();
            tokio::spawn(async move {
                for i in 0..CONCURRENT_EACH {
                    client
                        .create_volume(&volume(&format!("{tag}-par-{t}-{i}"), 7 << 20))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let concurrent = start.elapsed();
    Figures {
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        sequential_per_second: SEQUENTIAL as f64 / sequential.as_secs_f64(),
        concurrent_per_second: (CONCURRENT_TASKS * CONCURRENT_EACH) as f64
            / concurrent.as_secs_f64(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let redb_dir = tempfile::tempdir().unwrap();
    let redb = ManagerProcess::start(MANAGER, redb_dir.path(), &["--chunk-size", "8MiB"]);
    let r = measure(&redb.admin(), "redb").await;
    drop(redb);

    let etcd = EtcdCluster::start(etcd_bin, 3);
    let dir = tempfile::tempdir().unwrap();
    let leader = HaManager::start(
        dir.path(),
        &etcd.store_url("bench"),
        &["--chunk-size", "8MiB"],
    );
    let standby = HaManager::start(dir.path(), &etcd.store_url("bench"), &[]);
    let client = common::etcd::client_of(&[&leader, &standby]);
    let e = measure(&client, "etcd").await;

    println!("| figure | redb | etcd (3 members) | etcd / redb |");
    println!("|---|---:|---:|---:|");
    println!(
        "| create latency p50 | {} | {} | {:.2} |",
        ms(r.p50),
        ms(e.p50),
        e.p50.as_secs_f64() / r.p50.as_secs_f64()
    );
    println!(
        "| create latency p99 | {} | {} | {:.2} |",
        ms(r.p99),
        ms(e.p99),
        e.p99.as_secs_f64() / r.p99.as_secs_f64()
    );
    println!(
        "| creates/s, one client | {:.0} | {:.0} | {:.2} |",
        r.sequential_per_second,
        e.sequential_per_second,
        e.sequential_per_second / r.sequential_per_second
    );
    println!(
        "| creates/s, {CONCURRENT_TASKS} clients | {:.0} | {:.0} | {:.2} |",
        r.concurrent_per_second,
        e.concurrent_per_second,
        e.concurrent_per_second / r.concurrent_per_second
    );
}
