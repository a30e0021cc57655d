//! cluster-grow: attached volumes grow online. While an O_DIRECT writer
//! keeps rewriting the start of the volume, `vsky volume resize` grows it:
//! the manager allocates the new mirrored disks, the head assembles them
//! and swaps the volume device's table for the longer one (suspend, load,
//! resume), and the CLI returns once the head serves the new size. The
//! writer sees no error, the device has the new size at once (what
//! xen-blkback picks up), data written past the old end reads back, and
//! everything survives detach and reattach. Once for a concatenation, and
//! once for a stripe of two columns whose columns turn from one mirror
//! into a concatenation (the table swap keeps every old sector in place).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::data::{self, MIB, Rewriter, device};
use crate::fixture::{Cluster, Config};
use crate::out::{say, secs, show};

/// The size of a block device, as the kernel has it now.
fn device_bytes(dev: &Path) -> Result<u64> {
    File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .with_context(|| format!("size of {}", dev.display()))
}

/// Grows `volume` (attached, holding `old_mib` MiB of `pattern` from 0)
/// to `new_mib` under a rewriter, then fills the new space and checks it
/// all across detach and reattach. Returns a line for the detail.
fn grow_under_writer(c: &Cluster, volume: &str, old_mib: u64, new_mib: u64) -> Result<String> {
    let dev = device(volume);
    ensure!(
        device_bytes(&dev)? == old_mib << 20,
        "{} is not {old_mib} MiB before the grow",
        dev.display()
    );
    let pattern = Arc::new(data::random(old_mib as usize)?);
    data::write_direct(&dev, 0, &pattern, MIB)?;
    let writer = Rewriter::start(dev.clone(), Arc::clone(&pattern));
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let size = format!("{new_mib}MiB");
    let out = c.vsky_tail(&["volume", "resize", volume, "--size", &size], 4)?;
    let took = secs(start);
    show(&out);
    // The CLI returned once the head served the new size: the device has
    // it now, with the writer still running.
    let now = device_bytes(&dev)?;
    let still_running = writer.running();
    std::thread::sleep(Duration::from_secs(1));
    let rounds = writer.finish()?;
    ensure!(still_running, "the writer stopped during the grow");
    ensure!(
        now == new_mib << 20,
        "{} is {now} bytes after the grow, not {new_mib} MiB",
        dev.display()
    );
    let detail = c.api.volume(volume)?;
    ensure!(
        detail.volume.served_bytes == Some(new_mib << 20),
        "the manager shows {volume} served at {:?}",
        detail.volume.served_bytes
    );
    say(format!(
        "{volume} grew from {old_mib} to {new_mib} MiB online in {took}s (CLI to answer); the writer rewrote it {rounds} times, no error"
    ));
    // The new space holds data, and everything survives a reattach.
    let tail = data::random((new_mib - old_mib) as usize)?;
    data::write_direct(&dev, old_mib << 20, &tail, MIB)?;
    data::expect_same(
        &dev,
        old_mib << 20,
        &tail,
        "the new space right after the write",
    )?;
    c.detach_wait(volume)?;
    c.attach_wait(volume)?;
    ensure!(
        device_bytes(&dev)? == new_mib << 20,
        "reattached at another size"
    );
    data::expect_same(
        &dev,
        0,
        &pattern,
        &format!("{volume}'s old space after reattach"),
    )?;
    data::expect_same(
        &dev,
        old_mib << 20,
        &tail,
        &format!("{volume}'s new space after reattach"),
    )?;
    c.detach_wait(volume)?;
    Ok(format!(
        "{volume} {old_mib}→{new_mib} MiB in {took}s under {rounds} rewrite rounds"
    ))
}

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config {
        servers: 3,
        disk_mib: 128,
        ..Config::default()
    })?;
    // A concatenation of 2 mirrored disks (7 MiB of data each) grows to 5.
    let linear = "vg";
    c.api.create_volume(linear, 14)?;
    c.attach_wait(linear)?;
    let one = grow_under_writer(&c, linear, 14, 35)?;
    // A stripe of 2 columns of one mirrored disk each grows to 2 each.
    let striped = "vs";
    c.vsky_text(&[
        "volume",
        "create",
        striped,
        "--size",
        "14MiB",
        "--replicas",
        "2",
        "--stripe-width",
        "2",
        "--stripe-unit",
        "64KiB",
    ])?;
    c.attach_wait(striped)?;
    let two = grow_under_writer(&c, striped, 14, 28)?;
    ensure!(
        c.api.event_seen("volume_grown_online", Some("head"))?,
        "no volume_grown_online event"
    );
    c.finish();
    Ok(format!(
        "attached volumes grown online under an O_DIRECT rewriter with no I/O error, the device at its new size when the CLI answered, data past the old end and before it intact across detach/reattach: {one}; striped {two} (columns became concatenations)"
    ))
}
