//! Space taken by clones of a template (docs/design/snapshots.md §7): a
//! thin template written whole, `clones` clones of it, each written in
//! part by a head, with the pools growing on the heads' reports by the
//! manager's own rule (`Cluster::apply_heartbeat`, `cluster/pools.rs`).
//! Against the thick copies a full clone would take.
//!
//! The writes are counted in dm-thin's 64 KiB blocks: a sequential write of
//! `written` bytes maps that many bytes' blocks; `scattered_writes` 4 KiB
//! writes at random offsets map one block each unless two land in the same
//! block. A head reports after every `REPORT_BLOCKS` mapped blocks, as its
//! health loop would while the writer runs.

use vsky_model::*;
use vsky_testkit::pool::PoolSpec;

use crate::config::Rng;

/// How the clones write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClonePattern {
    /// One sequential run of `written_percent` of the template.
    Sequential,
    /// 4 KiB writes at random offsets, `written_percent` of the template
    /// in all.
    Scattered,
}

#[derive(Clone, Debug)]
pub struct ClonesConfig {
    pub servers: usize,
    pub disks_per_server: usize,
    pub chunk_bytes: u64,
    pub template_bytes: u64,
    pub clones: usize,
    pub written_percent: f64,
    pub pattern: ClonePattern,
    pub seed: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClonesReport {
    pub clones: usize,
    pub pattern: ClonePattern,
    pub written_percent: f64,
    /// Chunk bytes (all replicas) the template's layers hold.
    pub template_bytes_held: u64,
    /// Chunk bytes (all replicas) the clones' own layers hold.
    pub clones_bytes_held: u64,
    /// What `clones` thick copies of the template would hold.
    pub thick_copies_bytes: u64,
    /// Bytes the clones' writes mapped (their pools' used blocks).
    pub clones_bytes_mapped: u64,
    /// Mirrored disks per clone's own layer: fewest and most.
    pub clone_disks_min: usize,
    pub clone_disks_max: usize,
}

/// dm-thin's block, as the model's layers use it.
const BLOCK: u64 = (limits::THIN_BLOCK_SECTORS as u64) * 512;
/// Blocks mapped between two reports of a head.
const REPORT_BLOCKS: u64 = 256;

pub fn run_clones(cfg: &ClonesConfig) -> Result<ClonesReport, String> {
    let chunks_per_disk = 64;
    let mut c = PoolSpec::new(cfg.servers, cfg.disks_per_server)
        .chunks(chunks_per_disk)
        .chunk_bytes(cfg.chunk_bytes)
        .try_build()
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::new(cfg.seed);
    let err = |e: ModelError| e.to_string();
    let new = NewVolume {
        name: "template".into(),
        size_bytes: cfg.template_bytes,
        thin: true,
        ..Default::default()
    };
    c.create_volume(new, &mut rng).map_err(err)?;
    let head = c.server_by_name("s0").map_err(err)?.id;
    // The template is installed: written whole, then detached.
    c.attach_volume("template", "s0").map_err(err)?;
    let all = cfg.template_bytes.div_ceil(BLOCK);
    write_blocks(&mut c, head, "template", &mut (0..all), &mut rng)?;
    c.release_volume("template").map_err(err)?;
    c.head_reports_assembled(head, Some(&[]), &mut rng)
        .map_err(err)?;
    let template_layers = c.chain(c.volume_by_name("template").map_err(err)?.id);

    let per_clone = (cfg.template_bytes as f64 * cfg.written_percent / 100.0) as u64;
    let (mut mapped, mut disks) = (0, Vec::new());
    for i in 0..cfg.clones {
        let name = format!("vm{i}");
        c.clone_volume("template", &name, 1, &mut rng)
            .map_err(err)?;
        let server = format!("s{}", i % cfg.servers);
        let id = c.server_by_name(&server).map_err(err)?.id;
        c.attach_volume(&name, &server).map_err(err)?;
        let mut blocks: Box<dyn Iterator<Item = u64>> = match cfg.pattern {
            ClonePattern::Sequential => {
                let start = rng.below(all.saturating_sub(per_clone.div_ceil(BLOCK)).max(1));
                Box::new(start..start + per_clone.div_ceil(BLOCK))
            }
            ClonePattern::Scattered => {
                let writes = per_clone / 4096;
                let picks: Vec<u64> = (0..writes).map(|_| rng.below(all)).collect();
                Box::new(picks.into_iter())
            }
        };
        mapped += write_blocks(&mut c, id, &name, &mut blocks, &mut rng)?;
        let top = own_layer(&c, &name)?;
        disks.push(c.volume(top).map_or(0, |v| v.mirrored_disks.len()));
    }
    c.check_invariants()?;

    let held = |layers: &[VolumeId]| -> u64 {
        layers
            .iter()
            .filter_map(|l| c.volume(*l))
            .flat_map(|v| &v.mirrored_disks)
            .map(|m| m.legs.len() as u64 * cfg.chunk_bytes)
            .sum()
    };
    let clone_layers: Vec<VolumeId> = (0..cfg.clones)
        .map(|i| own_layer(&c, &format!("vm{i}")))
        .collect::<Result<_, _>>()?;
    Ok(ClonesReport {
        clones: cfg.clones,
        pattern: cfg.pattern,
        written_percent: cfg.written_percent,
        template_bytes_held: held(&template_layers),
        clones_bytes_held: held(&clone_layers),
        thick_copies_bytes: thick_bytes(&c, cfg) * cfg.clones as u64,
        clones_bytes_mapped: mapped * BLOCK,
        clone_disks_min: disks.iter().copied().min().unwrap_or(0),
        clone_disks_max: disks.iter().copied().max().unwrap_or(0),
    })
}

/// What one thick copy of the template holds: whole chunks, two replicas.
fn thick_bytes(c: &Cluster, cfg: &ClonesConfig) -> u64 {
    let per_chunk = c.settings().data_bytes_per_chunk();
    cfg.template_bytes.div_ceil(per_chunk) * cfg.chunk_bytes * u64::from(limits::REPLICAS_DEFAULT)
}

/// The writable top of thin volume `name`.
fn own_layer(c: &Cluster, name: &str) -> Result<VolumeId, String> {
    match c.volume_by_name(name).map_err(|e| e.to_string())?.role {
        VolumeRole::Thin { top } => Ok(top),
        ref other => Err(format!("{name} is {other:?}, not a thin volume")),
    }
}

/// Maps `blocks` (block indexes, repeats counted once) in the top of
/// `volume` headed by `head`, reporting the pool as the head would and
/// letting the manager grow it. Returns the blocks mapped.
fn write_blocks(
    c: &mut Cluster,
    head: ServerId,
    volume: &str,
    blocks: &mut dyn Iterator<Item = u64>,
    rng: &mut Rng,
) -> Result<u64, String> {
    let top = own_layer(c, volume)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut since_report = 0;
    for b in blocks {
        if seen.insert(b) {
            since_report += 1;
        }
        if since_report == REPORT_BLOCKS {
            report(c, head, top, seen.len() as u64, rng)?;
            since_report = 0;
        }
    }
    report(c, head, top, seen.len() as u64, rng)?;
    Ok(seen.len() as u64)
}

/// The head's report of `top`'s pool with `used` blocks mapped, applied
/// until the pool stops growing (a head reports again after each growth).
fn report(
    c: &mut Cluster,
    head: ServerId,
    top: VolumeId,
    used: u64,
    rng: &mut Rng,
) -> Result<(), String> {
    let per_chunk = c.settings().data_bytes_per_chunk();
    loop {
        let layer = c.volume(top).ok_or("the top is gone")?;
        let info = layer.role.layer().ok_or("the top is no layer")?;
        let total = cluster::pools::pool_data_blocks(info, layer.mirrored_disks.len(), per_chunk);
        if used > total {
            return Err(format!(
                "{} blocks written into a pool of {total}: it did not grow in time",
                used
            ));
        }
        let usage = PoolUsage {
            layer: layer.name.clone(),
            used_data_blocks: used,
            total_data_blocks: total,
            used_meta_blocks: 1,
            total_meta_blocks: 1024,
            out_of_data_space: used == total,
        };
        let before = layer.mirrored_disks.len();
        let beat = AgentReport {
            assembled: None,
            pools: vec![usage],
            ..Default::default()
        };
        c.apply_heartbeat(head, &beat, 1, rng)
            .map_err(|e| e.to_string())?;
        if c.volume(top).map(|v| v.mirrored_disks.len()) == Some(before) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pattern: ClonePattern) -> ClonesConfig {
        ClonesConfig {
            servers: 4,
            disks_per_server: 4,
            chunk_bytes: 64 << 20,
            template_bytes: 640 << 20,
            clones: 5,
            written_percent: 2.5,
            pattern,
            seed: 3,
        }
    }

    /// A clone holds its own writes only: one mirrored disk for a short
    /// sequential run, more when scattered writes map a block each, and
    /// both far below thick copies; the pools grew by the manager's rule
    /// without a write ever outrunning them.
    #[test]
    fn clones_hold_what_they_write() {
        let seq = run_clones(&config(ClonePattern::Sequential)).unwrap();
        assert_eq!((seq.clone_disks_min, seq.clone_disks_max), (1, 1));
        assert_eq!(seq.clones_bytes_held, 5 * 2 * (64 << 20));
        assert_eq!(seq.clones_bytes_mapped, 5 * 256 * BLOCK);
        let scattered = run_clones(&config(ClonePattern::Scattered)).unwrap();
        assert!(scattered.clones_bytes_mapped > seq.clones_bytes_mapped);
        assert!(scattered.clone_disks_max > 1);
        for r in [&seq, &scattered] {
            assert!(r.clones_bytes_held < r.thick_copies_bytes / 2, "{r:?}");
            assert!(r.template_bytes_held >= 2 * (640 << 20), "{r:?}");
        }
        // Deterministic for a seed.
        let again = run_clones(&config(ClonePattern::Scattered)).unwrap();
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&scattered).unwrap()
        );
    }
}
