//! cluster-partition (issue #14): a head is cut off from the network with
//! a write queued in its kernel (its NBD timeout, 60 s, is longer than the
//! cut, so nothing fails it meanwhile). While it may still be alive, another head's
//! attach is refused; after the manager's `--head-grace` the other head
//! takes the volume over (the fencing operation: new export names, old
//! connections dropped) and writes where the queued write goes. Then the
//! cut-off head's link comes back: without the fence its queued write
//! would now land over the new head's data; instead it fails with EIO, as
//! does every later write until it tears the volume down on its own, and
//! both legs of every mirrored disk hold exactly what it wrote before the
//! cut and what the new head wrote after — read from the disks themselves,
//! behind the mirrors.
//!
//! The two heads share the VM's kernel: the cut-off one (`hp`) runs in a
//! network namespace of its own and names its devices `vskyp-…`
//! (`fixture.rs`).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config, HEAD, HEAD_P, HEAD_P_PREFIX};
use crate::kernel;
use crate::out::{say, secs};
use crate::wait::{self, wait_for};

/// The volume: two mirrored disks of 7 MiB (8 MiB chunks, 1 MiB of leg
/// metadata each).
const VOLUME_MIB: u64 = 14;
/// Where the cut-off head's late write, and then the new head's, go: the
/// second mirrored disk.
const LATE_AT: u64 = 7 * MIB as u64;
const LATE_MIB: usize = 4;
/// The lab's chunk size (`Config::default`).
const CHUNK: u64 = 8 * MIB as u64;

pub fn run_scenario() -> Result<String> {
    let v = "vpart";
    let c = Cluster::up(Config {
        servers: 2,
        head_grace: "10s",
        second_head: true,
        // The cut-off head's I/O stays queued through the cut and the
        // takeover (10-30 s here) instead of timing out. Once the link is
        // back and the fenced connection is reset, a request in flight on
        // it still fails only when this timeout expires (the kernel's nbd
        // waits for its reply until then).
        second_head_nbd_timeout_s: 60,
        ..Config::default()
    })?;
    c.api.create_volume(v, VOLUME_MIB)?;
    let dev_a = PathBuf::from(format!("/dev/mapper/{HEAD_P_PREFIX}-{v}"));
    let dev_b = device(v);
    c.api.attach(v, HEAD_P)?;
    wait_for(
        &format!("{} as a block device on {HEAD_P}", dev_a.display()),
        wait::secs(60),
        || Ok(kernel::is_block(&dev_a)),
    )?;
    wait_for(
        &format!("the mirrors of {v} on {HEAD_P} in sync"),
        wait::secs(60),
        || kernel::mirrors_in_sync_of(HEAD_P_PREFIX),
    )?;
    // Before the cut: acknowledged writes over the first mirrored disk.
    let before = data::random(7)?;
    data::write_direct(&dev_a, 0, &before, MIB)?;
    say(format!(
        "{HEAD_P} wrote 7 MiB to {} (O_DIRECT, acknowledged)",
        dev_a.display()
    ));

    c.set_second_head_link(false)?;
    let cut = Instant::now();
    // A write after the cut, left pending on the cut-off head.
    let late = data::random(LATE_MIB)?;
    let pending = write_in_background(dev_a.clone(), LATE_AT, late);
    say(format!(
        "{HEAD_P}'s link cut; a {LATE_MIB} MiB write at {} MiB started on it",
        LATE_AT / MIB as u64
    ));

    // While the cut-off head may still be alive, the volume stays its own.
    match c.api.attach(v, HEAD) {
        Ok(()) => bail!(
            "{HEAD} took {v} over from {HEAD_P} {}s after the cut, before the 10 s head grace",
            secs(cut)
        ),
        Err(e) if format!("{e:#}").contains("attached_elsewhere") => {
            say(format!("attach on {HEAD} refused within the grace: {e:#}"));
        }
        Err(e) => bail!("the attach on {HEAD} within the grace failed otherwise: {e:#}"),
    }
    wait_for(
        &format!("{HEAD} to take {v} over after the head grace"),
        wait::secs(60),
        || Ok(c.api.attach(v, HEAD).is_ok()),
    )?;
    let took = secs(cut);
    ensure!(
        c.api.event_seen("volume_taken_over", Some(HEAD_P))?,
        "no volume_taken_over event naming {HEAD_P} for {v}"
    );
    wait_for(
        &format!("{} as a block device on {HEAD}", dev_b.display()),
        wait::secs(60),
        || Ok(kernel::is_block(&dev_b)),
    )?;
    wait_for(
        &format!("the mirrors of {v} on {HEAD} in sync"),
        wait::secs(60),
        || kernel::mirrors_in_sync_of("vsky"),
    )?;
    data::expect_same(
        &dev_b,
        0,
        &before,
        "what the cut-off head wrote before the cut",
    )?;
    let after = data::random(LATE_MIB)?;
    data::write_direct(&dev_b, LATE_AT, &after, MIB)?;
    // The cut-off head's write is still queued in its kernel: were the
    // old connections still served when its link comes back, it would
    // land, over what the new head wrote.
    ensure!(
        matches!(pending.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "{HEAD_P}'s write ended before its link came back: the scenario needs it queued through the takeover"
    );
    say(format!(
        "{HEAD} took {v} over {took}s after the cut (event volume_taken_over), read {HEAD_P}'s 7 MiB, wrote {LATE_MIB} MiB where {HEAD_P}'s write, still queued there, goes"
    ));

    c.set_second_head_link(true)?;
    let back = Instant::now();
    // The pending write: an I/O error once the link is back (the storage
    // agents dropped the old connections and refuse the old names).
    let pending = pending
        .recv_timeout(Duration::from_secs(150))
        .context("the cut-off head's pending write neither finished nor failed in 150 s after its link came back")?;
    let failed_after = secs(back);
    let pending = match pending {
        Ok(()) => bail!("the cut-off head's write issued after the cut was acknowledged"),
        Err(e) if os_error(&e) == Some(libc::EIO) => e,
        Err(e) => bail!("the cut-off head's pending write failed, but not with EIO: {e:#}"),
    };
    // Later writes of the old head fail too, until its agent has torn the
    // volume down (then the device is gone). What breaks the rule is noted
    // and ends the wait (an error would only count as "not yet").
    let mut refused_writes = 0;
    let mut broken: Option<String> = None;
    wait_for(
        &format!("{HEAD_P} to tear {v} down once its link is back"),
        wait::secs(60),
        || {
            if !kernel::is_block(&dev_a) {
                return Ok(true);
            }
            match data::write_direct(&dev_a, LATE_AT, &data::random(1)?, MIB) {
                Ok(()) => broken = Some("succeeded".into()),
                // The device went (or is going) between the look and the
                // open: no write was issued.
                Err(e) if matches!(os_error(&e), Some(libc::ENOENT | libc::ENXIO)) => {}
                Err(e) if os_error(&e) == Some(libc::EIO) => {
                    refused_writes += 1;
                    return Ok(false);
                }
                Err(e) => broken = Some(format!("failed, but not with EIO: {e:#}")),
            }
            Ok(true)
        },
    )?;
    if let Some(what) = broken {
        bail!("a write of the fenced head to {} {what}", dev_a.display());
    }
    wait_for(
        &format!("no {HEAD_P_PREFIX}- device and no NBD import of {HEAD_P} left"),
        wait::secs(60),
        || Ok(kernel::objects_of(HEAD_P_PREFIX)?.is_empty()),
    )?;
    say(format!(
        "{HEAD_P}'s link back: its queued write failed {failed_after}s later ({pending:#}), {refused_writes} later write(s) failed with EIO before it tore {v} down, {}s after",
        secs(back)
    ));

    // Behind the mirrors: every leg holds what was acknowledged, nothing
    // of the fenced head's late writes.
    let detail = c.api.volume(v)?;
    let per_disk = detail.data_bytes_per_mirrored_disk;
    ensure!(
        per_disk == LATE_AT,
        "{v}'s mirrored disks carry {per_disk} bytes each, the scenario assumes {LATE_AT}"
    );
    let legs = c.api.legs(v)?;
    data::legs_hold(&legs, CHUNK, per_disk, &[(0, &before), (1, &after)])?;
    data::expect_same(&dev_b, LATE_AT, &after, "the new head's write")?;
    say(format!(
        "all {} legs hold exactly {HEAD_P}'s writes before the cut and {HEAD}'s after",
        legs.len()
    ));
    c.detach_wait(v)?;
    c.finish();
    Ok(format!(
        "head {HEAD_P} cut off with a write queued: attach elsewhere refused within the head grace, taken over by {HEAD} {took}s after the cut (fenced) while the write stayed queued; link back: that write failed with EIO {failed_after}s later instead of landing, {refused_writes} later write(s) failed with EIO, it tore the volume down; both legs of both mirrored disks hold exactly the writes acknowledged before the cut and after the takeover"
    ))
}

/// Starts an O_DIRECT write on its own thread; its result arrives on the
/// returned channel (a write on a cut-off head may take a while).
fn write_in_background(dev: PathBuf, at: u64, data: Vec<u8>) -> mpsc::Receiver<Result<()>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(data::write_direct(&dev, at, &data, MIB));
    });
    rx
}

/// The OS error number at the root of `e`, if it is an I/O error.
fn os_error(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
}
