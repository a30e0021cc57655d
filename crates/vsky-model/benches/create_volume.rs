//! Volume-create cost as the pool grows: 10 to 10 000 disks, volumes of 1 to
//! 1000 mirrored disks (2 legs each), on a pool half full of other volumes.
//!
//! Run: `cargo bench -p vsky-model --bench create_volume` (prints a Markdown
//! table for docs/benchmarks.md). A benchmark, not a test: it asserts
//! nothing about time.

use std::time::{Duration, Instant};

use vsky_model::*;
use vsky_testkit::pool::PoolSpec;

const GIB: u64 = 1 << 30;

/// `disks` disks of 1000 × 1 GiB chunks, 10 per server (fewer for tiny
/// pools), servers over 8 racks.
fn pool(disks: usize) -> Cluster {
    let per_server = if disks >= 100 { 10 } else { 2 };
    PoolSpec::new(disks / per_server, per_server)
        .chunk_bytes(GIB)
        .chunks(1000)
        .racks(8)
        .build()
}

fn volume(name: &str, mirrored: u64) -> NewVolume {
    NewVolume {
        name: name.into(),
        size_bytes: mirrored * (GIB - (1 << 20)),
        replicas: Some(2),
        stripe: None,
        class: None,
        near_server: None,
        meta: Default::default(),
        thin: false,
    }
}

fn main() {
    let mut secrets = CountingSecrets::default();
    println!("| disks | mirrored disks per volume | create (median) | per leg |");
    println!("|---:|---:|---:|---:|");
    for disks in [10usize, 100, 1000, 10_000] {
        let mut c = pool(disks);
        // Half-fill the pool with 100-mirrored-disk volumes so the free
        // lists and load index are realistic, not pristine.
        let total_chunks = disks as u64 * 1000;
        let mut legs_to_fill = total_chunks / 2;
        let mut i = 0;
        while legs_to_fill > 0 {
            let mirrored = legs_to_fill.div_ceil(2).min(100);
            c.create_volume(volume(&format!("fill{i}"), mirrored), &mut secrets)
                .unwrap();
            legs_to_fill = legs_to_fill.saturating_sub(mirrored * 2);
            i += 1;
        }
        for mirrored in [1u64, 10, 100, 1000] {
            if mirrored * 2 > total_chunks / 4 {
                continue;
            }
            let rounds = (2000 / mirrored).clamp(5, 200);
            let mut times: Vec<Duration> = Vec::new();
            for r in 0..rounds {
                let name = format!("bench{r}");
                let start = Instant::now();
                c.create_volume(volume(&name, mirrored), &mut secrets)
                    .unwrap();
                times.push(start.elapsed());
                // Delete and wipe (untimed) so every round sees the same pool.
                let legs: Vec<(ServerId, ChunkRef)> = c
                    .volume_by_name(&name)
                    .unwrap()
                    .mirrored_disks
                    .iter()
                    .flat_map(|m| m.legs.iter().map(|l| l.chunk))
                    .map(|chunk| (c.disk(chunk.disk).unwrap().server, chunk))
                    .collect();
                c.delete_volume(&name).unwrap();
                for (server, chunk) in legs {
                    let release = c.disk(chunk.disk).unwrap().releasing[&chunk.index];
                    c.chunks_wiped(server, &[WipedChunk { chunk, release }])
                        .unwrap();
                }
            }
            times.sort();
            let median = times[times.len() / 2];
            println!(
                "| {disks} | {mirrored} | {:.3} ms | {:.2} µs |",
                median.as_secs_f64() * 1e3,
                median.as_secs_f64() * 1e6 / (mirrored * 2) as f64
            );
        }
    }
}
