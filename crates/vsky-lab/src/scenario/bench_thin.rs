//! cluster-bench-thin (a benchmark, not a test; only when named): what
//! snapshots and chains cost (docs/design/snapshots.md §7), as ratios in
//! one run.
//!
//! - Snapshot and clone time against the volume's size (1, 10 and 100
//!   chunks): a snapshot and a clone of the detached volume (REST, end to
//!   end), and a snapshot of it attached (REST end to end, and the head's
//!   pause from its log). Target: flat.
//! - Throughput through a chain of depth 0, 1 and 4 against a thick
//!   volume, O_DIRECT, the four volumes taking turns: sequential 1 MiB
//!   reads and random 4 KiB reads of data that lives only in the deepest
//!   layer, the first sequential write of a region no layer holds and
//!   rewrites of it, and random 4 KiB writes over the deepest layer's data
//!   (the first touch of each 64 KiB block copies it up from the origin:
//!   "copy-up", once; later rounds overwrite). Target: ≥ 0.8× at depth 4.
//!
//! Small chunks and little data: the lab's storage servers share one small
//! filesystem.

use std::time::Instant;

use anyhow::Result;

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::out::{median, say};
use crate::scenario::thin::pause_logged;

const CHUNK: &str = "16MiB";
/// A chunk's data area: 16 MiB less the dm-raid metadata area.
const CHUNK_DATA_MIB: u64 = 15;
/// Data written before the snapshots, read back through the chain.
const BASE_MIB: usize = 3;
/// A region past the base data, written after the snapshots.
const NEW_AT: u64 = 4 * MIB as u64;
const NEW_MIB: usize = 1;
/// Rounds of each measurement, the volumes taking turns; medians kept.
const ROUNDS: usize = 5;
const RANDOM_OPS: usize = 256;

/// The volumes compared: thick, and thin under 0, 1 and 4 snapshots.
const VARIANTS: [(&str, Option<usize>); 4] = [
    ("thick", None),
    ("d0", Some(0)),
    ("d1", Some(1)),
    ("d4", Some(4)),
];

/// One volume's throughput: MiB/s for sequential, requests/s for random.
#[derive(Default)]
struct Row {
    what: String,
    seq_read: f64,
    rand_read: f64,
    first_write: f64,
    copy_up: f64,
    rewrite: f64,
    rand_write: f64,
}

/// Seconds (medians of [`ROUNDS`]) of a snapshot and a clone of a
/// detached volume, a snapshot of it attached, and the head's pause (ms).
struct Times {
    detached: f64,
    clone: f64,
    attached: f64,
    pause_ms: f64,
}

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config::thin(CHUNK))?;
    let free = c.api.cluster()?.free_bytes;

    let mut times = Vec::new();
    for chunks in [1u64, 10, 100] {
        times.push((chunks, snapshot_and_clone(&c, chunks)?));
        c.wait_all_free(free)?;
    }
    say(format!(
        "snapshot and clone time against the volume's size (median of {ROUNDS}; seconds, pause in ms):"
    ));
    say("  chunks  snapshot detached  clone  snapshot attached  head pause");
    for (chunks, t) in &times {
        say(format!(
            "  {chunks:>6}  {:>17.2}  {:>5.2}  {:>17.2}  {:>10.0}",
            t.detached, t.clone, t.attached, t.pause_ms
        ));
    }

    let rows = throughput(&c)?;
    c.wait_all_free(free)?;
    let thick = &rows[0];
    say(format!(
        "throughput against the thick volume (median of {ROUNDS} interleaved rounds but first write and copy-up, one each; seq MiB/s, random 4 KiB req/s; ratio to thick):"
    ));
    for r in &rows {
        let cell = |v: f64, t: f64| format!("{v:>6.1} ({:.2})", v / t);
        say(format!(
            "  {:<12} seq read {}  rand read {}  first write {}  copy-up {}  rewrite {}  rand write {}",
            r.what,
            cell(r.seq_read, thick.seq_read),
            cell(r.rand_read, thick.rand_read),
            cell(r.first_write, thick.first_write),
            cell(r.copy_up, thick.copy_up),
            cell(r.rewrite, thick.rewrite),
            cell(r.rand_write, thick.rand_write),
        ));
    }
    c.finish();
    let (small, big) = (&times[0].1, &times[2].1);
    let d4 = &rows[3];
    Ok(format!(
        "100 chunks ÷ 1 chunk (medians): detached snapshot {:.2}, clone {:.2}, attached snapshot {:.2}, head pause {:.0} ms ÷ {:.0} ms; depth 4 ÷ thick: seq read {:.2}, rand read {:.2}, first write {:.2}, copy-up {:.2}, rewrite {:.2}, rand write {:.2}",
        big.detached / small.detached,
        big.clone / small.clone,
        big.attached / small.attached,
        big.pause_ms,
        small.pause_ms,
        d4.seq_read / thick.seq_read,
        d4.rand_read / thick.rand_read,
        d4.first_write / thick.first_write,
        d4.copy_up / thick.copy_up,
        d4.rewrite / thick.rewrite,
        d4.rand_write / thick.rand_write,
    ))
}

/// [`Times`] for a thin volume of `chunks` chunks.
fn snapshot_and_clone(c: &Cluster, chunks: u64) -> Result<Times> {
    let v = format!("v{chunks}");
    c.api.create_thin_volume(&v, chunks * CHUNK_DATA_MIB)?;
    let mut made = Vec::new();
    let (mut detached, mut clone) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let (s, cl) = (format!("{v}-s{r}"), format!("{v}-c{r}"));
        detached.push(timed(|| c.api.snapshot(&v, &s).map(drop))?);
        clone.push(timed(|| c.api.clone_volume(&s, &cl).map(drop))?);
        made.extend([cl, s]);
    }
    c.attach_wait(&v)?;
    let (mut attached, mut pause) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        data::write_direct(&device(&v), 0, &data::random(1)?, MIB)?;
        let s = format!("{v}-a{r}");
        attached.push(timed(|| c.api.snapshot(&v, &s).map(drop))?);
        pause.push(pause_logged(&c.head_log())? as f64);
        made.push(s);
    }
    c.detach_wait(&v)?;
    for name in made.iter().chain([&v]) {
        c.api.delete_volume(name)?;
    }
    Ok(Times {
        detached: median(detached),
        clone: median(clone),
        attached: median(attached),
        pause_ms: median(pause),
    })
}

/// [`VARIANTS`] side by side: each written, snapshotted to its depth and
/// measured in turns.
fn throughput(c: &Cluster) -> Result<Vec<Row>> {
    let size = 12;
    let base = (BASE_MIB * MIB) as u64;
    let mut made = Vec::new();
    for (name, depth) in VARIANTS {
        match depth {
            None => c.api.create_volume(name, size)?,
            Some(_) => drop(c.api.create_thin_volume(name, size)?),
        }
        c.attach_wait(name)?;
        data::write_direct(&device(name), 0, &data::random(BASE_MIB)?, MIB)?;
        for i in 0..depth.unwrap_or(0) {
            let s = format!("{name}-s{i}");
            c.api.snapshot(name, &s)?;
            made.push(s);
        }
    }
    let mut rows: Vec<Row> = VARIANTS
        .iter()
        .map(|(_, depth)| Row {
            what: depth.map_or("thick".into(), |d| format!("thin depth {d}")),
            ..Row::default()
        })
        .collect();
    // Once each: what a first touch costs.
    let zeros = vec![0u8; NEW_MIB * MIB];
    for ((name, _), row) in VARIANTS.iter().zip(&mut rows) {
        let dev = device(name);
        row.first_write = mib_rate(NEW_MIB, || data::write_direct(&dev, NEW_AT, &zeros, MIB))?;
        row.copy_up = data::random_io(&dev, base, 4096, RANDOM_OPS, true, 9)?;
    }
    let mut samples: Vec<[Vec<f64>; 4]> = VARIANTS.iter().map(|_| Default::default()).collect();
    for round in 0..ROUNDS {
        for ((name, _), s) in VARIANTS.iter().zip(&mut samples) {
            let dev = device(name);
            s[0].push(mib_rate(BASE_MIB, || {
                data::read_direct(&dev, 0, BASE_MIB * MIB).map(drop)
            })?);
            s[1].push(data::random_io(
                &dev,
                base,
                4096,
                RANDOM_OPS,
                false,
                7 + round as u64,
            )?);
            s[2].push(mib_rate(NEW_MIB, || {
                data::write_direct(&dev, NEW_AT, &zeros, MIB)
            })?);
            s[3].push(data::random_io(&dev, base, 4096, RANDOM_OPS, true, 9)?);
        }
    }
    for (row, [seq, rand, rewrite, rand_write]) in rows.iter_mut().zip(samples) {
        row.seq_read = median(seq);
        row.rand_read = median(rand);
        row.rewrite = median(rewrite);
        row.rand_write = median(rand_write);
    }
    for (name, _) in VARIANTS {
        c.detach_released(name)?;
    }
    for name in made
        .iter()
        .map(String::as_str)
        .chain(VARIANTS.map(|(n, _)| n))
    {
        c.api.delete_volume(name)?;
    }
    Ok(rows)
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

fn mib_rate(mib: usize, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    Ok(mib as f64 / timed(f)?.max(1e-3))
}
