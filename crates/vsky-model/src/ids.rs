//! Typed identifiers and the validation of user-chosen names.
//!
//! Ids are small integers handed out by the cluster and never reused, so a
//! stale id in a log or a script can never name a different object.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::limits;

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(ServerId, "server#");
id_type!(DiskId, "disk#");
id_type!(VolumeId, "volume#");
id_type!(JobId, "job#");

/// One chunk: the `index`-th fixed-size slice of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub disk: DiskId,
    pub index: u32,
}

/// Checks a server, volume or class name: 1..=64 characters from
/// `[A-Za-z0-9._-]`, starting with a letter or digit. These names end up in
/// device-mapper names (`vsky-<volume>`), URLs and file names, so anything
/// else is refused up front rather than escaped everywhere.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), ModelError> {
    if name.is_empty() {
        return Err(ModelError::invalid(what, "must not be empty"));
    }
    if name.len() > limits::NAME_LEN_MAX {
        return Err(ModelError::invalid(
            what,
            format!(
                "'{}…' is longer than {} characters",
                preview(name),
                limits::NAME_LEN_MAX
            ),
        ));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(ModelError::invalid(
            what,
            format!("'{name}' must start with a letter or a digit"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ModelError::invalid(
            what,
            format!("'{name}' contains {bad:?}; use letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// The first characters of an over-long input, for an error message. Cut
/// at a character boundary: the input is arbitrary Unicode, and slicing a
/// `str` inside a multi-byte character panics.
pub fn preview(text: &str) -> &str {
    match text.char_indices().nth(limits::ERROR_PREVIEW_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Checks a label key (same rules as names) and value (printable, bounded).
pub fn validate_label(key: &str, value: &str) -> Result<(), ModelError> {
    validate_name("label key", key)?;
    if value.len() > limits::LABEL_VALUE_LEN_MAX || value.chars().any(|c| c.is_control()) {
        return Err(ModelError::invalid(
            "label value",
            format!(
                "value of '{key}' must be printable and at most {} bytes",
                limits::LABEL_VALUE_LEN_MAX
            ),
        ));
    }
    Ok(())
}

/// Checks a disk's device or file path as the agent will open it: absolute,
/// normalised (no `.`/`..` components, no empty components), no NUL, bounded.
pub fn validate_device_path(path: &str) -> Result<(), ModelError> {
    let what = "disk path";
    if !path.starts_with('/') {
        return Err(ModelError::invalid(
            what,
            format!("'{path}' must be an absolute path"),
        ));
    }
    if path.len() > limits::DEVICE_PATH_LEN_MAX {
        return Err(ModelError::invalid(
            what,
            format!("longer than {} bytes", limits::DEVICE_PATH_LEN_MAX),
        ));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(ModelError::invalid(what, "contains control characters"));
    }
    if path.len() > 1 {
        let body = path.trim_start_matches('/');
        if body
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(ModelError::invalid(
                what,
                format!("'{path}' is not normalised (empty, '.' or '..' components)"),
            ));
        }
    } else {
        return Err(ModelError::invalid(what, "'/' is not a disk"));
    }
    Ok(())
}

/// Checks an agent address `host:port` (the host part is not resolved here).
pub fn validate_address(address: &str) -> Result<(), ModelError> {
    let what = "server address";
    if address.is_empty() || address.len() > limits::ADDRESS_LEN_MAX {
        return Err(ModelError::invalid(
            what,
            format!(
                "must be host:port, at most {} bytes",
                limits::ADDRESS_LEN_MAX
            ),
        ));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(ModelError::invalid(
            what,
            format!("'{address}' lacks a :port"),
        ));
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(ModelError::invalid(
            what,
            format!("'{address}' has no valid host"),
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(ModelError::invalid(
            what,
            format!("'{address}' has no valid port (1-65535)"),
        )),
    }
}

/// Checks free text (descriptions): bounded, no control characters but
/// newlines and tabs.
pub fn validate_description(text: &str) -> Result<(), ModelError> {
    if text.len() > limits::DESCRIPTION_LEN_MAX
        || text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ModelError::invalid(
            "description",
            format!(
                "must be at most {} bytes without control characters",
                limits::DESCRIPTION_LEN_MAX
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_documented_alphabet_only() {
        for ok in ["a", "vm-disk_1.raw", "0abc", &"x".repeat(64)] {
            assert!(validate_name("volume name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "é", &"x".repeat(65), "a\u{0}"] {
            assert!(validate_name("volume name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_paths_must_be_absolute_and_normalised() {
        for ok in ["/dev/sdb", "/var/lib/vsky/disk0.img"] {
            assert!(validate_device_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "dev/sdb",
            "/dev//sdb",
            "/dev/../etc/passwd",
            "/dev/./x",
            "/a/\n",
        ] {
            assert!(validate_device_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_need_host_and_port() {
        for ok in ["10.0.0.1:10809", "[::1]:80", "node-a.example:1"] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for bad in ["", "host", ":80", "host:0", "host:70000", "host:x", "a b:1"] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
    }
}
