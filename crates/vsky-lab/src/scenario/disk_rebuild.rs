//! cluster-disk-rebuild: one disk that holds legs of several mirrored
//! disks is declared failed (as a health check would) while its volume is
//! attached. Its mirrored disks are rebuilt in parallel across the pool by
//! the head, and the manager's job log (events) shows no disk in two
//! resyncs at once; `vsky disk fail --wait` watches it to the end.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::jobs;
use crate::kernel;
use crate::out::{say, secs, show};
use crate::wait::{self, wait_for};

pub fn run_scenario() -> Result<String> {
    let v = "vd";
    let dev = device(v);
    let c = Cluster::up(Config {
        servers: 5,
        disks: 2,
        disk_mib: 32,
        chunk: "4MiB",
        ..Config::default()
    })?;
    // 20 mirrored disks of 3 MiB over 10 disks: about 4 legs per disk.
    c.api.create_volume(v, 60)?;
    c.attach_wait(v)?;
    let pat = data::random(60)?;
    data::write_direct(&dev, 0, &pat, MIB)?;
    let mut by_disk: BTreeMap<u64, usize> = BTreeMap::new();
    for l in c.api.legs(v)? {
        *by_disk.entry(l.at.disk_id).or_default() += 1;
    }
    let (victim, n) = by_disk
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, n)| (*d, *n))
        .context("the volume has no legs")?;
    ensure!(
        n >= 3,
        "the fullest disk holds {n} legs; the scenario needs several"
    );
    say(format!(
        "disk {victim} holds legs of {n} mirrored disks; declaring it failed"
    ));
    let start = Instant::now();
    // The CLI itself is under test here: `--wait` follows the rebuilds.
    let victim_arg = victim.to_string();
    let tail = c.vsky_waited(&["disk", "fail", &victim_arg])?;
    let took = secs(start);
    show(&tail);
    wait_for(
        &format!("every leg active and none on disk {victim}"),
        wait::secs(60),
        || {
            let legs = c.api.legs(v)?;
            Ok(!legs.is_empty() && legs.iter().all(|l| l.active() && l.at.disk_id != victim))
        },
    )?;
    show(&c.vsky_text(&["rebuild", "list", "--all"])?);
    let (started, peak) =
        jobs::replay(&c.api).context("the job log shows a disk in two resyncs")?;
    ensure!(
        started >= n,
        "{started} rebuilds started, expected at least {n}"
    );
    ensure!(
        peak >= 2,
        "at most {peak} rebuild ran at once: not parallel"
    );
    wait_for(
        "the kernel mirrors to be in sync on every leg",
        wait::secs(30),
        kernel::mirrors_in_sync,
    )?;
    data::expect_same(&dev, 0, &pat, "data read back after the rebuild")?;
    c.detach_wait(v)?;
    c.finish();
    Ok(format!(
        "disk {victim} (legs of {n} mirrored disks) declared failed under an attached volume: {started} rebuilds, up to {peak} at once across 10 disks, the job log (events) shows no disk in two resyncs; `vsky disk fail --wait` returned after {took}s; mirrors all A; all 60 MiB match"
    ))
}
