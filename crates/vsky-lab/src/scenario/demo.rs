//! demo: the README's main job, with human-readable `demo:` progress lines
//! (scripts/demo shows them to the user). The tables shown are the CLI's,
//! as a user would see them; the checks read the manager through the API.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::api::{all_active_without, legs_on, server_in};
use crate::data::{self, MIB, device};
use crate::faults::{Failure, fail_server_during_write, legs_failed_of};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::{say, secs, show};
use crate::wait::{self, wait_for};

pub fn run_scenario() -> Result<String> {
    let v = "demo";
    let dev = device(v);
    // Kernel messages would interleave with the progress lines.
    let _ = std::fs::write("/proc/sys/kernel/printk", "1\n");
    say(
        "starting a local VastSky cluster: manager, 4 storage servers (each in its own network namespace), 1 head",
    );
    let cfg = Config {
        servers: 4,
        ..Config::default()
    };
    let (chunk, grace) = (cfg.chunk, cfg.grace);
    let mut c = Cluster::up(cfg)?;
    show(&c.vsky_text(&["server", "list"])?);
    say(format!(
        "creating a 2-way mirrored volume of 64 MiB ({} MiB chunks, legs on different servers)",
        chunk.trim_end_matches("MiB")
    ));
    c.api.create_volume(v, 64)?;
    show(&c.vsky_text(&["volume", "show", v])?);
    say(
        "attaching it to the head: the head's agent imports every leg over NBD and builds dm-raid raid1 mirrors + linear",
    );
    c.attach_wait(v)?;
    for line in kernel::dmsetup_ls()?.lines() {
        if line.split_whitespace().next() == Some(&format!("vsky-{v}")) {
            say(format!("  kernel device: {line}"));
        }
    }
    let pat = data::random(64)?;
    let sum = data::sha256(&pat)?;
    ensure!(sum.len() == 64, "sha256sum printed no digest: '{sum}'");
    say(format!(
        "writing 64 MiB of random data (O_DIRECT) to {}",
        dev.display()
    ));
    let start = Instant::now();
    data::write_direct(&dev, 0, &pat, MIB)?;
    say(format!(
        "written in {}s; reading it back (O_DIRECT)",
        secs(start)
    ));
    data::expect_same(&dev, 0, &pat, "read-back")?;
    say(format!("read back: sha256 {}… matches", &sum[..12]));
    let pat = Arc::new(data::random(64)?);
    let sum = data::sha256(&pat)?;
    ensure!(sum.len() == 64, "sha256sum printed no digest: '{sum}'");
    let legs = c.api.legs(v)?;
    let victim = server_in(&legs, 0, 0)?;
    let n = legs_on(&legs, &victim).count();
    say(format!(
        "rewriting 64 MiB and killing storage server {victim} (kill -9; it holds {n} legs) in the middle of it"
    ));
    let slots = fail_server_during_write(&mut c, v, &pat, &victim, Failure::Kill)?;
    wait_for(
        &format!("the manager to show {victim}'s legs failed"),
        wait::secs(30),
        || Ok(legs_failed_of(&c.api.legs(v)?, &slots, &victim)),
    )?;
    say(format!(
        "the head reported {victim}'s legs dead; the volume is degraded but serving:"
    ));
    show(&c.vsky_text(&["volume", "show", v])?);
    data::expect_same(&dev, 0, &pat, "data read back after the failure")?;
    say(format!(
        "read back after the failure: sha256 {}… matches",
        &sum[..12]
    ));
    say(format!(
        "after the grace period ({grace} here) the manager replaces {victim}'s legs from the pool; the head resyncs them online:"
    ));
    let start = Instant::now();
    wait_for(
        &format!("the legs of {victim} to be rebuilt elsewhere"),
        wait::secs(180),
        || Ok(all_active_without(&c.api.legs(v)?, &victim)),
    )?;
    wait_for(
        "the mirrors to be in sync",
        wait::secs(30),
        kernel::mirrors_in_sync,
    )?;
    say(format!(
        "redundancy restored {}s after the failure was reported:",
        secs(start)
    ));
    show(&c.vsky_text(&["rebuild", "list", "--all"])?);
    let events = c.vsky_text(&["events"])?;
    let lines: Vec<&str> = events.lines().collect();
    show(&lines[lines.len().saturating_sub(8)..].join("\n"));
    data::expect_same(&dev, 0, &pat, "data read back after the rebuild")?;
    say(format!(
        "read back after the rebuild: sha256 {}… matches",
        &sum[..12]
    ));
    c.finish();
    Ok(format!(
        "4 servers + head; 64 MiB 2-way volume attached, written, verified; {victim} killed mid-write without I/O error; its legs rebuilt elsewhere online; data intact throughout"
    ))
}
