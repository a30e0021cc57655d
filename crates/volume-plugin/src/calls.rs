//! One function per SMAPIv3 call of the volume plugin.
//!
//! Each call checks all of its arguments before it asks the manager to
//! change anything, so a bad call changes nothing. Results are built as
//! JSON in the exact shapes of the xapi-storage IDL (control.ml, plugin.ml).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use smapi::error::codes;
use smapi::http::HttpError;
use smapi::runner::Handler;
use smapi::{Args, SmapiError, SmapiResult};
use vsky_api::types::{CreateGroup, CreateVolume, Group, UpdateGroup, UpdateVolume};

use crate::config::{self, SrConfig, is_uuid};
use crate::context::{attached, new_uuid, volume_in_sr, volume_json};
use crate::manager::{Manager, Missing};
use crate::state::{self, SrState};

/// Every implemented call. The installer makes one symlink per entry, and
/// xapi-storage-script derives SR_* / VDI_* features from which exist.
pub const CALLS: &[(&str, Handler)] = &[
    ("Plugin.Query", plugin_query),
    ("Plugin.diagnostics", plugin_diagnostics),
    ("Plugin.ls", plugin_ls),
    ("SR.probe", sr_probe),
    ("SR.create", sr_create),
    ("SR.attach", sr_attach),
    ("SR.detach", sr_detach),
    ("SR.destroy", sr_destroy),
    ("SR.stat", sr_stat),
    ("SR.ls", sr_ls),
    ("SR.set_name", sr_set_name),
    ("SR.set_description", sr_set_description),
    ("Volume.create", volume_create),
    ("Volume.destroy", volume_destroy),
    ("Volume.stat", volume_stat),
    ("Volume.set_name", volume_set_name),
    ("Volume.set_description", volume_set_description),
    ("Volume.set", volume_set),
    ("Volume.unset", volume_unset),
    ("Volume.resize", volume_resize),
    ("Volume.snapshot", crate::chains::volume_snapshot),
    ("Volume.clone", crate::chains::volume_clone),
    ("Volume.revert", crate::chains::volume_revert),
];

/// Features we declare. VDI_RESIZE_ONLINE: a grow of an attached volume is
/// applied by its head under I/O, and the manager answers once the head
/// serves the new size (xen-blkback then sees its backing device grow).
/// VDI_SNAPSHOT, VDI_CLONE (xapi-storage-script also derives them from
/// the executables, and adds VDI_RESET_ON_BOOT/2 for clone) and
/// VDI_REVERT (xapi's VM revert then keeps the VDIs, instead of cloning
/// the snapshot's); THIN_PROVISIONING, the default provisioning. Copy,
/// CBT, read-only activation and SR_METADATA are absent: the manager
/// cannot do them yet.
pub const FEATURES: &[&str] = &[
    "SR_ATTACH",
    "SR_DETACH",
    "SR_CREATE",
    "SR_DELETE",
    "SR_PROBE",
    "SR_SCAN",
    "SR_UPDATE",
    "VDI_CREATE",
    "VDI_DESTROY",
    "VDI_UPDATE",
    "VDI_RESIZE",
    "VDI_RESIZE_ONLINE",
    "VDI_SNAPSHOT",
    "VDI_CLONE",
    "VDI_REVERT",
    "THIN_PROVISIONING",
    "VDI_ATTACH",
    "VDI_DETACH",
    "VDI_ACTIVATE",
    "VDI_ACTIVATE_READONLY",
    "VDI_DEACTIVATE",
];

fn plugin_query(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let configuration: serde_json::Map<String, Value> = config::CONFIGURATION_KEYS
        .iter()
        .map(|(k, d)| (k.to_string(), json!(d)))
        .collect();
    Ok(json!({
        "plugin": crate::PLUGIN_NAME,
        "name": "VastSky volume plugin",
        "description": "Mirrored block volumes from a VastSky storage pool; every VDI survives the loss of a disk or a whole server",
        "vendor": "VastSky",
        "copyright": "VastSky contributors, Apache-2.0",
        "version": env!("CARGO_PKG_VERSION"),
        "required_api_version": "5.0",
        "features": FEATURES,
        "configuration": configuration,
        "required_cluster_stack": [],
    }))
}

fn plugin_ls(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    Ok(json!(state::list()?))
}

/// A text report per attached SR: the pool summary from its manager.
fn plugin_diagnostics(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let srs = state::list()?;
    if srs.is_empty() {
        return Ok(json!(format!(
            "No VastSky SR is attached on this host (state dir {}).",
            state::state_dir().display()
        )));
    }
    let mut out = String::new();
    for sr in srs {
        out.push_str(&format!("SR {sr}:\n"));
        let report = state::load(&sr).and_then(|s| {
            let cfg = s.config()?;
            let m = Manager::connect(&cfg)?;
            let c = m.cluster()?;
            let g = m.group(&s.group)?;
            Ok(format!(
                "  manager {}\n  pool: {} servers ({} failed), {} disks ({} failed), capacity {} B, free {} B, releasing {} B\n  pool mirrored disks: {} ({} degraded, {} rebuilding)\n  SR: {} volumes, {} B virtual, {} B physical, {} mirrored disks degraded, {} rebuilding\n",
                cfg.managers.join(", "),
                c.servers,
                c.servers_failed,
                c.disks,
                c.disks_failed,
                c.capacity_bytes,
                c.free_bytes,
                c.releasing_bytes,
                c.mirrored_disks,
                c.mirrored_disks_degraded,
                c.mirrored_disks_rebuilding,
                g.volumes,
                g.virtual_size_bytes,
                g.physical_bytes,
                g.mirrored_disks_degraded,
                g.mirrored_disks_rebuilding,
            ))
        });
        match report {
            Ok(r) => out.push_str(&r),
            Err(e) => out.push_str(&format!("  unavailable: {e}\n")),
        }
    }
    Ok(json!(out))
}

// ---- SR calls ----------------------------------------------------------------

/// Replicas the usable sizes of an SR are computed with: its configured
/// default, else the cluster's.
fn replicas_of(cfg: &SrConfig, cluster: &vsky_api::types::ClusterSummary) -> u64 {
    u64::from(cfg.replicas.unwrap_or(cluster.default_replicas))
}

fn health(g: &Group) -> Value {
    let (degraded, rebuilding) = (g.mirrored_disks_degraded, g.mirrored_disks_rebuilding);
    if degraded + rebuilding == 0 {
        json!(["Healthy", ""])
    } else {
        json!([
            "Recovering",
            format!(
                "{} mirrored disks rebuilding/degraded ({rebuilding} rebuilding, {degraded} degraded)",
                degraded + rebuilding
            )
        ])
    }
}

/// The sr_stat record. Sizes are usable bytes: the pool's raw chunk bytes
/// divided by the SR's replica count, since every VDI byte is stored that
/// many times (the pool is shared by all SRs, so free space is too).
fn sr_stat_json(m: &Manager, cfg: &SrConfig, sr: &str, g: &Group) -> SmapiResult<Value> {
    let c = m.cluster()?;
    let r = replicas_of(cfg, &c).max(1);
    Ok(sr_stat_record(
        sr,
        g,
        c.free_bytes / r,
        c.capacity_bytes / r,
    ))
}

/// The IDL types `uuid` as `string option` (control.ml:57). ocaml-rpc
/// encodes `None` by leaving the field out and fails the whole record on a
/// `null` there, so a group without a uuid gets no `uuid` field.
fn sr_stat_record(sr: &str, g: &Group, free_space: u64, total_space: u64) -> Value {
    let mut stat = json!({
        "sr": sr,
        "name": g.display_name,
        "description": g.description,
        "free_space": free_space,
        "total_space": total_space,
        "datasources": [],
        "clustered": false,
        "health": health(g),
    });
    if let Some(uuid) = &g.uuid {
        stat["uuid"] = json!(uuid);
    }
    stat
}

fn sr_probe(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let cfg = SrConfig::parse(args.string_map("configuration")?)?;
    let m = Manager::connect(&cfg)?;
    let wanted = cfg.sr_uuid().map(|u| u.to_ascii_lowercase());
    let mut results = Vec::new();
    for g in m.groups()? {
        // Only groups made by SR.create (named sr-<uuid> or as configured)
        // are SRs; other groups belong to other users of the pool.
        let Some(uuid) = g.uuid.clone() else { continue };
        if !is_uuid(&uuid) {
            continue;
        }
        let is_sr = match cfg.raw.get(config::KEY_GROUP) {
            Some(named) => *named == g.name,
            None => g.name == config::default_group(&uuid),
        };
        if !is_sr
            || wanted
                .as_ref()
                .is_some_and(|w| *w != uuid.to_ascii_lowercase())
        {
            continue;
        }
        let mut configuration = cfg.raw.clone();
        configuration.insert(config::KEY_SR_UUID.into(), uuid.clone());
        configuration.insert(config::KEY_GROUP.into(), g.name.clone());
        results.push(json!({
            "configuration": configuration,
            "complete": true,
            "sr": sr_stat_json(&m, &cfg, &g.name, &g)?,
            "extra_info": {},
        }));
    }
    Ok(Value::Array(results))
}

fn sr_create(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let uuid = args.str("uuid")?;
    if !is_uuid(uuid) {
        return Err(SmapiError::invalid_argument(format!(
            "argument 'uuid' must be a UUID, not '{uuid}'"
        )));
    }
    let mut raw = args.string_map("configuration")?;
    let name = args.str("name")?;
    let description = args.str("description")?;
    if let Some(u) = raw.get(config::KEY_SR_UUID)
        && !u.eq_ignore_ascii_case(uuid)
    {
        return Err(SmapiError::new(
            codes::INVALID_CONFIGURATION,
            format!("device-config:sr_uuid '{u}' differs from the new SR's uuid {uuid}"),
        ));
    }
    raw.insert(config::KEY_SR_UUID.into(), uuid.to_ascii_lowercase());
    let cfg = SrConfig::parse(raw)?;
    let group = cfg.group().expect("sr_uuid is set");
    let m = Manager::connect(&cfg)?;
    // Idempotent: the manager accepts a repeated create with the same uuid.
    m.create_group(&CreateGroup {
        name: group.clone(),
        uuid: Some(uuid.to_ascii_lowercase()),
        display_name: (!name.is_empty()).then(|| name.to_string()),
        description: description.to_string(),
    })?;
    let mut out = cfg.raw;
    out.insert(config::KEY_GROUP.into(), group);
    Ok(json!(out))
}

fn sr_attach(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let cfg = SrConfig::parse(args.string_map("configuration")?)?;
    // The SR's identity is its uuid: SR.create (and SR.probe) put it in the
    // configuration they return, and that configuration is what xapi hands
    // to SR.attach on every host. A configuration without it did not come
    // from them, and its `group` could name any group of the pool.
    let want = cfg.sr_uuid().ok_or_else(|| {
        SmapiError::new(
            codes::INVALID_CONFIGURATION,
            "device-config has no sr_uuid: SR.attach needs the configuration SR.create or SR.probe returned",
        )
    })?;
    let group = cfg.group().expect("sr_uuid is set");
    let m = Manager::connect(&cfg)?;
    let g = m.group(&group)?;
    match g.uuid.as_deref() {
        Some(have) if have.eq_ignore_ascii_case(want) => {}
        Some(have) => {
            return Err(SmapiError::new(
                codes::INVALID_CONFIGURATION,
                format!(
                    "manager group '{group}' belongs to SR {have}, not to SR {want}; fix device-config:group or leave it out"
                ),
            ));
        }
        None => {
            return Err(SmapiError::new(
                codes::INVALID_CONFIGURATION,
                format!(
                    "manager group '{group}' is not an SR's group (it carries no SR uuid); device-config:group must name the group SR.create made for SR {want}, or be left out"
                ),
            ));
        }
    }
    state::save(&SrState {
        group: group.clone(),
        configuration: cfg.raw,
    })?;
    Ok(json!(group))
}

/// Forgets the SR on this host. Detaching an SR that is not attached
/// succeeds: xapi calls detach on error paths and after reboots.
fn sr_detach(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let sr = args.str("sr")?;
    state::remove(sr)?;
    Ok(Value::Null)
}

fn sr_destroy(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let sr = args.str("sr")?;
    let s = state::load(sr)?;
    let m = Manager::connect(&s.config()?)?;
    match m.delete_group(&s.group) {
        Ok(()) => {}
        // Already gone (a retried destroy): the goal is reached.
        Err(HttpError::Api { status: 404, .. }) => {}
        Err(HttpError::Api {
            status: 409,
            message,
            ..
        }) => {
            return Err(SmapiError::new(
                codes::SR_NOT_EMPTY,
                format!("{message} (destroy the SR's VDIs first)"),
            ));
        }
        Err(e) => return Err(m.describe_error(e, Missing::Sr)),
    }
    // The SR no longer exists; xapi does not call SR.detach after a
    // successful destroy, so forget it here.
    state::remove(sr)?;
    Ok(Value::Null)
}

fn sr_stat(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let (s, cfg, m) = attached(args)?;
    let g = m.group(&s.group)?;
    sr_stat_json(&m, &cfg, &s.group, &g)
}

fn sr_ls(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let (s, _, m) = attached(args)?;
    let volumes = m.volumes_in(&s.group)?;
    Ok(Value::Array(
        volumes.iter().map(|v| volume_json(&s.group, v)).collect(),
    ))
}

fn sr_set_name(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let new_name = args.str("new_name")?;
    let (s, _, m) = attached(args)?;
    m.update_group(
        &s.group,
        &UpdateGroup {
            display_name: Some(new_name.to_string()),
            description: None,
        },
    )?;
    Ok(Value::Null)
}

fn sr_set_description(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let new_description = args.str("new_description")?;
    let (s, _, m) = attached(args)?;
    m.update_group(
        &s.group,
        &UpdateGroup {
            display_name: None,
            description: Some(new_description.to_string()),
        },
    )?;
    Ok(Value::Null)
}

// ---- Volume calls ------------------------------------------------------------

fn volume_create(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let name = args.str("name")?;
    let description = args.str("description")?;
    let size = args.size("size")?;
    if args.bool("sharable")? {
        return Err(SmapiError::unimplemented(
            "sharable VDIs are not supported: a VastSky volume is assembled on one host at a time; create it with sharable=false",
        ));
    }
    let (s, cfg, m) = attached(args)?;
    let key = new_uuid()?;
    let v = m.create_volume(&CreateVolume {
        name: key,
        size_bytes: size,
        replicas: cfg.replicas,
        class: cfg.class.clone(),
        group: Some(s.group.clone()),
        display_name: (!name.is_empty()).then(|| name.to_string()),
        description: description.to_string(),
        keys: BTreeMap::new(),
        sharable: false,
        thin: cfg.thin,
        ..Default::default()
    })?;
    Ok(volume_json(&s.group, &v))
}

fn volume_destroy(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let (_, _, m, v) = volume_in_sr(args)?;
    m.delete_volume(&v.name)?;
    Ok(Value::Null)
}

fn volume_stat(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let (s, _, _, v) = volume_in_sr(args)?;
    Ok(volume_json(&s.group, &v))
}

fn update(args: &Args, change: UpdateVolume) -> SmapiResult<Value> {
    let (_, _, m, v) = volume_in_sr(args)?;
    m.update_volume(&v.name, &change)?;
    Ok(Value::Null)
}

fn volume_set_name(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let new_name = args.str("new_name")?.to_string();
    update(
        args,
        UpdateVolume {
            display_name: Some(new_name),
            ..Default::default()
        },
    )
}

fn volume_set_description(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let new_description = args.str("new_description")?.to_string();
    update(
        args,
        UpdateVolume {
            description: Some(new_description),
            ..Default::default()
        },
    )
}

fn volume_set(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let k = args.str("k")?.to_string();
    let v = args.str("v")?.to_string();
    update(
        args,
        UpdateVolume {
            set_keys: [(k, v)].into(),
            ..Default::default()
        },
    )
}

fn volume_unset(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let k = args.str("k")?.to_string();
    update(
        args,
        UpdateVolume {
            unset_keys: vec![k],
            ..Default::default()
        },
    )
}

/// Grows the volume to at least `new_size` (rounded up by the manager);
/// shrinking is refused, since it would lose data. An attached volume
/// grows online: the manager answers once its head serves the new size.
fn volume_resize(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let new_size = args.size("new_size")?;
    let (_, _, m, v) = volume_in_sr(args)?;
    if new_size < v.size_bytes {
        return Err(SmapiError::invalid_argument(format!(
            "volume '{}' is {} bytes; shrinking to {new_size} would destroy data and is not supported",
            v.name, v.size_bytes
        )));
    }
    m.resize_volume(&v.name, new_size)?;
    // The IDL types the result as unit: xapi accepts only `null` here and
    // reads the new size with Volume.stat.
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_declares_only_what_is_implemented() {
        let q = plugin_query(&Args::parse(r#"{"dbg":"t"}"#).unwrap()).unwrap();
        assert_eq!(q["plugin"], "vastsky");
        assert_eq!(q["required_api_version"], "5.0");
        let f: Vec<&str> = q["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for absent in ["VDI_COPY", "VDI_CONFIG_CBT"] {
            assert!(!f.contains(&absent));
        }
        for present in [
            "VDI_RESIZE_ONLINE",
            "VDI_SNAPSHOT",
            "VDI_CLONE",
            "VDI_REVERT",
        ] {
            assert!(f.contains(&present), "{present}");
        }
        assert!(
            q["configuration"]["manager"]
                .as_str()
                .unwrap()
                .contains("Required")
        );
        let names: Vec<&str> = CALLS.iter().map(|(n, _)| *n).collect();
        for absent in ["Volume.copy", "Volume.compose", "Volume.enable_cbt"] {
            assert!(!names.contains(&absent));
        }
        for present in ["Volume.clone", "Volume.snapshot", "Volume.revert"] {
            assert!(names.contains(&present), "{present}");
        }
    }

    #[test]
    fn health_reports_rebuilding_and_degraded_mirrors() {
        let mut g = Group {
            name: "sr-x".into(),
            uuid: None,
            display_name: "x".into(),
            description: String::new(),
            volumes: 1,
            virtual_size_bytes: 0,
            physical_bytes: 0,
            mirrored_disks_degraded: 0,
            mirrored_disks_rebuilding: 0,
        };
        assert_eq!(health(&g), json!(["Healthy", ""]));
        g.mirrored_disks_degraded = 1;
        g.mirrored_disks_rebuilding = 2;
        let h = health(&g);
        assert_eq!(h[0], "Recovering");
        assert!(
            h[1].as_str()
                .unwrap()
                .starts_with("3 mirrored disks rebuilding/degraded")
        );
    }

    /// Regression: a group without a uuid answered `"uuid": null`, which
    /// xapi's decoder refuses for the IDL's `string option`.
    #[test]
    fn sr_stat_leaves_an_absent_uuid_out() {
        let mut g = Group {
            name: "sr-x".into(),
            uuid: None,
            display_name: "x".into(),
            description: String::new(),
            volumes: 0,
            virtual_size_bytes: 0,
            physical_bytes: 0,
            mirrored_disks_degraded: 0,
            mirrored_disks_rebuilding: 0,
        };
        let s = sr_stat_record("sr-x", &g, 1, 2);
        assert!(s.get("uuid").is_none(), "{s}");
        assert_eq!(
            (&s["free_space"], &s["total_space"]),
            (&json!(1), &json!(2))
        );
        g.uuid = Some("0f1c2d3e-0000-4000-8000-00000000000a".into());
        let s = sr_stat_record("sr-x", &g, 1, 2);
        assert_eq!(s["uuid"], "0f1c2d3e-0000-4000-8000-00000000000a");
    }

    #[test]
    fn sharable_volumes_are_refused_before_anything_else() {
        let a = Args::parse(
            r#"{"dbg":"t","sr":"sr-none","name":"n","description":"","size":4096,"sharable":true}"#,
        )
        .unwrap();
        assert_eq!(volume_create(&a).unwrap_err().code, codes::UNIMPLEMENTED);
    }
}
