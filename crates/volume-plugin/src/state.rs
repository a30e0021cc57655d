//! SR state files: how the opaque `sr` string of later calls finds the
//! manager and credentials that SR.attach was given.
//!
//! SR.attach answers `sr` = the SR's group name (e.g.
//! `sr-0f1c2d3e-…`) and writes `<state dir>/<group>.json` holding the
//! device-config it was attached with. Every later call with that `sr`
//! reads the file; SR.detach and SR.destroy remove it. The state dir is
//! `/var/lib/vsky/sr` unless `VSKY_SR_STATE_DIR` says otherwise.
//!
//! Why a file and not the configuration inside the `sr` string: the string
//! is logged by xapi and stored in its state database, and the
//! configuration may hold a token. The file is written 0600 in a 0700
//! directory, atomically (temp file + rename), so a crash never leaves a
//! half-written state. Because the `sr` string is a validated manager name,
//! it can never point outside the state dir. A state file left behind by a
//! crash is harmless: attaching again rewrites it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use smapi::error::codes;
use smapi::{SmapiError, SmapiResult};

use crate::config::{SrConfig, is_valid_name};

pub const STATE_DIR_ENV: &str = "VSKY_SR_STATE_DIR";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vsky/sr";

/// What one attached SR's state file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrState {
    /// The manager group, also the `sr` string and the file's stem.
    pub group: String,
    /// The device-config SR.attach received.
    pub configuration: BTreeMap<String, String>,
}

impl SrState {
    pub fn config(&self) -> SmapiResult<SrConfig> {
        SrConfig::parse(self.configuration.clone())
    }
}

pub fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

fn local(message: String) -> SmapiError {
    SmapiError::new(codes::LOCAL_STATE, message)
}

fn not_attached(sr: &str) -> SmapiError {
    SmapiError::new(
        codes::SR_NOT_ATTACHED,
        format!(
            "SR '{sr}' is not attached on this host (no state file in {}); plug the SR's PBD first",
            state_dir().display()
        ),
    )
}

fn path_of(sr: &str) -> SmapiResult<PathBuf> {
    if !is_valid_name(sr) {
        return Err(SmapiError::new(
            codes::SR_NOT_ATTACHED,
            format!("'{sr}' is not a VastSky SR string (SR.attach answers the SR's group name)"),
        ));
    }
    Ok(state_dir().join(format!("{sr}.json")))
}

pub fn save(state: &SrState) -> SmapiResult<()> {
    let dir = state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            local(format!(
                "cannot create the SR state dir {}: {e}",
                dir.display()
            ))
        })?;
    let path = path_of(&state.group)?;
    let tmp = dir.join(format!(".{}.json.tmp-{}", state.group, std::process::id()));
    let text = serde_json::to_vec_pretty(state)
        .map_err(|e| local(format!("cannot encode SR state: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode applies only when the file is created; an old temp file
        // left by a crash may have another one.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        local(format!(
            "cannot write SR state file {}: {e}",
            path.display()
        ))
    })
}

pub fn load(sr: &str) -> SmapiResult<SrState> {
    let path = path_of(sr)?;
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_attached(sr)),
        Err(e) => {
            return Err(local(format!(
                "cannot read SR state file {}: {e}",
                path.display()
            )));
        }
    };
    let state: SrState = serde_json::from_slice(&text).map_err(|e| {
        local(format!(
            "SR state file {} is corrupt ({e}); detach and attach the SR again",
            path.display()
        ))
    })?;
    if state.group != sr {
        return Err(local(format!(
            "SR state file {} names group '{}', not '{sr}'; detach and attach the SR again",
            path.display(),
            state.group
        )));
    }
    Ok(state)
}

/// Removes an SR's state; removing an absent one is not an error.
pub fn remove(sr: &str) -> SmapiResult<()> {
    let path = path_of(sr)?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(local(format!(
            "cannot remove SR state file {}: {e}",
            path.display()
        ))),
    }
}

/// The `sr` strings of every SR attached on this host.
pub fn list() -> SmapiResult<Vec<String>> {
    let dir = state_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(local(format!(
                "cannot list the SR state dir {}: {e}",
                dir.display()
            )));
        }
    };
    let mut srs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json")
                .filter(|stem| is_valid_name(stem))
                .map(String::from)
        })
        .collect();
    srs.sort();
    Ok(srs)
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test owns the process environment (tests run in threads).
    #[test]
    fn state_files_round_trip_privately_and_refuse_foreign_paths() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("state");
        // SAFETY: only this test in this binary touches the variable.
        unsafe { std::env::set_var(STATE_DIR_ENV, &sd) };
        assert_eq!(list().unwrap(), Vec::<String>::new());
        let s = SrState {
            group: "sr-1".into(),
            configuration: [("manager".to_string(), "http://m".to_string())].into(),
        };
        save(&s).unwrap();
        save(&s).unwrap();
        assert_eq!(load("sr-1").unwrap(), s);
        let meta = std::fs::metadata(sd.join("sr-1.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(&sd).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        assert_eq!(list().unwrap(), ["sr-1"]);
        assert_eq!(load("sr-2").unwrap_err().code, codes::SR_NOT_ATTACHED);
        assert_eq!(
            load("../etc/passwd").unwrap_err().code,
            codes::SR_NOT_ATTACHED
        );
        std::fs::write(sd.join("sr-3.json"), "{garbage").unwrap();
        assert_eq!(load("sr-3").unwrap_err().code, codes::LOCAL_STATE);
        remove("sr-1").unwrap();
        remove("sr-1").unwrap();
        assert_eq!(load("sr-1").unwrap_err().code, codes::SR_NOT_ATTACHED);
    }
}
