//! What a call works in: the attached SR it names, a volume of that SR,
//! a fresh key for a new volume, and the volume record as the IDL types it
//! (control.ml `volume`). Shared by [`crate::calls`] and [`crate::chains`].

use std::io::Read;

use serde_json::{Value, json};
use smapi::error::codes;
use smapi::{Args, SmapiError, SmapiResult};
use vsky_api::types::Volume;

use crate::config::{SrConfig, is_valid_name};
use crate::manager::Manager;
use crate::state::{self, SrState};

/// The URI scheme of our datapath plugin (its folder name).
pub const URI_SCHEME: &str = "vsky";

/// The attached SR's state, its manager and its group record.
pub(crate) fn attached(args: &Args) -> SmapiResult<(SrState, SrConfig, Manager)> {
    let sr = args.str("sr")?;
    let s = state::load(sr)?;
    let cfg = s.config()?;
    let m = Manager::connect(&cfg)?;
    Ok((s, cfg, m))
}

/// The volume record. physical_utilisation is in the same usable bytes as
/// the SR's sizes: a thick volume's whole size; a thin volume's or a
/// snapshot's own pool, which grows as it is written (data it shares with
/// its snapshots and clones counts in SR.stat, not against one VDI). A
/// snapshot is read-only.
pub fn volume_json(group: &str, v: &Volume) -> Value {
    let physical = if v.thin {
        v.allocated_bytes
    } else {
        v.size_bytes
    };
    json!({
        "key": v.name,
        "uuid": v.name,
        "name": v.display_name,
        "description": v.description,
        "read_write": v.snapshot_of.is_none(),
        "sharable": v.sharable,
        "virtual_size": v.size_bytes,
        "physical_utilisation": physical,
        "uri": [format!("{URI_SCHEME}://{group}/{}", v.name)],
        "keys": v.keys,
    })
}

/// A fresh random (version 4) UUID, used as a new volume's key and name.
pub(crate) fn new_uuid() -> SmapiResult<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| {
            SmapiError::new(
                codes::BACKEND_ERROR,
                format!("cannot read /dev/urandom: {e}"),
            )
        })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The volume `key` of this SR: it must exist and belong to the SR's group
/// (a key of another SR is "does not exist" here, so no call can touch a
/// volume through the wrong SR).
pub(crate) fn volume_in_sr(args: &Args) -> SmapiResult<(SrState, SrConfig, Manager, Volume)> {
    let key = args.str("key")?;
    let (s, cfg, m) = attached(args)?;
    let v = volume_in_group(&m, &s.group, key)?;
    Ok((s, cfg, m, v))
}

/// The volume `key` of group `group` (an SR's), as [`volume_in_sr`] finds
/// it.
pub(crate) fn volume_in_group(m: &Manager, group: &str, key: &str) -> SmapiResult<Volume> {
    if !is_valid_name(key) {
        return Err(SmapiError::new(
            codes::VOLUME_DOES_NOT_EXIST,
            format!("'{key}' is not a VastSky volume key"),
        ));
    }
    let v = m.volume(key)?;
    if v.group.as_deref() != Some(group) {
        return Err(SmapiError::new(
            codes::VOLUME_DOES_NOT_EXIST,
            format!("volume '{key}' is not in SR '{group}'"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::is_uuid;

    #[test]
    fn uuids_are_random_version_4() {
        let a = new_uuid().unwrap();
        let b = new_uuid().unwrap();
        assert_ne!(a, b);
        assert!(is_uuid(&a) && is_valid_name(&a));
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }
}
