//! cluster-bench (a benchmark, not a test; only when named): sequential
//! O_DIRECT throughput of a mirrored volume against one raw leg, same
//! request size, same run. The raw leg is one mirror's /dev/nbdN, read
//! through its data area; for writes a second, sacrificial volume's leg is
//! used (writing under a live mirror desynchronises it, so that volume is
//! deleted after).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::wait::{self, wait_for};

const ROUNDS: usize = 24;
/// Each volume is one mirrored disk of 7 MiB of data.
const VOLUME_MIB: usize = 7;
/// A raw leg's data area starts 1 MiB into the chunk (after the dm-raid
/// metadata area).
const LEG_DATA_OFFSET: u64 = MIB as u64;

pub fn run_scenario() -> Result<String> {
    let (vb, vr) = ("vb", "vr");
    let c = Cluster::up(Config {
        disk_mib: 256,
        ..Config::default()
    })?;
    c.api.create_volume(vb, VOLUME_MIB as u64)?;
    c.api.create_volume(vr, VOLUME_MIB as u64)?;
    c.attach_wait(vb)?;
    c.attach_wait(vr)?;
    let raw_r = first_leg_device(&c, vb)?;
    let raw_w = first_leg_device(&c, vr)?;
    let zeros = vec![0u8; VOLUME_MIB * MIB];
    let mw = rate(|| data::write_direct(&device(vb), 0, &zeros, MIB))?;
    let rw = rate(|| data::write_direct(&raw_w, LEG_DATA_OFFSET, &zeros, MIB))?;
    let mr = rate(|| data::read_direct(&device(vb), 0, zeros.len()).map(drop))?;
    let rr = rate(|| data::read_direct(&raw_r, LEG_DATA_OFFSET, zeros.len()).map(drop))?;
    // vb stays attached meanwhile, so wait only for vr's own device.
    c.api.detach(vr)?;
    let vr_dev = device(vr);
    wait_for(
        &format!("{} to vanish", vr_dev.display()),
        wait::secs(60),
        || Ok(!vr_dev.exists() && c.api.volume(vr)?.volume.attached_to.is_none()),
    )?;
    c.api.delete_volume(vr)?;
    c.detach_wait(vb)?;
    c.finish();
    Ok(format!(
        "bench (1 MiB O_DIRECT, {ROUNDS}×{VOLUME_MIB} MiB): write mirror {mw:.1} MiB/s vs raw leg {rw:.1} MiB/s (ratio {:.2}); read mirror {mr:.1} MiB/s vs raw leg {rr:.1} MiB/s (ratio {:.2})",
        mw / rw,
        mr / rr
    ))
}

/// The `/dev/nbdN` of leg 0 of mirrored disk 0 of `volume`.
fn first_leg_device(c: &Cluster, volume: &str) -> Result<PathBuf> {
    let legs = c.api.legs(volume)?;
    let disk = legs
        .iter()
        .find(|l| l.slot() == (0, 0))
        .map(|l| l.at.disk_id)
        .with_context(|| format!("{volume} has no leg 0/0"))?;
    kernel::leg_device(volume, disk)?
        .with_context(|| format!("no NBD device for {volume}'s first leg"))
}

/// MiB/s of `ROUNDS` runs of `io`, each moving `VOLUME_MIB` MiB.
fn rate(mut io: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..ROUNDS {
        io()?;
    }
    let secs = start.elapsed().as_secs_f64().max(0.01);
    Ok((ROUNDS * VOLUME_MIB) as f64 / secs)
}
