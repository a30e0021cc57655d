//! Volume.snapshot, Volume.clone and Volume.revert: thin volumes' chains
//! (the manager's `POST /volumes/{v}/snapshot|clone|revert`; the rules are
//! `vsky-model`'s `cluster/chains.rs`).
//!
//! As the IDL says (control.ml `snapshot`, `clone`), a snapshot or clone
//! gets the source's name and description but not its keys: xapi sets its
//! own on it right after (`snapshot_time`, `is_a_snapshot`, `snapshot_of`,
//! or a `clone-on-boot` key on the source). Both get a fresh UUID as key,
//! in the source's SR. A snapshot is read-only (`read_write: false`).
//!
//! A VDI of an SR with `provisioning=thick` is a thick volume, which has no
//! snapshots: the manager's refusal says so.

use serde_json::Value;
use smapi::{Args, SmapiError, SmapiResult};

use crate::context::{new_uuid, volume_in_group, volume_in_sr, volume_json};

/// Snapshot of a VDI, also of one a running VM writes: the VM's I/O pauses
/// for milliseconds while its host switches the volume onto a new layer;
/// every write acknowledged before is in the snapshot, none after.
pub fn volume_snapshot(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let (s, _, m, v) = volume_in_sr(args)?;
    let snapshot = m.snapshot_volume(&v.name, &new_uuid()?)?;
    Ok(volume_json(&s.group, &snapshot))
}

/// Writable clone of a snapshot, or of a VDI no VM runs on (xapi's fast
/// clone and `clone-on-boot`).
pub fn volume_clone(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let (s, _, m, v) = volume_in_sr(args)?;
    let clone = m.clone_volume(&v.name, &new_uuid()?)?;
    Ok(volume_json(&s.group, &clone))
}

/// `revert sr snapshot key`: VDI `key` (detached) reads exactly what its
/// snapshot `snapshot` reads, and keeps its identity.
pub fn volume_revert(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let snapshot_key = args.str("snapshot")?;
    let (s, _, m, v) = volume_in_sr(args)?;
    let snapshot = volume_in_group(&m, &s.group, snapshot_key)?;
    if snapshot.snapshot_of.is_none() {
        return Err(SmapiError::invalid_argument(format!(
            "'{snapshot_key}' is not a snapshot; Volume.revert takes a snapshot of '{}'",
            v.name
        )));
    }
    m.revert_volume(&v.name, &snapshot.name)?;
    // The IDL types the result as unit.
    Ok(Value::Null)
}
