//! cluster-backup-remote (issue #13): a snapshot read, and a clone
//! written, on another host than the one whose VM keeps writing the
//! volume — what a backup job and a fast clone from a running VM's
//! snapshot do in a pool. Two heads share the VM's kernel: the writer on
//! `head`, the reader and the clone on `hp` (its devices `vskyp-…`,
//! `fixture.rs`).
//!
//! A thin volume runs on `head` under an O_DIRECT rewriter; a snapshot is
//! taken and activated read-only on `hp` through its local API (the
//! datapath plugin's `Datapath.activate_readonly`): `hp` assembles the
//! frozen layer in base form over read-only imports while `head` keeps the
//! same layer frozen in place under the volume. The snapshot reads exactly
//! its moment while the volume changes, its devices on `hp` are read-only
//! and a write to it fails. A clone of the snapshot is activated
//! read-write on `hp` and written while the volume is written on `head`:
//! each reads its own writes over the shared layer, which neither
//! changes. Everything is released and deleted, and every chunk comes back.

use std::path::PathBuf;

use anyhow::{Result, ensure};

use crate::data::{self, MIB};
use crate::fixture::{Cluster, Config, HEAD_P, HEAD_P_PREFIX};
use crate::kernel;
use crate::out::say;
use crate::scenario::backup::{CHUNK, END_READ, READ, Running, snapshot_under_rewriter};
use crate::wait::{self, wait_for};

const RUN: &str = r#"{"domain": "9", "mode": "rw"}"#;
const STOP: &str = r#"{"domain": "9"}"#;

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config {
        head_api: true,
        second_head: true,
        ..Config::thin(CHUNK)
    })?;
    c.head_api_up()?;
    let free = c.api.cluster()?.free_bytes;
    let (v, bk, cl) = ("vrem", "vrem-backup", "vrem-clone");
    // The snapshot under a rewriter on head, read on hp.
    let Running {
        dev,
        a,
        at_a,
        r,
        rewriter,
    } = snapshot_under_rewriter(&c, v, bk)?;
    let (status, body) = c.local_api(HEAD_P, "attach", bk, READ)?;
    ensure!(
        status == 200,
        "read-only activation on {HEAD_P}: {status} {body}"
    );
    let bdev = on_hp(bk);
    ensure!(
        kernel::is_block(&bdev),
        "{} is no block device",
        bdev.display()
    );
    let n = data::random(4)?;
    data::write_direct(&dev, at_a, &n, MIB)?;
    data::expect_same(&bdev, 0, &r, "the snapshot's rewritten blocks, on hp")?;
    data::expect_same(
        &bdev,
        at_a,
        &a,
        "the snapshot's A on hp, overwritten since on head",
    )?;
    data::expect_same(&dev, at_a, &n, "the volume's new data on head")?;
    ensure!(
        kernel::dm_read_only(&format!("{HEAD_P_PREFIX}-{bk}"))?,
        "the snapshot's device on {HEAD_P} is writable"
    );
    ensure!(
        data::write_direct(&bdev, 0, &r[..MIB], MIB).is_err(),
        "a write to the snapshot's device on {HEAD_P} succeeded"
    );
    let base_form = base_form_mirrors_on_hp()?;
    ensure!(
        base_form > 0,
        "{HEAD_P} assembled no mirror of the snapshot's layers in base form"
    );
    let snap = c.api.volume(bk)?.volume;
    ensure!(
        snap.read_on == [HEAD_P],
        "the manager lists the snapshot read on {:?}",
        snap.read_on
    );
    say(format!(
        "snapshot of {v} (written on head) read on {HEAD_P}: its moment exactly while head rewrote the volume; {base_form} base-form mirror(s), read-only, a write fails"
    ));

    // A clone of the snapshot runs on hp while the volume runs on head.
    c.api.clone_volume(bk, cl)?;
    let (status, body) = c.local_api(HEAD_P, "attach", cl, RUN)?;
    ensure!(
        status == 200,
        "activation of the clone on {HEAD_P}: {status} {body}"
    );
    let cdev = on_hp(cl);
    data::expect_same(&cdev, at_a, &a, "the clone's A (from the snapshot)")?;
    let cw = data::random(4)?;
    data::write_direct(&cdev, at_a, &cw, MIB)?;
    let n2 = data::random(4)?;
    data::write_direct(&dev, at_a, &n2, MIB)?;
    data::expect_same(&cdev, at_a, &cw, "the clone's own writes on hp")?;
    data::expect_same(
        &cdev,
        0,
        &r,
        "the clone's unwritten blocks, from the snapshot",
    )?;
    data::expect_same(&dev, at_a, &n2, "the volume's writes on head")?;
    data::expect_same(&bdev, at_a, &a, "the snapshot, under both writers")?;
    ensure!(
        rewriter.running(),
        "the rewriter on head stopped while hp read and wrote"
    );
    let rounds = rewriter.finish()?;
    say(format!(
        "clone {cl} written on {HEAD_P} while head wrote {v} ({rounds} rewrite rounds, no error): each reads its own writes, the snapshot unchanged"
    ));

    // Released on hp: its every device and import go.
    for (name, body) in [(cl, STOP), (bk, END_READ)] {
        let (status, answer) = c.local_api(HEAD_P, "detach", name, body)?;
        ensure!(
            status == 200,
            "release of {name} on {HEAD_P}: {status} {answer}"
        );
    }
    wait_for(
        &format!("{HEAD_P}'s devices and imports to go"),
        wait::secs(60),
        || Ok(kernel::objects_of(HEAD_P_PREFIX)?.is_empty()),
    )?;
    c.detach_released(v)?;
    for name in [cl, bk, v] {
        c.api.delete_volume(name)?;
    }
    c.wait_all_free(free)?;
    c.finish();
    Ok(format!(
        "a running thin volume's snapshot read on another head (base form, read-only) under the writer's O_DIRECT rewriter ({rounds} rounds, no error): exact at its moment; a clone of it written on that head while the volume was written on the first: each exact, the shared layer unchanged; every device gone on release, every chunk back"
    ))
}

/// A volume's device on the second head.
fn on_hp(volume: &str) -> PathBuf {
    PathBuf::from(format!("/dev/mapper/{HEAD_P_PREFIX}-{volume}"))
}

/// The second head's mirrors in base form (no metadata devices: `-` in
/// their table, and `nosync`).
fn base_form_mirrors_on_hp() -> Result<usize> {
    let ours = format!("{HEAD_P_PREFIX}-");
    let mut n = 0;
    for m in kernel::mirrors()?
        .into_iter()
        .filter(|m| m.name.starts_with(&ours))
    {
        let table = kernel::dm_table(&m.name)?;
        if table.contains("nosync") && table.contains(" - ") {
            n += 1;
        }
    }
    Ok(n)
}
