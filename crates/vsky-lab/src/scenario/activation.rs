//! cluster-activation (a benchmark, not a test; only when named): what a
//! volume's handover costs against its size. Live migration deactivates
//! a volume on the source and activates it on the destination inside the
//! VM's downtime, and the head assembles two NBD imports, four leg
//! devices and a dm-raid per mirrored disk, one mirrored disk after the
//! other (issue #14 item 6).
//!
//! For volumes of 1, 16, 64 and 256 mirrored disks (2-way, 2 MiB chunks so
//! the largest fits the VM: 1 MiB of data per mirrored disk), each first
//! attached once untimed (that attach writes the dm-raid superblocks, a
//! volume's first activation and not a handover), it measures a few times:
//!
//! - activate: from the manager's attach request until
//!   `/dev/mapper/vsky-<volume>` is a block device of the volume's size,
//!   polled every [`POLL`]; while polling it records when each NBD device
//!   connects and each dm device appears, so the time splits into "until
//!   the first object" (the manager and the head's long poll), NBD imports
//!   (TCP connect, NBD handshake, netlink connect) and dm devices (create,
//!   load, resume); the head's own `created device` log lines split it
//!   more finely (leg import + meta device, data device, dm-raid, volume
//!   device);
//! - the kernel objects while attached: NBD devices connected, dm devices,
//!   TCP connections to the storage agents' NBD port;
//! - deactivate: from the graceful detach request until no dm device is
//!   left, and until no NBD connection is left either.
//!
//! Then once through the head's local API (the datapath plugin's path:
//! the answer comes when the device is there, or gone). Mirrors resync at
//! a trickle (`resync_rate`): a new mirror syncs as a whole, and writing
//! every data area would not fit the VM's RAM-backed disks; a handover
//! moves mirrors in sync, whose resync does not run either.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::data::device;
use crate::fixture::{Cluster, Config, HEAD, strip_ansi};
use crate::kernel;
use crate::out::{median, say};
use crate::wait::{self, wait_for};

/// Mirrored disks per volume, smallest first: the first is the baseline
/// the others are divided by.
const SIZES: [usize; 4] = [1, 16, 64, 256];
/// Timed attach/detach cycles per size (the median is reported), fewer
/// when a cycle is so slow that they would exceed [`BUDGET`].
const REPEATS: usize = 3;
const BUDGET: Duration = Duration::from_secs(600);
/// The smallest chunk: 1 MiB of dm-raid metadata, 1 MiB of data.
const CHUNK: &str = "2MiB";
const DATA_MIB_PER_MIRROR: u64 = 1;
/// Each server holds one leg of every mirrored disk of all the volumes
/// ((1 + 16 + 64 + 256) × 2 MiB) plus its header: a deleted volume's
/// chunks are free only once wiped, which may not have happened when the
/// next size is created. The images are sparse: only what is written
/// takes the VM's RAM.
const DISK_MIB: u64 = 1100;
/// How often activation and deactivation are polled: fine enough for the
/// 1-mirrored-disk case, which takes about a second under TCG.
const POLL: Duration = Duration::from_millis(20);
/// The storage agents' NBD port (fixture: `<server>:10809`).
const NBD_PORT: u16 = 10809;
/// The head's local API answers within its own limit (120 s); slower
/// activations are measured through the manager only.
const LOCAL_API_MAX: Duration = Duration::from_secs(90);

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config {
        disk_mib: DISK_MIB,
        chunk: CHUNK,
        resync_rate: Some("1KiB"),
        head_api: true,
        ..Config::default()
    })?;
    c.head_api_up()?;
    ensure!(
        kernel::nothing_assembled()? && kernel::tcp_established_to(NBD_PORT)? == 0,
        "the kernel holds dm devices, NBD or TCP connections before the first attach: the counts would be wrong"
    );
    let mut rows = Vec::new();
    for n in SIZES {
        rows.push(measure_size(&c, n)?);
    }
    let table = table(&rows);
    say("activation and handover cost (medians; ratios to 1 mirrored disk):");
    for line in table.lines() {
        say(format!("  {line}"));
    }
    c.finish();
    Ok(format!(
        "activation cost ({CHUNK} chunks, 2-way, medians): {}",
        table.lines().collect::<Vec<_>>().join(" ; ")
    ))
}

/// One size's results: medians over its cycles.
struct Row {
    mirrors: usize,
    cycles: usize,
    first_attach: f64,
    activate: f64,
    /// Deactivation: until the dm devices are gone, until everything is.
    dm_gone: f64,
    deactivate: f64,
    /// The poller's split of the activation, seconds.
    until_first: f64,
    nbd: f64,
    dm: f64,
    /// The head log's split (medians field by field).
    log: LogSplit,
    objects: Objects,
    /// Through the head's local API, once (None when too slow for it).
    local: Option<(f64, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Objects {
    nbd: usize,
    dm: usize,
    tcp: usize,
}

/// One timed activation.
struct Activation {
    total: f64,
    until_first: f64,
    nbd: f64,
    dm: f64,
    objects: Objects,
    log: LogSplit,
}

/// Where an activation's time went by the head's own log: the gap before
/// each `created device` line, summed by the kind of device it ends in.
/// A leg's meta device follows its NBD import (TCP connect, NBD handshake,
/// netlink connect, then the linear device); its data device is a linear
/// device alone; a mirror's dm-raid follows the superblock probe of its
/// legs; the volume device ends the assembly.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct LogSplit {
    /// From the attach request to the first device (the manager, the
    /// head's long poll, the first NBD import).
    before_first: f64,
    meta: f64,
    data: f64,
    raid: f64,
    top: f64,
    /// From the volume device to the poll seeing it with its size.
    after_last: f64,
    /// Devices created (should be 5 per mirrored disk plus 1).
    devices: usize,
}

fn measure_size(c: &Cluster, n: usize) -> Result<Row> {
    let v = format!("a{n}");
    c.api.create_volume(&v, n as u64 * DATA_MIB_PER_MIRROR)?;
    let mirrors: BTreeSet<usize> = c.api.legs(&v)?.iter().map(|l| l.mirrored_disk).collect();
    ensure!(
        mirrors.len() == n,
        "{v} has {} mirrored disks, expected {n}: the chunk size is not {CHUNK}",
        mirrors.len()
    );
    let limit = wait::secs(60 + 4 * n as u64);
    // The first attach creates the superblocks: timed, but not a handover.
    let start = Instant::now();
    let first = activate(c, &v, n, limit)?;
    deactivate(c, &v, limit)?;
    let cycle = start.elapsed();
    let cycles = (BUDGET.as_secs_f64() / cycle.as_secs_f64().max(0.001)) as usize;
    let cycles = cycles.clamp(1, REPEATS);
    let mut runs = Vec::with_capacity(cycles);
    let mut detaches = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let a = activate(c, &v, n, limit)?;
        ensure!(
            runs.iter().all(|r: &Activation| r.objects == a.objects),
            "{v} held different kernel objects in two activations: {:?} then {:?}",
            runs.first().map(|r| r.objects),
            a.objects
        );
        runs.push(a);
        detaches.push(deactivate(c, &v, limit)?);
    }
    let local = if Duration::from_secs_f64(first.total) < LOCAL_API_MAX {
        Some(local_cycle(c, &v, n)?)
    } else {
        None
    };
    c.api.delete_volume(&v)?;
    let activate = median(runs.iter().map(|r| r.total));
    let logs: Vec<LogSplit> = runs.iter().map(|r| r.log).collect();
    let m = |f: fn(&LogSplit) -> f64| median(logs.iter().map(f));
    let row = Row {
        mirrors: n,
        cycles,
        first_attach: first.total,
        activate,
        dm_gone: median(detaches.iter().map(|d| d.0)),
        deactivate: median(detaches.iter().map(|d| d.1)),
        until_first: median(runs.iter().map(|r| r.until_first)),
        nbd: median(runs.iter().map(|r| r.nbd)),
        dm: median(runs.iter().map(|r| r.dm)),
        log: LogSplit {
            before_first: m(|l| l.before_first),
            meta: m(|l| l.meta),
            data: m(|l| l.data),
            raid: m(|l| l.raid),
            top: m(|l| l.top),
            after_last: m(|l| l.after_last),
            devices: runs[0].log.devices,
        },
        objects: runs[0].objects,
        local,
    };
    say(format!(
        "{n} mirrored disks over {cycles} cycles: first attach {:.2}s; activate {:.2}s (poller: until first object {:.2}s, NBD {:.2}s, dm {:.2}s; head log: {:?}); deactivate {:.2}s (dm devices gone after {:.2}s); {} NBD, {} dm, {} TCP; local API {}",
        row.first_attach,
        row.activate,
        row.until_first,
        row.nbd,
        row.dm,
        row.log,
        row.deactivate,
        row.dm_gone,
        row.objects.nbd,
        row.objects.dm,
        row.objects.tcp,
        local.map_or("not measured".into(), |(a, d)| format!(
            "activate {a:.2}s, deactivate {d:.2}s"
        ))
    ));
    Ok(row)
}

/// Attaches `v` through the manager and polls until its device has the
/// volume's size, recording when NBD and dm devices appear.
fn activate(c: &Cluster, v: &str, n: usize, limit: Duration) -> Result<Activation> {
    let dev = device(v);
    let want = (n as u64 * DATA_MIB_PER_MIRROR) << 20;
    let mut seen = Seen::default();
    let log_from = c.head_log().len();
    let wall = day_seconds_now();
    let start = Instant::now();
    c.api.attach(v, HEAD)?;
    let mut last = (0usize, 0usize, 0.0f64);
    let (mut first, mut nbd, mut dm) = (None, 0.0, 0.0);
    loop {
        let now = start.elapsed().as_secs_f64();
        let counts = seen.poll()?;
        if counts != (last.0, last.1) {
            // The time since the last change went into the objects that
            // appeared since, shared by their number; until the first,
            // into the manager and the head's long poll.
            let dn = counts.0.saturating_sub(last.0) as f64;
            let dd = counts.1.saturating_sub(last.1) as f64;
            if first.is_none() {
                first = Some(now);
            } else if dn + dd > 0.0 {
                nbd += (now - last.2) * dn / (dn + dd);
                dm += (now - last.2) * dd / (dn + dd);
            }
            last = (counts.0, counts.1, now);
        }
        if kernel::is_block(&dev) && device_bytes(&dev).is_ok_and(|b| b == want) {
            break;
        }
        if start.elapsed() > limit {
            bail!(
                "{} did not become a {want}-byte block device within {}s (NBD connected {}, dm devices {})",
                dev.display(),
                limit.as_secs(),
                counts.0,
                counts.1
            );
        }
        std::thread::sleep(POLL);
    }
    let total = start.elapsed().as_secs_f64();
    let objects = Objects {
        nbd: kernel::nbd_connected()?,
        dm: kernel::dm_count()?,
        tcp: kernel::tcp_established_to(NBD_PORT)?,
    };
    // The first object counts from the attach request.
    let until_first = first.unwrap_or(total);
    let log = c.head_log();
    let log = split_log(log.get(log_from..).unwrap_or(""), v, wall, wall + total);
    Ok(Activation {
        total,
        until_first,
        nbd,
        dm,
        objects,
        log,
    })
}

/// Detaches `v` through the manager; returns the seconds until no dm
/// device is left and until no NBD connection is left either (the head
/// removes the dm devices first), then waits (untimed) until the manager
/// has released it, so the next attach starts from scratch.
fn deactivate(c: &Cluster, v: &str, limit: Duration) -> Result<(f64, f64)> {
    let start = Instant::now();
    c.api.detach(v)?;
    let mut dm_gone = None;
    loop {
        if dm_gone.is_none() && kernel::dm_count()? == 0 {
            dm_gone = Some(start.elapsed().as_secs_f64());
        }
        if dm_gone.is_some() && kernel::nbd_connected()? == 0 {
            break;
        }
        if start.elapsed() > limit {
            bail!(
                "{v}'s devices were not torn down within {}s of the detach",
                limit.as_secs()
            );
        }
        std::thread::sleep(POLL);
    }
    let took = start.elapsed().as_secs_f64();
    let dm_gone = dm_gone.unwrap_or(took);
    wait_for(&format!("the manager to release {v}"), limit, || {
        Ok(c.api.volume(v)?.volume.attached_to.is_none())
    })?;
    wait_for(
        &format!("the NBD TCP connections of {v} to close"),
        wait::secs(30),
        || Ok(kernel::tcp_established_to(NBD_PORT)? == 0),
    )?;
    Ok((dm_gone, took))
}

/// One activate and deactivate through the head's local API (the
/// datapath plugin's calls), each timed until its answer: the activate
/// answers once the device is there, the deactivate once it is gone and
/// the manager released the volume.
fn local_cycle(c: &Cluster, v: &str, n: usize) -> Result<(f64, f64)> {
    let dev = device(v);
    let start = Instant::now();
    let (status, body) = c.head_local("attach", v, "")?;
    let activate = start.elapsed().as_secs_f64();
    ensure!(
        status == 200,
        "local attach of {v} failed: HTTP {status}: {body}"
    );
    let want = (n as u64 * DATA_MIB_PER_MIRROR) << 20;
    ensure!(
        kernel::is_block(&dev) && device_bytes(&dev)? == want,
        "{} is not a {want}-byte block device when the local attach answered",
        dev.display()
    );
    let start = Instant::now();
    let (status, body) = c.head_local("detach", v, "")?;
    let deactivate = start.elapsed().as_secs_f64();
    ensure!(
        status == 200,
        "local detach of {v} failed: HTTP {status}: {body}"
    );
    wait_for(
        &format!("every dm device and NBD connection of {v} to go"),
        wait::secs(30),
        kernel::nothing_assembled,
    )?;
    Ok((activate, deactivate))
}

/// Connected NBD devices and dm devices, cheaply enough to poll every
/// [`POLL`] while hundreds exist: during an activation connections only
/// appear, so a device seen connected is not read again.
#[derive(Default)]
struct Seen {
    connected: BTreeSet<String>,
}

impl Seen {
    fn poll(&mut self) -> Result<(usize, usize)> {
        let mut dm = 0;
        for e in std::fs::read_dir("/sys/block").context("read /sys/block")? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with("dm-") {
                dm += 1;
            } else if name.starts_with("nbd")
                && !self.connected.contains(&name)
                && Path::new(&format!("/sys/block/{name}/backend")).exists()
            {
                self.connected.insert(name);
            }
        }
        Ok((self.connected.len(), dm))
    }
}

/// The size of a block device, as the kernel has it now.
fn device_bytes(dev: &Path) -> Result<u64> {
    File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .with_context(|| format!("size of {}", dev.display()))
}

/// The results as two Markdown tables (also the LAB-DETAIL, joined): the
/// costs, then where the activation's time goes by the head's log.
fn table(rows: &[Row]) -> String {
    let Some(base) = rows.first() else {
        return String::new();
    };
    let mut out = String::from(
        "| mirrored disks | cycles | activate s (× 1) | ms per mirrored disk | deactivate s (× 1) | of which dm removal s | NBD / dm / TCP | local API activate / deactivate s | first attach s |\n|---:|---:|---:|---:|---:|---:|---|---|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.2} ({:.1}×) | {:.0} | {:.2} ({:.1}×) | {:.2} | {} / {} / {} | {} | {:.2} |\n",
            r.mirrors,
            r.cycles,
            r.activate,
            r.activate / base.activate,
            1000.0 * r.activate / r.mirrors as f64,
            r.deactivate,
            r.deactivate / base.deactivate,
            r.dm_gone,
            r.objects.nbd,
            r.objects.dm,
            r.objects.tcp,
            r.local
                .map_or("-".into(), |(a, d)| format!("{a:.2} / {d:.2}")),
            r.first_attach,
        ));
    }
    out.push_str(
        "| mirrored disks | request → 1st device s | per leg: NBD import + meta device ms | per leg: data device ms | per mirror: dm-raid ms | volume device ms | after it s | poller: NBD / dm s |\n|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let legs = 2.0 * r.mirrors as f64;
        out.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} |\n",
            r.mirrors,
            r.log.before_first,
            1000.0 * r.log.meta / legs,
            1000.0 * r.log.data / legs,
            1000.0 * r.log.raid / r.mirrors as f64,
            1000.0 * r.log.top,
            r.log.after_last,
            r.nbd,
            r.dm,
        ));
    }
    out
}

/// The head log's split of one activation of `volume`: `log` is what the
/// head logged since the attach request at `from` (seconds of the UTC
/// day), the device was seen at `to`.
fn split_log(log: &str, volume: &str, from: f64, to: f64) -> LogSplit {
    let top = format!("vsky-{volume}");
    let mut split = LogSplit::default();
    let mut last = from;
    for line in log.lines() {
        let line = strip_ansi(line);
        if !line.contains("created device") {
            continue;
        }
        let Some(name) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("name="))
        else {
            continue;
        };
        if name != top && !name.starts_with(&format!("{top}+")) {
            continue;
        }
        let Some(at) = line.split_whitespace().next().and_then(day_seconds) else {
            continue;
        };
        let gap = (at - last).max(0.0);
        if split.devices == 0 {
            split.before_first = gap;
        } else if name.ends_with("+meta") {
            split.meta += gap;
        } else if name.ends_with("+data") {
            split.data += gap;
        } else if name == top {
            split.top += gap;
        } else {
            split.raid += gap;
        }
        split.devices += 1;
        last = at;
    }
    split.after_last = (to - last).max(0.0);
    split
}

/// Seconds of the UTC day of a log timestamp (`2026-12-07T04:38:12.323237Z`).
fn day_seconds(stamp: &str) -> Option<f64> {
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds of the UTC day now (the head logs in UTC on the same clock).
fn day_seconds_now() -> f64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_secs_f64() % 86_400.0
}

#[cfg(test)]
mod tests {
    use super::{LogSplit, day_seconds, split_log};

    #[test]
    fn splits_an_activation_by_the_devices_the_head_created() {
        let log = "\
2026-12-07T04:38:12.100000Z  INFO vsky_kernel::dm::datapath: created device name=vsky-a1+r0+d2c0+meta device=254:0
2026-12-07T04:38:12.110000Z  INFO vsky_kernel::dm::datapath: created device name=vsky-a1+r0+d2c0+data device=254:1
2026-12-07T04:38:12.200000Z  INFO vsky_kernel::dm::datapath: created device name=vsky-a1+r0+d4c0+meta device=254:2
2026-12-07T04:38:12.220000Z  INFO vsky_kernel::dm::datapath: created device name=vsky-a1+r0+d4c0+data device=254:3
2026-12-07T04:38:12.300000Z  INFO vsky_kernel::dm::datapath: created device name=vsky-a1+r0 device=254:4
2026-12-07T04:38:12.300000Z  INFO vsky_kernel::dm::datapath: created device name=vsky-other device=254:9
2026-12-07T04:38:12.350000Z \u{1b}[32m INFO\u{1b}[0m created device \u{1b}[3mname\u{1b}[0m\u{1b}[2m=\u{1b}[0mvsky-a1 device=254:5
2026-12-07T04:38:12.360000Z DEBUG vsky_agent::reconcile: volume assembled volume=a1
";
        let from = day_seconds("2026-12-07T04:38:12.000000Z").expect("a timestamp");
        let s = split_log(log, "a1", from, from + 0.5);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert_eq!(s.devices, 6, "{s:?}");
        assert!(close(s.before_first, 0.1), "{s:?}");
        assert!(close(s.meta, 0.09) && close(s.data, 0.03), "{s:?}");
        assert!(close(s.raid, 0.08) && close(s.top, 0.05), "{s:?}");
        assert!(close(s.after_last, 0.15), "{s:?}");
        assert_eq!(split_log("", "a1", from, from), LogSplit::default());
    }
}
