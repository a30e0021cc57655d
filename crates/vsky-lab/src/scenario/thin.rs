//! cluster-thin: thin volumes, snapshots, clones and reverts assembled by
//! the head on the real kernel (docs/design/snapshots.md §9 step 6), with
//! checksums at every step.
//!
//! A thin volume is written, detached and attached again; a snapshot is
//! taken of it and cloned; the clone reads the snapshot's data through the
//! frozen layer assembled read-only (base form) and writes its own
//! without touching it; the volume itself goes on over the same base,
//! then is reverted to the snapshot; everything is deleted and every chunk
//! comes back.

use anyhow::{Result, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::say;
use crate::wait::{self, wait_for};

/// 32 MiB chunks: 31 MiB of data, 3.9 MiB of it pool metadata, so a thin
/// volume holds up to 27 MiB.
const CHUNK: &str = "32MiB";
const SIZE_MIB: u64 = 24;

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config {
        chunk: CHUNK,
        disk_mib: 320,
        ..Config::default()
    })?;
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
    c.detach_wait(v)?;

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
    let base = base_layer_of(clone)?;
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
    ensure!(
        kernel::thin_mapped_sectors(&format!("{base}+thin"))? == mapped,
        "the frozen layer's mapping changed under the clone's writes"
    );
    say(format!(
        "clone {clone} reads the snapshot through {base} (read-only, raid1 nosync without metadata, pool read_only) and writes its own"
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
    for name in [snap, v, clone, "vm2", "fresh-snap", "fresh"] {
        c.api.delete_volume(name)?;
    }
    wait_for("every chunk back in the free pool", wait::secs(60), || {
        Ok(c.api.cluster()?.free_bytes == free)
    })?;
    c.finish();
    Ok(format!(
        "thin {SIZE_MIB} MiB volume: write/detach/reattach exact, {} MiB mapped for 16 MiB written; snapshot + clone: the clone reads it through a read-only base-form layer and writes its own (base mapping unchanged); the volume over the same base unaffected; revert exact; a clone of a never-written volume's snapshot reads zeros and writes; deleting all returns every chunk",
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
fn thin_device_of(volume: &str) -> Result<String> {
    let layers = layers_under(volume)?;
    layers
        .first()
        .map(|l| format!("{l}+thin"))
        .ok_or_else(|| anyhow::anyhow!("no layer under {volume}"))
}

/// The frozen layer under a clone: the second layer assembled.
fn base_layer_of(volume: &str) -> Result<String> {
    let layers = layers_under(volume)?;
    ensure!(
        layers.len() == 2,
        "{volume} stacks {layers:?}, not top + base"
    );
    Ok(layers[1].clone())
}

/// The layers assembled for `volume` (the only volume assembled), top
/// first: the one the volume device maps, then each external origin.
fn layers_under(volume: &str) -> Result<Vec<String>> {
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
