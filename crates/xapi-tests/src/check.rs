//! Checkers of plugin answers against the xapi-storage IDL types
//! (generator/lib/{plugin,control,data}.ml) as rpclib encodes them.
//!
//! They are strict on purpose: a missing field, a wrong type or an unknown
//! field is an error naming the JSON path, because xapi's rpclib decoder
//! either fails the call or silently drops what it does not know. They are
//! written from the IDL, not from the plugins' code, so a plugin bug cannot
//! hide behind a shared type.

use serde_json::{Map, Value};

pub type Check = Result<(), String>;

fn obj<'a>(v: &'a Value, path: &str, fields: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object, got {v}"))?;
    if let Some(extra) = m.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(format!("{path}: unknown field '{extra}'"));
    }
    Ok(m)
}

fn field<'a>(m: &'a Map<String, Value>, path: &str, k: &str) -> Result<&'a Value, String> {
    m.get(k)
        .ok_or_else(|| format!("{path}: missing field '{k}'"))
}

fn string<'a>(m: &'a Map<String, Value>, path: &str, k: &str) -> Result<&'a str, String> {
    field(m, path, k)?
        .as_str()
        .ok_or_else(|| format!("{path}.{k}: expected a string"))
}

fn opt_string(m: &Map<String, Value>, path: &str, k: &str) -> Check {
    match m.get(k) {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(v) => Err(format!("{path}.{k}: expected a string or nothing, got {v}")),
    }
}

fn boolean(m: &Map<String, Value>, path: &str, k: &str) -> Result<bool, String> {
    field(m, path, k)?
        .as_bool()
        .ok_or_else(|| format!("{path}.{k}: expected a boolean"))
}

/// An int64 byte count: a non-negative JSON integer.
fn size(m: &Map<String, Value>, path: &str, k: &str) -> Result<u64, String> {
    let v = field(m, path, k)?;
    v.as_u64()
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| format!("{path}.{k}: expected a non-negative int64, got {v}"))
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, String> {
    v.as_array()
        .ok_or_else(|| format!("{path}: expected a list"))?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str()
                .map(String::from)
                .ok_or_else(|| format!("{path}[{i}]: expected a string"))
        })
        .collect()
}

/// A `(string * string) list`: a JSON object of strings.
pub fn string_map(v: &Value, path: &str) -> Check {
    let m = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object of strings"))?;
    for (k, s) in m {
        if !s.is_string() {
            return Err(format!("{path}.{k}: expected a string, got {s}"));
        }
    }
    Ok(())
}

/// Capabilities xapi knows (smint.ml) plus those datapath plugins declare.
const KNOWN_FEATURES: &[&str] = &[
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

pub fn query_result(v: &Value) -> Check {
    let p = "query_result";
    let m = obj(
        v,
        p,
        &[
            "plugin",
            "name",
            "description",
            "vendor",
            "copyright",
            "version",
            "required_api_version",
            "features",
            "configuration",
            "required_cluster_stack",
        ],
    )?;
    let plugin = string(m, p, "plugin")?;
    if plugin.is_empty() || plugin.contains('.') {
        return Err(format!(
            "{p}.plugin: '{plugin}' must be non-empty without dots"
        ));
    }
    for k in ["name", "description", "vendor", "copyright", "version"] {
        string(m, p, k)?;
    }
    let api = string(m, p, "required_api_version")?;
    if api != "5.0" && api != "3.0" {
        return Err(format!(
            "{p}.required_api_version: '{api}' is not 3.0 or 5.0"
        ));
    }
    for f in string_list(field(m, p, "features")?, &format!("{p}.features"))? {
        let base = f.split('/').next().unwrap_or_default();
        if !KNOWN_FEATURES.contains(&base) {
            return Err(format!("{p}.features: '{f}' is unknown to xapi"));
        }
    }
    string_map(field(m, p, "configuration")?, &format!("{p}.configuration"))?;
    string_list(
        field(m, p, "required_cluster_stack")?,
        &format!("{p}.required_cluster_stack"),
    )?;
    Ok(())
}

pub fn health(v: &Value, path: &str) -> Check {
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(tag), Value::String(_)])
            if ["Healthy", "Recovering", "Unreachable", "Unavailable"].contains(&tag.as_str()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{path}: expected [\"Healthy\"|\"Recovering\"|\"Unreachable\"|\"Unavailable\", string], got {v}"
        )),
    }
}

pub fn sr_stat(v: &Value) -> Check {
    let p = "sr_stat";
    let m = obj(
        v,
        p,
        &[
            "sr",
            "name",
            "uuid",
            "description",
            "free_space",
            "total_space",
            "datasources",
            "clustered",
            "health",
        ],
    )?;
    string(m, p, "sr")?;
    string(m, p, "name")?;
    opt_string(m, p, "uuid")?;
    string(m, p, "description")?;
    let free = size(m, p, "free_space")?;
    let total = size(m, p, "total_space")?;
    if free > total {
        return Err(format!(
            "{p}: free_space {free} exceeds total_space {total}"
        ));
    }
    string_list(field(m, p, "datasources")?, &format!("{p}.datasources"))?;
    boolean(m, p, "clustered")?;
    health(field(m, p, "health")?, &format!("{p}.health"))
}

pub fn volume(v: &Value) -> Check {
    let p = "volume";
    let m = obj(
        v,
        p,
        &[
            "key",
            "uuid",
            "name",
            "description",
            "read_write",
            "sharable",
            "virtual_size",
            "physical_utilisation",
            "uri",
            "keys",
            "volume_type",
            "cbt_enabled",
        ],
    )?;
    if string(m, p, "key")?.is_empty() {
        return Err(format!("{p}.key: empty"));
    }
    opt_string(m, p, "uuid")?;
    string(m, p, "name")?;
    string(m, p, "description")?;
    boolean(m, p, "read_write")?;
    boolean(m, p, "sharable")?;
    size(m, p, "virtual_size")?;
    size(m, p, "physical_utilisation")?;
    for (i, u) in string_list(field(m, p, "uri")?, &format!("{p}.uri"))?
        .iter()
        .enumerate()
    {
        if !u.contains("://") {
            return Err(format!("{p}.uri[{i}]: '{u}' has no scheme://"));
        }
    }
    string_map(field(m, p, "keys")?, &format!("{p}.keys"))?;
    match m.get("volume_type") {
        None | Some(Value::Null) => {}
        Some(t)
            if [["Data"], ["CBT_Metadata"], ["Data_and_CBT_Metadata"]]
                .iter()
                .any(|x| *t == serde_json::json!(x)) => {}
        Some(t) => return Err(format!("{p}.volume_type: unexpected {t}")),
    }
    match m.get("cbt_enabled") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => Ok(()),
        Some(c) => Err(format!("{p}.cbt_enabled: expected a boolean, got {c}")),
    }
}

pub fn probe_result(v: &Value) -> Check {
    let p = "probe_result";
    let m = obj(v, p, &["configuration", "complete", "sr", "extra_info"])?;
    let cfg = field(m, p, "configuration")?;
    string_map(cfg, &format!("{p}.configuration"))?;
    let complete = boolean(m, p, "complete")?;
    string_map(field(m, p, "extra_info")?, &format!("{p}.extra_info"))?;
    match m.get("sr") {
        None | Some(Value::Null) => Ok(()),
        Some(sr) => {
            sr_stat(sr)?;
            // main.ml sr_probe_impl: a result with an SR must name its uuid
            // in the configuration, and an incomplete one may not carry one.
            if cfg.get("sr_uuid").is_none() {
                return Err(format!("{p}: has an sr but configuration lacks sr_uuid"));
            }
            if !complete && !sr["uuid"].is_null() {
                return Err(format!("{p}: incomplete result carries an SR uuid"));
            }
            Ok(())
        }
    }
}

/// Datapath.attach's answer. XenDisk must come first (xenopsd needs it for
/// a guest; we also require it first so a blkback user sees it before any
/// fallback), and there must be a dom0-usable path (BlockDevice/File/Nbd).
pub fn backend(v: &Value) -> Check {
    let p = "backend";
    let m = obj(v, p, &["implementations"])?;
    let imps = field(m, p, "implementations")?
        .as_array()
        .ok_or_else(|| format!("{p}.implementations: expected a list"))?;
    if imps.is_empty() {
        return Err(format!("{p}.implementations: empty"));
    }
    let mut dom0 = false;
    for (i, imp) in imps.iter().enumerate() {
        let ip = format!("{p}.implementations[{i}]");
        let (tag, payload) = match imp.as_array().map(Vec::as_slice) {
            Some([Value::String(t), payload]) => (t.as_str(), payload),
            _ => return Err(format!("{ip}: expected [tag, payload], got {imp}")),
        };
        match tag {
            "XenDisk" => {
                let x = obj(payload, &ip, &["params", "extra", "backend_type"])?;
                string(x, &ip, "params")?;
                string_map(field(x, &ip, "extra")?, &format!("{ip}.extra"))?;
                let kind = string(x, &ip, "backend_type")?;
                if !["vbd", "vbd3", "qdisk", "9pfs"].contains(&kind) {
                    return Err(format!(
                        "{ip}.backend_type: '{kind}' is not a xenopsd backend"
                    ));
                }
            }
            "BlockDevice" | "File" => {
                let x = obj(payload, &ip, &["path"])?;
                if !string(x, &ip, "path")?.starts_with('/') {
                    return Err(format!("{ip}.path: not absolute"));
                }
                dom0 = true;
            }
            "Nbd" => {
                let x = obj(payload, &ip, &["uri"])?;
                string(x, &ip, "uri")?;
                dom0 = true;
            }
            other => return Err(format!("{ip}: unknown implementation '{other}'")),
        }
        if i == 0 && tag != "XenDisk" {
            return Err(format!(
                "{p}: the first implementation must be XenDisk, not {tag}"
            ));
        }
    }
    if !dom0 {
        return Err(format!("{p}: no BlockDevice, File or Nbd implementation"));
    }
    Ok(())
}

/// The error object of a failed call.
pub fn error_object(v: &Value) -> Check {
    let p = "error";
    let m = obj(v, p, &["code", "params", "backtrace"])?;
    if string(m, p, "code")?.is_empty() {
        return Err(format!("{p}.code: empty"));
    }
    string_list(field(m, p, "params")?, &format!("{p}.params"))?;
    let bp = format!("{p}.backtrace");
    let b = obj(field(m, p, "backtrace")?, &bp, &["error", "files", "lines"])?;
    string(b, &bp, "error")?;
    string_list(field(b, &bp, "files")?, &format!("{bp}.files"))?;
    let lines = field(b, &bp, "lines")?
        .as_array()
        .ok_or_else(|| format!("{bp}.lines: expected a list"))?;
    if lines.iter().any(|l| !l.is_i64()) {
        return Err(format!("{bp}.lines: expected integers"));
    }
    Ok(())
}

/// A `unit` result.
pub fn unit(v: &Value) -> Check {
    if v.is_null() {
        Ok(())
    } else {
        Err(format!("unit: expected null, got {v}"))
    }
}

pub fn list_of(v: &Value, each: fn(&Value) -> Check) -> Check {
    let items = v
        .as_array()
        .ok_or_else(|| format!("expected a list, got {v}"))?;
    for (i, item) in items.iter().enumerate() {
        each(item).map_err(|e| format!("[{i}] {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good_volume() -> Value {
        json!({"key":"k","uuid":"k","name":"n","description":"","read_write":true,"sharable":false,
               "virtual_size":4096,"physical_utilisation":4096,"uri":["vsky://g/k"],"keys":{"a":"b"}})
    }

    #[test]
    fn volumes_are_checked_field_by_field() {
        volume(&good_volume()).unwrap();
        let mut v = good_volume();
        v["virtual_size"] = json!(-1);
        assert!(volume(&v).unwrap_err().contains("virtual_size"));
        let mut v = good_volume();
        v["keys"] = json!({"a": 1});
        assert!(volume(&v).unwrap_err().contains("keys.a"));
        let mut v = good_volume();
        v["virtual_sise"] = json!(1);
        assert!(volume(&v).unwrap_err().contains("unknown field"));
        let mut v = good_volume();
        v.as_object_mut().unwrap().remove("uri");
        assert!(volume(&v).unwrap_err().contains("missing field 'uri'"));
        let mut v = good_volume();
        v["uri"] = json!(["/dev/x"]);
        assert!(volume(&v).is_err());
    }

    #[test]
    fn backends_need_xendisk_first_and_a_dom0_path() {
        let xd = json!(["XenDisk", {"backend_type":"vbd","params":"/dev/x","extra":{}}]);
        let bd = json!(["BlockDevice", {"path":"/dev/x"}]);
        backend(&json!({"implementations":[xd, bd]})).unwrap();
        assert!(backend(&json!({"implementations":[bd, xd]})).is_err());
        assert!(backend(&json!({"implementations":[xd]})).is_err());
        assert!(backend(&json!([xd, bd])).is_err());
        let bad = json!(["XenDisk", {"backend_type":"tap","params":"/dev/x","extra":{}}]);
        assert!(backend(&json!({"implementations":[bad, bd]})).is_err());
    }

    #[test]
    fn sr_stats_health_and_errors_are_checked() {
        let s = json!({"sr":"s","name":"n","uuid":null,"description":"","free_space":1,"total_space":2,
                       "datasources":[],"clustered":false,"health":["Recovering","2 rebuilding"]});
        sr_stat(&s).unwrap();
        let mut bad = s.clone();
        bad["health"] = json!(["Sick", ""]);
        assert!(sr_stat(&bad).is_err());
        let mut bad = s.clone();
        bad["free_space"] = json!(3);
        assert!(sr_stat(&bad).is_err());
        error_object(
            &json!({"code":"X","params":["p"],"backtrace":{"error":"e","files":[],"lines":[1]}}),
        )
        .unwrap();
        assert!(error_object(&json!({"code":"X","params":["p"]})).is_err());
        assert!(
            error_object(
                &json!({"code":"","params":[],"backtrace":{"error":"","files":[],"lines":[]}})
            )
            .is_err()
        );
    }

    #[test]
    fn query_and_probe_rules() {
        let q = json!({"plugin":"vastsky","name":"n","description":"d","vendor":"v","copyright":"c",
                       "version":"1","required_api_version":"5.0","features":["SR_PROBE","VDI_RESIZE/2"],
                       "configuration":{"k":"d"},"required_cluster_stack":[]});
        query_result(&q).unwrap();
        let mut bad = q.clone();
        bad["features"] = json!(["FLY"]);
        assert!(query_result(&bad).is_err());
        let mut bad = q.clone();
        bad["required_api_version"] = json!("4.0");
        assert!(query_result(&bad).is_err());
        let sr = json!({"sr":"s","name":"n","uuid":"u","description":"","free_space":1,"total_space":2,
                        "datasources":[],"clustered":false,"health":["Healthy",""]});
        probe_result(
            &json!({"configuration":{"sr_uuid":"u"},"complete":true,"sr":sr,"extra_info":{}}),
        )
        .unwrap();
        assert!(
            probe_result(&json!({"configuration":{},"complete":true,"sr":sr,"extra_info":{}}))
                .is_err()
        );
        assert!(
            probe_result(
                &json!({"configuration":{"sr_uuid":"u"},"complete":false,"sr":sr,"extra_info":{}})
            )
            .is_err()
        );
    }
}
