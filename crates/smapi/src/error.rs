//! The SMAPIv3 error object and the error codes the VastSky plugins answer.
//!
//! xapi-storage-script parses a failed call's stdout as
//! `{"code": str, "params": [str], "backtrace": {"error": str, "files":
//! [str], "lines": [int]}}`. It maps a few codes declared by the
//! xapi-storage IDL to typed errors (`Activated_on_another_host`,
//! `Sr_not_attached`, `SR_does_not_exist`, `Volume_does_not_exist`,
//! `Unimplemented`, `Cancelled`) and shows any other code to the admin as a
//! backend error with its params, so every error carries one sentence that
//! says what went wrong and what to do next. Anything that is not this
//! object becomes an opaque SCRIPT_FAILED, which is why the runner never
//! lets a panic or a stray print reach stdout.

use serde_json::{Value, json};

use crate::redact;

/// Codes used by the VastSky plugins. The IDL-declared ones keep their
/// exact spelling (xapi matches on it); ours are in the same style.
pub mod codes {
    /// IDL: the SR string names no SR attached on this host.
    pub const SR_NOT_ATTACHED: &str = "Sr_not_attached";
    /// IDL: the SR's group no longer exists in the manager.
    pub const SR_DOES_NOT_EXIST: &str = "SR_does_not_exist";
    /// IDL: no volume with this key in this SR.
    pub const VOLUME_DOES_NOT_EXIST: &str = "Volume_does_not_exist";
    /// IDL: the call or option is not supported.
    pub const UNIMPLEMENTED: &str = "Unimplemented";
    /// IDL: an exclusive activation is held by another host.
    pub const ACTIVATED_ON_ANOTHER_HOST: &str = "Activated_on_another_host";
    /// The call's arguments (stdin) are missing, mistyped or invalid.
    pub const INVALID_ARGUMENT: &str = "Invalid_argument";
    /// The SR's device-config or the plugin's own config is unusable.
    pub const INVALID_CONFIGURATION: &str = "Invalid_configuration";
    /// The manager or agent could not be reached or answered garbage.
    pub const BACKEND_UNREACHABLE: &str = "Backend_unreachable";
    /// The manager or agent refused our token.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The pool has not enough free space or servers for the request.
    pub const NOT_ENOUGH_SPACE: &str = "Not_enough_space";
    /// The request conflicts with the current state (e.g. volume attached).
    pub const CONFLICT: &str = "Conflict";
    /// The SR still holds volumes.
    pub const SR_NOT_EMPTY: &str = "SR_not_empty";
    /// Local state (SR state files) could not be read or written.
    pub const LOCAL_STATE: &str = "Local_state_error";
    /// Any other backend failure (the params say which).
    pub const BACKEND_ERROR: &str = "Backend_error";
}

/// A failed call: its code and params, printed as the SMAPIv3 error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmapiError {
    pub code: String,
    pub params: Vec<String>,
}

pub type SmapiResult<T> = Result<T, SmapiError>;

impl SmapiError {
    /// An error with one human-readable param (the usual shape).
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        SmapiError {
            code: code.to_string(),
            params: vec![message.into()],
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ARGUMENT, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(codes::UNIMPLEMENTED, message)
    }

    /// The message shown to people: the params joined, with any URL's
    /// credentials redacted.
    pub fn message(&self) -> String {
        redact::credentials(&self.params.join("; "))
    }

    /// The object xapi-storage-script parses. We have no OCaml-style
    /// backtrace to offer; `error` repeats the message so that logs that
    /// only print the backtrace still say what happened.
    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code,
            "params": self.params.iter().map(|p| redact::credentials(p)).collect::<Vec<_>>(),
            "backtrace": {
                "error": format!("{}: {}", self.code, self.message()),
                "files": [],
                "lines": [],
            },
        })
    }
}

impl std::fmt::Display for SmapiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message())
    }
}

impl std::error::Error for SmapiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_shape_xapi_parses() {
        let e = SmapiError::new(codes::VOLUME_DOES_NOT_EXIST, "no volume 'x'");
        let j = e.to_json();
        assert_eq!(j["code"], "Volume_does_not_exist");
        assert_eq!(j["params"], json!(["no volume 'x'"]));
        assert!(
            j["backtrace"]["error"]
                .as_str()
                .unwrap()
                .contains("no volume")
        );
        assert_eq!(j["backtrace"]["files"], json!([]));
        assert_eq!(j["backtrace"]["lines"], json!([]));
    }

    /// Regression: a manager URL with `user:password@` was repeated
    /// verbatim in the error object xapi shows and logs.
    #[test]
    fn no_error_output_repeats_a_password() {
        let e = SmapiError::new(
            codes::BACKEND_UNREACHABLE,
            "cannot reach the VastSky manager (https://admin:pa55word@m1:8080); last tried https://admin:pa55word@m1:8080/api/v1/groups: refused",
        );
        for shown in [e.to_json().to_string(), e.message(), e.to_string()] {
            assert!(!shown.contains("pa55word"), "{shown}");
            assert!(shown.contains("https://***@m1:8080"), "{shown}");
        }
    }
}
