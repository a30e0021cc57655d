//! cluster-agent-restart: the head agent stopped (SIGTERM) or killed
//! (SIGKILL) and restarted adopts the running devices: nothing recreated,
//! nothing duplicated, I/O uninterrupted. Then once more with the volume
//! degraded (a storage server dead, its legs failed in the manager): the
//! restarted agent adopts mirrors that still hold the dead legs.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::api::server_in;
use crate::data::{self, Writer, device};
use crate::faults::{Failure, fail_server_during_write, legs_failed_of};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::{say, secs};
use crate::wait::{self, wait_for};

pub(crate) const VOLUME: &str = "vr";

/// The kernel state an agent restart must leave alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) dm: usize,
    nbd: Vec<(String, String)>,
    mapper: Vec<String>,
    /// The device number of the volume's node.
    rdev: u64,
}

fn snapshot() -> Result<Snapshot> {
    let dev = device(VOLUME);
    Ok(Snapshot {
        dm: kernel::dm_count()?,
        nbd: kernel::nbd_backends()?,
        mapper: kernel::mapper()?,
        rdev: std::fs::metadata(&dev)
            .with_context(|| format!("stat {}", dev.display()))?
            .rdev(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mirrors {
    Healthy,
    /// Mirrors keep their dead legs.
    Degraded,
}

/// Stops the head agent with `signal` while a writer runs, checks the
/// datapath keeps serving without it, restarts it and waits until it has
/// reconciled again (adopting, not recreating, the devices).
pub(crate) fn restart_head(
    c: &mut Cluster,
    signal: &str,
    mirrors: Mirrors,
    pat: &Arc<Vec<u8>>,
) -> Result<Snapshot> {
    let dev = device(VOLUME);
    let before = snapshot()?;
    let assembled = c.assembled_count();
    // A writer runs across the whole restart: I/O never goes through the
    // agent.
    let writer = Writer::start(dev.clone(), Arc::clone(pat));
    let start = Instant::now();
    c.stop_head(signal)?;
    say(format!(
        "head agent stopped with SIG{signal}; {} vsky dm devices still present",
        kernel::mapper()?.len()
    ));
    ensure!(
        kernel::is_block(&dev),
        "{} vanished when the agent stopped (SIG{signal})",
        dev.display()
    );
    c.head_start()?;
    wait_for("the restarted head to reconcile", wait::secs(60), || {
        Ok(c.assembled_count() > assembled)
    })?;
    say(format!(
        "head agent restarted and reconciled after {}s",
        secs(start)
    ));
    writer
        .finish()
        .with_context(|| format!("writer across the SIG{signal} restart"))?;
    let after = snapshot()?;
    ensure!(
        before == after,
        "kernel state changed across the SIG{signal} restart: before {before:?}, after {after:?}"
    );
    match mirrors {
        Mirrors::Healthy => ensure!(
            kernel::mirrors_in_sync()?,
            "mirrors not all in sync after the SIG{signal} restart: {:?}",
            kernel::mirrors()?
        ),
        // The dead legs stay dead and the live ones in sync: the restart
        // neither resurrected nor dropped anything.
        Mirrors::Degraded => {
            let m = kernel::mirrors()?;
            ensure!(
                m.iter().all(|m| m.action == "idle"),
                "degraded mirrors not idle after the SIG{signal} restart: {m:?}"
            );
        }
    }
    data::expect_same(&dev, 0, pat, &format!("data after the SIG{signal} restart"))?;
    say(format!(
        "SIG{signal} ({}): same {} dm / {} NBD connected, same names and device numbers; writer without error; data matches",
        if mirrors == Mirrors::Healthy {
            "healthy"
        } else {
            "degraded"
        },
        after.dm,
        after.nbd.len()
    ));
    Ok(after)
}

/// Degrades volume `v`: kills the server of mirrored disk 0's second leg
/// during a write and waits until the manager shows its legs failed, so the
/// head restarted then (SIGKILL) gets a layout with failed legs while the
/// kernel mirrors still list them (dead). Returns the killed server and
/// what the restart found.
pub(crate) fn restart_head_degraded(c: &mut Cluster, v: &str) -> Result<(String, Snapshot)> {
    let victim = server_in(&c.api.legs(v)?, 0, 1)?;
    let pat = Arc::new(data::random(40)?);
    let slots = fail_server_during_write(c, v, &pat, &victim, Failure::Kill)?;
    wait_for(
        &format!("the manager to show {victim}'s legs failed"),
        wait::secs(30),
        || Ok(legs_failed_of(&c.api.legs(v)?, &slots, &victim)),
    )?;
    let after = restart_head(c, "KILL", Mirrors::Degraded, &Arc::new(data::random(40)?))?;
    Ok((victim, after))
}

pub fn run_scenario() -> Result<String> {
    let v = VOLUME;
    let mut c = Cluster::up(Config::default())?;
    c.api.create_volume(v, 40)?;
    c.attach_wait(v)?;
    restart_head(
        &mut c,
        "TERM",
        Mirrors::Healthy,
        &Arc::new(data::random(40)?),
    )?;
    // A new pattern, so the second check cannot pass on the first one's data.
    restart_head(
        &mut c,
        "KILL",
        Mirrors::Healthy,
        &Arc::new(data::random(40)?),
    )?;
    let (victim, after) = restart_head_degraded(&mut c, v)?;
    c.detach_wait(v)?;
    c.finish();
    Ok(format!(
        "head agent SIGTERM and SIGKILL + restart, each during an O_DIRECT write, and SIGKILL + restart of a degraded volume ({victim} dead): same dm names/numbers ({} dm), same NBD backends ({} connected), no duplicates, writer without I/O error, data matches",
        after.dm,
        after.nbd.len()
    ))
}
