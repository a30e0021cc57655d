//! cluster-bench-impact (a benchmark, not a test; only when named; issue
//! #17 item 3): what a rebuild takes from a volume it does not touch, with
//! the per-disk limit k = 1 (the default) and unscheduled (k = 64), in one
//! run.
//!
//! Each round is a fresh cluster of three storage servers with one disk
//! each, the manager started with the round's k. A detached volume `bulk`
//! of 12 mirrored disks spreads its legs over the three disks; the
//! attached volume `vm` (one mirrored disk) has its legs on two of them,
//! and an O_DIRECT writer rewrites it, 1 MiB at a time, counting what it
//! wrote. The third server, which holds none of `vm`'s legs, is killed:
//! after the grace period its legs of `bulk` are rebuilt from the
//! surviving copies onto the two disks `vm` writes to. The writer's
//! throughput during the rebuild (from its first running resync until none
//! is left) over its throughput before the kill is the round's ratio. The
//! rounds alternate k = 1 and unscheduled, so load from the host falls on
//! both alike.
//!
//! Caveat: in the VM the three disks are files on one loop device and the
//! copies share 2 vCPUs with the writer, so contention is not only per
//! disk as on real servers: the ratio shows what running every resync at
//! once costs a volume against running them one per disk, not the exact
//! share a real disk keeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use vsky_api::types::RebuildState;

use crate::api::legs_on;
use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::out::{median, say};
use crate::wait::{self, wait_for};

/// Rounds per k.
const ROUNDS: usize = 2;
/// The writer's volume, in MiB (one mirrored disk of 16 MiB chunks).
const VM_MIB: u64 = 15;
/// The rebuilt volume: mirrored disks of 15 MiB of data each.
const BULK_MIRRORED_DISKS: u64 = 12;
/// How long the writer's pace is measured before the kill.
const BEFORE: Duration = Duration::from_secs(8);
/// Unscheduled: more resyncs per disk than the rebuild has.
const UNSCHEDULED: u32 = 64;

/// One round's measurements.
struct Round {
    k: u32,
    before_mib_s: f64,
    during_mib_s: f64,
    rebuild_s: f64,
    resyncs: usize,
}

pub fn run_scenario() -> Result<String> {
    let mut rounds = Vec::new();
    for i in 0..2 * ROUNDS {
        let k = if i % 2 == 0 { 1 } else { UNSCHEDULED };
        let r = round(k).with_context(|| format!("round {} (k = {k})", i + 1))?;
        say(format!(
            "round {}: k = {}: writer {:.1} MiB/s before, {:.1} MiB/s during a rebuild of {} resyncs that took {:.1}s (× {:.2})",
            i + 1,
            label(r.k),
            r.before_mib_s,
            r.during_mib_s,
            r.resyncs,
            r.rebuild_s,
            r.during_mib_s / r.before_mib_s
        ));
        rounds.push(r);
    }
    let summary = |k: u32| {
        let of: Vec<&Round> = rounds.iter().filter(|r| r.k == k).collect();
        let ratio = median(of.iter().map(|r| r.during_mib_s / r.before_mib_s));
        let rebuild = median(of.iter().map(|r| r.rebuild_s));
        (ratio, rebuild)
    };
    let (k1, k1_rebuild) = summary(1);
    let (un, un_rebuild) = summary(UNSCHEDULED);
    Ok(format!(
        "a volume's O_DIRECT writer during a rebuild sharing its disks, medians of {ROUNDS} rounds each: k = 1 keeps {k1:.2} of its pace (rebuild {k1_rebuild:.1}s), unscheduled {un:.2} (rebuild {un_rebuild:.1}s)"
    ))
}

fn label(k: u32) -> String {
    if k == UNSCHEDULED {
        "unscheduled".into()
    } else {
        k.to_string()
    }
}

fn round(k: u32) -> Result<Round> {
    let mut c = Cluster::up(Config {
        servers: 3,
        disk_mib: 320,
        chunk: "16MiB",
        grace: "3s",
        resyncs_per_disk: k,
        ..Config::default()
    })?;
    c.api.create_volume("bulk", BULK_MIRRORED_DISKS * 15)?;
    c.api.create_volume("vm", VM_MIB)?;
    c.attach_wait("vm")?;
    let vm_legs = c.api.legs("vm")?;
    let victim = c
        .servers()
        .into_iter()
        .find(|s| legs_on(&vm_legs, s).count() == 0)
        .context("every server holds a leg of vm")?;
    let bulk_on_victim = legs_on(&c.api.legs("bulk")?, &victim).count();
    ensure!(bulk_on_victim > 0, "{victim} holds no leg of bulk");

    let writer = Writer::start(device("vm"));
    let start = writer.written();
    std::thread::sleep(BEFORE);
    let before_mib_s = (writer.written() - start) as f64 / BEFORE.as_secs_f64() / MIB as f64;

    c.kill_agent(&victim)?;
    // The rebuild starts once the grace period is over.
    let mut started: Option<(Instant, u64)> = None;
    wait_for(
        &format!("the legs of {victim} rebuilt"),
        wait::secs(600),
        || {
            let active = c.api.rebuilds(false)?;
            if started.is_none() && active.iter().any(|r| r.state == RebuildState::Running) {
                started = Some((Instant::now(), writer.written()));
            }
            Ok(started.is_some() && active.is_empty())
        },
    )?;
    let (t0, w0) = started.context("no resync ran")?;
    let rebuild = t0.elapsed();
    let during_mib_s =
        (writer.written() - w0) as f64 / rebuild.as_secs_f64().max(0.01) / MIB as f64;
    writer.finish()?;
    let resyncs = c
        .api
        .rebuilds(true)?
        .iter()
        .filter(|r| r.state == RebuildState::Done)
        .count();
    c.detach_wait("vm")?;
    c.finish();
    Ok(Round {
        k,
        before_mib_s,
        during_mib_s,
        rebuild_s: rebuild.as_secs_f64(),
        resyncs,
    })
}

/// Rewrites a volume with 1 MiB O_DIRECT writes until stopped, counting
/// the bytes written, so a window's throughput is two readings apart.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: JoinHandle<Result<()>>,
}

impl Writer {
    fn start(path: std::path::PathBuf) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (stop_seen, count) = (Arc::clone(&stop), Arc::clone(&written));
        let handle = std::thread::spawn(move || {
            let block = vec![0x5au8; MIB];
            let mut mib = 0;
            while !stop_seen.load(Ordering::SeqCst) {
                data::write_direct(&path, mib * MIB as u64, &block, MIB)
                    .context("the writer saw an I/O error")?;
                count.fetch_add(MIB as u64, Ordering::SeqCst);
                mib = (mib + 1) % VM_MIB;
            }
            Ok(())
        });
        Writer {
            stop,
            written,
            handle,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => bail!("the writer panicked"),
        }
    }
}
