//! cluster-backup-rebuild: a snapshot's frozen layer rebuilt while a
//! backup reads it (docs/design/snapshots.md §5.5.3 failure points, §5.8).
//!
//! A thin volume is written, snapshotted and detached; the snapshot is
//! read on the head (base form: raid1 without metadata over the frozen
//! layer's active legs). The storage server of one of the layer's legs is
//! killed: the reads go on from the other leg. After the grace period the
//! manager replaces the lost leg from the pool and a storage agent copies
//! it (nothing writes a frozen layer, so no head runs its resync); the
//! reader's head takes the new leg into its running mirror. Then the server
//! of the other original leg is killed too: the snapshot must read back
//! exactly from the rebuilt copy alone.

use anyhow::{Context, Result, ensure};
use vsky_api::types::{Leg, LegState};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::{say, secs};
use crate::wait::{self, wait_for};

const READ: &str = r#"{"domain": "u0-backup", "mode": "ro"}"#;

pub fn run_scenario() -> Result<String> {
    let mut c = Cluster::up(Config {
        servers: 3,
        head_api: true,
        ..Config::thin("32MiB")
    })?;
    c.head_api_up()?;
    let bk = "vm-disk-backup";
    let a = snapshot_read_on_head(&c, "vm-disk", bk)?;
    let bdev = device(bk);
    let legs = frozen_legs(&c, bk)?;
    ensure!(legs.len() == 2, "the frozen layer has legs {legs:?}");
    let (survivor, victim) = (legs[0].server.clone(), legs[1].server.clone());

    c.kill_agent(&victim)?;
    let start = std::time::Instant::now();
    data::expect_same(
        &bdev,
        0,
        &a,
        &format!("the snapshot with {victim} (one leg) dead"),
    )?;
    say(format!(
        "killed {victim}: the snapshot still reads exactly from the leg on {survivor}"
    ));
    wait_for(
        &format!("the frozen layer's leg on {victim} replaced and copied"),
        wait::secs(180),
        || {
            let legs = frozen_legs(&c, bk)?;
            Ok(legs.len() == 2
                && legs
                    .iter()
                    .all(|l| l.state == LegState::Active && l.server != victim))
        },
    )?;
    let took = secs(start);
    let rebuilt = frozen_legs(&c, bk)?
        .into_iter()
        .find(|l| l.server != survivor)
        .context("no rebuilt leg")?
        .server;
    // The reader's head takes the new leg into its running mirror.
    let layer = c.api.volume(bk)?.layers[0].name.clone();
    let status = base_mirror_whole(&layer, "both legs again")?;
    say(format!(
        "the leg on {victim} rebuilt on {rebuilt} by a storage agent {took}s after the kill; the reader's mirror runs on both legs ({status})"
    ));

    c.kill_agent(&survivor)?;
    data::expect_same(
        &bdev,
        0,
        &a,
        &format!("the snapshot from the rebuilt copy alone ({survivor} dead too)"),
    )?;
    say(format!(
        "killed {survivor} too: the snapshot reads exactly from the copy on {rebuilt}"
    ));
    let (status, body) = c.head_local("detach", bk, r#"{"domain": "u0-backup"}"#)?;
    ensure!(status == 200, "end of the read: {status} {body}");
    c.finish();
    Ok(format!(
        "a snapshot read on the head in base form: one leg's server killed, reads exact from the other; the frozen layer's leg replaced and copied by a storage agent in {took}s, the reader's mirror took it in (AA); the other original leg's server killed: 8 MiB read back exactly from the rebuilt copy"
    ))
}

/// The legs of the first mirrored disk of snapshot `name`'s own layer.
pub(super) fn frozen_legs(c: &Cluster, name: &str) -> Result<Vec<Leg>> {
    let detail = c.api.volume(name)?;
    let layer = detail.layers.first().context("the snapshot has no layer")?;
    let md = layer
        .layout
        .first()
        .context("the layer has no mirrored disk")?;
    Ok(md.legs.clone())
}

/// A thin volume `v` with 8 MiB written, snapshotted as `bk` and detached;
/// `bk` then read on the head through its local API, as a backup's
/// `Datapath.activate_readonly` does (base form: nothing there writes the
/// layer). Returns what was written.
pub(super) fn snapshot_read_on_head(c: &Cluster, v: &str, bk: &str) -> Result<Vec<u8>> {
    c.api.create_thin_volume(v, 24)?;
    c.attach_wait(v)?;
    let a = data::random(8)?;
    data::write_direct(&device(v), 0, &a, MIB)?;
    c.api.snapshot(v, bk)?;
    c.detach_wait(v)?;
    let (status, body) = c.head_local("attach", bk, READ)?;
    ensure!(status == 200, "read-only activation: {status} {body}");
    data::expect_same(&device(bk), 0, &a, "the snapshot, read in base form")?;
    Ok(a)
}

/// Waits until the reader's head runs `layer`'s first mirror on both legs
/// (`AA`) and returns its status: a base mirror is reloaded when the
/// manager changes the layer's active legs.
pub(super) fn base_mirror_whole(layer: &str, what: &str) -> Result<String> {
    let mirror = format!("vsky-{layer}+r0");
    wait_for(
        &format!("{mirror} to run on {what}"),
        wait::secs(60),
        || {
            let status = kernel::dm_status(&mirror)?;
            Ok(status.split_whitespace().any(|w| w == "AA"))
        },
    )?;
    kernel::dm_status(&mirror)
}
