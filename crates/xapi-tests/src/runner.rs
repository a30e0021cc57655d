//! Discovering plugins and running calls the way xapi-storage-script does
//! (ocaml/xapi-storage-script/main.ml: `fork_exec_rpc`, `Script`).
//!
//! What a plugin gets: argv `[<call path>, "--json"]`, the named
//! arguments as one JSON object on stdin (stdin then closed), the
//! environment we are given plus what the test adds. What we accept: exit
//! status 0 with one JSON value of the call's IDL result type on stdout
//! ([`check::result`], so every answer of every call is checked here), or
//! a non-zero status with the error object on stdout. Anything else is what
//! xapi would report as SCRIPT_FAILED, and is a harness error here.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::check;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Datapath,
}

/// One plugin folder, e.g. `<root>/volume/org.xen.xapi.storage.vastsky`.
#[derive(Clone, Debug)]
pub struct PluginDir {
    pub kind: Kind,
    /// The folder name: the queue name of a volume plugin, the URI scheme
    /// of a datapath plugin.
    pub name: String,
    pub path: PathBuf,
    /// Extra environment for every call (state dir, config file).
    pub env: BTreeMap<String, String>,
}

/// The SMAPIv3 error object a failed call printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub code: String,
    pub params: Vec<String>,
}

/// What one call did, when it kept the protocol.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub call: String,
    pub result: Result<Value, CallError>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// The ways a plugin can break the protocol (xapi's SCRIPT_MISSING,
/// SCRIPT_NOT_EXECUTABLE, SCRIPT_FAILED).
#[derive(Debug)]
pub enum ProtocolError {
    Missing(PathBuf),
    NotExecutable(PathBuf),
    Spawn(String),
    Failed {
        call: String,
        status: Option<i32>,
        stdout: String,
        stderr: String,
        why: String,
    },
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Missing(p) => write!(f, "SCRIPT_MISSING: {}", p.display()),
            ProtocolError::NotExecutable(p) => {
                write!(f, "SCRIPT_NOT_EXECUTABLE: {}", p.display())
            }
            ProtocolError::Spawn(m) => write!(f, "cannot run the script: {m}"),
            ProtocolError::Failed {
                call,
                status,
                stdout,
                stderr,
                why,
            } => write!(
                f,
                "SCRIPT_FAILED {call} (exit {status:?}): {why}\nstdout: {stdout}\nstderr: {stderr}"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Plugins found under `root`, volume plugins first, each sorted by name.
pub fn discover(root: &Path) -> std::io::Result<Vec<PluginDir>> {
    let mut found = Vec::new();
    for (sub, kind) in [("volume", Kind::Volume), ("datapath", Kind::Datapath)] {
        let dir = root.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        found.extend(names.into_iter().map(|name| PluginDir {
            kind,
            path: dir.join(&name),
            name,
            env: BTreeMap::new(),
        }));
    }
    Ok(found)
}

impl PluginDir {
    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_string(), value.into());
        self
    }

    /// The SR type xapi derives from a volume plugin folder: the last
    /// dot-separated part of `org.xen.xapi.storage.<type>`.
    pub fn sr_type(&self) -> Option<&str> {
        self.name
            .strip_prefix("org.xen.xapi.storage.")
            .filter(|t| !t.is_empty() && !t.contains('.'))
    }

    /// Call names that have an executable here (what xapi-storage-script
    /// derives features from).
    pub fn calls(&self) -> std::io::Result<Vec<String>> {
        let mut calls: Vec<String> = std::fs::read_dir(&self.path)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.split_once('.')
                    .is_some_and(|(i, m)| !i.is_empty() && !m.is_empty() && !n.starts_with('.'))
                    && n.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            })
            .collect();
        calls.sort();
        Ok(calls)
    }

    /// The executable for a call, looked up case-insensitively like
    /// xapi-storage-script's `Script` module.
    fn script(&self, call: &str) -> Result<PathBuf, ProtocolError> {
        let exact = self.path.join(call);
        let path = if exact.exists() {
            exact
        } else {
            std::fs::read_dir(&self.path)
                .ok()
                .and_then(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(call))
                })
                .map(|e| e.path())
                .ok_or_else(|| ProtocolError::Missing(self.path.join(call)))?
        };
        let mode = std::fs::metadata(&path)
            .map_err(|_| ProtocolError::Missing(path.clone()))?
            .permissions()
            .mode();
        if mode & 0o111 == 0 {
            return Err(ProtocolError::NotExecutable(path));
        }
        Ok(path)
    }

    /// Runs `call` with `args` on stdin, as xapi-storage-script does.
    pub fn call(&self, call: &str, args: &Value) -> Result<Outcome, ProtocolError> {
        self.call_raw(call, args.to_string().as_bytes())
    }

    /// Runs `call` with arbitrary stdin bytes (for malformed-input tests).
    pub fn call_raw(&self, call: &str, stdin: &[u8]) -> Result<Outcome, ProtocolError> {
        let script = self.script(call)?;
        let start = Instant::now();
        let mut child = Command::new(&script)
            .arg("--json")
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ProtocolError::Spawn(format!("{}: {e}", script.display())))?;
        {
            let mut input = child.stdin.take().expect("stdin is piped");
            // A plugin may exit before reading stdin (e.g. on a bad argv);
            // a broken pipe is then not our failure.
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| ProtocolError::Spawn(format!("{}: {e}", script.display())))?;
        let elapsed = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let failed = |why: String| ProtocolError::Failed {
            call: call.to_string(),
            status: out.status.code(),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            why,
        };
        let value: Value = serde_json::from_str(stdout.trim())
            .map_err(|e| failed(format!("stdout is not one JSON value: {e}")))?;
        let result = if out.status.success() {
            // xapi unmarshals the answer with the call's IDL type; one that
            // does not fit fails the call after the plugin has acted.
            check::result(call, &value).map_err(|e| {
                failed(format!(
                    "the answer is not of the IDL result type (xapi: SCRIPT_FAILED): {e}"
                ))
            })?;
            Ok(value)
        } else {
            check::error_object(&value).map_err(|e| failed(format!("bad error object: {e}")))?;
            Err(CallError {
                code: value["code"].as_str().unwrap_or_default().to_string(),
                params: value["params"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        };
        Ok(Outcome {
            call: call.to_string(),
            result,
            stderr,
            elapsed,
        })
    }
}

/// Which datapath plugin xapi would use for a volume: the first URI whose
/// scheme names a registered datapath folder (main.ml `choose_datapath`).
pub fn choose_datapath<'a>(
    uris: &[String],
    datapaths: &'a [PluginDir],
) -> Option<(&'a PluginDir, String)> {
    uris.iter().find_map(|uri| {
        let scheme = uri.split_once("://")?.0;
        datapaths
            .iter()
            .find(|d| d.kind == Kind::Datapath && d.name == scheme)
            .map(|d| (d, uri.clone()))
    })
}

/// The features xapi-storage-script reports for a volume plugin: the
/// declared ones (VDI_DESTROY renamed VDI_DELETE) plus those derived from
/// the call executables present, plus the datapath ones it always adds
/// (main.ml `QueryImpl.query_impl`).
pub fn effective_features(declared: &[String], calls: &[String]) -> Vec<String> {
    let mut f: Vec<String> = declared
        .iter()
        .map(|d| {
            if d == "VDI_DESTROY" {
                "VDI_DELETE".to_string()
            } else {
                d.clone()
            }
        })
        .collect();
    let derived = [
        ("SR.attach", "SR_ATTACH"),
        ("SR.create", "SR_CREATE"),
        ("SR.destroy", "SR_DELETE"),
        ("SR.detach", "SR_DETACH"),
        ("SR.ls", "SR_SCAN"),
        ("SR.stat", "SR_UPDATE"),
        ("SR.probe", "SR_PROBE"),
        ("Volume.create", "VDI_CREATE"),
        ("Volume.clone", "VDI_CLONE"),
        ("Volume.snapshot", "VDI_SNAPSHOT"),
        ("Volume.resize", "VDI_RESIZE"),
        ("Volume.destroy", "VDI_DELETE"),
        ("Volume.stat", "VDI_UPDATE"),
    ];
    for (call, feature) in derived {
        if calls.iter().any(|c| c.eq_ignore_ascii_case(call)) {
            f.push(feature.to_string());
        }
    }
    for always in [
        "VDI_ATTACH",
        "VDI_DETACH",
        "VDI_ACTIVATE",
        "VDI_DEACTIVATE",
        "VDI_INTRODUCE",
    ] {
        f.push(always.to_string());
    }
    f.sort();
    f.dedup();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn plugin(dir: &Path) -> PluginDir {
        PluginDir {
            kind: Kind::Volume,
            name: "org.xen.xapi.storage.t".into(),
            path: dir.to_path_buf(),
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn the_protocol_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Answers its stdin as a JSON string: proves args arrive on stdin
        // and --json in argv.
        script(
            d,
            "Plugin.diagnostics",
            r#"[ "$1" = --json ] || exit 9; printf '"%s"' "$(sed 's/\\/\\\\/g; s/"/\\"/g')""#,
            0o755,
        );
        script(
            d,
            "SR.stat",
            r#"echo '{"code":"X","params":["p"],"backtrace":{"error":"","files":[],"lines":[]}}'; exit 1"#,
            0o755,
        );
        script(d, "SR.detach", "echo hello", 0o755);
        script(d, "SR.destroy", "echo '{\"code\":1}'; exit 1", 0o755);
        script(d, "SR.set_name", "echo null", 0o644);
        // Well-formed JSON of the wrong type, and a call the IDL lacks.
        script(d, "SR.attach", "echo 42", 0o755);
        script(d, "SR.frobnicate", "echo null", 0o755);
        let p = plugin(d);
        let args = serde_json::json!({"dbg": "t", "sr": "x"});
        let echoed = serde_json::json!(args.to_string());
        assert_eq!(
            p.call("Plugin.diagnostics", &args).unwrap().result.unwrap(),
            echoed
        );
        assert_eq!(
            p.call("plugin.DIAGNOSTICS", &args).unwrap().result.unwrap(),
            echoed,
            "case-insensitive lookup"
        );
        let e = p.call("SR.stat", &args).unwrap().result.unwrap_err();
        assert_eq!((e.code.as_str(), e.params), ("X", vec!["p".to_string()]));
        for call in ["SR.detach", "SR.destroy", "SR.attach", "SR.frobnicate"] {
            match p.call(call, &args) {
                Err(ProtocolError::Failed { .. }) => {}
                other => panic!("{call}: {other:?}"),
            }
        }
        match p.call("SR.attach", &args) {
            Err(ProtocolError::Failed { why, .. }) => {
                assert!(why.contains("control.ml:562-569"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.call("SR.set_name", &args),
            Err(ProtocolError::NotExecutable(_))
        ));
        assert!(matches!(
            p.call("SR.ls", &args),
            Err(ProtocolError::Missing(_))
        ));
        assert_eq!(
            p.calls().unwrap(),
            [
                "Plugin.diagnostics",
                "SR.attach",
                "SR.destroy",
                "SR.detach",
                "SR.frobnicate",
                "SR.set_name",
                "SR.stat"
            ]
        );
        assert_eq!(p.sr_type(), Some("t"));
    }

    #[test]
    fn discovery_and_datapath_choice_follow_xapi() {
        let dir = tempfile::tempdir().unwrap();
        for sub in [
            "volume/org.xen.xapi.storage.a",
            "datapath/vsky",
            "datapath/nbd",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let all = discover(dir.path()).unwrap();
        let names: Vec<_> = all.iter().map(|p| (p.kind, p.name.as_str())).collect();
        assert_eq!(
            names,
            [
                (Kind::Volume, "org.xen.xapi.storage.a"),
                (Kind::Datapath, "nbd"),
                (Kind::Datapath, "vsky")
            ]
        );
        let uris = vec!["tapdisk://x/y".to_string(), "vsky://g/v".to_string()];
        let (d, uri) = choose_datapath(&uris, &all).unwrap();
        assert_eq!((d.name.as_str(), uri.as_str()), ("vsky", "vsky://g/v"));
        assert!(choose_datapath(&["file:///x".to_string()], &all).is_none());
    }

    #[test]
    fn features_are_derived_like_xapi_storage_script() {
        let f = effective_features(
            &["VDI_DESTROY".into(), "SR_PROBE".into()],
            &["Volume.clone".into(), "SR.stat".into()],
        );
        assert!(f.contains(&"VDI_DELETE".into()) && !f.contains(&"VDI_DESTROY".into()));
        assert!(f.contains(&"VDI_CLONE".into()) && f.contains(&"SR_UPDATE".into()));
        assert!(f.contains(&"VDI_INTRODUCE".into()));
    }
}
