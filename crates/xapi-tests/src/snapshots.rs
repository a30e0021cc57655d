//! xapi's call sequences for snapshots, clones and reverts
//! (xapi-storage-script main.ml `vdi_snapshot_impl`, `vdi_clone_impl`,
//! `revert_impl`, `vdi_epoch_begin_impl`; xapi_vm_snapshot.ml):
//! - VM snapshot: Volume.snapshot, then Volume.set of `snapshot_time`,
//!   `is_a_snapshot` and `snapshot_of` on the new volume;
//! - fast clone from a template: Volume.clone of the template's VDI or of
//!   a snapshot;
//! - VM revert: Volume.revert(snapshot, key) of each disk (with the VM
//!   halted), which keeps the VDI's identity;
//! - clone-on-boot (VDI_RESET_ON_BOOT): Volume.clone of the detached VDI
//!   at VM start, Volume.set of `clone-on-boot` on the original, and at VM
//!   shutdown Volume.destroy of the clone and Volume.unset;
//! - a backup (Xen Orchestra's, xapi's VDI export): VM snapshot, then the
//!   snapshot attached read-only in dom0 (Datapath.attach +
//!   Datapath.activate_readonly, storage_mux.ml `activate3` with
//!   VDI_ACTIVATE_READONLY declared), read, detached, and destroyed, all
//!   while the VM runs.
//!
//! [`chains_on_the_control_plane`] needs no kernel (CI); [`vm_snapshot`]
//! and [`backup`] run the data path on a head (the lab).

use serde_json::{Value, json};

use crate::datapath::{datapath_for, device_of, pattern, read_at, start, stop, write_at};
use crate::scenarios::{
    DBG, MIB, ManagerAdmin, Rig, Step, create_sr, create_vdi, fails, fails_with, ok, stat_vdi,
    str_field,
};

/// Volume.snapshot as xapi runs it: the call, then its three keys.
fn snapshot(rig: &Rig, sr: &str, key: &str) -> Step<Value> {
    let snap = ok(
        &rig.volume,
        "Volume.snapshot",
        json!({"dbg": DBG, "sr": sr, "key": key}),
    )?;
    let skey = str_field(&snap, "key");
    for (k, v) in [
        ("snapshot_time", "20261207T12:00:00Z"),
        ("is_a_snapshot", "true"),
        ("snapshot_of", key),
    ] {
        ok(
            &rig.volume,
            "Volume.set",
            json!({"dbg": DBG, "sr": sr, "key": skey, "k": k, "v": v}),
        )?;
    }
    Ok(snap)
}

fn destroy(rig: &Rig, sr: &str, key: &str) -> Step {
    ok(
        &rig.volume,
        "Volume.destroy",
        json!({"dbg": DBG, "sr": sr, "key": key}),
    )
    .map(|_| ())
}

/// The control plane of every sequence, on a detached VDI: what each
/// answer carries (a snapshot read-only, name and description copied, no
/// keys but the ones xapi sets, a thin VDI's physical use below its size),
/// clone-on-boot, revert keeping the VDI, refusals, and destruction in
/// any order leaving the others readable. Leaves the manager as it found
/// it.
pub fn chains_on_the_control_plane(rig: &Rig, admin: &ManagerAdmin) -> Step {
    let before = admin.snapshot()?;
    let (sr, _, _) = create_sr(rig, "snapshots")?;
    let v = create_vdi(rig, &sr, "vm disk", 256 * MIB)?;
    let key = str_field(&v, "key");
    let virtual_size = v["virtual_size"].as_u64().unwrap_or(0);
    let physical = v["physical_utilisation"].as_u64().unwrap_or(u64::MAX);
    if physical == 0 || physical >= virtual_size {
        return Err(format!(
            "a new thin VDI of {virtual_size} bytes uses {physical}: thin VDIs take space as they are written"
        ));
    }

    // VM snapshot.
    let snap = snapshot(rig, &sr, &key)?;
    let skey = str_field(&snap, "key");
    if skey == key
        || snap["read_write"] != json!(false)
        || snap["name"] != v["name"]
        || snap["description"] != v["description"]
        || snap["virtual_size"] != v["virtual_size"]
        || snap["keys"] != json!({})
    {
        return Err(format!(
            "a snapshot is a new read-only volume with the source's name, description and size and no keys; got {snap} of {v}"
        ));
    }
    let stat = stat_vdi(rig, &sr, &skey)?;
    if stat["keys"]["snapshot_of"] != json!(key) || stat["keys"].get("vdi-type").is_some() {
        return Err(format!(
            "the snapshot's keys are xapi's only: {}",
            stat["keys"]
        ));
    }
    let listed = ok(&rig.volume, "SR.ls", json!({"dbg": DBG, "sr": sr}))?;
    let in_ls = |k: &str| {
        listed
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["key"] == json!(k))
    };
    if !in_ls(&key) || !in_ls(&skey) {
        return Err(format!("SR.ls lists the VDI and its snapshot: {listed}"));
    }
    // A snapshot is never written: no resize, no snapshot of it.
    fails_with(
        &rig.volume,
        "Volume.resize",
        &json!({"dbg": DBG, "sr": sr, "key": skey, "new_size": virtual_size * 2}),
        "Invalid_argument",
    )?;

    // Fast clone from the snapshot (a template's disk) and from the VDI.
    let clone = ok(
        &rig.volume,
        "Volume.clone",
        json!({"dbg": DBG, "sr": sr, "key": skey}),
    )?;
    let ckey = str_field(&clone, "key");
    if clone["read_write"] != json!(true) || clone["keys"] != json!({}) {
        return Err(format!("a clone is writable and has no keys: {clone}"));
    }
    // Clone-on-boot: the VDI is cloned at VM start, the clone destroyed
    // at shutdown.
    let temporary = ok(
        &rig.volume,
        "Volume.clone",
        json!({"dbg": DBG, "sr": sr, "key": key}),
    )?;
    let tkey = str_field(&temporary, "key");
    ok(
        &rig.volume,
        "Volume.set",
        json!({"dbg": DBG, "sr": sr, "key": key, "k": "clone-on-boot", "v": tkey}),
    )?;
    destroy(rig, &sr, &tkey)?;
    ok(
        &rig.volume,
        "Volume.unset",
        json!({"dbg": DBG, "sr": sr, "key": key, "k": "clone-on-boot"}),
    )?;

    // VM revert keeps the VDI.
    let reverted = ok(
        &rig.volume,
        "Volume.revert",
        json!({"dbg": DBG, "sr": sr, "snapshot": skey, "key": key}),
    )?;
    if !reverted.is_null() {
        return Err(format!("Volume.revert answers null (unit), not {reverted}"));
    }
    let after = stat_vdi(rig, &sr, &key)?;
    if after["key"] != json!(key) || after["read_write"] != json!(true) {
        return Err(format!(
            "the reverted VDI keeps its key and stays writable: {after}"
        ));
    }
    // A snapshot cannot be the target of a revert, nor a VDI its source.
    fails_with(
        &rig.volume,
        "Volume.revert",
        &json!({"dbg": DBG, "sr": sr, "snapshot": key, "key": skey}),
        "Invalid_argument",
    )?;

    // Destroyed in an order that leaves shared data behind each time.
    destroy(rig, &sr, &key)?;
    stat_vdi(rig, &sr, &skey)?;
    stat_vdi(rig, &sr, &ckey)?;
    destroy(rig, &sr, &skey)?;
    stat_vdi(rig, &sr, &ckey)?;
    destroy(rig, &sr, &ckey)?;
    ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    let after = admin.snapshot()?;
    if before["volumes"] != after["volumes"] {
        return Err(format!(
            "volumes left behind:\nbefore {}\nafter  {}",
            before["volumes"], after["volumes"]
        ));
    }
    Ok(())
}

/// VM snapshot of a running VM on a head (the lab VM): the snapshot taken
/// while the VDI is active holds what was written before and nothing
/// after; a clone of it started as another VM reads that; after the VM's
/// shutdown, Volume.revert takes the VDI back to it.
pub fn vm_snapshot(rig: &Rig, admin: &ManagerAdmin, size: u64) -> Step {
    let (sr, _, _) = create_sr(rig, "snapshots lab")?;
    let v = create_vdi(rig, &sr, "vm disk", size)?;
    let key = str_field(&v, "key");
    let vol = stat_vdi(rig, &sr, &key)?;
    let (dp, uri) = datapath_for(rig, &vol)?;
    let domain = "9";
    let at = MIB;
    let (before, after) = (pattern(1, at), pattern(2, at));

    let dev = start(dp, &uri, domain)?;
    write_at(&dev, at, &before)?;
    let snap = snapshot(rig, &sr, &key)?;
    let skey = str_field(&snap, "key");
    write_at(&dev, at, &after)?;
    if read_at(&dev, at, MIB as usize)? != after {
        return Err("the running VM's disk lost a write made after its snapshot".into());
    }
    stop(dp, &uri, domain, &dev)?;

    // The snapshot's clone, started as another VM.
    let clone = ok(
        &rig.volume,
        "Volume.clone",
        json!({"dbg": DBG, "sr": sr, "key": skey}),
    )?;
    let ckey = str_field(&clone, "key");
    let cvol = stat_vdi(rig, &sr, &ckey)?;
    let (cdp, curi) = datapath_for(rig, &cvol)?;
    let cdev = start(cdp, &curi, "10")?;
    if read_at(&cdev, at, MIB as usize)? != before {
        return Err(
            "a clone of the running VM's snapshot does not read what was written before it".into(),
        );
    }
    stop(cdp, &curi, "10", &cdev)?;

    // VM revert, with the VM halted.
    ok(
        &rig.volume,
        "Volume.revert",
        json!({"dbg": DBG, "sr": sr, "snapshot": skey, "key": key}),
    )?;
    let dev = start(dp, &uri, domain)?;
    if read_at(&dev, at, MIB as usize)? != before {
        return Err("after Volume.revert the VDI does not read its snapshot's data".into());
    }
    stop(dp, &uri, domain, &dev)?;
    if !admin.volume(&key)?["attached_to"].is_null() {
        return Err("the volume is still attached after VM shutdown".into());
    }
    for k in [&ckey, &skey, &key] {
        destroy(rig, &sr, k)?;
    }
    ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    Ok(())
}

/// A backup of a running VM's disk on a head (the lab VM), as Xen
/// Orchestra's runs through xapi: VM snapshot; the snapshot attached
/// read-only in dom0 (Datapath.attach, Datapath.activate_readonly), read
/// and compared while the VM keeps writing; deactivate, detach, close;
/// the snapshot destroyed (refused by the manager only while it is read).
/// The VM's disk is untouched throughout.
pub fn backup(rig: &Rig, admin: &ManagerAdmin, size: u64) -> Step {
    let (sr, _, _) = create_sr(rig, "backup lab")?;
    let v = create_vdi(rig, &sr, "vm disk", size)?;
    let key = str_field(&v, "key");
    let vol = stat_vdi(rig, &sr, &key)?;
    let (dp, uri) = datapath_for(rig, &vol)?;
    let (vm, reader) = ("11", "u0-backup_dp");
    let at = MIB;
    let (before, after) = (pattern(3, at), pattern(4, at));
    let dev = start(dp, &uri, vm)?;
    write_at(&dev, at, &before)?;
    let snap = snapshot(rig, &sr, &key)?;
    let skey = str_field(&snap, "key");
    write_at(&dev, at, &after)?;

    let svol = stat_vdi(rig, &sr, &skey)?;
    let (sdp, suri) = datapath_for(rig, &svol)?;
    let attached = ok(
        sdp,
        "Datapath.attach",
        json!({"dbg": DBG, "uri": suri, "domain": reader}),
    )?;
    let sdev = device_of(&attached)?;
    ok(
        sdp,
        "Datapath.activate_readonly",
        json!({"dbg": DBG, "uri": suri, "domain": reader}),
    )?;
    if read_at(&sdev, at, MIB as usize)? != before {
        return Err("the backup does not read the snapshot's moment".into());
    }
    write_at(&dev, at + MIB, &after)?;
    if read_at(&sdev, at + MIB, MIB as usize)? != vec![0; MIB as usize] {
        return Err("a write of the running VM reached the snapshot being read".into());
    }
    if write_at(&sdev, 0, &after[..4096]).is_ok() {
        return Err("the backup could write the snapshot it reads".into());
    }
    let read_on = admin.volume(&skey)?["read_on"].clone();
    if read_on.as_array().is_none_or(Vec::is_empty) {
        return Err(format!(
            "the manager lists no reader of the snapshot: {read_on}"
        ));
    }
    let refused = fails(
        &rig.volume,
        "Volume.destroy",
        json!({"dbg": DBG, "sr": sr, "key": skey})
            .to_string()
            .as_bytes(),
    )?;
    if !refused.params.iter().any(|p| p.contains("being read")) {
        return Err(format!(
            "Volume.destroy of a snapshot being read failed without saying why: {:?}",
            refused.params
        ));
    }
    for call in ["Datapath.deactivate", "Datapath.detach"] {
        ok(
            sdp,
            call,
            json!({"dbg": DBG, "uri": suri, "domain": reader}),
        )?;
    }
    ok(sdp, "Datapath.close", json!({"dbg": DBG, "uri": suri}))?;
    destroy(rig, &sr, &skey)?;
    if read_at(&dev, at, MIB as usize)? != after {
        return Err("the running VM's disk changed under its backup".into());
    }
    stop(dp, &uri, vm, &dev)?;
    destroy(rig, &sr, &key)?;
    ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    Ok(())
}
