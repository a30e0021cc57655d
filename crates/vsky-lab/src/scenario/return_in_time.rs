//! cluster-return: a storage server's link goes down under write load and
//! comes back within the grace period. Its legs are held (not replaced),
//! then brought back: the head reconnects their NBD imports in place and
//! dm-raid catches up from its write-intent bitmap. Proven by the bytes the
//! head writes to that server's legs during the catch-up (a few regions,
//! not whole legs), no rebuild job, and the data read back after the other
//! copy's server is killed.

use std::time::Instant;

use anyhow::{Result, ensure};
use vsky_api::types::RebuildState;

use crate::api::{LegAt, legs_on, server_in};
use crate::data::{self, MIB, SMALL_BLOCK, device};
use crate::faults::record_slots;
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::{say, secs};
use crate::wait::{self, wait_for};

pub fn run_scenario() -> Result<String> {
    run_with(false)
}

/// The same with the head keeping its NBD imports in its own file, as on
/// kernels before 5.14: the returned legs' RECONFIGUREs find their devices
/// through it.
pub fn run_with_backend_file() -> Result<String> {
    run_with(true)
}

fn run_with(nbd_backend_file: bool) -> Result<String> {
    let v = "vc";
    let dev = device(v);
    let mut c = Cluster::up(Config {
        nbd_backend_file,
        servers: 3,
        // The victim's legs fail one NBD timeout after the other (each
        // mirror notices on its own superblock write), which took close to
        // 60 s on a loaded host: the grace must outlast the wait for all of
        // them below, or the held legs are replaced while still waiting.
        grace: "150s",
        ..Config::default()
    })?;
    c.api.create_volume(v, 48)?;
    c.attach_wait(v)?;
    let mut pat = data::random(48)?;
    data::write_direct(&dev, 0, &pat, MIB)?;
    // The 4 MiB written while the victim is away (at 8 MiB) land in
    // mirrored disk 1 (7 MiB of data each): its leg on the victim fails
    // first. The degraded mirror makes the head reload its tables, and
    // every mirror writes its superblock, so each of the victim's legs
    // fails in turn, one NBD timeout after the other.
    let legs = c.api.legs(v)?;
    let victim = server_in(&legs, 1, 1)?;
    let other = server_in(&legs, 1, 0)?;
    let n = legs_on(&legs, &victim).count();
    let victim_disks: Vec<u64> = legs_on(&legs, &victim).map(|l| l.at.disk_id).collect();
    let slots = record_slots(&c.api, v, &victim)?;
    let delta = data::random(4)?;
    pat[8 * MIB..12 * MIB].copy_from_slice(&delta);
    c.set_link(&victim, false)?;
    let start = Instant::now();
    data::write_direct(&dev, (8 * MIB) as u64, &delta, SMALL_BLOCK)?;
    say(format!(
        "link of {victim} down; 4 MiB written without I/O error in {}s",
        secs(start)
    ));
    wait_for(
        &format!("the manager to show mirrored disk 1's leg on {victim} failed"),
        wait::secs(30),
        || {
            Ok(c.api
                .legs(v)?
                .iter()
                .any(|l| l.mirrored_disk == 1 && l.at.server == victim && l.failed()))
        },
    )?;
    // The link comes back only once every leg on the victim has failed
    // and the manager holds it: a failure reported after the victim speaks
    // again is a live server's leg failing, which is replaced at once.
    wait_for(
        &format!("the manager to show all {n} legs on {victim} failed"),
        wait::secs(120),
        || {
            Ok(legs_on(&c.api.legs(v)?, &victim)
                .filter(|l| l.failed())
                .count()
                == n)
        },
    )?;
    let active = c.api.rebuilds(true)?;
    ensure!(
        !active
            .iter()
            .any(|r| matches!(r.state, RebuildState::Queued | RebuildState::Running)),
        "legs of {victim} were replaced within its grace period: {active:?}"
    );
    say(format!(
        "mirrored disk 1's leg on {victim} failed in the manager and held: no rebuild during the grace period"
    ));
    let w0 = kernel::sectors_written(v, &victim_disks)?;
    c.set_link(&victim, true)?;
    let start = Instant::now();
    wait_for(
        &format!("the legs of {victim} to be active again, in place"),
        wait::secs(60),
        || Ok(held_in_place(&c.api.legs(v)?, &slots, &victim)),
    )?;
    wait_for(
        "the mirrors to catch up (all legs A, idle)",
        wait::secs(60),
        kernel::mirrors_in_sync,
    )?;
    let took = secs(start);
    let w1 = kernel::sectors_written(v, &victim_disks)?;
    let caught = (w1 - w0) as f64 / 2048.0;
    let full = n * 7;
    say(format!(
        "link of {victim} back: legs active in place, mirrors in sync after {took}s; catch-up wrote {caught:.1} MiB to its {n} legs (a full resync writes {full} MiB)"
    ));
    ensure!(
        caught <= 8.0 && caught < full as f64 / 2.0,
        "catch-up wrote {caught:.1} MiB to {victim}'s legs: not a bitmap catch-up (4 MiB changed, full {full} MiB)"
    );
    let jobs = c.api.rebuilds(true)?;
    ensure!(
        jobs.is_empty(),
        "a rebuild ran although {victim} came back in time: {jobs:?}"
    );
    ensure!(
        c.api.event_seen("legs_returned", None)?,
        "no legs_returned event"
    );
    data::expect_same(&dev, 0, &pat, "data read back after the catch-up")?;
    // Only the caught-up copy of mirrored disk 1 is left once `other` dies.
    c.kill_agent(&other)?;
    data::expect_same(
        &dev,
        0,
        &pat,
        &format!("with {other} dead, the caught-up legs of {victim}"),
    )?;
    say(format!(
        "killed {other}: all 48 MiB (with the 4 MiB written while {victim} was away) read back from the caught-up legs"
    ));
    if nbd_backend_file {
        crate::scenario::nbd_backend_file::file_matches_kernel("after the catch-up")?;
    }
    c.detach_wait(v)?;
    c.finish();
    let file = if nbd_backend_file {
        " (the head keeping its NBD imports in its own file, as before Linux 5.14: the returned legs' RECONFIGUREs found their devices through it, and it matched the kernel's backends)"
    } else {
        ""
    };
    Ok(format!(
        "link of {victim} down during a 4 MiB O_DIRECT write (no I/O error): its written leg failed, held (no rebuild) in the grace period; link back: legs active in place after {took}s, catch-up wrote {caught:.1} MiB to them instead of {full} MiB, no rebuild job, legs_returned event; {other} then killed: all 48 MiB match{file}"
    ))
}

/// `server` still holds its recorded slots and every leg is active
/// (nothing was replaced).
fn held_in_place(legs: &[LegAt], slots: &[(usize, usize)], server: &str) -> bool {
    legs.iter()
        .all(|l| l.active() && (!slots.contains(&l.slot()) || l.at.server == server))
}
