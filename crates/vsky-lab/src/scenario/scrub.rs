//! cluster-scrub: the manager's scrub patrol asks the head to check the
//! mirrors of an attached volume (dm-raid `check`); a clean mirror is
//! reported clean, and after 64 KiB of one leg's data are overwritten
//! behind the mirror's back, the next scrub reports the mismatch (event and
//! metric). Then a rebuild that needs the check's disks preempts it: the
//! head interrupts the running check (dm-raid `idle`), the mirror stays
//! whole. Checks and copies run at 1 MiB/s here, so a check lasts about 7 s.

use std::io::{Seek, SeekFrom, Write};

use anyhow::{Context, Result, ensure};

use crate::api::describe;
use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config, HEAD};
use crate::kernel;
use crate::out::say;
use crate::wait::{self, wait_for};

pub fn run_scenario() -> Result<String> {
    let (v, p) = ("vs", "vp");
    let dev = device(v);
    let c = Cluster::up(Config {
        servers: 3,
        scrub_interval: "3s",
        resync_rate: Some("1MiB"),
        ..Config::default()
    })?;
    c.api.create_volume(v, 7)?;
    c.attach_wait(v)?;
    let pat = data::random(7)?;
    data::write_direct(&dev, 0, &pat, MIB)?;
    // (While detached right after its creation, the volume may have been
    // compared by a storage agent: wait for the head's own verdict.)
    wait_for(
        &format!("a clean dm-raid check of {v} by the head"),
        wait::secs(60),
        || c.api.event_seen("scrub_done", Some(HEAD)),
    )?;
    let events = c.api.events()?;
    let scrubs: Vec<_> = events
        .iter()
        .filter(|e| e.kind.starts_with("scrub_"))
        .collect();
    ensure!(
        !scrubs.iter().any(|e| e.kind == "scrub_mismatch"),
        "a scrub of identical legs reported mismatches: {scrubs:?}"
    );
    ensure!(
        scrubs.iter().any(|e| e.kind == "scrub_started"
            && e.server.as_deref() == Some(HEAD)
            && e.message.contains("its head runs dm-raid's check")),
        "the manager did not ask the head for a dm-raid check: {scrubs:?}"
    );
    say(format!(
        "patrol: the manager asked the head for dm-raid checks of {v}: clean ({} scrubs so far)",
        scrubs.iter().filter(|e| e.kind == "scrub_done").count()
    ));
    let legs = c.api.legs(v)?;
    let leg = legs
        .iter()
        .find(|l| l.slot() == (0, 1))
        .with_context(|| format!("{v} has no leg 0/1: {}", describe(&legs)))?;
    // 1 MiB into the leg's data area (past its 1 MiB metadata area), on a
    // 64 KiB boundary.
    let at = (leg.at.offset_bytes + 2 * MIB as u64) / 65536 * 65536;
    let path = &leg.at.disk_path;
    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot find leg 0/1 of {v} on disk ({path})"))?;
    disk.seek(SeekFrom::Start(at))?;
    disk.write_all(&data::random(1)?[..65536])
        .and_then(|()| disk.sync_all())
        .with_context(|| format!("cannot overwrite part of {path}"))?;
    drop(disk);
    say(format!(
        "overwrote 64 KiB of leg 0/1's data in {path} behind the mirror's back"
    ));
    wait_for(
        "the head's next check to report the mismatch",
        wait::secs(60),
        || c.api.event_seen("scrub_mismatch", Some(HEAD)),
    )?;
    if let Some(e) = c
        .api
        .events()?
        .iter()
        .rev()
        .find(|e| e.kind == "scrub_mismatch")
    {
        say(e.message.chars().take(200).collect::<String>());
    }
    let (status, metrics) = crate::http::get("127.0.0.1:8080", "/metrics", Some(c.admin_token()))?;
    ensure!(status == 200, "GET /metrics answered HTTP {status}");
    let counted = metrics.lines().any(|l| {
        l.strip_prefix("vsky_scrub_mismatches ")
            .and_then(|n| n.trim().parse::<f64>().ok())
            .is_some_and(|n| n >= 1.0)
    });
    ensure!(counted, "the scrub_mismatches metric did not count it");

    // A detached volume on the third disk and one of v's: a repair of its
    // leg on the third disk reads and writes exactly v's two disks.
    c.api.create_volume(p, 7)?;
    let mine: Vec<u64> = c.api.legs(v)?.iter().map(|l| l.at.disk_id).collect();
    let p_legs = c.api.legs(p)?;
    let z = p_legs
        .iter()
        .map(|l| l.at.disk_id)
        .find(|d| !mine.contains(d))
        .with_context(|| {
            format!(
                "{p} has no leg off {v}'s disks ({}): cannot set up the preemption",
                describe(&p_legs)
            )
        })?;
    let before = c.api.legs(v)?;
    wait_for(
        &format!("a dm-raid check of {v} to run"),
        wait::secs(60),
        || Ok(kernel::mirrors()?.iter().any(|m| m.action == "check")),
    )?;
    c.api.fail_disk(z)?;
    say(format!(
        "disk {z} (a leg of {p}) failed while the head checked {v}: its repair needs {v}'s disks"
    ));
    wait_for("the head to interrupt the check", wait::secs(20), || {
        Ok(c.head_log().contains("scrub interrupted"))
    })?;
    wait_for(
        &format!("{v}'s mirror to be idle with both legs in sync"),
        wait::secs(20),
        kernel::mirrors_in_sync,
    )?;
    wait_for(&format!("the repair of {p}"), wait::secs(120), || {
        Ok(c.api.rebuilds(false)?.is_empty())
    })?;
    // Preempted, not degraded: v kept its legs, and nothing rebuilt them.
    let after = c.api.legs(v)?;
    ensure!(before == after, "{v}'s legs changed: {}", describe(&after));
    let rebuilt: Vec<_> = c
        .api
        .rebuilds(true)?
        .into_iter()
        .filter(|r| r.volume == v)
        .collect();
    ensure!(rebuilt.is_empty(), "{v} was rebuilt: {rebuilt:?}");
    say(format!(
        "the check of {v} was interrupted for {p}'s repair (dm-raid idle), {v} stayed in sync, {p} was repaired"
    ));
    c.detach_wait(v)?;
    c.finish();
    Ok("scrub patrol (manager --scrub-interval 3s, under the per-disk limit): the head ran dm-raid checks when the manager asked; identical legs reported clean; after 64 KiB of one leg were overwritten on its disk, the next scrub reported the mismatch (event scrub_mismatch, metric vsky_scrub_mismatches); a repair needing the checked mirror's disks preempted the running check (dm-raid idle), the mirror stayed in sync".into())
}
