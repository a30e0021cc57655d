//! cluster-thin: thin volumes, snapshots, clones and reverts assembled by
//! the head on the real kernel (docs/design/snapshots.md §9 steps 6 and
//! 7), with checksums at every step.
//!
//! A thin volume is written, detached and attached again. A snapshot is
//! taken of it attached, under a rewriter (the head switches the volume
//! onto a new top), and its clone checked. Another snapshot is taken and
//! cloned: the clone reads the snapshot's data through the frozen layers
//! assembled read-only (base form) and writes its own without touching
//! them; the volume itself goes on over the same bases, then is reverted
//! to the snapshot. A clone of a never-written volume's snapshot reads
//! zeros. Everything is deleted and every chunk comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config, strip_ansi};
use crate::kernel;
use crate::out::say;

/// 32 MiB chunks: 31 MiB of data, 3.9 MiB of it pool metadata, so a thin
/// volume holds up to 27 MiB.
const CHUNK: &str = "32MiB";
const SIZE_MIB: u64 = 24;

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config::thin(CHUNK))?;
    let free = c.api.cluster()?.free_bytes;
    let (v, snap, clone) = ("tmpl", "tmpl-snap", "vm1");
    let created = c.api.create_thin_volume(v, SIZE_MIB)?;
    ensure!(
        created.volume.thin && created.volume.mirrored_disks == 1,
        "a new thin volume takes one mirrored disk: {:?}",
        created.volume
    );

    // Written, detached, attached again.
    c.attach_wait(v)?;
    let dev = device(v);
    let size = std::fs::read_to_string(format!("/sys/class/block/{}/size", dm_node(&dev)?))?;
    ensure!(
        size.trim().parse::<u64>()? == (SIZE_MIB << 20) / 512,
        "{} has {} sectors, not {SIZE_MIB} MiB",
        dev.display(),
        size.trim()
    );
    let a = data::random(16)?;
    let at_a = 4 * MIB as u64;
    data::write_direct(&dev, at_a, &a, MIB)?;
    data::expect_same(&dev, at_a, &a, "pattern A right after the write")?;
    let top = thin_device_of(v)?;
    let mapped = kernel::thin_mapped_sectors(&top)?;
    ensure!(
        ((16 << 20) / 512..=(20 << 20) / 512).contains(&mapped),
        "{top} maps {mapped} sectors after 16 MiB written"
    );
    say(format!(
        "thin volume written: 16 MiB, its top {top} maps {} MiB",
        mapped * 512 / MIB as u64
    ));
    c.detach_wait(v)?;
    c.attach_wait(v)?;
    data::expect_same(&dev, at_a, &a, "pattern A after reattach")?;
    data::expect_same(
        &dev,
        0,
        &vec![0; 4 * MIB],
        "never-written blocks read zeros",
    )?;

    // A snapshot of the attached volume under an O_DIRECT rewriter: the
    // head switches it onto a new top in one short pause, the writer sees
    // no error, and later writes stay out of the snapshot.
    let r = data::random(2)?;
    data::write_direct(&dev, 0, &r, MIB)?;
    let rewriter = data::Rewriter::start(dev.clone(), Arc::new(r.clone()));
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    c.api.snapshot(v, "live")?;
    let answered = asked.elapsed();
    ensure!(
        rewriter.running(),
        "the rewriter stopped during the snapshot"
    );
    let rounds = rewriter.finish()?;
    let pause = pause_logged(&c.head_log())?;
    let e = data::random(2)?;
    let at_e = 20 * MIB as u64;
    data::write_direct(&dev, at_e, &e, MIB)?;
    data::expect_same(&dev, at_e, &e, "pattern E after the live snapshot")?;
    c.detach_wait(v)?;
    c.api.clone_volume("live", "vm3")?;
    c.attach_wait("vm3")?;
    let dev3 = device("vm3");
    data::expect_same(&dev3, 0, &r, "the live snapshot's rewritten blocks")?;
    data::expect_same(&dev3, at_a, &a, "the live snapshot's pattern A")?;
    data::expect_same(
        &dev3,
        at_e,
        &vec![0; 2 * MIB],
        "no later write in the live snapshot",
    )?;
    c.detach_wait("vm3")?;
    say(format!(
        "live snapshot under an O_DIRECT rewriter ({rounds} rounds, no error): answered in {:.1}s, the head's pause {pause} ms; its clone reads what was written before it and nothing after",
        answered.as_secs_f64()
    ));

    // Snapshot and clone: the clone reads A through the frozen layer,
    // assembled read-only.
    let s = c.api.snapshot(v, snap)?;
    ensure!(
        s.volume.snapshot_of.as_deref() == Some(v),
        "snapshot record: {:?}",
        s.volume
    );
    c.api.clone_volume(snap, clone)?;
    c.attach_wait(clone)?;
    let cdev = device(clone);
    data::expect_same(&cdev, at_a, &a, "the clone reads the snapshot's data")?;
    let bases = bases_of(clone)?;
    let mut mapped_in_bases = Vec::new();
    for base in &bases {
        for dev in [format!("{base}+r0"), base.clone(), format!("{base}+thin")] {
            ensure!(
                kernel::dm_read_only(&dev)?,
                "{dev} of a frozen layer is not read-only"
            );
        }
        let raid = kernel::dm_table(&format!("{base}+r0"))?;
        ensure!(
            raid.contains("nosync") && raid.contains(" - "),
            "the frozen layer's mirror is not the base form: {raid}"
        );
        let pool = kernel::dm_table(&format!("{base}+pool"))?;
        ensure!(
            pool.contains("read_only"),
            "the frozen layer's pool is writable: {pool}"
        );
        mapped_in_bases.push(kernel::thin_mapped_sectors(&format!("{base}+thin"))?);
    }
    let b = data::random(4)?;
    let at_b = 8 * MIB as u64;
    data::write_direct(&cdev, at_b, &b, MIB)?;
    data::expect_same(&cdev, at_b, &b, "pattern B on the clone")?;
    data::expect_same(&cdev, at_a, &a[..4 * MIB], "the clone's A before B")?;
    data::expect_same(
        &cdev,
        at_b + b.len() as u64,
        &a[8 * MIB..],
        "the clone's A after B",
    )?;
    for (base, before) in bases.iter().zip(&mapped_in_bases) {
        ensure!(
            kernel::thin_mapped_sectors(&format!("{base}+thin"))? == *before,
            "the frozen layer {base}'s mapping changed under the clone's writes"
        );
    }
    say(format!(
        "clone {clone} reads the snapshot through {bases:?} (read-only, raid1 nosync without metadata, pool read_only) and writes its own"
    ));
    c.detach_wait(clone)?;

    // The volume goes on over the same base: A, not the clone's B.
    c.attach_wait(v)?;
    data::expect_same(&dev, at_a, &a, "the volume after the snapshot")?;
    let cc = data::random(4)?;
    data::write_direct(&dev, at_b, &cc, MIB)?;
    data::expect_same(&dev, at_b, &cc, "pattern C on the volume")?;
    c.detach_wait(v)?;

    // Revert: the volume reads the snapshot again.
    c.api.revert(v, snap)?;
    c.attach_wait(v)?;
    data::expect_same(&dev, at_a, &a, "the volume after revert")?;
    c.detach_wait(v)?;
    say("revert: the volume reads the snapshot's data again");

    // A snapshot of a volume never attached: its layer was never written
    // (no pool metadata), and a clone of it reads zeros.
    c.api.create_thin_volume("fresh", 8)?;
    c.api.snapshot("fresh", "fresh-snap")?;
    c.api.clone_volume("fresh-snap", "vm2")?;
    c.attach_wait("vm2")?;
    let dev2 = device("vm2");
    data::expect_same(
        &dev2,
        0,
        &vec![0; 8 * MIB],
        "a clone of a never-written volume",
    )?;
    let d = data::random(2)?;
    data::write_direct(&dev2, 2 * MIB as u64, &d, MIB)?;
    data::expect_same(&dev2, 2 * MIB as u64, &d, "pattern D on that clone")?;
    c.detach_wait("vm2")?;

    // Deleted in an order that keeps the shared base until the last user.
    for name in [snap, "live", v, "vm3", clone, "vm2", "fresh-snap", "fresh"] {
        c.api.delete_volume(name)?;
    }
    c.wait_all_free(free)?;
    c.finish();
    Ok(format!(
        "thin {SIZE_MIB} MiB volume: write/detach/reattach exact, {} MiB mapped for 16 MiB written; live snapshot under a rewriter: head pause {pause} ms, no I/O error, its clone exact; snapshot + clone: the clone reads it through a read-only base-form layer and writes its own (base mapping unchanged); the volume over the same base unaffected; revert exact; a clone of a never-written volume's snapshot reads zeros and writes; deleting all returns every chunk",
        mapped * 512 / MIB as u64
    ))
}

/// `dm-N` of a `/dev/mapper` node.
fn dm_node(dev: &std::path::Path) -> Result<String> {
    let target = std::fs::canonicalize(dev)?;
    if let Some(name) = target.file_name().and_then(|n| n.to_str())
        && name.starts_with("dm-")
    {
        return Ok(name.to_string());
    }
    // A node made with mknod, not a link: find it by device number.
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(dev)?.rdev();
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    for e in std::fs::read_dir("/sys/class/block")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let d = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).unwrap_or_default();
        if d.trim() == want {
            return Ok(name);
        }
    }
    anyhow::bail!("no block device behind {}", dev.display())
}

/// The thin device the volume device maps (`vsky-_L<id>+thin`).
pub(crate) fn thin_device_of(volume: &str) -> Result<String> {
    let layers = layers_under(volume)?;
    layers
        .first()
        .map(|l| format!("{l}+thin"))
        .ok_or_else(|| anyhow::anyhow!("no layer under {volume}"))
}

/// The frozen layers under a clone, top down.
fn bases_of(volume: &str) -> Result<Vec<String>> {
    let layers = layers_under(volume)?;
    ensure!(layers.len() >= 2, "{volume} stacks {layers:?}, no base");
    Ok(layers[1..].to_vec())
}

/// The pause of the head's last switch onto a new top, in ms, from its
/// log (`pause_ms=…`).
pub(crate) fn pause_logged(log: &str) -> Result<u64> {
    log.lines()
        .rev()
        .map(strip_ansi)
        .filter(|l| l.contains("switched the volume onto the new top"))
        .find_map(|l| {
            let at = l.find("pause_ms=")? + "pause_ms=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .ok_or_else(|| anyhow::anyhow!("the head logged no switch onto a new top"))
}

/// The layers assembled for `volume` (the only volume assembled), top
/// first: the one the volume device maps, then each external origin.
pub(crate) fn layers_under(volume: &str) -> Result<Vec<String>> {
    let names = kernel::mapper()?;
    let thin_of = |n: &String| n.strip_suffix("+thin").map(String::from);
    let thins: Vec<String> = names.iter().filter_map(thin_of).collect();
    // A thin table names its origin by device number; order by it.
    let number = |name: &str| -> Result<String> {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(format!("/dev/mapper/{name}"))?.rdev();
        Ok(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
    };
    let mut order = Vec::new();
    let top_table = kernel::dm_table(&format!("vsky-{volume}"))?;
    let mut next = top_table
        .split_whitespace()
        .nth(3)
        .map(String::from)
        .unwrap_or_default();
    while let Some(layer) = thins
        .iter()
        .find(|l| number(&format!("{l}+thin")).is_ok_and(|n| n == next))
    {
        order.push(layer.clone());
        let table = kernel::dm_table(&format!("{layer}+thin"))?;
        // `0 <len> thin <pool> 0 [<origin>]`
        match table.split_whitespace().nth(5) {
            Some(origin) => next = origin.to_string(),
            None => break,
        }
    }
    ensure!(
        !order.is_empty(),
        "vsky-{volume} ({top_table}) maps no layer among {thins:?}"
    );
    Ok(order)
}
