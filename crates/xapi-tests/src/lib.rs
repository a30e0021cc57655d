//! A stand-in for xapi-storage-script, to prove SMAPIv3 plugins behave as
//! xapi expects without a XenServer.
//!
//! - [`runner`]: discovers plugins in a folder laid out like
//!   `/usr/libexec/xapi-storage-script` (`volume/<name>/`,
//!   `datapath/<name>/`) and runs calls exactly as xapi-storage-script
//!   does: the call's executable, the single argument `--json`, the named
//!   arguments as one JSON object on stdin, then the exit status decides
//!   whether stdout is a result or an error object.
//! - [`check`]: typed checkers of every answer against the xapi-storage
//!   IDL types (query_result, sr_stat, volume, probe_result, backend, the
//!   error object), written independently of the plugins' own code.
//! - [`scenarios`]: xapi's call sequences (sr-create, vdi-create, VM start
//!   and shutdown, …) as functions, shared by the `xapi-tests` binary (for
//!   the lab VM and real pools) and the integration tests.
//! - [`snapshots`]: xapi's sequences of VM snapshot, fast clone, VM
//!   revert and clone-on-boot.
//! - [`bench`]: per-call latency of the plugin executables next to a
//!   minimal Python client (`xapi-tests bench`).

pub mod bad_input;
pub mod bench;
pub mod check;
pub mod datapath;
pub mod runner;
pub mod scenarios;
pub mod snapshots;
