//! The SR's device-config: which keys exist, what they mean, and turning
//! the flat string map xapi passes into a checked [`SrConfig`].
//!
//! xapi stores SR.create's answer as every host's device-config and hands
//! it to SR.attach on each host, so the configuration must be complete and
//! host-independent: manager URLs, a credential that exists on every host
//! (a token file path, or the token itself), the CA file path, and the SR's
//! identity (`sr_uuid`, `group`). Unknown keys are kept verbatim and
//! otherwise ignored (xapi or an admin tool may add its own).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use smapi::error::codes;
use smapi::http::HttpConfig;
use smapi::{SmapiError, SmapiResult};

pub const KEY_MANAGER: &str = "manager";
pub const KEY_TOKEN_FILE: &str = "token_file";
pub const KEY_TOKEN: &str = "token";
pub const KEY_CA_FILE: &str = "ca_file";
pub const KEY_REPLICAS: &str = "replicas";
pub const KEY_CLASS: &str = "class";
pub const KEY_PROVISIONING: &str = "provisioning";
pub const KEY_GROUP: &str = "group";
pub const KEY_SR_UUID: &str = "sr_uuid";

/// device-config keys and their descriptions, as Plugin.Query reports them
/// (XenCenter and `xe sm-list` show these to admins).
pub const CONFIGURATION_KEYS: &[(&str, &str)] = &[
    (
        KEY_MANAGER,
        "Required. VastSky manager base URL, e.g. https://mgr:8080; several comma-separated URLs (an HA manager's members) are tried in order, and a standby's not_leader answer sends the call to the leader",
    ),
    (
        KEY_TOKEN_FILE,
        "Path of a file holding the manager's admin bearer token; must exist on every host of the pool (preferred over 'token')",
    ),
    (
        KEY_TOKEN,
        "The manager's admin bearer token itself (stored in the xapi database; use token_file instead when possible)",
    ),
    (
        KEY_CA_FILE,
        "Path of the PEM CA certificate that signed the manager's TLS certificate (https only); must exist on every host",
    ),
    (
        KEY_REPLICAS,
        "Copies of every block of new VDIs (2..9); the manager's default when unset",
    ),
    (
        KEY_CLASS,
        "Place new VDIs only on disks of this class (e.g. ssd, nvme)",
    ),
    (
        KEY_PROVISIONING,
        "How new VDIs take space: 'thin' (the default: chunks as data is written, over-commit visible in vsky cluster status; needed for VM snapshots, fast clones and reverts) or 'thick' (all chunks at create; such VDIs cannot be snapshotted)",
    ),
    (
        KEY_GROUP,
        "Name of the manager group that holds the SR's VDIs; default sr-<SR uuid>. Set by SR.create; SR.attach refuses a group that does not carry this SR's uuid",
    ),
    (
        KEY_SR_UUID,
        "The SR's uuid; set by SR.create, required and checked by SR.attach",
    ),
];

/// How long one manager request may take before the call fails.
pub const MANAGER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    TokenFile(&'a str),
    Token(&'a str),
}

/// A checked device-config. `raw` keeps every key verbatim, so what
/// SR.create returns is what the admin gave plus our additions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrConfig {
    pub raw: BTreeMap<String, String>,
    pub managers: Vec<String>,
    pub replicas: Option<u8>,
    pub class: Option<String>,
    /// New VDIs are thin volumes (`provisioning`, default thin).
    pub thin: bool,
}

fn invalid(message: impl Into<String>) -> SmapiError {
    SmapiError::new(codes::INVALID_CONFIGURATION, message)
}

/// Manager names: 1-64 of [A-Za-z0-9._-], starting alphanumeric. Checked
/// here too so that a bad key or group never reaches a URL or a file name.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A UUID in its canonical 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The group an SR with this uuid uses unless device-config names one.
pub fn default_group(uuid: &str) -> String {
    format!("sr-{}", uuid.to_ascii_lowercase())
}

impl SrConfig {
    pub fn parse(raw: BTreeMap<String, String>) -> SmapiResult<SrConfig> {
        let managers: Vec<String> = raw
            .get(KEY_MANAGER)
            .map(|m| {
                m.split(',')
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if managers.is_empty() {
            return Err(invalid(
                "device-config:manager is required: the VastSky manager URL, e.g. device-config:manager=https://mgr:8080",
            ));
        }
        for m in &managers {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                return Err(invalid(format!(
                    "device-config:manager '{m}' is not an http:// or https:// URL"
                )));
            }
        }
        let has_file = raw
            .get(KEY_TOKEN_FILE)
            .is_some_and(|t| !t.trim().is_empty());
        let has_token = raw.get(KEY_TOKEN).is_some_and(|t| !t.trim().is_empty());
        if !has_file && !has_token {
            return Err(invalid(
                "device-config needs token_file (a path to the manager's admin token, present on every host) or token",
            ));
        }
        let replicas = match raw.get(KEY_REPLICAS).map(|r| r.trim()) {
            None | Some("") => None,
            Some(r) => match r.parse::<u8>() {
                Ok(n) if (2..=9).contains(&n) => Some(n),
                _ => {
                    return Err(invalid(format!(
                        "device-config:replicas '{r}' must be a whole number from 2 to 9"
                    )));
                }
            },
        };
        let class = raw
            .get(KEY_CLASS)
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty());
        let thin = match raw.get(KEY_PROVISIONING).map(|p| p.trim()) {
            None | Some("") | Some("thin") => true,
            Some("thick") => false,
            Some(p) => {
                return Err(invalid(format!(
                    "device-config:provisioning '{p}' must be 'thin' or 'thick'"
                )));
            }
        };
        if let Some(g) = raw.get(KEY_GROUP)
            && !is_valid_name(g)
        {
            return Err(invalid(format!(
                "device-config:group '{g}' must be 1-64 of letters, digits, '.', '_', '-', starting with a letter or digit"
            )));
        }
        if let Some(u) = raw.get(KEY_SR_UUID)
            && !is_uuid(u)
        {
            return Err(invalid(format!(
                "device-config:sr_uuid '{u}' is not a UUID"
            )));
        }
        Ok(SrConfig {
            raw,
            managers,
            replicas,
            class,
            thin,
        })
    }

    pub fn credential(&self) -> Credential<'_> {
        match self
            .raw
            .get(KEY_TOKEN_FILE)
            .filter(|t| !t.trim().is_empty())
        {
            Some(f) => Credential::TokenFile(f.trim()),
            None => Credential::Token(self.raw[KEY_TOKEN].trim()),
        }
    }

    /// The group this configuration names, if it names one.
    pub fn group(&self) -> Option<String> {
        self.raw
            .get(KEY_GROUP)
            .cloned()
            .or_else(|| self.raw.get(KEY_SR_UUID).map(|u| default_group(u.as_str())))
    }

    pub fn sr_uuid(&self) -> Option<&str> {
        self.raw.get(KEY_SR_UUID).map(String::as_str)
    }

    /// Client settings, reading the token file now (so a missing file is
    /// reported as a configuration problem of this host).
    pub fn http_config(&self) -> SmapiResult<HttpConfig> {
        let token = match self.credential() {
            Credential::Token(t) => t.to_string(),
            Credential::TokenFile(path) => read_token_file(path)?,
        };
        Ok(HttpConfig {
            base_urls: self.managers.clone(),
            token: Some(token),
            ca_file: self
                .raw
                .get(KEY_CA_FILE)
                .map(|c| c.trim())
                .filter(|c| !c.is_empty())
                .map(PathBuf::from),
            timeout: MANAGER_TIMEOUT,
        })
    }
}

/// The token: the first line that is neither empty nor a `#` comment (the
/// manager's and agent's token files use the same format).
pub fn read_token_file(path: &str) -> SmapiResult<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(format!(
            "cannot read device-config:token_file {path} on this host: {e}; copy the manager's admin token there (mode 0600)"
        ))
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .ok_or_else(|| invalid(format!("token file {path} holds no token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_complete_configuration_parses() {
        let c = SrConfig::parse(map(&[
            ("manager", "https://a:8080, https://b:8080"),
            ("token", "t"),
            ("replicas", "3"),
            ("class", "ssd"),
            ("sr_uuid", "0F1C2D3E-0000-4000-8000-00000000000A"),
            ("SRmaster", "true"),
        ]))
        .unwrap();
        assert_eq!(c.managers, ["https://a:8080", "https://b:8080"]);
        assert_eq!(c.replicas, Some(3));
        assert_eq!(c.class.as_deref(), Some("ssd"));
        assert_eq!(c.credential(), Credential::Token("t"));
        assert_eq!(
            c.group().unwrap(),
            "sr-0f1c2d3e-0000-4000-8000-00000000000a"
        );
        assert_eq!(c.raw["SRmaster"], "true", "unknown keys kept verbatim");
        assert!(c.thin, "thin unless told otherwise");
        let thick = SrConfig::parse(map(&[
            ("manager", "http://m"),
            ("token", "t"),
            ("provisioning", "thick"),
        ]))
        .unwrap();
        assert!(!thick.thin);
    }

    #[test]
    fn incomplete_or_bad_configurations_say_what_to_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("token", "t")], "manager is required"),
            (&[("manager", "mgr:8080"), ("token", "t")], "http"),
            (&[("manager", "http://m")], "token_file"),
            (
                &[("manager", "http://m"), ("token", "t"), ("replicas", "1")],
                "2 to 9",
            ),
            (
                &[("manager", "http://m"), ("token", "t"), ("group", "../x")],
                "group",
            ),
            (
                &[("manager", "http://m"), ("token", "t"), ("sr_uuid", "nope")],
                "UUID",
            ),
            (
                &[
                    ("manager", "http://m"),
                    ("token", "t"),
                    ("provisioning", "lazy"),
                ],
                "'thin' or 'thick'",
            ),
        ];
        for (pairs, want) in cases {
            let e = SrConfig::parse(map(pairs)).unwrap_err();
            assert_eq!(e.code, codes::INVALID_CONFIGURATION);
            assert!(e.message().contains(want), "{pairs:?}: {}", e.message());
        }
    }

    #[test]
    fn token_files_skip_comments_and_missing_ones_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "# admin token\n\n  secret \n").unwrap();
        assert_eq!(read_token_file(f.to_str().unwrap()).unwrap(), "secret");
        let e = read_token_file("/nonexistent/token").unwrap_err();
        assert!(e.message().contains("/nonexistent/token"));
    }

    #[test]
    fn names_and_uuids_are_checked() {
        assert!(is_valid_name("sr-1.a_b"));
        assert!(!is_valid_name("-x") && !is_valid_name("a/b") && !is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(is_uuid("0f1c2d3e-0000-4000-8000-00000000000a"));
        assert!(!is_uuid("0f1c2d3e00004000800000000000000a"));
    }
}
