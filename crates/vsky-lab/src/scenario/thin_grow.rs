//! cluster-thin-grow: a thin volume's pool grows as it is written, and
//! holds writes without corrupting anything when the cluster has no chunk
//! left (docs/design/snapshots.md §5.7, step 11).
//!
//! A thin volume of one mirrored disk is written far past that disk by an
//! O_DIRECT writer: the head reports its pool filling, the manager adds
//! mirrored disks, the head grows the pool's devices and reloads it under
//! the writer, which sees no error. The grown pool is assembled again
//! from scratch (detach, attach), then frozen by a snapshot and read by a
//! clone through its base form, sized from the pool's own superblock.
//! Then, with everything deleted, a new thin volume is attached and the
//! cluster filled: its writes past its first mirrored disk are held (an
//! event says why), and go through once chunks are freed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::say;
use crate::scenario::thin::layers_under;
use crate::wait::{self, wait_for};

/// 32 MiB chunks: 31 MiB of data each; a layer's first mirrored disk holds
/// 27 MiB of pool data, each later one 30.9 MiB.
const CHUNK: &str = "32MiB";
const SIZE_MIB: u64 = 128;
/// Far past the first mirrored disk (27 MiB): the pool grows twice. The
/// lab's storage servers share a 320 MiB ext4, which holds this twice over,
/// the new mirrors' initial syncs and a clone's top.
const WRITTEN_MIB: usize = 60;

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config {
        chunk: CHUNK,
        disk_mib: 448,
        ..Config::default()
    })?;
    let free = c.api.cluster()?.free_bytes;
    let v = "grower";
    c.api.create_thin_volume(v, SIZE_MIB)?;
    c.attach_wait(v)?;
    let dev = device(v);
    let top_disks = |name: &str| -> Result<usize> {
        let detail = c.api.volume(name)?;
        Ok(detail.layers.first().map_or(0, |l| l.layout.len()))
    };
    ensure!(
        top_disks(v)? == 1,
        "a new thin volume takes one mirrored disk"
    );

    // Written far past its first mirrored disk under one writer.
    let a = Arc::new(data::random(WRITTEN_MIB)?);
    let writer = data::Writer::start(dev.clone(), a.clone());
    writer.finish()?;
    data::expect_same(&dev, 0, &a, "the data written across the growths")?;
    let disks = top_disks(v)?;
    ensure!(
        disks >= 3,
        "{WRITTEN_MIB} MiB written into a pool that has {disks} mirrored disks"
    );
    ensure!(c.api.event_seen("pool_grown", None)?, "no pool_grown event");
    let top = layers_under(v)?.remove(0);
    let tdata = kernel::dm_table(&format!("{top}+tdata"))?;
    let tmeta = kernel::dm_table(&format!("{top}+tmeta"))?;
    ensure!(
        tdata.lines().count() >= 3 && tmeta.lines().count() >= 3,
        "the pool's devices did not grow by parts: tdata {tdata:?}, tmeta {tmeta:?}"
    );
    let mapped = kernel::thin_mapped_sectors(&format!("{top}+thin"))?;
    say(format!(
        "{WRITTEN_MIB} MiB written by one O_DIRECT writer, no error: the pool grew to {disks} mirrored disks ({} parts of metadata), {} MiB mapped",
        tmeta.lines().count(),
        mapped * 512 / MIB as u64
    ));

    // Assembled from scratch, then frozen and read through its base form.
    c.detach_wait(v)?;
    c.attach_wait(v)?;
    data::expect_same(&dev, 0, &a, "the grown pool after reattach")?;
    c.detach_wait(v)?;
    c.api.snapshot(v, "grown-snap")?;
    c.api.clone_volume("grown-snap", "reader")?;
    c.attach_wait("reader")?;
    data::expect_same(
        &device("reader"),
        0,
        &a,
        "a clone reading the grown layer in base form",
    )?;
    let base = layers_under("reader")?.remove(1);
    let pool = kernel::dm_table(&format!("{base}+pool"))?;
    ensure!(pool.contains("read_only"), "the base's pool: {pool}");
    c.detach_wait("reader")?;
    say("the grown pool reassembled exactly; frozen, its clone reads it through the base form");
    // Everything freed (holes punched in the servers' files) before the
    // next part writes again.
    for name in ["reader", "grown-snap", v] {
        c.api.delete_volume(name)?;
    }
    c.wait_all_free(free)?;

    // The cluster full: writes past the pool wait, an event says why, and
    // they go through once chunks are free.
    let v = "held";
    c.api.create_thin_volume(v, 64)?;
    c.attach_wait(v)?;
    let dev = device(v);
    let mut fillers = Vec::new();
    loop {
        let name = format!("filler{}", fillers.len());
        if c.api.create_volume(&name, 31).is_err() {
            break;
        }
        fillers.push(name);
    }
    ensure!(!fillers.is_empty(), "no room left to fill");
    let b = Arc::new(data::random(36)?);
    let held = data::Writer::start(dev.clone(), b.clone());
    wait_for("a pool_exhausted event", wait::secs(60), || {
        c.api.event_seen("pool_exhausted", None)
    })?;
    let top = layers_under(v)?.remove(0);
    wait_for("the pool full, holding writes", wait::secs(40), || {
        Ok(kernel::dm_status(&format!("{top}+pool"))?.contains("out_of_data_space"))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        held.running(),
        "the writer ended while its pool could not grow"
    );
    for name in &fillers {
        c.api.delete_volume(name)?;
    }
    held.finish()?;
    data::expect_same(&dev, 0, &b, "the writes held while the cluster was full")?;
    c.detach_wait(v)?;
    say(format!(
        "cluster filled ({} fillers): the writer was held past its pool (pool_exhausted), no error, and finished exactly once chunks were freed",
        fillers.len()
    ));
    c.api.delete_volume(v)?;
    c.finish();
    Ok(format!(
        "thin {SIZE_MIB} MiB volume written {WRITTEN_MIB} MiB by one O_DIRECT writer: its pool grew online to {disks} mirrored disks with no I/O error, data exact after reattach and through a clone of its snapshot (base form sized from the pool's superblock); with the cluster full the writer was held (pool_exhausted event) and finished exactly once chunks were freed"
    ))
}
