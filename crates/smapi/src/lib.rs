//! What both VastSky SMAPIv3 plugins share, so that each plugin's code is
//! only the translation between SMAPIv3 calls and VastSky's APIs.
//!
//! xapi-storage-script runs one executable per call with the single
//! argument `--json`, writes the call's named arguments as one JSON object
//! on stdin, and reads exactly one JSON value from stdout: the result on
//! exit status 0, or the SMAPIv3 error object on any other status. This
//! crate implements that convention once:
//!
//! - [`error`]: the SMAPIv3 error object (`{"code", "params", "backtrace"}`)
//!   and the codes our plugins use.
//! - [`args`]: typed access to the named arguments, where a missing or
//!   mistyped argument is an error that names the argument.
//! - [`runner`]: dispatch on the invoked name, stdin reading, stdout
//!   writing, exit codes, and a last-resort guard against panics.
//! - [`http`]: a small blocking JSON-over-HTTP(S) client (`ureq`, rustls)
//!   for the manager and the local agent: one call is one short process, so
//!   no async runtime is started.
//! - [`redact`]: credentials in URLs never reach an error object.

pub mod args;
pub mod error;
pub mod http;
pub mod redact;
pub mod runner;

pub use args::Args;
pub use error::{SmapiError, SmapiResult};
