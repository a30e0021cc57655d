//! cluster-drain: a storage server is drained while an O_DIRECT writer
//! keeps rewriting the attached volume. Each of its legs gets a new chunk
//! that syncs as an extra leg of its mirror (the head grows the running
//! dm-raid, then drops the old leg), and a detached volume's legs are
//! copied server to server. The writer sees no error, the server ends with
//! no leg, its agent is stopped and it is removed, and both volumes read
//! back intact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::api::{describe, legs_on};
use crate::data::{self, MIB, Rewriter, device};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::{say, secs, show};
use crate::wait::{self, wait_for};

pub fn run_scenario() -> Result<String> {
    let (v, w) = ("vm", "vn");
    let dev = device(v);
    let mut c = Cluster::up(Config {
        servers: 4,
        ..Config::default()
    })?;
    c.api.create_volume(v, 35)?;
    c.api.create_volume(w, 14)?;
    // The detached volume's data: written through the head, then detached.
    let patw = data::random(14)?;
    c.attach_wait(w)?;
    data::write_direct(&device(w), 0, &patw, MIB)?;
    c.detach_wait(w)?;
    c.attach_wait(v)?;
    let pat = Arc::new(data::random(35)?);
    // The drained server: one holding legs of both volumes, so both the
    // head's online move and the storage agents' copy are exercised.
    let (legs_v, legs_w) = (c.api.legs(v)?, c.api.legs(w)?);
    let (victim, n, nw) = c
        .servers()
        .into_iter()
        .map(|s| {
            let n = legs_on(&legs_v, &s).count();
            let nw = legs_on(&legs_w, &s).count();
            (s, n, nw)
        })
        .find(|(_, n, nw)| *n >= 1 && *nw >= 1)
        .with_context(|| {
            format!(
                "no server holds legs of both {v} and {w}: {} / {}",
                describe(&legs_v),
                describe(&legs_w)
            )
        })?;
    // The writer rewrites the pattern until told to stop.
    let writer = Rewriter::start(dev.clone(), Arc::clone(&pat));
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    // The CLI itself is under test here: `--wait` follows the moves.
    let victim_arg = victim.to_string();
    let tail = c.vsky_waited(&["server", "drain", &victim_arg])?;
    let took = secs(start);
    show(&tail);
    let still_running = writer.running();
    let rounds = writer.finish()?;
    ensure!(still_running, "the writer stopped during the drain");
    say(format!(
        "drain of {victim} ({n} legs of {v} attached, {nw} of {w} detached) done in {took}s; the writer rewrote {v} {rounds} times meanwhile, no error"
    ));
    for vol in [v, w] {
        let legs = c.api.legs(vol)?;
        ensure!(
            legs.iter().all(|l| l.at.server != victim && l.active()),
            "{vol} still has legs on {victim} or not active: {}",
            describe(&legs)
        );
    }
    show(&c.vsky_text(&["rebuild", "list", "--all"])?);
    // The head drops each moved leg from its mirror once the manager lists
    // the move done, which can be just after `--wait` returned.
    wait_for(
        "every kernel mirror to hold exactly its two legs, in sync",
        wait::secs(30),
        || kernel::mirrors_in_sync_with(2),
    )?;
    // As an admin retires a server: stop its agent, then remove it.
    c.kill_agent(&victim)?;
    c.api
        .remove_server(&victim)
        .with_context(|| format!("removing {victim} was refused after the drain"))?;
    data::expect_same(&dev, 0, &pat, &format!("{v} read back after the drain"))?;
    c.detach_wait(v)?;
    c.attach_wait(w)?;
    data::expect_same(&device(w), 0, &patw, &format!("{w} (moved while detached)"))?;
    c.detach_wait(w)?;
    c.finish();
    Ok(format!(
        "server {victim} drained under an O_DIRECT rewrite loop ({rounds} rounds, no I/O error) in {took}s: {n} legs of the attached volume moved online by the head (mirror grows to 3 legs, then drops the old one), {nw} legs of a detached volume copied server-to-server; {victim} then held no leg, its agent was stopped and it was removed: both volumes match"
    ))
}
