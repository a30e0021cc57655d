//! What xapi and xenopsd require of some values beyond their IDL type.
//! They run after the type check, so fields are known to be well typed.

use super::Check;
use serde_json::{Map, Value};

/// Capabilities xapi knows (xen-api ocaml/xapi/smint.ml:67-105
/// `string_to_capability_table`), plus VDI_DESTROY (renamed VDI_DELETE
/// by xapi-storage-script main.ml:884-887), VDI_COPY (control.ml:266)
/// and the datapath features main.ml reads (NONPERSISTENT, main.ml:352)
/// or real datapath plugins declare (VDI_NONPERSISTENT).
pub const KNOWN_FEATURES: &[&str] = &[
    "SR_CREATE",
    "SR_DELETE",
    "SR_ATTACH",
    "SR_DETACH",
    "SR_SCAN",
    "SR_PROBE",
    "SR_UPDATE",
    "SR_SUPPORTS_LOCAL_CACHING",
    "SR_METADATA",
    "SR_TRIM",
    "SR_MULTIPATH",
    "SR_CACHING",
    "SR_STATS",
    "VDI_CREATE",
    "VDI_DELETE",
    "VDI_DESTROY",
    "VDI_ATTACH",
    "VDI_DETACH",
    "VDI_MIRROR",
    "VDI_MIRROR_IN",
    "VDI_RESIZE",
    "VDI_RESIZE_ONLINE",
    "VDI_CLONE",
    "VDI_SNAPSHOT",
    "VDI_ACTIVATE",
    "VDI_ACTIVATE_READONLY",
    "VDI_DEACTIVATE",
    "VDI_UPDATE",
    "VDI_INTRODUCE",
    "VDI_GENERATE_CONFIG",
    "VDI_ATTACH_OFFLINE",
    "VDI_RESET_ON_BOOT",
    "VDI_CONFIG_CBT",
    "VDI_COMPOSE",
    "VDI_REVERT",
    "LARGE_VDI",
    "THIN_PROVISIONING",
    "VDI_READ_CACHING",
    "VDI_COPY",
    "NONPERSISTENT",
    "VDI_NONPERSISTENT",
];

fn s<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn strings<'a>(m: &'a Map<String, Value>, k: &str) -> Vec<&'a str> {
    m.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The SR type is the last dot-separated part of the queue name
/// (ocaml/xapi/storage_access.ml:128-135) and the SM record's type is
/// `plugin` lowercased (xapi_sm.ml:31-41): it must be non-empty and
/// dot-free. Only API versions 3.0 and 5.0 register
/// (xapi-storage-script main.ml:184,309-330).
pub fn query_result(m: &Map<String, Value>, p: &str) -> Check {
    let plugin = s(m, "plugin");
    if plugin.is_empty() || plugin.contains('.') {
        return Err(format!(
            "{p}.plugin: '{plugin}' must be non-empty without dots"
        ));
    }
    let api = s(m, "required_api_version");
    if api != "5.0" && api != "3.0" {
        return Err(format!(
            "{p}.required_api_version: '{api}' is not 3.0 or 5.0"
        ));
    }
    for f in strings(m, "features") {
        let base = f.split('/').next().unwrap_or_default();
        if !KNOWN_FEATURES.contains(&base) {
            return Err(format!("{p}.features: '{f}' is unknown to xapi"));
        }
    }
    Ok(())
}

fn non_negative(m: &Map<String, Value>, p: &str, k: &str) -> Result<i64, String> {
    let n = m.get(k).and_then(Value::as_i64).unwrap_or_default();
    if n < 0 {
        return Err(format!("{p}.{k}: {n} is not a byte count"));
    }
    Ok(n)
}

/// Sizes are byte counts (control.ml:66-69), and free space is part
/// of the total.
pub fn sr_stat(m: &Map<String, Value>, p: &str) -> Check {
    let free = non_negative(m, p, "free_space")?;
    let total = non_negative(m, p, "total_space")?;
    if free > total {
        return Err(format!(
            "{p}: free_space {free} exceeds total_space {total}"
        ));
    }
    Ok(())
}

/// A volume needs a key (control.ml:90-93), byte counts for sizes, and
/// URIs with a scheme: xapi-storage-script picks the datapath plugin by
/// the URI's scheme and skips URIs without one (main.ml:798-812).
pub fn volume(m: &Map<String, Value>, p: &str) -> Check {
    if s(m, "key").is_empty() {
        return Err(format!("{p}.key: empty"));
    }
    non_negative(m, p, "virtual_size")?;
    non_negative(m, p, "physical_utilisation")?;
    for (i, u) in strings(m, "uri").iter().enumerate() {
        if !u.contains("://") {
            return Err(format!("{p}.uri[{i}]: '{u}' has no scheme://"));
        }
    }
    Ok(())
}

/// xapi-storage-script main.ml:1065-1137 (`sr_probe_impl`): a result
/// whose configuration names an `sr_uuid` must be complete, and a
/// result carrying an `sr` must name its `sr_uuid`.
pub fn probe_result(m: &Map<String, Value>, p: &str) -> Check {
    let has_uuid = m
        .get("configuration")
        .and_then(|c| c.get("sr_uuid"))
        .is_some();
    let complete = m.get("complete").and_then(Value::as_bool) == Some(true);
    if has_uuid && !complete {
        return Err(format!(
            "{p}: a configuration with an sr_uuid cannot be incomplete"
        ));
    }
    if m.contains_key("sr") && !has_uuid {
        return Err(format!(
            "{p}: has an sr but its configuration lacks sr_uuid (not attachable)"
        ));
    }
    Ok(())
}

/// xenopsd (ocaml/xenopsd/xc/xenops_server_xen.ml:305-333,
/// device_common.ml:50): a guest disk needs a XenDisk whose
/// backend_type is a backend xenopsd knows, and a BlockDevice, File or
/// Nbd for its params. We also want XenDisk first, so a reader of the
/// answer sees the ring connection before any dom0 fallback.
pub fn backend(m: &Map<String, Value>, p: &str) -> Check {
    let imps = m
        .get("implementations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    match imps.first().and_then(|i| i[0].as_str()) {
        Some("XenDisk") => {}
        None => return Err(format!("{p}.implementations: empty")),
        Some(other) => {
            return Err(format!(
                "{p}: the first implementation must be XenDisk, not {other}"
            ));
        }
    }
    for (i, imp) in imps.iter().enumerate() {
        if imp[0] == "XenDisk" {
            let kind = imp[1]["backend_type"].as_str().unwrap_or_default();
            if !["vbd", "vbd3", "qdisk", "9pfs"].contains(&kind) {
                return Err(format!(
                    "{p}.implementations[{i}].backend_type: '{kind}' is not a xenopsd backend"
                ));
            }
        }
        if (imp[0] == "BlockDevice" || imp[0] == "File")
            && !imp[1]["path"].as_str().unwrap_or_default().starts_with('/')
        {
            return Err(format!("{p}.implementations[{i}].path: not absolute"));
        }
    }
    if !imps
        .iter()
        .any(|i| ["BlockDevice", "File", "Nbd"].iter().any(|t| i[0] == *t))
    {
        return Err(format!("{p}: no BlockDevice, File or Nbd implementation"));
    }
    Ok(())
}

/// An error needs a code for xapi to show.
pub fn error(m: &Map<String, Value>, p: &str) -> Check {
    if s(m, "code").is_empty() {
        return Err(format!("{p}.code: empty"));
    }
    Ok(())
}
