//! The datapath plugin's host configuration: where the local vsky-agent's
//! API listens and which token it wants.
//!
//! Read from `/etc/vsky/datapath.json`, or from the file named by
//! `VSKY_DATAPATH_CONFIG` (tests, non-standard installs):
//!
//! ```json
//! {"agent_url": "http://127.0.0.1:10810", "token_file": "/etc/vsky/agent-api.token"}
//! ```
//!
//! `agent_url` defaults to `http://127.0.0.1:10810` (the agent's default
//! `--api-listen`); `token_file` is required and holds the token given to
//! the agent with `--api-token-file`. Unknown keys are refused so that a
//! typo is reported, not ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use smapi::error::codes;
use smapi::http::HttpConfig;
use smapi::{SmapiError, SmapiResult};

pub const CONFIG_ENV: &str = "VSKY_DATAPATH_CONFIG";
pub const DEFAULT_CONFIG: &str = "/etc/vsky/datapath.json";
pub const DEFAULT_AGENT_URL: &str = "http://127.0.0.1:10810";

/// The agent waits up to 120 s for a volume to assemble or tear down; we
/// wait a little longer so its own, more precise error reaches us.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(150);

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatapathConfig {
    #[serde(default = "default_url")]
    pub agent_url: String,
    pub token_file: PathBuf,
}

fn default_url() -> String {
    DEFAULT_AGENT_URL.to_string()
}

fn invalid(message: String) -> SmapiError {
    SmapiError::new(codes::INVALID_CONFIGURATION, message)
}

pub fn config_path() -> PathBuf {
    std::env::var_os(CONFIG_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

impl DatapathConfig {
    pub fn load() -> SmapiResult<DatapathConfig> {
        let path = config_path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            invalid(format!(
                "cannot read the datapath plugin's config {}: {e}; see packaging/etc/vsky/datapath.json",
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| invalid(format!("{} is not a valid config: {e}", path.display())))
    }

    pub fn http_config(&self) -> SmapiResult<HttpConfig> {
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| {
            invalid(format!(
                "cannot read the agent API token file {}: {e}",
                self.token_file.display()
            ))
        })?;
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| {
                invalid(format!(
                    "token file {} holds no token",
                    self.token_file.display()
                ))
            })?;
        Ok(HttpConfig {
            base_urls: vec![self.agent_url.clone()],
            token: Some(token.to_string()),
            ca_file: None,
            timeout: AGENT_TIMEOUT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_with_defaults_and_refuse_typos() {
        let c: DatapathConfig = serde_json::from_str(r#"{"token_file":"/t"}"#).unwrap();
        assert_eq!(c.agent_url, DEFAULT_AGENT_URL);
        assert!(serde_json::from_str::<DatapathConfig>(r#"{"token_fle":"/t"}"#).is_err());
    }

    #[test]
    fn a_missing_token_file_is_a_configuration_error() {
        let c = DatapathConfig {
            agent_url: DEFAULT_AGENT_URL.into(),
            token_file: "/nonexistent/token".into(),
        };
        let e = c.http_config().unwrap_err();
        assert_eq!(e.code, codes::INVALID_CONFIGURATION);
    }
}
