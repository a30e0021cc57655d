//! The xapi-storage IDL's result types as one table, and the checker that
//! every plugin answer goes through.
//!
//! [`RESULTS`] maps each call of the IDL (xen-api
//! `ocaml/xapi-storage/generator/lib/{plugin,control,data}.ml`, cited per
//! entry as `file:line`) to its result type, written as the IDL types it.
//! [`crate::runner`] checks every successful answer against it, so no call
//! made by xapi-tests escapes the check, and a call the table does not know
//! is refused rather than passed unchecked.
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

// ---- The IDL's record and variant types -------------------------------------

/// plugin.ml:6-21 `query_result`.
pub const QUERY_RESULT: Record = Record {
    name: "query_result",
    fields: &[
        req("plugin", Ty::Str),
        req("name", Ty::Str),
        req("description", Ty::Str),
        req("vendor", Ty::Str),
        req("copyright", Ty::Str),
        req("version", Ty::Str),
        req("required_api_version", Ty::Str),
        req("features", Ty::List(&Ty::Str)),
        req("configuration", Ty::StringMap),
        req("required_cluster_stack", Ty::List(&Ty::Str)),
    ],
    rule: Some(rules::query_result),
};

/// control.ml:27-35 `health`.
pub const HEALTH: Variant = Variant {
    name: "health",
    cases: &[
        ("Healthy", Some(Ty::Str)),
        ("Recovering", Some(Ty::Str)),
        ("Unreachable", Some(Ty::Str)),
        ("Unavailable", Some(Ty::Str)),
    ],
};

/// control.ml:37-41 `volume_type`.
pub const VOLUME_TYPE: Variant = Variant {
    name: "volume_type",
    cases: &[
        ("Data", None),
        ("CBT_Metadata", None),
        ("Data_and_CBT_Metadata", None),
    ],
};

/// control.ml:52-78 `sr_stat`.
pub const SR_STAT: Record = Record {
    name: "sr_stat",
    fields: &[
        req("sr", Ty::Str),
        req("name", Ty::Str),
        opt("uuid", Ty::Str),
        req("description", Ty::Str),
        req("free_space", Ty::Int64),
        req("total_space", Ty::Int64),
        req("datasources", Ty::List(&Ty::Str)),
        req("clustered", Ty::Bool),
        req("health", Ty::Variant(&HEALTH)),
    ],
    rule: Some(rules::sr_stat),
};

/// control.ml:89-135 `volume`. `volume_type` and `cbt_enabled` are options
/// with a default (`[@default …]`), absent in our answers.
pub const VOLUME: Record = Record {
    name: "volume",
    fields: &[
        req("key", Ty::Str),
        opt("uuid", Ty::Str),
        req("name", Ty::Str),
        req("description", Ty::Str),
        req("read_write", Ty::Bool),
        req("sharable", Ty::Bool),
        req("virtual_size", Ty::Int64),
        req("physical_utilisation", Ty::Int64),
        req("uri", Ty::List(&Ty::Str)),
        req("keys", Ty::StringMap),
        opt("volume_type", Ty::Variant(&VOLUME_TYPE)),
        opt("cbt_enabled", Ty::Bool),
    ],
    rule: Some(rules::volume),
};

/// control.ml:140-150 `changed_blocks`.
pub const CHANGED_BLOCKS: Record = Record {
    name: "changed_blocks",
    fields: &[req("granularity", Ty::Int), req("bitmap", Ty::Str)],
    rule: None,
};

/// common.ml:27-28 `blocklist`.
pub const BLOCKLIST: Record = Record {
    name: "blocklist",
    fields: &[
        req("blocksize", Ty::Int),
        req("ranges", Ty::List(&Ty::Pair(&Ty::Int64, &Ty::Int64))),
    ],
    rule: None,
};

/// control.ml:480-495 `probe_result`.
pub const PROBE_RESULT: Record = Record {
    name: "probe_result",
    fields: &[
        req("configuration", Ty::StringMap),
        req("complete", Ty::Bool),
        opt("sr", Ty::Record(&SR_STAT)),
        req("extra_info", Ty::StringMap),
    ],
    rule: Some(rules::probe_result),
};

/// data.ml:11-20 `xendisk`.
pub const XENDISK: Record = Record {
    name: "xendisk",
    fields: &[
        req("params", Ty::Str),
        req("extra", Ty::StringMap),
        req("backend_type", Ty::Str),
    ],
    rule: None,
};

/// data.ml:22-26 `block_device`.
pub const BLOCK_DEVICE: Record = Record {
    name: "block_device",
    fields: &[req("path", Ty::Str)],
    rule: None,
};

/// data.ml:28 `file`.
pub const FILE: Record = Record {
    name: "file",
    fields: &[req("path", Ty::Str)],
    rule: None,
};

/// data.ml:30-36 `nbd`.
pub const NBD: Record = Record {
    name: "nbd",
    fields: &[req("uri", Ty::Str)],
    rule: None,
};

/// data.ml:38-44 `implementation`.
pub const IMPLEMENTATION: Variant = Variant {
    name: "implementation",
    cases: &[
        ("XenDisk", Some(Ty::Record(&XENDISK))),
        ("BlockDevice", Some(Ty::Record(&BLOCK_DEVICE))),
        ("File", Some(Ty::Record(&FILE))),
        ("Nbd", Some(Ty::Record(&NBD))),
    ],
};

/// data.ml:48-52 `backend`.
pub const BACKEND: Record = Record {
    name: "backend",
    fields: &[req(
        "implementations",
        Ty::List(&Ty::Variant(&IMPLEMENTATION)),
    )],
    rule: Some(rules::backend),
};

/// data.ml:247-254 `operation`.
pub const OPERATION: Variant = Variant {
    name: "operation",
    cases: &[("CopyV1", Some(Ty::Str)), ("MirrorV1", Some(Ty::Str))],
};

/// data.ml:260-271 `status`.
pub const STATUS: Record = Record {
    name: "status",
    fields: &[
        req("failed", Ty::Bool),
        req("complete", Ty::Bool),
        opt("progress", Ty::Float),
    ],
    rule: None,
};

/// xapi-storage-script lib.ml:17-22 `backtrace`.
pub const BACKTRACE: Record = Record {
    name: "backtrace",
    fields: &[
        req("error", Ty::Str),
        req("files", Ty::List(&Ty::Str)),
        req("lines", Ty::List(&Ty::Int)),
    ],
    rule: None,
};

/// xapi-storage-script lib.ml:26 `error`: what a failed call prints.
pub const ERROR: Record = Record {
    name: "error",
    fields: &[
        req("code", Ty::Str),
        req("params", Ty::List(&Ty::Str)),
        req("backtrace", Ty::Record(&BACKTRACE)),
    ],
    rule: Some(rules::error),
};

// ---- The table ---------------------------------------------------------------

const VOLUMES: Ty = Ty::List(&Ty::Record(&VOLUME));

/// Every call of the IDL and its result type. Plugin.* serves both plugin
/// kinds; SR.* and Volume.* are volume-plugin calls (control.ml); Datapath.*
/// and Data.* are datapath-plugin calls (data.ml).
pub const RESULTS: &[CallResult] = &[
    // plugin.ml:34-42: query, returning query_result
    CallResult {
        call: "Plugin.Query",
        result: Ty::Record(&QUERY_RESULT),
        idl: "plugin.ml:34-42",
    },
    // plugin.ml:24,44-48: ls, returning srs = string list
    CallResult {
        call: "Plugin.ls",
        result: Ty::List(&Ty::Str),
        idl: "plugin.ml:44-48",
    },
    // plugin.ml:50-67: diagnostics, returning string
    CallResult {
        call: "Plugin.diagnostics",
        result: Ty::Str,
        idl: "plugin.ml:50-67",
    },
    // control.ml:497,522-534: SR.probe, returning probe_results = probe_result list
    CallResult {
        call: "SR.probe",
        result: Ty::List(&Ty::Record(&PROBE_RESULT)),
        idl: "control.ml:522-534",
    },
    // control.ml:475,536-560: SR.create, returning configuration = (string * string) list
    CallResult {
        call: "SR.create",
        result: Ty::StringMap,
        idl: "control.ml:536-560",
    },
    // control.ml:47,562-569: SR.attach, returning sr = string
    CallResult {
        call: "SR.attach",
        result: Ty::Str,
        idl: "control.ml:562-569",
    },
    // control.ml:571-577: SR.detach, returning unit
    CallResult {
        call: "SR.detach",
        result: Ty::Unit,
        idl: "control.ml:571-577",
    },
    // control.ml:579-586: SR.destroy, returning unit
    CallResult {
        call: "SR.destroy",
        result: Ty::Unit,
        idl: "control.ml:579-586",
    },
    // control.ml:588-597: SR.stat, returning sr_stat
    CallResult {
        call: "SR.stat",
        result: Ty::Record(&SR_STAT),
        idl: "control.ml:588-597",
    },
    // control.ml:599-606: SR.set_name, returning unit
    CallResult {
        call: "SR.set_name",
        result: Ty::Unit,
        idl: "control.ml:599-606",
    },
    // control.ml:608-616: SR.set_description, returning unit
    CallResult {
        call: "SR.set_description",
        result: Ty::Unit,
        idl: "control.ml:608-616",
    },
    // control.ml:513-520,618-621: SR.ls, returning volumes = volume array
    CallResult {
        call: "SR.ls",
        result: VOLUMES,
        idl: "control.ml:618-621",
    },
    // control.ml:173-228: Volume.create, returning volume
    CallResult {
        call: "Volume.create",
        result: Ty::Record(&VOLUME),
        idl: "control.ml:173-228",
    },
    // control.ml:230-242: Volume.snapshot, returning volume
    CallResult {
        call: "Volume.snapshot",
        result: Ty::Record(&VOLUME),
        idl: "control.ml:230-242",
    },
    // control.ml:244-251: Volume.clone, returning volume
    CallResult {
        call: "Volume.clone",
        result: Ty::Record(&VOLUME),
        idl: "control.ml:244-251",
    },
    // control.ml:253-272: Volume.copy, returning volume
    CallResult {
        call: "Volume.copy",
        result: Ty::Record(&VOLUME),
        idl: "control.ml:253-272",
    },
    // control.ml:274-277: Volume.destroy, returning unit
    CallResult {
        call: "Volume.destroy",
        result: Ty::Unit,
        idl: "control.ml:274-277",
    },
    // control.ml:279-298: Volume.revert, returning unit
    CallResult {
        call: "Volume.revert",
        result: Ty::Unit,
        idl: "control.ml:279-298",
    },
    // control.ml:303-306: Volume.set_name, returning unit
    CallResult {
        call: "Volume.set_name",
        result: Ty::Unit,
        idl: "control.ml:303-306",
    },
    // control.ml:308-318: Volume.set_description, returning unit
    CallResult {
        call: "Volume.set_description",
        result: Ty::Unit,
        idl: "control.ml:308-318",
    },
    // control.ml:324-331: Volume.set, returning unit
    CallResult {
        call: "Volume.set",
        result: Ty::Unit,
        idl: "control.ml:324-331",
    },
    // control.ml:333-341: Volume.unset, returning unit
    CallResult {
        call: "Volume.unset",
        result: Ty::Unit,
        idl: "control.ml:333-341",
    },
    // control.ml:343-352: Volume.resize, returning unit
    CallResult {
        call: "Volume.resize",
        result: Ty::Unit,
        idl: "control.ml:343-352",
    },
    // control.ml:354-357: Volume.stat, returning volume
    CallResult {
        call: "Volume.stat",
        result: Ty::Record(&VOLUME),
        idl: "control.ml:354-357",
    },
    // control.ml:359-371: Volume.compare, returning blocklist (common.ml:27-28)
    CallResult {
        call: "Volume.compare",
        result: Ty::Record(&BLOCKLIST),
        idl: "control.ml:359-371",
    },
    // control.ml:85,373-379: Volume.similar_content, returning key_list = string list
    CallResult {
        call: "Volume.similar_content",
        result: Ty::List(&Ty::Str),
        idl: "control.ml:373-379",
    },
    // control.ml:381-384: Volume.enable_cbt, returning unit
    CallResult {
        call: "Volume.enable_cbt",
        result: Ty::Unit,
        idl: "control.ml:381-384",
    },
    // control.ml:386-389: Volume.disable_cbt, returning unit
    CallResult {
        call: "Volume.disable_cbt",
        result: Ty::Unit,
        idl: "control.ml:386-389",
    },
    // control.ml:391-397: Volume.data_destroy, returning unit
    CallResult {
        call: "Volume.data_destroy",
        result: Ty::Unit,
        idl: "control.ml:391-397",
    },
    // control.ml:399-440: Volume.list_changed_blocks, returning changed_blocks
    CallResult {
        call: "Volume.list_changed_blocks",
        result: Ty::Record(&CHANGED_BLOCKS),
        idl: "control.ml:399-440",
    },
    // control.ml:442-455: Volume.compose, returning unit
    CallResult {
        call: "Volume.compose",
        result: Ty::Unit,
        idl: "control.ml:442-455",
    },
    // data.ml:84-97: Datapath.open, returning unit
    CallResult {
        call: "Datapath.open",
        result: Ty::Unit,
        idl: "data.ml:84-97",
    },
    // data.ml:99-114: Datapath.attach, returning backend
    CallResult {
        call: "Datapath.attach",
        result: Ty::Record(&BACKEND),
        idl: "data.ml:99-114",
    },
    // data.ml:116-125: Datapath.activate, returning unit
    CallResult {
        call: "Datapath.activate",
        result: Ty::Unit,
        idl: "data.ml:116-125",
    },
    // data.ml:127-141: Datapath.activate_readonly, returning unit
    CallResult {
        call: "Datapath.activate_readonly",
        result: Ty::Unit,
        idl: "data.ml:127-141",
    },
    // data.ml:72,143-158: Datapath.import_activate, returning sock_path = string
    CallResult {
        call: "Datapath.import_activate",
        result: Ty::Str,
        idl: "data.ml:143-158",
    },
    // data.ml:160-172: Datapath.deactivate, returning unit
    CallResult {
        call: "Datapath.deactivate",
        result: Ty::Unit,
        idl: "data.ml:160-172",
    },
    // data.ml:174-188: Datapath.detach, returning unit
    CallResult {
        call: "Datapath.detach",
        result: Ty::Unit,
        idl: "data.ml:174-188",
    },
    // data.ml:190-196: Datapath.close, returning unit
    CallResult {
        call: "Datapath.close",
        result: Ty::Unit,
        idl: "data.ml:190-196",
    },
    // data.ml:283-301: Data.copy, returning operation
    CallResult {
        call: "Data.copy",
        result: Ty::Variant(&OPERATION),
        idl: "data.ml:283-301",
    },
    // data.ml:303-310: Data.mirror, returning operation
    CallResult {
        call: "Data.mirror",
        result: Ty::Variant(&OPERATION),
        idl: "data.ml:303-310",
    },
    // data.ml:312-319: Data.stat, returning status
    CallResult {
        call: "Data.stat",
        result: Ty::Record(&STATUS),
        idl: "data.ml:312-319",
    },
    // data.ml:321-327: Data.cancel, returning unit
    CallResult {
        call: "Data.cancel",
        result: Ty::Unit,
        idl: "data.ml:321-327",
    },
    // data.ml:329-336: Data.destroy, returning unit
    CallResult {
        call: "Data.destroy",
        result: Ty::Unit,
        idl: "data.ml:329-336",
    },
    // data.ml:257,338-341: Data.ls, returning operations = operation list
    CallResult {
        call: "Data.ls",
        result: Ty::List(&Ty::Variant(&OPERATION)),
        idl: "data.ml:338-341",
    },
];

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

/// What xapi and xenopsd require of some values beyond their IDL type.
/// They run after the type check, so fields are known to be well typed.
mod rules {
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
