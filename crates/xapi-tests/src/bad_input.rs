//! Bad input through the plugins: every malformed call gets the IDL's
//! error object with the expected code, and changes nothing in the
//! manager.

use serde_json::{Value, json};

use crate::scenarios::*;

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
