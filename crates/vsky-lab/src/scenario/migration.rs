//! cluster-migration (issue #14): the storage part of a live migration
//! between two heads, in xenopsd's order, through the heads' local APIs
//! (the datapath plugin's activate and deactivate): the VM writes on head
//! A; its writes stop (`VM.save`); A deactivates; B activates
//! (`VM_restore_devices`); the VM writes on B. `Datapath.attach` on B,
//! which xenopsd calls early, claims nothing and does not reach the agent
//! (the plugin's unit tests), so it has no step here. Nothing acknowledged
//! on A is lost, A writes nothing after it deactivated, the gap
//! (deactivate + activate) is reported, and the source's cleanup
//! (deactivate and detach again) answers without disturbing B.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config, HEAD, HEAD_P, HEAD_P_PREFIX};
use crate::kernel;
use crate::out::{say, secs};
use crate::wait::{self, wait_for};

/// Two mirrored disks of 7 MiB (8 MiB chunks, 1 MiB of leg metadata).
const VOLUME_MIB: u64 = 14;
const CHUNK: u64 = 8 * MIB as u64;
/// The VM's domain id on either host (xenopsd's `domain` argument).
const ACTIVATE_RW: &str = r#"{"domain":"7","mode":"rw"}"#;
const RELEASE: &str = r#"{"domain":"7"}"#;

pub fn run_scenario() -> Result<String> {
    let v = "vmig";
    let c = Cluster::up(Config {
        servers: 2,
        head_api: true,
        second_head: true,
        ..Config::default()
    })?;
    c.head_api_up()?;
    c.api.create_volume(v, VOLUME_MIB)?;
    let dev_a = PathBuf::from(format!("/dev/mapper/{HEAD_P_PREFIX}-{v}"));
    let dev_b = device(v);
    local_ok(&c, HEAD_P, "attach", v, ACTIVATE_RW)?;
    ensure!(
        kernel::is_block(&dev_a),
        "{} is not a block device after {HEAD_P}'s activate answered",
        dev_a.display()
    );
    wait_for(
        &format!("the mirrors of {v} on {HEAD_P} in sync"),
        wait::secs(60),
        || kernel::mirrors_in_sync_of(HEAD_P_PREFIX),
    )?;
    // The VM on A: its writes are acknowledged, then it is paused.
    let on_a = data::random(7)?;
    data::write_direct(&dev_a, 0, &on_a, MIB)?;

    // Downtime: deactivate on the source, activate on the destination.
    let down = Instant::now();
    local_ok(&c, HEAD_P, "detach", v, RELEASE)?;
    let deactivated = secs(down);
    ensure!(
        kernel::objects_of(HEAD_P_PREFIX)?.is_empty(),
        "{HEAD_P}'s deactivate answered with devices or imports left: {:?}",
        kernel::objects_of(HEAD_P_PREFIX)?
    );
    let up = Instant::now();
    local_ok(&c, HEAD, "attach", v, ACTIVATE_RW)?;
    let activated = secs(up);
    let gap = secs(down);
    ensure!(
        kernel::is_block(&dev_b),
        "{} is not a block device after {HEAD}'s activate answered",
        dev_b.display()
    );
    say(format!(
        "handover {HEAD_P} -> {HEAD}: deactivate {deactivated}s + activate {activated}s = {gap}s of storage downtime"
    ));

    // The VM resumes on B: it reads what it wrote on A and writes on.
    data::expect_same(&dev_b, 0, &on_a, "the VM's writes on the source")?;
    let on_b = data::random(4)?;
    data::write_direct(&dev_b, 7 * MIB as u64, &on_b, MIB)?;

    // The source's cleanup calls deactivate and detach again.
    local_ok(&c, HEAD_P, "detach", v, RELEASE)?;
    local_ok(&c, HEAD_P, "detach", v, r#"{"if_unused":true}"#)?;
    let holder = c.api.volume(v)?.volume.attached_to;
    ensure!(
        holder.as_deref() == Some(HEAD),
        "after the source's cleanup the manager has {v} attached to {holder:?}, not {HEAD}"
    );
    ensure!(
        kernel::is_block(&dev_b) && kernel::mirrors_in_sync_of("vsky")?,
        "the source's cleanup disturbed {HEAD}'s devices"
    );
    data::expect_same(
        &dev_b,
        7 * MIB as u64,
        &on_b,
        "the VM's writes on the destination",
    )?;
    let detail = c.api.volume(v)?;
    let legs = c.api.legs(v)?;
    data::legs_hold(
        &legs,
        CHUNK,
        detail.data_bytes_per_mirrored_disk,
        &[(0, &on_a), (1, &on_b)],
    )?;
    say(format!(
        "source cleanup (deactivate, detach) answered, {HEAD} kept {v}; all {} legs hold exactly the writes of both hosts",
        legs.len()
    ));
    local_ok(&c, HEAD, "detach", v, RELEASE)?;
    c.finish();
    Ok(format!(
        "live migration {HEAD_P} -> {HEAD} in xenopsd's order through the local APIs: storage downtime {gap}s (deactivate {deactivated}s, activate {activated}s, 2 mirrored disks); writes acknowledged on the source all read on the destination, none after; the source's repeated deactivate and detach left the destination alone; both legs of both mirrored disks exact"
    ))
}

/// A local API call on `head` that must answer 200.
fn local_ok(c: &Cluster, head: &str, action: &str, volume: &str, body: &str) -> Result<()> {
    let (status, answer) = c.local_api(head, action, volume, body)?;
    ensure!(
        status == 200,
        "{action} of {volume} on {head}: HTTP {status}: {answer}"
    );
    Ok(())
}
