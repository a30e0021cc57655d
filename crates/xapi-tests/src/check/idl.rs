//! The xapi-storage IDL's record and variant types, and the table of every
//! call's result type, as the IDL writes them (each entry cites file:line).

use super::{CallResult, Record, Ty, Variant, opt, req, rules};

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
