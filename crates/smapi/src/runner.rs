//! Runs one SMAPIv3 call the way xapi-storage-script expects.
//!
//! The plugin is one binary installed once plus one symlink per call
//! (`SR.stat -> vsky-volume-plugin`); the call is the basename it was
//! invoked as. For debugging and benchmarks it can also be run as
//! `vsky-volume-plugin SR.stat --json`. The exit status is 0 with the
//! result on stdout, or 1 with the SMAPIv3 error object on stdout; a short
//! line on stderr (which xapi-storage-script logs) repeats any error with
//! the caller's `dbg` string, so logs and the admin's message line up.

use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::Value;

use crate::args::{Args, STDIN_MAX_BYTES};
use crate::error::{SmapiError, SmapiResult, codes};

/// One call's implementation: named arguments in, result out.
pub type Handler = fn(&Args) -> SmapiResult<Value>;

/// A plugin: its binary name, its calls and a help text.
pub struct Plugin {
    /// The installed binary's file name (`vsky-volume-plugin`).
    pub binary: &'static str,
    /// Call name (`SR.stat`) → implementation; the installer creates one
    /// symlink per entry, and only these exist.
    pub calls: &'static [(&'static str, Handler)],
    /// Printed for `--help`.
    pub help: &'static str,
}

impl Plugin {
    /// Looks a call up case-insensitively, as xapi-storage-script does.
    pub fn find(&self, call: &str) -> Option<(&'static str, Handler)> {
        self.calls
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(call))
            .copied()
    }

    pub fn call_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.calls.iter().map(|(n, _)| *n)
    }
}

/// What one invocation resolves to before any I/O with the backend.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    Help,
    ListCalls,
    Call(String),
}

fn parse_argv(plugin: &Plugin, argv: &[String]) -> SmapiResult<Invocation> {
    let invoked = argv
        .first()
        .map(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let (call, rest) = if invoked == plugin.binary {
        match argv.get(1).map(String::as_str) {
            None | Some("--help" | "-h") => return Ok(Invocation::Help),
            Some("--list-calls") => return Ok(Invocation::ListCalls),
            Some(call) => (call.to_string(), &argv[2..]),
        }
    } else {
        (invoked, argv.get(1..).unwrap_or(&[]))
    };
    match rest {
        [] => Ok(Invocation::Call(call)),
        [flag] if flag == "--json" => Ok(Invocation::Call(call)),
        [flag] if flag == "--help" || flag == "-h" => Ok(Invocation::Help),
        other => Err(SmapiError::invalid_argument(format!(
            "unexpected command-line arguments {other:?}; xapi-storage-script passes only --json and the arguments on stdin"
        ))),
    }
}

fn read_stdin() -> SmapiResult<String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(STDIN_MAX_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SmapiError::invalid_argument(format!("cannot read stdin: {e}")))?;
    if buf.len() > STDIN_MAX_BYTES {
        return Err(SmapiError::invalid_argument(format!(
            "stdin is larger than {STDIN_MAX_BYTES} bytes; that is not a call's arguments"
        )));
    }
    String::from_utf8(buf)
        .map_err(|_| SmapiError::invalid_argument("stdin is not UTF-8 text; expected JSON"))
}

/// The caller's `dbg` string, for the log line of a failed call.
fn dbg_of(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("dbg")?.as_str().map(String::from))
        .unwrap_or_else(|| "-".into())
}

/// Runs the call with `stdin` text; the pure core of [`main`].
pub fn run_call(plugin: &Plugin, call: &str, stdin: &str) -> SmapiResult<Value> {
    let (_, handler) = plugin.find(call).ok_or_else(|| {
        SmapiError::unimplemented(format!(
            "{} does not implement '{call}'; it implements {}",
            plugin.binary,
            plugin.call_names().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let args = Args::parse(stdin)?;
    // A panic is a bug, but the caller must still get the error object,
    // never a half-written stdout or an OCaml SCRIPT_FAILED.
    match catch_unwind(AssertUnwindSafe(|| handler(&args))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(SmapiError::new(
                codes::BACKEND_ERROR,
                format!("internal error in {call} (a bug, please report it): {what}"),
            ))
        }
    }
}

/// The whole process: argv, stdin, stdout, exit code.
pub fn main(plugin: &Plugin) -> i32 {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut dbg = String::from("-");
    let (call, result) = match parse_argv(plugin, &argv) {
        Ok(Invocation::Help) => {
            let _ = writeln!(std::io::stdout(), "{}", plugin.help);
            return 0;
        }
        Ok(Invocation::ListCalls) => {
            let mut out = std::io::stdout().lock();
            for name in plugin.call_names() {
                let _ = writeln!(out, "{name}");
            }
            return 0;
        }
        Ok(Invocation::Call(call)) => {
            let result = read_stdin().and_then(|text| {
                dbg = dbg_of(&text);
                run_call(plugin, &call, &text)
            });
            (call, result)
        }
        Err(e) => (String::from("?"), Err(e)),
    };
    let (value, status) = match result {
        Ok(v) => (v, 0),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "{} {call} [dbg {dbg}]: {e}",
                plugin.binary
            );
            (e.to_json(), 1)
        }
    };
    let mut out = std::io::stdout().lock();
    // If stdout is gone, the caller cannot read an answer anyway; failing
    // the exit status is all that is left.
    if writeln!(out, "{value}").and_then(|_| out.flush()).is_err() {
        return 1;
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echo(args: &Args) -> SmapiResult<Value> {
        Ok(json!(args.str("dbg")?))
    }
    fn boom(_: &Args) -> SmapiResult<Value> {
        panic!("kaboom")
    }
    const PLUGIN: Plugin = Plugin {
        binary: "vsky-test-plugin",
        calls: &[("Plugin.Query", echo), ("SR.boom", boom)],
        help: "help",
    };

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_call_is_the_invoked_name_or_the_first_argument() {
        assert_eq!(
            parse_argv(&PLUGIN, &argv(&["/x/y/SR.stat", "--json"])).unwrap(),
            Invocation::Call("SR.stat".into())
        );
        assert_eq!(
            parse_argv(
                &PLUGIN,
                &argv(&["/bin/vsky-test-plugin", "SR.ls", "--json"])
            )
            .unwrap(),
            Invocation::Call("SR.ls".into())
        );
        assert_eq!(
            parse_argv(&PLUGIN, &argv(&["vsky-test-plugin"])).unwrap(),
            Invocation::Help
        );
        assert!(parse_argv(&PLUGIN, &argv(&["SR.ls", "--json", "extra"])).is_err());
    }

    #[test]
    fn calls_are_found_case_insensitively_and_unknown_ones_are_unimplemented() {
        assert_eq!(
            run_call(&PLUGIN, "plugin.query", r#"{"dbg":"x"}"#).unwrap(),
            json!("x")
        );
        let e = run_call(&PLUGIN, "Volume.clone", r#"{"dbg":"x"}"#).unwrap_err();
        assert_eq!(e.code, codes::UNIMPLEMENTED);
    }

    #[test]
    fn a_panic_becomes_an_error_object() {
        let e = run_call(&PLUGIN, "SR.boom", r#"{"dbg":"x"}"#).unwrap_err();
        assert_eq!(e.code, codes::BACKEND_ERROR);
        assert!(e.message().contains("kaboom"));
    }
}
