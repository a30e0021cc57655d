//! The xapi-storage IDL's result types as one table, and the checker that
//! every plugin answer goes through.
//!
//! [`RESULTS`] maps each call of the IDL (xen-api
//! `ocaml/xapi-storage/generator/lib/{plugin,control,data}.ml`, cited per
//! entry as `file:line`) to its result type, written as the IDL types it.
//! [`crate::runner`] checks every successful answer against it, so no call
//! made by xapi-tests escapes the check, and a call the table does not know
//! is refused rather than passed unchecked. Layout: this file holds the
//! types and the checker, `idl.rs` the table, `rules.rs` what xapi requires
//! beyond the types.
//!
//! How a type looks in JSON is what xapi's decoder (ocaml-rpc's
//! `Rpcmarshal.unmarshal`, `src/lib/rpcmarshal.ml`) accepts, in the
//! canonical form it writes itself:
//!
//! - `unit` is `null` and nothing else (`Rpc.ResultUnmarshallers.unit_of_rpc`).
//! - `int`/`int64` are JSON integers, `bool` a JSON boolean, `string` a
//!   JSON string; no `null` stands in for any of them.
//! - `t list` is a JSON array; `(string * string) list` a JSON object of
//!   strings; a pair a two-element array.
//! - A record is a JSON object. A required field must be present. An
//!   `option` field is absent for `None`; when present it must hold a value
//!   of the inner type: ocaml-rpc fails the whole record on `null` there
//!   (rpcmarshal.ml, the `Struct` case's `Option` getter). Fields the IDL
//!   does not declare are refused here: xapi would drop them silently, so
//!   they can only be a misspelt field.
//! - A variant case without payload is its tag as a string (`"Data"`); a
//!   case with a payload is `["Tag", payload]`.
//!
//! Some records also carry a *rule*: what xapi-storage-script, xapi or
//! xenopsd require of a value beyond its type (each rule cites where).

use serde_json::{Map, Value};

mod idl;
mod rules;

pub use idl::*;

pub type Check = Result<(), String>;

/// A type of the xapi-storage IDL.
#[derive(Debug)]
pub enum Ty {
    Unit,
    Bool,
    /// OCaml `int` (63 bits on the 64-bit hosts xapi runs on).
    Int,
    Int64,
    Float,
    Str,
    List(&'static Ty),
    /// `(string * string) list`.
    StringMap,
    Pair(&'static Ty, &'static Ty),
    Record(&'static Record),
    Variant(&'static Variant),
}

/// What a record must satisfy beyond its type; gets the object and its
/// JSON path.
pub type Rule = fn(&Map<String, Value>, &str) -> Check;

#[derive(Debug)]
pub struct Record {
    pub name: &'static str,
    pub fields: &'static [Field],
    pub rule: Option<Rule>,
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    /// An `option` field: absent means `None`.
    pub optional: bool,
}

const fn req(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        optional: false,
    }
}

const fn opt(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        optional: true,
    }
}

#[derive(Debug)]
pub struct Variant {
    pub name: &'static str,
    /// Tag and payload type (`None`: a case without payload).
    pub cases: &'static [(&'static str, Option<Ty>)],
}

/// One call of the IDL and the type of its result.
#[derive(Debug)]
pub struct CallResult {
    /// As installed (`Plugin.Query`); looked up case-insensitively, as
    /// xapi-storage-script finds scripts.
    pub call: &'static str,
    pub result: Ty,
    /// Where the IDL declares the call (xen-api, generator/lib/…).
    pub idl: &'static str,
}

/// The table entry of a call, found case-insensitively.
pub fn result_type(call: &str) -> Option<&'static CallResult> {
    RESULTS.iter().find(|c| c.call.eq_ignore_ascii_case(call))
}

/// Checks a successful call's answer against the IDL type of its result.
/// A call the table does not know fails: nothing goes unchecked.
pub fn result(call: &str, v: &Value) -> Check {
    let entry = result_type(call).ok_or_else(|| {
        format!("{call} is not a call of the xapi-storage IDL, so its answer cannot be checked")
    })?;
    conforms(&entry.result, v, &format!("{} result", entry.call)).map_err(|e| {
        format!(
            "{e} (the IDL, {}, types the result as {})",
            entry.idl,
            describe(&entry.result)
        )
    })
}

/// A failed call's stdout: the error object xapi-storage-script parses.
pub fn error_object(v: &Value) -> Check {
    conforms(&Ty::Record(&ERROR), v, "error")
}

/// The type as the IDL writes it.
pub fn describe(ty: &Ty) -> String {
    match ty {
        Ty::Unit => "unit".into(),
        Ty::Bool => "bool".into(),
        Ty::Int => "int".into(),
        Ty::Int64 => "int64".into(),
        Ty::Float => "float".into(),
        Ty::Str => "string".into(),
        Ty::List(t) => format!("{} list", describe(t)),
        Ty::StringMap => "(string * string) list".into(),
        Ty::Pair(a, b) => format!("({} * {})", describe(a), describe(b)),
        Ty::Record(r) => r.name.into(),
        Ty::Variant(v) => v.name.into(),
    }
}

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// Checks `v` against `ty`; errors name the JSON path.
pub fn conforms(ty: &Ty, v: &Value, path: &str) -> Check {
    let wrong = || format!("{path}: expected {}, got {}", describe(ty), shown(v));
    match ty {
        Ty::Unit => v.is_null().then_some(()).ok_or_else(wrong),
        Ty::Bool => v.is_boolean().then_some(()).ok_or_else(wrong),
        // OCaml's int on a 64-bit host is 63 bits wide.
        Ty::Int => v
            .as_i64()
            .filter(|n| (-(1i64 << 62)..(1i64 << 62)).contains(n))
            .map(|_| ())
            .ok_or_else(wrong),
        Ty::Int64 => v.as_i64().map(|_| ()).ok_or_else(wrong),
        Ty::Float => v.is_number().then_some(()).ok_or_else(wrong),
        Ty::Str => v.is_string().then_some(()).ok_or_else(wrong),
        Ty::List(each) => {
            let items = v.as_array().ok_or_else(wrong)?;
            for (i, item) in items.iter().enumerate() {
                conforms(each, item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Ty::StringMap => {
            let m = v.as_object().ok_or_else(wrong)?;
            for (k, s) in m {
                conforms(&Ty::Str, s, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Ty::Pair(a, b) => match v.as_array().map(Vec::as_slice) {
            Some([x, y]) => {
                conforms(a, x, &format!("{path}[0]"))?;
                conforms(b, y, &format!("{path}[1]"))
            }
            _ => Err(wrong()),
        },
        Ty::Record(r) => {
            let m = v.as_object().ok_or_else(wrong)?;
            if let Some(extra) = m.keys().find(|k| !r.fields.iter().any(|f| f.name == *k)) {
                return Err(format!(
                    "{path}: field '{extra}' is not in the IDL's {} (xapi would drop it)",
                    r.name
                ));
            }
            for f in r.fields {
                let fp = format!("{path}.{}", f.name);
                match m.get(f.name) {
                    None if f.optional => {}
                    None => {
                        return Err(format!(
                            "{path}: missing field '{}' of {} ({})",
                            f.name,
                            r.name,
                            describe(&f.ty)
                        ));
                    }
                    Some(Value::Null) if f.optional => {
                        return Err(format!(
                            "{fp}: null; an absent value of this {} option must be left out (xapi's decoder fails on null)",
                            describe(&f.ty)
                        ));
                    }
                    Some(x) => conforms(&f.ty, x, &fp)?,
                }
            }
            match r.rule {
                Some(rule) => rule(m, path),
                None => Ok(()),
            }
        }
        Ty::Variant(var) => {
            let (tag, payload) = match v {
                Value::String(tag) => (tag.as_str(), None),
                Value::Array(a) => match a.as_slice() {
                    [Value::String(tag), payload] => (tag.as_str(), Some(payload)),
                    _ => return Err(wrong()),
                },
                _ => return Err(wrong()),
            };
            let Some((_, case)) = var.cases.iter().find(|(t, _)| *t == tag) else {
                let tags: Vec<&str> = var.cases.iter().map(|(t, _)| *t).collect();
                return Err(format!(
                    "{path}: '{tag}' is not a case of {} ({})",
                    var.name,
                    tags.join(" | ")
                ));
            };
            match (case, payload) {
                (None, None) => Ok(()),
                (Some(t), Some(p)) => conforms(t, p, &format!("{path}({tag})")),
                (None, Some(_)) => Err(format!(
                    "{path}: case {tag} of {} has no payload; write it as \"{tag}\"",
                    var.name
                )),
                (Some(t), None) => Err(format!(
                    "{path}: case {tag} of {} carries a {}; write it as [\"{tag}\", …]",
                    var.name,
                    describe(t)
                )),
            }
        }
    }
}

pub use rules::KNOWN_FEATURES;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn volume() -> Value {
        json!({"key":"k","uuid":"k","name":"n","description":"","read_write":true,"sharable":false,
               "virtual_size":4096,"physical_utilisation":4096,"uri":["vsky://g/k"],"keys":{"a":"b"}})
    }

    fn sr_stat() -> Value {
        json!({"sr":"s","name":"n","uuid":"u","description":"","free_space":1,"total_space":2,
               "datasources":[],"clustered":false,"health":["Recovering","2 rebuilding"]})
    }

    fn query() -> Value {
        json!({"plugin":"vastsky","name":"n","description":"d","vendor":"v","copyright":"c",
               "version":"1","required_api_version":"5.0","features":["SR_PROBE","VDI_RESIZE/2"],
               "configuration":{"k":"d"},"required_cluster_stack":[]})
    }

    fn backend() -> Value {
        json!({"implementations":[
            ["XenDisk", {"backend_type":"vbd","params":"/dev/x","extra":{}}],
            ["BlockDevice", {"path":"/dev/x"}]]})
    }

    /// A value of the result type and one that is wrong only in shape,
    /// for every entry of the table: an entry added without a case here
    /// fails this test.
    fn good_and_bad(call: &str) -> (Value, Value) {
        let op = json!(["CopyV1", "op-1"]);
        match call {
            "Plugin.Query" => (query(), {
                let mut q = query();
                q["features"] = json!("SR_PROBE");
                q
            }),
            "Plugin.ls" | "Volume.similar_content" => (json!(["a", "b"]), json!(["a", 1])),
            "Plugin.diagnostics" | "SR.attach" | "Datapath.import_activate" => {
                (json!("text"), json!(["text"]))
            }
            "SR.probe" => (
                json!([{"configuration":{"sr_uuid":"u"},"complete":true,"sr":sr_stat(),"extra_info":{}},
                       {"configuration":{},"complete":false,"extra_info":{}}]),
                json!([{"configuration":{"sr_uuid":"u"},"complete":true,"sr":null,"extra_info":{}}]),
            ),
            "SR.create" => (json!({"sr_uuid":"u"}), json!([["sr_uuid", "u"]])),
            "SR.stat" => (sr_stat(), {
                let mut s = sr_stat();
                s["total_space"] = json!("2");
                s
            }),
            "SR.ls" => (json!([volume()]), json!(volume())),
            "Volume.create" | "Volume.snapshot" | "Volume.clone" | "Volume.copy"
            | "Volume.stat" => (volume(), {
                let mut v = volume();
                v.as_object_mut().unwrap().remove("keys");
                v
            }),
            "Volume.compare" => (
                json!({"blocksize":65536,"ranges":[[0,4096],[8192,4096]]}),
                json!({"blocksize":65536,"ranges":[[0,4096,1]]}),
            ),
            "Volume.list_changed_blocks" => (
                json!({"granularity":65536,"bitmap":"AAE="}),
                json!({"granularity":"64k","bitmap":"AAE="}),
            ),
            "Datapath.attach" => (backend(), json!(backend()["implementations"])),
            "Data.copy" | "Data.mirror" => (op.clone(), json!("CopyV1")),
            "Data.ls" => (json!([op, ["MirrorV1", "m"]]), json!([["Move", "x"]])),
            "Data.stat" => (
                json!({"failed":false,"complete":false,"progress":0.5}),
                json!({"failed":false,"complete":false,"progress":null}),
            ),
            _ => {
                let entry = result_type(call).unwrap();
                assert!(matches!(entry.result, Ty::Unit), "no case for {call}");
                // Volume.resize answering the new size was issue 12's bug.
                (json!(null), json!(4096))
            }
        }
    }

    #[test]
    fn every_table_entry_takes_its_type_and_refuses_a_wrong_shape() {
        for entry in RESULTS {
            let (good, bad) = good_and_bad(entry.call);
            result(entry.call, &good).unwrap_or_else(|e| panic!("{}: {e}", entry.call));
            let e = result(entry.call, &bad).expect_err(&format!("{} accepted {bad}", entry.call));
            assert!(e.contains(entry.idl), "{}: {e}", entry.call);
        }
    }

    #[test]
    fn calls_are_unique_and_found_case_insensitively() {
        for (i, a) in RESULTS.iter().enumerate() {
            assert!(
                !RESULTS[i + 1..]
                    .iter()
                    .any(|b| b.call.eq_ignore_ascii_case(a.call)),
                "{} twice",
                a.call
            );
        }
        assert_eq!(result_type("plugin.query").unwrap().call, "Plugin.Query");
        result("volume.RESIZE", &json!(null)).unwrap();
        let e = result("SR.frobnicate", &json!(null)).unwrap_err();
        assert!(e.contains("not a call of the xapi-storage IDL"), "{e}");
    }

    #[test]
    fn options_are_absent_never_null() {
        let mut s = sr_stat();
        s.as_object_mut().unwrap().remove("uuid");
        result("SR.stat", &s).unwrap();
        s["uuid"] = json!(null);
        assert!(result("SR.stat", &s).unwrap_err().contains("null"));
        let mut v = volume();
        v["volume_type"] = json!("Data");
        v["cbt_enabled"] = json!(false);
        result("Volume.stat", &v).unwrap();
        // ocaml-rpc writes a case without payload as its bare tag.
        v["volume_type"] = json!(["Data"]);
        assert!(result("Volume.stat", &v).is_err());
        v["volume_type"] = json!("Data");
        v["cbt_enabled"] = json!(null);
        assert!(result("Volume.stat", &v).is_err());
    }

    #[test]
    fn volumes_are_checked_field_by_field() {
        let mut v = volume();
        v["virtual_size"] = json!(-1);
        assert!(
            result("Volume.stat", &v)
                .unwrap_err()
                .contains("virtual_size")
        );
        let mut v = volume();
        v["keys"] = json!({"a": 1});
        assert!(result("Volume.stat", &v).unwrap_err().contains("keys.a"));
        let mut v = volume();
        v["virtual_sise"] = json!(1);
        assert!(
            result("Volume.stat", &v)
                .unwrap_err()
                .contains("'virtual_sise' is not in")
        );
        let mut v = volume();
        v.as_object_mut().unwrap().remove("uri");
        assert!(
            result("Volume.stat", &v)
                .unwrap_err()
                .contains("missing field 'uri'")
        );
        let mut v = volume();
        v["uri"] = json!(["/dev/x"]);
        assert!(result("Volume.stat", &v).is_err());
        let mut v = volume();
        v["virtual_size"] = json!(1u64 << 63);
        assert!(result("Volume.stat", &v).unwrap_err().contains("int64"));
    }

    #[test]
    fn backends_need_xendisk_first_and_a_dom0_path() {
        let xd = json!(["XenDisk", {"backend_type":"vbd","params":"/dev/x","extra":{}}]);
        let bd = json!(["BlockDevice", {"path":"/dev/x"}]);
        let attach = |v: Value| result("Datapath.attach", &v);
        attach(json!({"implementations":[xd, bd]})).unwrap();
        assert!(attach(json!({"implementations":[bd, xd]})).is_err());
        assert!(attach(json!({"implementations":[xd]})).is_err());
        assert!(attach(json!({"implementations":[]})).is_err());
        let bad = json!(["XenDisk", {"backend_type":"tap","params":"/dev/x","extra":{}}]);
        assert!(attach(json!({"implementations":[bad, bd]})).is_err());
        let rel = json!(["BlockDevice", {"path":"dev/x"}]);
        assert!(attach(json!({"implementations":[xd, rel]})).is_err());
        let unknown = json!(["Tapdisk", {"path":"/dev/x"}]);
        assert!(
            attach(json!({"implementations":[xd, unknown]}))
                .unwrap_err()
                .contains("not a case of implementation")
        );
    }

    #[test]
    fn sr_stats_health_and_errors_are_checked() {
        let mut bad = sr_stat();
        bad["health"] = json!(["Sick", ""]);
        assert!(result("SR.stat", &bad).is_err());
        let mut bad = sr_stat();
        bad["health"] = json!("Healthy");
        assert!(
            result("SR.stat", &bad)
                .unwrap_err()
                .contains("carries a string")
        );
        let mut bad = sr_stat();
        bad["free_space"] = json!(3);
        assert!(result("SR.stat", &bad).is_err());
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
        assert!(
            error_object(
                &json!({"code":"X","params":[],"backtrace":{"error":"","files":[],"lines":["1"]}})
            )
            .is_err()
        );
    }

    #[test]
    fn query_and_probe_rules() {
        let mut bad = query();
        bad["features"] = json!(["FLY"]);
        assert!(result("Plugin.Query", &bad).is_err());
        let mut bad = query();
        bad["required_api_version"] = json!("4.0");
        assert!(result("Plugin.Query", &bad).is_err());
        let mut bad = query();
        bad["plugin"] = json!("org.vastsky");
        assert!(result("Plugin.Query", &bad).is_err());
        let probe = |v: Value| result("SR.probe", &json!([v]));
        probe(
            json!({"configuration":{"sr_uuid":"u"},"complete":true,"sr":sr_stat(),"extra_info":{}}),
        )
        .unwrap();
        assert!(
            probe(json!({"configuration":{},"complete":true,"sr":sr_stat(),"extra_info":{}}))
                .is_err()
        );
        assert!(
            probe(json!({"configuration":{"sr_uuid":"u"},"complete":false,"extra_info":{}}))
                .is_err()
        );
    }
}
