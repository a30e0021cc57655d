//! xapi's datapath call sequences against the installed plugins: VM start
//! (open, attach, activate) and shutdown (deactivate twice, detach,
//! close) with data on the device, exclusivity against another host, and
//! a start on a host that cannot assemble volumes; the helpers the
//! snapshot sequences (`crate::snapshots`) read and write devices with.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::runner::{PluginDir, choose_datapath};
use crate::scenarios::*;

/// The datapath plugin serving a volume, chosen as xapi chooses it.
pub(crate) fn datapath_for<'a>(rig: &'a Rig, vol: &Value) -> Step<(&'a PluginDir, String)> {
    let uris: Vec<String> = vol["uri"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(String::from))
        .collect();
    choose_datapath(&uris, &rig.datapaths)
        .ok_or_else(|| format!("no datapath plugin for {uris:?} (xapi: MISSING_URI)"))
}

pub(crate) fn device_of(backend: &Value) -> Step<String> {
    backend["implementations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i[0] == "BlockDevice")
        .and_then(|i| i[1]["path"].as_str().map(String::from))
        .ok_or_else(|| format!("no BlockDevice in {backend}"))
}

/// VM start on a host whose agent cannot assemble volumes (storage-only,
/// as on the CI host without device-mapper): open and attach succeed (they
/// claim nothing), activate fails with the error object and leaves the
/// volume unattached, and the shutdown calls all succeed; so does a
/// backup's read-only activate of its snapshot. With
/// `other_server`, the volume is then attached there and this host's
/// deactivate/detach/close must succeed without releasing it.
pub fn datapath_without_head(rig: &Rig, admin: &ManagerAdmin, other_server: Option<&str>) -> Step {
    let (sr, _, _) = create_sr(rig, "datapath (no head)")?;
    let v = create_vdi(rig, &sr, "vm disk", 4 * MIB)?;
    let key = str_field(&v, "key");
    let vol = stat_vdi(rig, &sr, &key)?;
    let (dp, uri) = datapath_for(rig, &vol)?;
    ok(
        dp,
        "Datapath.open",
        json!({"dbg": DBG, "uri": uri, "persistent": true}),
    )?;
    let b1 = ok(
        dp,
        "Datapath.attach",
        json!({"dbg": DBG, "uri": uri, "domain": "7"}),
    )?;
    let b2 = ok(
        dp,
        "Datapath.attach",
        json!({"dbg": DBG, "uri": uri, "domain": "7"}),
    )?;
    if b1 != b2 || device_of(&b1)? != format!("/dev/mapper/vsky-{key}") {
        return Err(format!(
            "attach answers differ or name another device: {b1} {b2}"
        ));
    }
    let before = admin.snapshot()?;
    refused_as_storage_only(dp, "Datapath.activate", &uri, "7")?;
    if admin.snapshot()? != before || !admin.volume(&key)?["attached_to"].is_null() {
        return Err("a refused activate changed the manager".into());
    }
    shutdown_calls(dp, &uri, "7", 2)?;
    // A backup's read of its snapshot is refused the same way.
    let snap = ok(
        &rig.volume,
        "Volume.snapshot",
        json!({"dbg": DBG, "sr": sr, "key": key}),
    )?;
    let skey = str_field(&snap, "key");
    let (sdp, suri) = datapath_for(rig, &stat_vdi(rig, &sr, &skey)?)?;
    let before = admin.snapshot()?;
    refused_as_storage_only(sdp, "Datapath.activate_readonly", &suri, "u0-backup")?;
    if admin.snapshot()? != before
        || admin.volume(&skey)?["read_on"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    {
        return Err("a refused read-only activate changed the manager".into());
    }
    shutdown_calls(sdp, &suri, "u0-backup", 2)?;
    ok(
        &rig.volume,
        "Volume.destroy",
        json!({"dbg": DBG, "sr": sr, "key": skey}),
    )?;
    // A migration's source or a failed destination: the volume is held by
    // another host, and this host's shutdown calls must leave it alone.
    if let Some(other) = other_server {
        admin.attach_to(&key, other)?;
        shutdown_calls(dp, &uri, "7", 1)?;
        if admin.volume(&key)?["attached_to"] != json!(other) {
            return Err("shutdown calls here released another host's attachment".into());
        }
        admin.detach(&key)?;
    }
    ok(
        &rig.volume,
        "Volume.destroy",
        json!({"dbg": DBG, "sr": sr, "key": key}),
    )?;
    ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    Ok(())
}

/// `call` (an activation) fails on a host without the head role, and says
/// why.
fn refused_as_storage_only(dp: &PluginDir, call: &str, uri: &str, domain: &str) -> Step {
    let e = fails(
        dp,
        call,
        json!({"dbg": DBG, "uri": uri, "domain": domain})
            .to_string()
            .as_bytes(),
    )?;
    if !e.params.join(" ").contains("storage-only") {
        return Err(format!(
            "{call} on a storage-only host: {} {:?}",
            e.code, e.params
        ));
    }
    Ok(())
}

pub(crate) fn is_block_device(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// A recognisable pattern for one MiB at `offset`.
pub(crate) fn pattern(seed: u64, offset: u64) -> Vec<u8> {
    let mut x = seed ^ offset.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) fn write_at(dev: &str, offset: u64, data: &[u8]) -> Step {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("open {dev}: {e}"))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    f.write_all(data).map_err(|e| format!("write {dev}: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync {dev}: {e}"))
}

/// Reads with O_DIRECT, so the bytes come from the volume's mirrors and not
/// from the page cache the writes just went through.
pub(crate) fn read_at(dev: &str, offset: u64, len: usize) -> Step<Vec<u8>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    /// O_DIRECT needs the buffer, offset and length aligned to the logical
    /// block size; 4 KiB covers every device.
    const ALIGN: usize = 4096;
    if !offset.is_multiple_of(ALIGN as u64) || !len.is_multiple_of(ALIGN) {
        return Err(format!(
            "direct read of {len} bytes at {offset} is not 4 KiB aligned"
        ));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("open {dev} with O_DIRECT: {e}"))?;
    let mut raw = vec![0u8; len + ALIGN];
    let start = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[start..start + len];
    f.read_exact_at(buf, offset)
        .map_err(|e| format!("direct read {dev}: {e}"))?;
    Ok(buf.to_vec())
}

pub(crate) fn start(dp: &PluginDir, uri: &str, domain: &str) -> Step<String> {
    ok(
        dp,
        "Datapath.open",
        json!({"dbg": DBG, "uri": uri, "persistent": true}),
    )?;
    let b = ok(
        dp,
        "Datapath.attach",
        json!({"dbg": DBG, "uri": uri, "domain": domain}),
    )?;
    let dev = device_of(&b)?;
    ok(
        dp,
        "Datapath.activate",
        json!({"dbg": DBG, "uri": uri, "domain": domain}),
    )?;
    // Activating again (a retried VBD plug) is harmless.
    ok(
        dp,
        "Datapath.activate",
        json!({"dbg": DBG, "uri": uri, "domain": domain}),
    )?;
    if !is_block_device(&dev) {
        return Err(format!("after activate, {dev} is not a block device"));
    }
    Ok(dev)
}

/// The calls of a VM shutdown after `deactivations` Datapath.deactivate
/// calls (xapi sends two: VBD unplug, then DP.destroy): detach, then close.
fn shutdown_calls(dp: &PluginDir, uri: &str, domain: &str, deactivations: usize) -> Step {
    let calls =
        std::iter::repeat_n("Datapath.deactivate", deactivations).chain(["Datapath.detach"]);
    for call in calls {
        ok(dp, call, json!({"dbg": DBG, "uri": uri, "domain": domain}))?;
    }
    ok(dp, "Datapath.close", json!({"dbg": DBG, "uri": uri}))?;
    Ok(())
}

pub(crate) fn stop(dp: &PluginDir, uri: &str, domain: &str, dev: &str) -> Step {
    // VBD unplug, then DP.destroy's deactivate + detach, then epoch_end.
    shutdown_calls(dp, uri, domain, 2)?;
    if Path::new(dev).exists() {
        return Err(format!("{dev} still exists after detach and close"));
    }
    Ok(())
}

/// VM start and shutdown on a head host (the lab VM): the device carries
/// the volume's data across a full stop and start, shutdown leaves no
/// device, (given another server's name) activation is exclusive, and a
/// second domain's activation keeps the device through the first one's
/// shutdown.
pub fn vm_start_stop(
    rig: &Rig,
    admin: &ManagerAdmin,
    size: u64,
    other_server: Option<&str>,
) -> Step {
    let (sr, _, _) = create_sr(rig, "datapath lab")?;
    let v = create_vdi(rig, &sr, "vm disk", size)?;
    let key = str_field(&v, "key");
    let vol = stat_vdi(rig, &sr, &key)?;
    let vsize = vol["virtual_size"].as_u64().unwrap_or(0);
    let (dp, uri) = datapath_for(rig, &vol)?;
    let domain = "7";
    let seed = u64::from_le_bytes(new_uuid().as_bytes()[..8].try_into().unwrap_or([7; 8]));
    let offsets = [0, vsize / 2 / MIB * MIB, vsize - MIB];

    let dev = start(dp, &uri, domain)?;
    let len = std::fs::File::open(&dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| format!("size of {dev}: {e}"))?;
    if len != vsize {
        return Err(format!("{dev} is {len} bytes; the volume is {vsize}"));
    }
    for &o in &offsets {
        write_at(&dev, o, &pattern(seed, o))?;
        if read_at(&dev, o, MIB as usize)? != pattern(seed, o) {
            return Err(format!("read-back at {o} differs"));
        }
    }
    stop(dp, &uri, domain, &dev)?;
    if !admin.volume(&key)?["attached_to"].is_null() {
        return Err("the volume is still attached after VM shutdown".into());
    }

    // Exclusivity: while another host holds the volume, activate refuses
    // and deactivate/detach here do not disturb that host.
    if let Some(other) = other_server {
        admin.attach_to(&key, other)?;
        ok(
            dp,
            "Datapath.attach",
            json!({"dbg": DBG, "uri": uri, "domain": domain}),
        )?;
        fails_with(
            dp,
            "Datapath.activate",
            &json!({"dbg": DBG, "uri": uri, "domain": domain}),
            "Activated_on_another_host",
        )?;
        ok(
            dp,
            "Datapath.deactivate",
            json!({"dbg": DBG, "uri": uri, "domain": domain}),
        )?;
        ok(
            dp,
            "Datapath.detach",
            json!({"dbg": DBG, "uri": uri, "domain": domain}),
        )?;
        if admin.volume(&key)?["attached_to"] != json!(other) {
            return Err("deactivate here released another host's attachment".into());
        }
        admin.detach(&key)?;
    }

    // Start again: the data is the volume's, not the old device's.
    let dev = start(dp, &uri, domain)?;
    for &o in &offsets {
        if read_at(&dev, o, MIB as usize)? != pattern(seed, o) {
            return Err(format!("data at offset {o} did not survive stop and start"));
        }
    }
    // Online resize (VDI_RESIZE_ONLINE): Volume.resize of the running VM's
    // disk returns once its device has the new size; the new end holds
    // data and the old data is untouched.
    ok(
        &rig.volume,
        "Volume.resize",
        json!({"dbg": DBG, "sr": sr, "key": key, "new_size": vsize + MIB}),
    )?;
    let grown = stat_vdi(rig, &sr, &key)?["virtual_size"]
        .as_u64()
        .unwrap_or(0);
    let len = std::fs::File::open(&dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| format!("size of {dev}: {e}"))?;
    if grown <= vsize || len != grown {
        return Err(format!(
            "after an online resize from {vsize} bytes, the volume is {grown} and {dev} {len}"
        ));
    }
    let end = grown - MIB;
    write_at(&dev, end, &pattern(seed, end))?;
    if read_at(&dev, end, MIB as usize)? != pattern(seed, end) {
        return Err("read-back at the grown end differs".into());
    }
    for &o in &offsets {
        if read_at(&dev, o, MIB as usize)? != pattern(seed, o) {
            return Err(format!("data at offset {o} changed in the online resize"));
        }
    }
    // A dom0 reader activates the same volume: the VM's shutdown leaves
    // the device (and the attachment) to it, and the reader's own
    // deactivate removes it.
    let reader = "u0-reader";
    ok(
        dp,
        "Datapath.activate",
        json!({"dbg": DBG, "uri": uri, "domain": reader}),
    )?;
    shutdown_calls(dp, &uri, domain, 2)?;
    if !is_block_device(&dev) {
        return Err(format!(
            "{dev} went with domain {domain}'s deactivate while domain {reader} still had it activated"
        ));
    }
    if admin.volume(&key)?["attached_to"].is_null() {
        return Err(format!(
            "domain {domain}'s deactivate released the volume while domain {reader} still had it activated"
        ));
    }
    stop(dp, &uri, reader, &dev)?;
    if !admin.volume(&key)?["attached_to"].is_null() {
        return Err("the volume is still attached after its last domain's deactivate".into());
    }
    ok(
        &rig.volume,
        "Volume.destroy",
        json!({"dbg": DBG, "sr": sr, "key": key}),
    )?;
    ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    Ok(())
}
