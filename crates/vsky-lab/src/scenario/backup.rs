//! cluster-backup: a backup's read of a snapshot (docs/design/snapshots.md
//! §5.5.3, step 8), on the real kernel, through the head agent's local API
//! as the datapath plugin's `Datapath.activate_readonly` calls it.
//!
//! A thin volume runs under an O_DIRECT rewriter; a snapshot is taken and
//! activated read-only on the same head while the writer goes on and later
//! writes change the volume: the snapshot reads exactly its moment, its
//! device and every layer under it are read-only, a write to it fails, the
//! manager lists the head among its readers and refuses to delete it. The
//! volume is detached and attached again under the reader (the frozen
//! layer they share stays), the read ends (every device of it goes), and
//! the snapshot is read again from scratch with the volume detached, this
//! time through the CLI (`vsky volume attach --read-only`, `vsky volume
//! detach --server`): its layers then in base form. The snapshot of a volume nobody wrote reads
//! zeros (dm-zero). Everything is deleted and every chunk comes back.

use std::sync::Arc;

use anyhow::{Result, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config, HEAD};
use crate::kernel;
use crate::out::say;
use crate::scenario::thin::layers_under;
use crate::wait::{self, wait_for};

/// The thin cluster's chunk size (`Config::thin`).
pub(crate) const CHUNK: &str = "32MiB";
const SIZE_MIB: u64 = 24;
/// The read-only activation the datapath plugin asks for.
pub(crate) const READ: &str = r#"{"domain": "u0-backup", "mode": "ro"}"#;
pub(crate) const END_READ: &str = r#"{"domain": "u0-backup"}"#;

/// A thin volume attached on the head, written, and snapshotted under an
/// O_DIRECT rewriter of its first 2 MiB that keeps running.
pub(crate) struct Running {
    pub dev: std::path::PathBuf,
    /// 8 MiB written at `at_a` before the snapshot.
    pub a: Vec<u8>,
    pub at_a: u64,
    /// What the rewriter writes (also there before the snapshot).
    pub r: Vec<u8>,
    pub rewriter: data::Rewriter,
}

/// Creates thin volume `v` (`SIZE_MIB`), attaches it to the head, writes
/// it, starts the rewriter and takes snapshot `bk`.
pub(crate) fn snapshot_under_rewriter(c: &Cluster, v: &str, bk: &str) -> Result<Running> {
    c.api.create_thin_volume(v, SIZE_MIB)?;
    c.attach_wait(v)?;
    let dev = device(v);
    let a = data::random(8)?;
    let at_a = 4 * MIB as u64;
    data::write_direct(&dev, at_a, &a, MIB)?;
    let r = data::random(2)?;
    data::write_direct(&dev, 0, &r, MIB)?;
    let rewriter = data::Rewriter::start(dev.clone(), Arc::new(r.clone()));
    c.api.snapshot(v, bk)?;
    Ok(Running {
        dev,
        a,
        at_a,
        r,
        rewriter,
    })
}

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config {
        head_api: true,
        ..Config::thin(CHUNK)
    })?;
    c.head_api_up()?;
    let free = c.api.cluster()?.free_bytes;
    let (v, bk) = ("vm-disk", "vm-disk-backup");
    let Running {
        dev,
        a,
        at_a,
        r,
        rewriter,
    } = snapshot_under_rewriter(&c, v, bk)?;
    // Read while the writer goes on.
    let (status, body) = c.head_local("attach", bk, READ)?;
    ensure!(status == 200, "read-only activation: {status} {body}");
    let bdev = device(bk);
    ensure!(
        kernel::is_block(&bdev),
        "{} is no block device",
        bdev.display()
    );
    let n = data::random(4)?;
    data::write_direct(&dev, at_a, &n, MIB)?;
    data::expect_same(&bdev, 0, &r, "the snapshot's rewritten blocks")?;
    data::expect_same(&bdev, at_a, &a, "the snapshot's A, overwritten since")?;
    data::expect_same(&dev, at_a, &n, "the volume's new data")?;
    ensure!(
        rewriter.running(),
        "the rewriter stopped while the snapshot was read"
    );
    let rounds = rewriter.finish()?;
    let layers = layers_under(bk)?;
    ensure!(
        kernel::dm_read_only(&format!("vsky-{bk}"))?,
        "the snapshot's device is writable"
    );
    // The frozen layer is still as its writer assembled it (frozen in
    // place), its pool read-only.
    for layer in &layers {
        let pool = kernel::dm_table(&format!("{layer}+pool"))?;
        ensure!(
            pool.contains("read_only"),
            "{layer}'s pool is writable: {pool}"
        );
    }
    ensure!(
        data::write_direct(&bdev, 0, &r[..MIB], MIB).is_err(),
        "a write to the snapshot's device succeeded"
    );
    let snap = c.api.volume(bk)?.volume;
    ensure!(
        snap.read_on == [HEAD] && snap.attached_to.is_none(),
        "the manager lists the snapshot read on {:?}, attached to {:?}",
        snap.read_on,
        snap.attached_to
    );
    ensure!(
        c.api.delete_volume(bk).is_err(),
        "the snapshot was deleted while read"
    );
    say(format!(
        "snapshot read-only on the head under a rewriter ({rounds} rounds, no error): reads its moment while the volume changes; device read-only, {} pool(s) read_only; a write fails; delete refused",
        layers.len()
    ));

    // The volume detached and attached again under the reader: the layer
    // they share stays assembled for the snapshot, the volume's own top
    // goes.
    c.detach_released(v)?;
    let left = kernel::mapper()?;
    let of_snapshot = |name: &String| {
        *name == format!("vsky-{bk}") || layers.iter().any(|l| name.starts_with(l.as_str()))
    };
    ensure!(
        left.iter().all(of_snapshot),
        "devices left besides the snapshot's: {left:?}"
    );
    data::expect_same(&bdev, at_a, &a, "the snapshot after its volume left")?;
    c.attach_wait(v)?;
    data::expect_same(&dev, at_a, &n, "the volume over the layer being read")?;
    data::expect_same(&bdev, at_a, &a, "the snapshot with its volume back")?;
    c.detach_released(v)?;

    // The read ends: every device of the snapshot goes.
    let (status, body) = c.head_local("detach", bk, END_READ)?;
    ensure!(status == 200, "end of the read: {status} {body}");
    wait_for("the snapshot's devices to go", wait::secs(30), || {
        kernel::nothing_assembled()
    })?;
    ensure!(
        c.api.volume(bk)?.volume.read_on.is_empty(),
        "the manager still lists a reader"
    );

    // Read again from scratch, nothing else assembled: base form; this
    // time by the admin's CLI.
    c.vsky_text(&["volume", "attach", bk, "--server", HEAD, "--read-only"])?;
    wait_for(
        "the snapshot's device from the CLI's read",
        wait::secs(60),
        || Ok(kernel::is_block(&bdev)),
    )?;
    data::expect_same(&bdev, 0, &r, "the snapshot's rewritten blocks, again")?;
    data::expect_same(&bdev, at_a, &a, "the snapshot's A, again")?;
    for layer in layers_under(bk)? {
        let raid = kernel::dm_table(&format!("{layer}+r0"))?;
        ensure!(
            raid.contains("nosync") && raid.contains(" - "),
            "{layer}'s mirror is not in base form: {raid}"
        );
        ensure!(
            kernel::dm_read_only(&format!("{layer}+thin"))?,
            "{layer}'s thin device is writable under a reader"
        );
    }
    c.vsky_text(&["volume", "detach", bk, "--server", HEAD])?;
    wait_for(
        "the snapshot's devices to go after the CLI's detach",
        wait::secs(30),
        kernel::nothing_assembled,
    )?;

    // The snapshot of a volume nobody wrote: zeros.
    c.api.create_thin_volume("fresh", 8)?;
    c.api.snapshot("fresh", "fresh-bk")?;
    let (status, body) = c.head_local("attach", "fresh-bk", READ)?;
    ensure!(status == 200, "read of an empty snapshot: {status} {body}");
    data::expect_same(
        &device("fresh-bk"),
        0,
        &vec![0; 8 * MIB],
        "the snapshot of a volume nobody wrote",
    )?;
    let table = kernel::dm_table("vsky-fresh-bk")?;
    ensure!(table.contains("zero"), "vsky-fresh-bk maps {table}");
    let (status, body) = c.head_local("detach", "fresh-bk", END_READ)?;
    ensure!(status == 200, "end of the empty read: {status} {body}");

    for name in [bk, v, "fresh-bk", "fresh"] {
        c.api.delete_volume(name)?;
    }
    c.wait_all_free(free)?;
    c.finish();
    Ok(format!(
        "snapshot of a running thin volume read through Datapath.activate_readonly's agent call under an O_DIRECT rewriter ({rounds} rounds, no error): exact at its moment while the volume changed, read-only (device, thin devices, pools), writes refused, delete refused while read; kept across its volume's detach and reattach; read again from scratch in base form; a never-written volume's snapshot reads zeros; every chunk back"
    ))
}
