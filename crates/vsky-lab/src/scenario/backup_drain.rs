//! cluster-backup-drain: a snapshot's frozen layer scrubbed and drained
//! while a backup reads it (docs/design/snapshots.md §5.8, step 12).
//!
//! A thin volume is written, snapshotted and detached; the snapshot is read
//! on the head in base form (raid1 without metadata over the frozen layer's
//! active legs). The scrub patrol compares the frozen layer's legs (a
//! storage agent reads them: nothing writes a frozen layer, so no head runs
//! its check) and finds them equal. Then a storage server holding one of
//! the layer's legs is drained: a storage agent copies the leg to a new
//! chunk, the old chunk's export is dropped before it is wiped, and the
//! reader's head reloads its running mirror onto the new leg. The drained
//! server ends with no leg and is removed; then the other original leg's
//! server is killed, and the snapshot must read back exactly from the moved
//! copy.

use anyhow::{Context, Result, ensure};
use vsky_api::types::LegState;

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::{say, secs, show};
use crate::wait::{self, wait_for};

use super::backup_rebuild::{base_mirror_whole, frozen_legs, snapshot_read_on_head};

pub fn run_scenario() -> Result<String> {
    let mut c = Cluster::up(Config {
        servers: 3,
        head_api: true,
        scrub_interval: "3s",
        ..Config::thin("32MiB")
    })?;
    c.head_api_up()?;
    let bk = "vm-disk-backup";
    let a = snapshot_read_on_head(&c, "vm-disk", bk)?;
    let bdev = device(bk);
    let layer = c.api.volume(bk)?.layers[0].name.clone();
    let runs = written_blocks(&layer)?;
    ensure!(
        runs == [(0, 8 * MIB as u64)],
        "the frozen layer's block map, read by vsky-thinmeta, is {runs:?}: 8 MiB were written at 0"
    );
    say(format!(
        "the frozen layer's metadata, written by this kernel and read by vsky-thinmeta: thin device 0 maps exactly the 8 MiB written ({})",
        kernel::dm_status(&format!("vsky-{layer}+thin"))?.trim()
    ));

    // The patrol compares the frozen layer's legs under the reader.
    wait_for(
        &format!("a scrub of the frozen layer {layer}"),
        wait::secs(90),
        || {
            Ok(c.api
                .events()?
                .iter()
                .any(|e| e.kind == "scrub_done" && e.volume.as_deref() == Some(layer.as_str())))
        },
    )?;
    let events = c.api.events()?;
    ensure!(
        !events.iter().any(|e| e.kind == "scrub_mismatch"),
        "a scrub found copies that differ: {:?}",
        events
            .iter()
            .filter(|e| e.kind.starts_with("scrub_"))
            .collect::<Vec<_>>()
    );
    let compared_by = events
        .iter()
        .find(|e| e.kind == "scrub_started" && e.volume.as_deref() == Some(layer.as_str()))
        .and_then(|e| e.server.clone())
        .unwrap_or_default();
    ensure!(
        events.iter().any(|e| e.kind == "scrub_started"
            && e.volume.as_deref() == Some(layer.as_str())
            && e.message.contains("its legs are read and compared")),
        "the frozen layer was not compared by a storage agent"
    );
    say(format!(
        "patrol: the frozen layer {layer} compared by {compared_by} while the snapshot is read: its legs agree"
    ));

    let legs = frozen_legs(&c, bk)?;
    ensure!(legs.len() == 2, "the frozen layer has legs {legs:?}");
    let (survivor, victim) = (legs[0].server.clone(), legs[1].server.clone());
    let start = std::time::Instant::now();
    let tail = c.vsky_waited(&["server", "drain", &victim])?;
    let took = secs(start);
    show(&tail);
    let moved = frozen_legs(&c, bk)?;
    ensure!(
        moved.len() == 2 && moved.iter().all(|l| l.server != victim),
        "after the drain the frozen layer has legs {moved:?}"
    );
    // The reader's head may reconcile before the target's storage agent
    // exports the moved leg under its name, and report it failed; the
    // target's next heartbeat brings it back (it is alive). Not yet fixed
    // at the head (issue #13 note): waited for here, bounded.
    wait_for(
        "both legs of the frozen layer active after the drain",
        wait::secs(30),
        || {
            Ok(frozen_legs(&c, bk)?
                .iter()
                .all(|l| l.state == LegState::Active && l.server != victim))
        },
    )?;
    let moved = frozen_legs(&c, bk)?;
    let target = moved
        .iter()
        .find(|l| l.server != survivor)
        .context("no moved leg")?
        .server
        .clone();
    data::expect_same(&bdev, 0, &a, "the snapshot during the drain's end")?;
    // The reader's head reloads its running mirror onto the moved leg.
    let status = base_mirror_whole(&layer, "the moved leg and the survivor")?;
    say(format!(
        "drained {victim} in {took}s under the reader: the frozen layer's leg moved to {target} by a storage agent; the reader's mirror runs on both legs ({status})"
    ));
    c.kill_agent(&victim)?;
    c.api
        .remove_server(&victim)
        .with_context(|| format!("removing {victim} was refused after the drain"))?;

    c.kill_agent(&survivor)?;
    data::expect_same(
        &bdev,
        0,
        &a,
        &format!("the snapshot from the moved copy alone ({survivor} dead)"),
    )?;
    say(format!(
        "removed {victim}, killed {survivor}: the snapshot reads exactly from the copy on {target}"
    ));
    let (status, body) = c.head_local("detach", bk, r#"{"domain": "u0-backup"}"#)?;
    ensure!(status == 200, "end of the read: {status} {body}");
    c.finish();
    Ok(format!(
        "a snapshot read on the head in base form: its frozen layer's legs compared by {compared_by} (equal); {victim} drained in {took}s, the layer's leg moved to {target} by a storage agent and the reader's mirror reloaded onto it (AA); {victim} removed and {survivor} killed: 8 MiB read back exactly from the moved copy"
    ))
}

/// What a layer's thin device maps, as (offset, length) byte ranges, read
/// from the metadata device of its running `read_only` pool by the fold's
/// parser, with O_DIRECT as the fold must (dm-thin writes metadata past the
/// page cache): the lab's kernel wrote it, so this checks the parser on the
/// real format (docs/design/snapshots.md step 9).
fn written_blocks(layer: &str) -> Result<Vec<(u64, u64)>> {
    let path = format!("/dev/mapper/vsky-{layer}+tmeta");
    let file = data::open_direct(std::path::Path::new(&path), false)?;
    let mut meta = vsky_thinmeta::ThinMetadata::open(vsky_thinmeta::DirectFileSource::new(file)?)
        .with_context(|| format!("parse {path}"))?;
    let block = meta.superblock().data_block_bytes();
    let devices = meta.devices()?;
    ensure!(
        devices.len() == 1 && devices[0].id == 0,
        "a layer's pool has one thin device, id 0: {devices:?}"
    );
    Ok(meta
        .mapped_runs(0)?
        .into_iter()
        .map(|r| (r.virtual_begin * block, r.len * block))
        .collect())
}
