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
//! Here: the SR and volume sequences, and the helpers every sequence
//! shares. The datapath sequences are in `crate::datapath`, bad input in
//! `crate::bad_input`, snapshots, clones and reverts in `crate::snapshots`.

use std::collections::BTreeMap;
use std::io::Read;
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
