//! cluster-busy-detach (issue #14 item 1): the head agent's local API (the
//! datapath plugin's deactivate) detaches in two phases on the real kernel.
//! A device held open is refused (HTTP 409 busy) and nothing changes in
//! the manager; once closed, the detach answers only after the devices are
//! gone and the manager has released the volume (so another host could
//! attach at once), and dm-raid's last superblock writes land: no
//! "super_written gets error", no leg failed.

use std::fs::File;
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use vsky_api::types::AttachmentState;

use crate::api::describe;
use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config, HEAD};
use crate::kernel;
use crate::out::secs;
use crate::wait::{self, wait_for};

pub fn run_scenario() -> Result<String> {
    let v = "vq";
    let dev = device(v);
    let c = Cluster::up(Config {
        head_api: true,
        ..Config::default()
    })?;
    c.head_api_up()?;
    c.api.create_volume(v, 24)?;
    let (status, body) = c.head_local("attach", v, "")?;
    ensure!(
        status == 200,
        "local attach of {v} failed: HTTP {status}: {body}"
    );
    ensure!(
        kernel::is_block(&dev),
        "{} is not a block device after the local attach answered",
        dev.display()
    );
    wait_for(
        &format!("mirrors of {v} in sync"),
        wait::secs(60),
        kernel::mirrors_in_sync,
    )?;
    let pat = data::random(8)?;
    data::write_direct(&dev, 0, &pat, MIB)?;
    let errors_since = kernel::dmesg_now()?;
    // A process holds the device open, as a VM's blkback would.
    let holder = File::open(&dev)?;
    let (status, body) = c.head_local("detach", v, "")?;
    if status == 200 {
        bail!("the detach of a device held open succeeded");
    }
    ensure!(
        status == 409,
        "the busy detach did not answer 409: HTTP {status}: {body}"
    );
    let attachment = attachment_of(&c, v)?;
    ensure!(
        attachment == (Some(HEAD.to_string()), Some(AttachmentState::Attached)),
        "a refused detach changed the manager: {attachment:?}"
    );
    ensure!(
        kernel::is_block(&dev),
        "a refused detach tore the device down"
    );
    drop(holder);
    let start = Instant::now();
    let (status, body) = c.head_local("detach", v, "")?;
    ensure!(
        status == 200,
        "the detach failed once the device was closed: HTTP {status}: {body}"
    );
    let took = secs(start);
    // Answered only once released: nothing left to wait for.
    ensure!(
        !dev.exists(),
        "the detach answered while {} still exists",
        dev.display()
    );
    let attachment = attachment_of(&c, v)?;
    ensure!(
        attachment == (None, None),
        "the detach answered before the manager released {v}: {attachment:?}"
    );
    wait_for(
        &format!("every dm device and NBD connection of {v} to go"),
        wait::secs(10),
        kernel::nothing_assembled,
    )?;
    let errors = kernel::dmesg_count_since("super_written gets error", errors_since)?;
    ensure!(
        errors == 0,
        "dm-raid's superblock writes failed during the teardown ({errors} errors): the legs were cut before the head let go"
    );
    let legs = c.api.legs(v)?;
    ensure!(
        legs.iter().all(|l| l.active()),
        "legs not active after the detach: {}",
        describe(&legs)
    );
    // The data is intact under the new names.
    c.api.attach(v, HEAD)?;
    wait_for(
        &format!("{} as a block device", dev.display()),
        wait::secs(60),
        || Ok(kernel::is_block(&dev)),
    )?;
    data::expect_same(&dev, 0, &pat, "data read back after the two-phase detach")?;
    c.detach_wait(v)?;
    c.finish();
    Ok(format!(
        "local-API detach of a device held open: 409 busy, manager unchanged, device kept; once closed, detach answered in {took}s with devices gone and the volume released in the manager; no dm-raid superblock write error, all legs active, data intact after reattach"
    ))
}

/// Where the manager says `volume` is attached, and how.
fn attachment_of(c: &Cluster, volume: &str) -> Result<(Option<String>, Option<AttachmentState>)> {
    let v = c.api.volume(volume)?.volume;
    Ok((v.attached_to, v.attachment_state))
}
