//! Failures the scenarios inflict under a running write, and what the
//! manager must show afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::api::{Api, LegAt, legs_on};
use crate::data::{MIB, Writer, device};
use crate::fixture::Cluster;
use crate::out::{say, secs};

/// How a storage server fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `kill -9` of its agent: its sockets close, the head sees a reset at
    /// once.
    Kill,
    /// Its veth link down: silence, only the head's NBD request timeout
    /// notices.
    LinkDown,
}

/// The (mirrored disk, leg) slots `server` holds in `volume`, remembered
/// before it is made to fail.
pub fn record_slots(api: &Api, volume: &str, server: &str) -> Result<Vec<(usize, usize)>> {
    let legs = api.legs(volume)?;
    let slots: Vec<_> = legs_on(&legs, server).map(LegAt::slot).collect();
    ensure!(!slots.is_empty(), "{server} holds no leg of {volume}");
    Ok(slots)
}

/// Writes `data` to `volume` with O_DIRECT and, while the write runs,
/// fails `victim`. Fails if the writer sees an error, or if the write was
/// over before the failure (then nothing was proven). Returns the slots
/// the victim held.
pub fn fail_server_during_write(
    c: &mut Cluster,
    volume: &str,
    data: &Arc<Vec<u8>>,
    victim: &str,
    how: Failure,
) -> Result<Vec<(usize, usize)>> {
    let slots = record_slots(&c.api, volume, victim)?;
    let start = Instant::now();
    // 64 KiB requests: many round trips, so the write is still running
    // when the server dies.
    let writer = Writer::start(device(volume), Arc::clone(data));
    // Half a second in: the write is well under way (it takes several
    // seconds even on an idle host under TCG) and far from done.
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        writer.running(),
        "the write of {} MiB ended within 0.5s, before the failure; make it bigger",
        data.len() / MIB
    );
    match how {
        Failure::LinkDown => {
            c.set_link(victim, false)?;
            say(format!(
                "took the veth link of {victim} down at {}s into the write",
                secs(start)
            ));
        }
        Failure::Kill => {
            c.kill_agent(victim)?;
            say(format!(
                "kill -9 the agent of {victim} at {}s into the write",
                secs(start)
            ));
        }
    }
    writer.finish()?;
    say(format!(
        "writer finished after {}s: no I/O error ({} MiB written)",
        secs(start),
        data.len() / MIB
    ));
    Ok(slots)
}

/// Every recorded slot of `server` is now failed, and no other leg is.
/// (Once the manager repairs failed legs, a slot may instead hold a
/// replacement on another server: that also proves the failure was
/// reported, so it is accepted; a slot still active on `server` is not.)
pub fn legs_failed_of(legs: &[LegAt], slots: &[(usize, usize)], server: &str) -> bool {
    let mut seen = 0;
    for l in legs {
        if slots.contains(&l.slot()) {
            seen += 1;
            let reported = if l.at.server == server {
                l.failed()
            } else {
                !l.failed()
            };
            if !reported {
                return false;
            }
        } else if l.failed() {
            return false;
        }
    }
    seen == slots.len()
}
