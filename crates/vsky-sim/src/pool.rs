//! The simulated pool: built and filled through the real allocator
//! (`vsky_testkit::pool` names its servers and disks as every test pool),
//! and the disks a fault picks from it.

use std::collections::BTreeSet;

use vsky_model::*;
use vsky_testkit::pool::PoolSpec;

use crate::config::{Rng, SimConfig};

/// Builds the pool and fills it with volumes of 1..=64 mirrored disks.
pub fn build_pool(config: &SimConfig, rng: &mut Rng) -> Result<Cluster, String> {
    let mut c = pool_spec(config).try_build().map_err(|e| e.to_string())?;
    let total_chunks = (config.servers * config.disks_per_server) as u64 * config.chunks_per_disk;
    let mut legs_left = (total_chunks as f64 * config.fill) as u64;
    let per_chunk = c.settings().data_bytes_per_chunk();
    let mut i = 0;
    while legs_left >= u64::from(config.replicas) {
        let max = (legs_left / u64::from(config.replicas)).min(64);
        let mirrored = 1 + rng.below(max);
        let new = NewVolume {
            name: format!("v{i}"),
            size_bytes: mirrored * per_chunk,
            replicas: Some(config.replicas),
            ..Default::default()
        };
        c.create_volume(new, rng)
            .map_err(|e| format!("filling the pool: {e}"))?;
        legs_left -= mirrored * u64::from(config.replicas);
        i += 1;
    }
    Ok(c)
}

/// The pool before any volume: `config`'s servers of `disks_per_server`
/// disks, spread over its racks (named as every test pool is, see
/// `vsky_testkit::pool`).
fn pool_spec(config: &SimConfig) -> PoolSpec {
    PoolSpec::new(config.servers, config.disks_per_server)
        .chunks(config.chunks_per_disk)
        .chunk_bytes(config.chunk_bytes)
        .racks(config.racks)
}

/// Adds server `s{s}` (rack `r{s mod racks}`) with its empty disks.
pub(crate) fn add_server(c: &mut Cluster, config: &SimConfig, s: usize) -> Result<(), String> {
    pool_spec(config)
        .try_add_server(c, s, config.disks_per_server)
        .map_err(|e| e.to_string())
}

/// Picks a random disk that holds legs.
pub(crate) fn random_used_disk(
    c: &Cluster,
    rng: &mut Rng,
    avoid_server: Option<ServerId>,
    avoid_disks: &BTreeSet<DiskId>,
) -> Option<DiskId> {
    let candidates: Vec<DiskId> = c
        .disks()
        .filter(|d| {
            c.disk_usage(d.id).legs > 0
                && Some(d.server) != avoid_server
                && !avoid_disks.contains(&d.id)
        })
        .map(|d| d.id)
        .collect();
    (!candidates.is_empty()).then(|| candidates[rng.below(candidates.len() as u64) as usize])
}

/// Disks holding the healthy legs of a degraded mirrored disk (fewer than
/// R active legs): failing one of them would be a second failure in one
/// mirrored disk. (A moving mirrored disk, R active legs and a syncing
/// extra one, is not degraded.)
pub(crate) fn critical_disks(c: &Cluster) -> BTreeSet<DiskId> {
    let mut out = BTreeSet::new();
    for v in c.volumes() {
        for md in &v.mirrored_disks {
            if md.healthy_legs() < usize::from(v.replicas) {
                out.extend(
                    md.legs
                        .iter()
                        .filter(|l| l.state == LegState::Active)
                        .map(|l| l.chunk.disk),
                );
            }
        }
    }
    out
}
