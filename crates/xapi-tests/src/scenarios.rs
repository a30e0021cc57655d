//! xapi's call sequences against installed plugins, each checking every
//! answer's shape ([`crate::check`]) and the behaviour xapi relies on.
//!
//! Sequences follow xapi (ocaml/xapi/xapi_sr.ml, storage_access.ml,
//! xenopsd storage.ml, xapi-storage-script main.ml): sr-create is SR.create
//! then SR.attach and SR.stat with the returned configuration; vdi-create
//! is Volume.create then Volume.set of `vdi-type`; VM start is open,
//! attach, activate; VM shutdown is deactivate, deactivate again (DP
//! destroy), detach, close. Every scenario cleans up what it created and
//! returns a human-readable error on the first deviation.
//!
//! Size: over 1000 lines, one concern: each function plays one xapi call
//! sequence against the installed plugins. The sequences of snapshots,
//! clones and reverts are in `crate::snapshots`, which uses the helpers
//! here; splitting the rest by SR, volume and datapath sequences is left
//! to issue #15's test-kit work.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use smapi::http::{HttpClient, HttpConfig, segment};

use crate::runner::{CallError, PluginDir, choose_datapath};

pub type Step<T = ()> = Result<T, String>;

pub(crate) const DBG: &str = "xapi-tests";
pub(crate) const MIB: u64 = 1 << 20;

/// The plugins under test and the SR device-config to create SRs with.
pub struct Rig {
    pub volume: PluginDir,
    pub datapaths: Vec<PluginDir>,
    pub device_config: BTreeMap<String, String>,
}

/// What the scenarios need from the manager besides the plugins: its
/// state (to prove a refused call changed nothing) and, for the lab's
/// exclusivity check, attaching a volume elsewhere as an admin would.
pub struct ManagerAdmin {
    http: HttpClient,
}

impl ManagerAdmin {
    pub fn new(url: &str, token: &str) -> Step<ManagerAdmin> {
        let http = HttpClient::new(&HttpConfig {
            base_urls: vec![url.to_string()],
            token: Some(token.to_string()),
            ca_file: None,
            timeout: Duration::from_secs(30),
        })
        .map_err(|e| e.to_string())?;
        Ok(ManagerAdmin { http })
    }

    /// Groups and volumes (with metadata and attachment) as the manager
    /// reports them.
    pub fn snapshot(&self) -> Step<Value> {
        let groups: Value = self.http.get("/api/v1/groups").map_err(|e| e.to_string())?;
        let volumes: Value = self
            .http
            .get("/api/v1/volumes")
            .map_err(|e| e.to_string())?;
        Ok(json!({"groups": groups, "volumes": volumes}))
    }

    pub fn volume(&self, name: &str) -> Step<Value> {
        self.http
            .get(&format!("/api/v1/volumes/{}", segment(name)))
            .map_err(|e| e.to_string())
    }

    pub fn attach_to(&self, volume: &str, server: &str) -> Step {
        self.http
            .post::<_, Value>(
                &format!("/api/v1/volumes/{}/attach", segment(volume)),
                &json!({"server": server}),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Declares failed the disk holding the first leg of `volume`, as an
    /// admin (or the agent's failure report) would; answers its id.
    pub fn fail_disk_of(&self, volume: &str) -> Step<u64> {
        let detail = self.volume(volume)?;
        // A thin volume's legs are its layers'; its own comes first.
        let layout = match detail["layers"][0]["layout"].as_array() {
            Some(_) => &detail["layers"][0]["layout"],
            None => &detail["layout"],
        };
        let disk = layout[0]["legs"][0]["disk_id"]
            .as_u64()
            .ok_or_else(|| format!("volume {volume} has no leg: {detail}"))?;
        self.http
            .post::<_, Value>(&format!("/api/v1/disks/{disk}/fail"), &json!({}))
            .map_err(|e| e.to_string())?;
        Ok(disk)
    }

    /// Creates a plain group: one with no SR uuid, as an admin's
    /// `vsky group create` makes for other users of the pool.
    pub fn create_plain_group(&self, name: &str) -> Step {
        self.http
            .post::<_, Value>("/api/v1/groups", &json!({"name": name}))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn delete_group(&self, name: &str) -> Step {
        self.http
            .delete(&format!("/api/v1/groups/{}", segment(name)))
            .map_err(|e| e.to_string())
    }

    /// Ends the volume's attachment at once (`vsky volume detach --force`):
    /// the other host the scenarios attach to is an admin's record with no
    /// agent, which would never confirm a graceful detach.
    pub fn detach(&self, volume: &str) -> Step {
        self.http
            .post::<_, Value>(
                &format!("/api/v1/volumes/{}/detach", segment(volume)),
                &json!({"force": true}),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A random version-4 UUID (xapi's SR and VDI uuids).
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom is readable");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Runs a call that must succeed. Its answer has been checked against the
/// call's IDL result type by [`PluginDir::call`] ([`crate::check`]).
pub fn ok(p: &PluginDir, call: &str, args: Value) -> Step<Value> {
    let out = p.call(call, &args).map_err(|e| e.to_string())?;
    out.result
        .map_err(|e| format!("{call} {args} failed: {} {:?}", e.code, e.params))
}

/// Runs a call that must fail with the error object (any code).
pub fn fails(p: &PluginDir, call: &str, stdin: &[u8]) -> Step<CallError> {
    let out = p.call_raw(call, stdin).map_err(|e| e.to_string())?;
    match out.result {
        Ok(v) => Err(format!(
            "{call} with stdin {} succeeded with {v}; expected an error",
            String::from_utf8_lossy(stdin)
        )),
        Err(e) => {
            if e.params.iter().all(|p| p.trim().is_empty()) {
                return Err(format!("{call}: error {} has no message", e.code));
            }
            Ok(e)
        }
    }
}

/// Runs a call that must fail with `code`.
pub fn fails_with(p: &PluginDir, call: &str, args: &Value, code: &str) -> Step<CallError> {
    let e = fails(p, call, args.to_string().as_bytes())?;
    if e.code != code {
        return Err(format!(
            "{call} {args}: expected error {code}, got {} {:?}",
            e.code, e.params
        ));
    }
    Ok(e)
}

pub(crate) fn str_field(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

// ---- Query ---------------------------------------------------------------------

/// Both plugins register: Query answers are well formed, the volume
/// plugin's `plugin` is its folder's SR type, and every declared feature
/// that belongs to a call has that call's executable (and vice versa for
/// the calls xapi derives features from).
pub fn query(rig: &Rig) -> Step {
    let q = ok(&rig.volume, "Plugin.Query", json!({"dbg": DBG}))?;
    let sr_type = rig.volume.sr_type().ok_or_else(|| {
        format!(
            "folder {} is not org.xen.xapi.storage.<type>",
            rig.volume.name
        )
    })?;
    if str_field(&q, "plugin").to_ascii_lowercase() != sr_type {
        return Err(format!(
            "Query plugin {} != folder type {sr_type}",
            q["plugin"]
        ));
    }
    if q["required_api_version"] != "5.0" {
        return Err("volume plugin must require API 5.0".into());
    }
    let calls = rig.volume.calls().map_err(|e| e.to_string())?;
    let declared: Vec<String> = q["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    for (feature, call) in [
        ("VDI_CLONE", "Volume.clone"),
        ("VDI_SNAPSHOT", "Volume.snapshot"),
        ("VDI_COPY", "Volume.copy"),
        ("VDI_CREATE", "Volume.create"),
        ("VDI_RESIZE", "Volume.resize"),
        ("VDI_RESIZE_ONLINE", "Volume.resize"),
        ("SR_PROBE", "SR.probe"),
    ] {
        let has_call = calls.iter().any(|c| c == call);
        if declared.iter().any(|d| d == feature) && !has_call {
            return Err(format!("declares {feature} but {call} is not installed"));
        }
        if has_call
            && (feature == "VDI_CLONE" || feature == "VDI_SNAPSHOT")
            && !declared.iter().any(|d| d == feature)
        {
            return Err(format!(
                "{call} is installed (xapi derives {feature}) but not declared"
            ));
        }
    }
    for d in &rig.datapaths {
        let dq = ok(d, "Plugin.Query", json!({"dbg": DBG}))?;
        if dq["required_api_version"] != "5.0" {
            return Err(format!("datapath {} must require API 5.0", d.name));
        }
    }
    Ok(())
}

// ---- SR ------------------------------------------------------------------------

/// sr-create as xapi does it: SR.create, SR.attach with the returned
/// configuration, SR.stat. Returns (sr string, uuid, configuration).
pub fn create_sr(rig: &Rig, name: &str) -> Step<(String, String, Value)> {
    create_sr_with(rig, name, &[])
}

/// [`create_sr`] with `extra` device-config keys (e.g. `provisioning`).
pub fn create_sr_with(
    rig: &Rig,
    name: &str,
    extra: &[(&str, &str)],
) -> Step<(String, String, Value)> {
    let uuid = new_uuid();
    let mut device_config = rig.device_config.clone();
    for (k, v) in extra {
        device_config.insert(k.to_string(), v.to_string());
    }
    let cfg = ok(
        &rig.volume,
        "SR.create",
        json!({"dbg": DBG, "uuid": uuid, "configuration": device_config,
               "name": name, "description": "made by xapi-tests"}),
    )?;
    let sr = ok(
        &rig.volume,
        "SR.attach",
        json!({"dbg": DBG, "configuration": cfg}),
    )?;
    let sr = sr.as_str().unwrap_or_default().to_string();
    ok(&rig.volume, "SR.stat", json!({"dbg": DBG, "sr": sr}))?;
    Ok((sr, uuid, cfg))
}

/// sr-destroy as xapi does it once the PBDs are unplugged: SR.attach,
/// SR.destroy.
pub fn destroy_sr(rig: &Rig, cfg: &Value) -> Step {
    let sr = ok(
        &rig.volume,
        "SR.attach",
        json!({"dbg": DBG, "configuration": cfg}),
    )?;
    ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    Ok(())
}

fn attached_srs(rig: &Rig) -> Step<Vec<String>> {
    let v = ok(&rig.volume, "Plugin.ls", json!({"dbg": DBG}))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect())
}

pub fn sr_lifecycle(rig: &Rig) -> Step {
    let (sr, uuid, cfg) = create_sr(rig, "xapi-tests SR")?;
    for (k, v) in &rig.device_config {
        if cfg[k] != json!(v) {
            return Err(format!("SR.create dropped or changed device-config:{k}"));
        }
    }
    if cfg["sr_uuid"] != json!(uuid) {
        return Err(format!(
            "SR.create's configuration lacks sr_uuid {uuid}: {cfg}"
        ));
    }
    // Repeating SR.create with the same uuid succeeds (xapi retries).
    ok(
        &rig.volume,
        "SR.create",
        json!({"dbg": DBG, "uuid": uuid, "configuration": rig.device_config,
               "name": "xapi-tests SR", "description": "made by xapi-tests"}),
    )?;
    let stat = ok(&rig.volume, "SR.stat", json!({"dbg": DBG, "sr": sr}))?;
    if stat["uuid"] != json!(uuid) || stat["name"] != "xapi-tests SR" || stat["sr"] != json!(sr) {
        return Err(format!("SR.stat does not describe the new SR: {stat}"));
    }
    if stat["health"] != json!(["Healthy", ""]) || stat["total_space"].as_u64() == Some(0) {
        return Err(format!("a fresh SR on a healthy pool: {stat}"));
    }
    let ls = ok(&rig.volume, "SR.ls", json!({"dbg": DBG, "sr": sr}))?;
    if ls != json!([]) {
        return Err(format!("a new SR lists volumes: {ls}"));
    }
    ok(
        &rig.volume,
        "SR.set_name",
        json!({"dbg": DBG, "sr": sr, "new_name": "renamed ☃"}),
    )?;
    ok(
        &rig.volume,
        "SR.set_description",
        json!({"dbg": DBG, "sr": sr, "new_description": "line one\nline two"}),
    )?;
    let stat = ok(&rig.volume, "SR.stat", json!({"dbg": DBG, "sr": sr}))?;
    if stat["name"] != "renamed ☃" || stat["description"] != "line one\nline two" {
        return Err(format!("SR.set_name/set_description not reflected: {stat}"));
    }
    // Probe with the user's device-config finds the SR, complete.
    let probed = ok(
        &rig.volume,
        "SR.probe",
        json!({"dbg": DBG, "configuration": rig.device_config}),
    )?;
    let found = probed
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["configuration"]["sr_uuid"] == json!(uuid))
        .ok_or_else(|| format!("SR.probe does not find SR {uuid}: {probed}"))?;
    if found["complete"] != true || found["sr"]["uuid"] != json!(uuid) {
        return Err(format!("SR.probe result for {uuid}: {found}"));
    }
    // The probed configuration attaches as well as SR.create's.
    if found["configuration"]["group"] != cfg["group"] {
        return Err(format!(
            "probe and create disagree on the group: {found} vs {cfg}"
        ));
    }
    if !attached_srs(rig)?.contains(&sr) {
        return Err(format!("Plugin.ls lacks the attached SR {sr}"));
    }
    let diag = ok(&rig.volume, "Plugin.diagnostics", json!({"dbg": DBG}))?;
    if !diag.as_str().unwrap_or_default().contains(&sr) {
        return Err(format!(
            "Plugin.diagnostics does not report SR {sr}: {diag}"
        ));
    }
    // Detach is idempotent; after it the SR is unknown to stat.
    ok(&rig.volume, "SR.detach", json!({"dbg": DBG, "sr": sr}))?;
    ok(&rig.volume, "SR.detach", json!({"dbg": DBG, "sr": sr}))?;
    if attached_srs(rig)?.contains(&sr) {
        return Err(format!("Plugin.ls still lists detached SR {sr}"));
    }
    fails_with(
        &rig.volume,
        "SR.stat",
        &json!({"dbg": DBG, "sr": sr}),
        "Sr_not_attached",
    )?;
    // Re-attach (as after a reboot) gives the same sr string.
    let again = ok(
        &rig.volume,
        "SR.attach",
        json!({"dbg": DBG, "configuration": cfg}),
    )?;
    if again != json!(sr) {
        return Err(format!("re-attach gave {again}, not {sr}"));
    }
    destroy_sr(rig, &cfg)?;
    if attached_srs(rig)?.contains(&sr) {
        return Err(format!("Plugin.ls still lists destroyed SR {sr}"));
    }
    fails_with(
        &rig.volume,
        "SR.attach",
        &json!({"dbg": DBG, "configuration": cfg}),
        "SR_does_not_exist",
    )?;
    Ok(())
}

// ---- Volumes -------------------------------------------------------------------

/// vdi-create as xapi does it: Volume.create, then Volume.set vdi-type.
pub fn create_vdi(rig: &Rig, sr: &str, name: &str, size: u64) -> Step<Value> {
    let v = ok(
        &rig.volume,
        "Volume.create",
        json!({"dbg": DBG, "sr": sr, "name": name, "description": "a test disk",
               "size": size, "sharable": false}),
    )?;
    let key = str_field(&v, "key");
    ok(
        &rig.volume,
        "Volume.set",
        json!({"dbg": DBG, "sr": sr, "key": key, "k": "vdi-type", "v": "user"}),
    )?;
    if v["virtual_size"].as_u64().unwrap_or(0) < size {
        return Err(format!(
            "Volume.create made {} bytes, asked {size}",
            v["virtual_size"]
        ));
    }
    Ok(v)
}

pub(crate) fn stat_vdi(rig: &Rig, sr: &str, key: &str) -> Step<Value> {
    ok(
        &rig.volume,
        "Volume.stat",
        json!({"dbg": DBG, "sr": sr, "key": key}),
    )
}

pub fn vdi_lifecycle(rig: &Rig) -> Step {
    let (sr, _, _) = create_sr(rig, "xapi-tests VDIs")?;
    let size = 10 * MIB + 1;
    let v = create_vdi(rig, &sr, "disk one", size)?;
    let key = str_field(&v, "key");
    let s = stat_vdi(rig, &sr, &key)?;
    if s["keys"] != json!({"vdi-type": "user"})
        || s["name"] != "disk one"
        || s["description"] != "a test disk"
    {
        return Err(format!("Volume.stat after vdi-create: {s}"));
    }
    if s["sharable"] != false || s["read_write"] != true {
        return Err(format!("Volume.stat flags: {s}"));
    }
    // The URI picks a registered datapath plugin, as xapi chooses it.
    let uris: Vec<String> = s["uri"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(String::from))
        .collect();
    if !rig.datapaths.is_empty() && choose_datapath(&uris, &rig.datapaths).is_none() {
        return Err(format!("no installed datapath plugin serves {uris:?}"));
    }
    // Keys xapi stores are returned verbatim, whatever their content.
    let keys = [
        ("content_id", "0f1c2d3e-0000-4000-8000-00000000000a"),
        ("_sm_config_read-caching-enabled-on-x", "true"),
        ("tags", "[\"a b\", \"é ☃\"]"),
        ("snapshot_time", "20260101T00:00:00Z"),
        ("odd=key with spaces", "value = with = signs"),
        ("empty", ""),
    ];
    for (k, val) in keys {
        ok(
            &rig.volume,
            "Volume.set",
            json!({"dbg": DBG, "sr": sr, "key": key, "k": k, "v": val}),
        )?;
    }
    ok(
        &rig.volume,
        "Volume.unset",
        json!({"dbg": DBG, "sr": sr, "key": key, "k": "snapshot_time"}),
    )?;
    ok(
        &rig.volume,
        "Volume.unset",
        json!({"dbg": DBG, "sr": sr, "key": key, "k": "never-set"}),
    )?;
    let s = stat_vdi(rig, &sr, &key)?;
    let mut want: BTreeMap<&str, &str> = keys.into_iter().collect();
    want.remove("snapshot_time");
    want.insert("vdi-type", "user");
    if s["keys"] != json!(want) {
        return Err(format!(
            "keys not verbatim: got {}, want {}",
            s["keys"],
            json!(want)
        ));
    }
    ok(
        &rig.volume,
        "Volume.set_name",
        json!({"dbg": DBG, "sr": sr, "key": key, "new_name": "disk ✓"}),
    )?;
    ok(
        &rig.volume,
        "Volume.set_description",
        json!({"dbg": DBG, "sr": sr, "key": key, "new_description": "described"}),
    )?;
    let s = stat_vdi(rig, &sr, &key)?;
    if s["name"] != "disk ✓" || s["description"] != "described" {
        return Err(format!("set_name/set_description not reflected: {s}"));
    }
    // Grow. The IDL declares `Volume.resize … returning unit` (xen-api
    // ocaml/xapi-storage/generator/lib/control.ml), and xapi-storage-script
    // binds the result as `()`: anything but `null` is a marshalling error
    // in xapi after the volume has already grown. The new size is read
    // back with Volume.stat, as xapi does.
    let old = s["virtual_size"].as_u64().unwrap_or(0);
    ok(
        &rig.volume,
        "Volume.resize",
        json!({"dbg": DBG, "sr": sr, "key": key, "new_size": old + 7 * MIB}),
    )?;
    let grown = stat_vdi(rig, &sr, &key)?["virtual_size"]
        .as_u64()
        .unwrap_or(0);
    if grown < old + 7 * MIB {
        return Err(format!(
            "resize to {} left the size at {grown}",
            old + 7 * MIB
        ));
    }
    fails_with(
        &rig.volume,
        "Volume.resize",
        &json!({"dbg": DBG, "sr": sr, "key": key, "new_size": MIB}),
        "Invalid_argument",
    )?;
    if stat_vdi(rig, &sr, &key)?["virtual_size"] != json!(grown) {
        return Err("a refused shrink changed the size".into());
    }
    // Sharable volumes do not exist in VastSky (one head per volume).
    fails_with(
        &rig.volume,
        "Volume.create",
        &json!({"dbg": DBG, "sr": sr, "name": "shared", "description": "", "size": MIB, "sharable": true}),
        "Unimplemented",
    )?;
    let second = create_vdi(rig, &sr, "disk two", 4 * MIB)?;
    let ls = ok(&rig.volume, "SR.ls", json!({"dbg": DBG, "sr": sr}))?;
    let mut listed: Vec<String> = ls
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| str_field(v, "key"))
        .collect();
    listed.sort();
    let mut want = vec![key.clone(), str_field(&second, "key")];
    want.sort();
    if listed != want {
        return Err(format!("SR.ls lists {listed:?}, want {want:?}"));
    }
    let stat = ok(&rig.volume, "SR.stat", json!({"dbg": DBG, "sr": sr}))?;
    if stat["free_space"].as_u64() >= stat["total_space"].as_u64() {
        return Err(format!(
            "SR.stat free space does not account for VDIs: {stat}"
        ));
    }
    // An SR with VDIs cannot be destroyed.
    fails_with(
        &rig.volume,
        "SR.destroy",
        &json!({"dbg": DBG, "sr": sr}),
        "SR_not_empty",
    )?;
    // vdi-destroy: Volume.stat then Volume.destroy.
    for k in [key.clone(), str_field(&second, "key")] {
        stat_vdi(rig, &sr, &k)?;
        ok(
            &rig.volume,
            "Volume.destroy",
            json!({"dbg": DBG, "sr": sr, "key": k}),
        )?;
        fails_with(
            &rig.volume,
            "Volume.stat",
            &json!({"dbg": DBG, "sr": sr, "key": k}),
            "Volume_does_not_exist",
        )?;
        fails_with(
            &rig.volume,
            "Volume.destroy",
            &json!({"dbg": DBG, "sr": sr, "key": k}),
            "Volume_does_not_exist",
        )?;
    }
    ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    Ok(())
}

/// SR.stat's health follows the SR's mirrors: Healthy, then Recovering
/// with a count once a disk holding one of its legs fails. (It fails a
/// disk: run it on a cluster of its own.)
pub fn health_follows_mirrors(rig: &Rig, admin: &ManagerAdmin) -> Step {
    let (sr, _, _) = create_sr(rig, "health")?;
    let v = create_vdi(rig, &sr, "d", 4 * MIB)?;
    let stat = ok(&rig.volume, "SR.stat", json!({"dbg": DBG, "sr": sr}))?;
    if stat["health"] != json!(["Healthy", ""]) {
        return Err(format!("healthy SR: {stat}"));
    }
    admin.fail_disk_of(&str_field(&v, "key"))?;
    let stat = ok(&rig.volume, "SR.stat", json!({"dbg": DBG, "sr": sr}))?;
    let msg = stat["health"][1].as_str().unwrap_or_default();
    if stat["health"][0] != "Recovering" || !msg.contains("mirrored disks rebuilding/degraded") {
        return Err(format!("SR with a failed leg: {stat}"));
    }
    Ok(())
}

// ---- Bad input -----------------------------------------------------------------

/// Every kind of bad input gets the error object with the expected code,
/// and the manager's groups and volumes are exactly what they were.
/// `wrong_token` must not be a valid manager token. Returns the number of
/// cases run.
pub fn bad_input_changes_nothing(
    rig: &Rig,
    admin: &ManagerAdmin,
    wrong_token: &str,
) -> Step<usize> {
    // A is thin (the default), B thick: only thick volumes can run out of
    // space at create, and only thin ones have snapshots.
    let (sr_a, _, cfg_a) = create_sr(rig, "bad-input A")?;
    let (sr_b, _, cfg_b) = create_sr_with(rig, "bad-input B", &[("provisioning", "thick")])?;
    let va = create_vdi(rig, &sr_a, "a", 4 * MIB)?;
    let vb = create_vdi(rig, &sr_b, "b", 4 * MIB)?;
    let (ka, kb) = (str_field(&va, "key"), str_field(&vb, "key"));
    let plain_group = format!("plain-{}", &new_uuid()[..8]);
    admin.create_plain_group(&plain_group)?;
    let group_b = cfg_b["group"].as_str().unwrap_or_default().to_string();
    let before = admin.snapshot()?;
    let mut cases = 0;

    // Malformed stdin, for every installed call.
    for call in rig.volume.calls().map_err(|e| e.to_string())? {
        for stdin in ["", "not json", "[]", "\"x\"", "{}", "{\"dbg\": 1}"] {
            let e = fails(&rig.volume, &call, stdin.as_bytes())?;
            if e.code != "Invalid_argument" {
                return Err(format!(
                    "{call} stdin {stdin:?}: code {} {:?}",
                    e.code, e.params
                ));
            }
            cases += 1;
        }
    }
    let config = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = cfg_a.as_object().cloned().unwrap_or_default();
        edit(&mut c);
        Value::Object(c)
    };
    let unknown_uuid = new_uuid();
    let no_manager = config(&|c| {
        c.remove("manager");
    });
    let manager_down = config(&|c| {
        c.insert("manager".into(), json!("http://127.0.0.1:1"));
    });
    let mut manager_down_new = rig.device_config.clone();
    manager_down_new.insert("manager".into(), "http://127.0.0.1:1".into());
    let wrong_token_cfg = config(&|c| {
        c.remove("token_file");
        c.insert("token".into(), json!(wrong_token));
    });
    let unknown_sr = config(&|c| {
        c.insert("sr_uuid".into(), json!(unknown_uuid));
        c.remove("group");
    });
    // SR A's uuid with another SR's group, or with a group that is no SR's
    // at all: SR.attach must not hand out another group's volumes.
    let other_srs_group = config(&|c| {
        c.insert("group".into(), json!(group_b));
    });
    let not_an_sr_group = config(&|c| {
        c.insert("group".into(), json!(plain_group));
    });
    let no_sr_uuid = config(&|c| {
        c.remove("sr_uuid");
    });
    let bad_replicas = config(&|c| {
        c.insert("replicas".into(), json!("many"));
    });
    let d = |extra: Value| {
        let mut m = json!({"dbg": DBG});
        for (k, v) in extra.as_object().into_iter().flatten() {
            m[k] = v.clone();
        }
        m
    };
    let table: Vec<(&str, Value, &str)> = vec![
        (
            "SR.attach",
            d(json!({"configuration": no_manager})),
            "Invalid_configuration",
        ),
        (
            "SR.attach",
            d(json!({"configuration": manager_down})),
            "Backend_unreachable",
        ),
        (
            "SR.attach",
            d(json!({"configuration": wrong_token_cfg})),
            "Unauthorized",
        ),
        (
            "SR.attach",
            d(json!({"configuration": unknown_sr})),
            "SR_does_not_exist",
        ),
        (
            "SR.attach",
            d(json!({"configuration": other_srs_group})),
            "Invalid_configuration",
        ),
        (
            "SR.attach",
            d(json!({"configuration": not_an_sr_group})),
            "Invalid_configuration",
        ),
        (
            "SR.attach",
            d(json!({"configuration": no_sr_uuid})),
            "Invalid_configuration",
        ),
        (
            "SR.attach",
            d(json!({"configuration": "manager=x"})),
            "Invalid_argument",
        ),
        (
            "SR.attach",
            d(json!({"configuration": {"manager": 1}})),
            "Invalid_argument",
        ),
        (
            "SR.probe",
            d(json!({"configuration": manager_down})),
            "Backend_unreachable",
        ),
        (
            "SR.create",
            d(
                json!({"uuid": "not-a-uuid", "configuration": cfg_a, "name": "n", "description": ""}),
            ),
            "Invalid_argument",
        ),
        (
            "SR.create",
            d(
                json!({"uuid": new_uuid(), "configuration": bad_replicas, "name": "n", "description": ""}),
            ),
            "Invalid_configuration",
        ),
        (
            "SR.create",
            d(
                json!({"uuid": new_uuid(), "configuration": rig.device_config, "name": "bell\u{7}", "description": ""}),
            ),
            "Invalid_argument",
        ),
        (
            "SR.create",
            d(
                json!({"uuid": new_uuid(), "configuration": manager_down_new, "name": "n", "description": ""}),
            ),
            "Backend_unreachable",
        ),
        (
            "SR.create",
            d(json!({"uuid": new_uuid(), "configuration": cfg_a, "name": "n", "description": ""})),
            "Invalid_configuration",
        ),
        (
            "SR.create",
            d(json!({"uuid": new_uuid(), "configuration": rig.device_config, "name": "n"})),
            "Invalid_argument",
        ),
        ("SR.stat", d(json!({"sr": 5})), "Invalid_argument"),
        ("SR.stat", d(json!({"sr": "sr-unknown"})), "Sr_not_attached"),
        (
            "SR.stat",
            d(json!({"sr": "../../etc/passwd"})),
            "Sr_not_attached",
        ),
        ("SR.ls", d(json!({})), "Invalid_argument"),
        (
            "SR.set_name",
            d(json!({"sr": sr_a, "new_name": "x".repeat(100_000)})),
            "Invalid_argument",
        ),
        (
            "SR.set_description",
            d(json!({"sr": sr_a})),
            "Invalid_argument",
        ),
        ("SR.destroy", d(json!({"sr": sr_a})), "SR_not_empty"),
        (
            "SR.destroy",
            d(json!({"sr": "sr-unknown"})),
            "Sr_not_attached",
        ),
        (
            "Volume.create",
            d(json!({"sr": sr_a, "name": "n", "description": "", "size": -1, "sharable": false})),
            "Invalid_argument",
        ),
        (
            "Volume.create",
            d(json!({"sr": sr_a, "name": "n", "description": "", "size": 0, "sharable": false})),
            "Invalid_argument",
        ),
        (
            "Volume.create",
            d(json!({"sr": sr_a, "name": "n", "description": "", "size": "10", "sharable": false})),
            "Invalid_argument",
        ),
        (
            "Volume.create",
            d(json!({"sr": sr_a, "name": "n", "description": "", "size": 1.5, "sharable": false})),
            "Invalid_argument",
        ),
        (
            "Volume.create",
            d(
                json!({"sr": sr_a, "name": "n", "description": "", "size": 1u64 << 60, "sharable": false}),
            ),
            "Invalid_argument",
        ),
        (
            "Volume.create",
            d(
                json!({"sr": sr_b, "name": "n", "description": "", "size": 64u64 << 30, "sharable": false}),
            ),
            "Not_enough_space",
        ),
        (
            "Volume.create",
            d(json!({"sr": sr_a, "name": "n", "description": "", "size": MIB})),
            "Invalid_argument",
        ),
        (
            "Volume.create",
            d(json!({"sr": sr_a, "name": "n", "description": "", "size": MIB, "sharable": true})),
            "Unimplemented",
        ),
        (
            "Volume.create",
            d(
                json!({"sr": "sr-unknown", "name": "n", "description": "", "size": MIB, "sharable": false}),
            ),
            "Sr_not_attached",
        ),
        (
            "Volume.create",
            d(
                json!({"sr": sr_a, "name": "tab\u{1}", "description": "", "size": MIB, "sharable": false}),
            ),
            "Invalid_argument",
        ),
        (
            "Volume.stat",
            d(json!({"sr": sr_a, "key": new_uuid()})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.stat",
            d(json!({"sr": sr_a, "key": "../x"})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.stat",
            d(json!({"sr": sr_a, "key": kb})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.destroy",
            d(json!({"sr": sr_a, "key": kb})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.set",
            d(json!({"sr": sr_a, "key": kb, "k": "x", "v": "y"})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.set",
            d(json!({"sr": sr_a, "key": ka, "k": "x"})),
            "Invalid_argument",
        ),
        (
            "Volume.set",
            d(json!({"sr": sr_a, "key": ka, "k": 1, "v": "y"})),
            "Invalid_argument",
        ),
        (
            "Volume.unset",
            d(json!({"sr": sr_a, "key": ka})),
            "Invalid_argument",
        ),
        (
            "Volume.set_name",
            d(json!({"sr": sr_a, "key": ka, "new_name": "x".repeat(100_000)})),
            "Invalid_argument",
        ),
        (
            "Volume.resize",
            d(json!({"sr": sr_a, "key": ka, "new_size": MIB})),
            "Invalid_argument",
        ),
        (
            "Volume.resize",
            d(json!({"sr": sr_a, "key": ka, "new_size": -5})),
            "Invalid_argument",
        ),
        (
            "Volume.resize",
            d(json!({"sr": sr_b, "key": kb, "new_size": 64u64 << 30})),
            "Not_enough_space",
        ),
        (
            "Volume.snapshot",
            d(json!({"sr": sr_a, "key": kb})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.snapshot",
            d(json!({"sr": sr_b, "key": kb})),
            "Invalid_argument",
        ),
        (
            "Volume.clone",
            d(json!({"sr": sr_a, "key": "no/such"})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.clone",
            d(json!({"sr": sr_b, "key": kb})),
            "Invalid_argument",
        ),
        (
            "Volume.revert",
            d(json!({"sr": sr_a, "key": ka, "snapshot": ka})),
            "Invalid_argument",
        ),
        (
            "Volume.revert",
            d(json!({"sr": sr_a, "key": ka, "snapshot": kb})),
            "Volume_does_not_exist",
        ),
        (
            "Volume.revert",
            d(json!({"sr": sr_a, "key": ka})),
            "Invalid_argument",
        ),
        (
            "Volume.resize",
            d(json!({"sr": sr_a, "key": kb, "new_size": 64 * MIB})),
            "Volume_does_not_exist",
        ),
    ];
    for (call, args, code) in &table {
        fails_with(&rig.volume, call, args, code)?;
        cases += 1;
    }
    for dp in &rig.datapaths {
        let uri = format!("{}://{sr_a}/{ka}", dp.name);
        let dtable: Vec<(&str, Value, &str)> = vec![
            (
                "Datapath.attach",
                d(json!({"uri": "nbd://x/y", "domain": "0"})),
                "Invalid_argument",
            ),
            (
                "Datapath.attach",
                d(json!({"uri": format!("{}://../etc", dp.name), "domain": "0"})),
                "Invalid_argument",
            ),
            (
                "Datapath.attach",
                d(json!({"uri": uri})),
                "Invalid_argument",
            ),
            (
                "Datapath.activate",
                d(json!({"uri": 7, "domain": "0"})),
                "Invalid_argument",
            ),
            (
                "Datapath.open",
                d(json!({"uri": uri, "persistent": false})),
                "Unimplemented",
            ),
            (
                "Datapath.open",
                d(json!({"uri": uri, "persistent": "yes"})),
                "Invalid_argument",
            ),
            ("Datapath.close", d(json!({})), "Invalid_argument"),
        ];
        for (call, args, code) in &dtable {
            fails_with(dp, call, args, code)?;
            cases += 1;
        }
        for call in dp.calls().map_err(|e| e.to_string())? {
            for stdin in ["", "{", "[]", "{}"] {
                let e = fails(dp, &call, stdin.as_bytes())?;
                if e.code != "Invalid_argument" {
                    return Err(format!(
                        "{call} stdin {stdin:?}: code {} {:?}",
                        e.code, e.params
                    ));
                }
                cases += 1;
            }
        }
    }
    let after = admin.snapshot()?;
    if before != after {
        return Err(format!(
            "refused calls changed the manager:\nbefore {before}\nafter  {after}"
        ));
    }
    // The unimplemented calls have no executable (xapi: SCRIPT_MISSING).
    for call in ["Volume.copy", "Volume.compose", "Volume.enable_cbt"] {
        if rig
            .volume
            .calls()
            .map_err(|e| e.to_string())?
            .iter()
            .any(|c| c == call)
        {
            return Err(format!("{call} is installed but not supported"));
        }
    }
    for (sr, k) in [(&sr_a, &ka), (&sr_b, &kb)] {
        ok(
            &rig.volume,
            "Volume.destroy",
            json!({"dbg": DBG, "sr": sr, "key": k}),
        )?;
        ok(&rig.volume, "SR.destroy", json!({"dbg": DBG, "sr": sr}))?;
    }
    admin.delete_group(&plain_group)?;
    Ok(cases)
}

// ---- Datapath ------------------------------------------------------------------

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
    let e = fails(
        dp,
        "Datapath.activate",
        json!({"dbg": DBG, "uri": uri, "domain": "7"})
            .to_string()
            .as_bytes(),
    )?;
    if !e.params.join(" ").contains("storage-only") {
        return Err(format!(
            "activate on a storage-only host: {} {:?}",
            e.code, e.params
        ));
    }
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
    let e = fails(
        sdp,
        "Datapath.activate_readonly",
        json!({"dbg": DBG, "uri": suri, "domain": "u0-backup"})
            .to_string()
            .as_bytes(),
    )?;
    if !e.params.join(" ").contains("storage-only") {
        return Err(format!(
            "activate_readonly on a storage-only host: {} {:?}",
            e.code, e.params
        ));
    }
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
