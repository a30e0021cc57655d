//! A typed async client of REST API v1.
//!
//! Errors keep the manager's machine code and message intact, so a CLI can
//! print exactly what the manager said and scripts can match on the code.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::API_PREFIX;
use crate::types::*;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The manager answered with an error body.
    #[error("{message} [{code}, HTTP {status}]")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The manager could not be reached or the connection broke.
    #[error(
        "cannot reach the manager at {url}: {source}; check --manager and that vsky-manager is running"
    )]
    Transport { url: String, source: reqwest::Error },
    /// The manager answered something that is not the expected JSON.
    #[error("unexpected answer from the manager at {url} (HTTP {status}): {detail}")]
    Decode {
        url: String,
        status: u16,
        detail: String,
    },
    /// The client itself is misconfigured (bad URL, unreadable CA file).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The manager's machine code, if the manager answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    /// Manager base URL, e.g. `https://manager:8080`.
    pub manager_url: String,
    /// Bearer token (admin or agent).
    pub token: Option<String>,
    /// PEM file of the CA that signed the manager's certificate, added to
    /// the system roots.
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout; long-polls add their wait on top.
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    token: Option<String>,
    timeout: Duration,
}

/// Percent-encodes one path segment (names are validated server-side, but
/// the client must not let a `/` or `?` in user input change the route).
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let base = url::Url::parse(&config.manager_url).map_err(|e| {
            ClientError::Config(format!(
                "invalid manager URL '{}': {e}; expected e.g. http://127.0.0.1:8080",
                config.manager_url
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Config(format!(
                "manager URL '{}' must start with http:// or https://",
                config.manager_url
            )));
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Config(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                ClientError::Config(format!(
                    "CA file {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: config.token,
            timeout: config.timeout.unwrap_or(Duration::from_secs(30)),
        })
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra_timeout: Duration,
    ) -> Result<R, ClientError> {
        let url = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(self.timeout + extra_timeout);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => ClientError::Api {
                    status: status.as_u16(),
                    code: e.code,
                    message: e.message,
                },
                Err(_) => ClientError::Decode {
                    url,
                    status: status.as_u16(),
                    detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                },
            });
        }
        let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            bytes::Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            status: status.as_u16(),
            detail: e.to_string(),
        })
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call::<(), R>(Method::GET, path, None, Duration::ZERO)
            .await
    }

    async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.call(Method::POST, path, Some(body), Duration::ZERO)
            .await
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, path, None, Duration::ZERO)
            .await
    }

    // ---- cluster ---------------------------------------------------------

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get(&format!("{API_PREFIX}/health")).await
    }

    pub async fn cluster(&self) -> Result<ClusterSummary, ClientError> {
        self.get(&format!("{API_PREFIX}/cluster")).await
    }

    // ---- servers ---------------------------------------------------------

    pub async fn list_servers(&self) -> Result<Vec<Server>, ClientError> {
        self.get(&format!("{API_PREFIX}/servers")).await
    }

    pub async fn server(&self, name: &str) -> Result<Server, ClientError> {
        self.get(&format!("{API_PREFIX}/servers/{}", segment(name)))
            .await
    }

    pub async fn create_server(&self, req: &CreateServer) -> Result<Server, ClientError> {
        self.post(&format!("{API_PREFIX}/servers"), req).await
    }

    pub async fn remove_server(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("{API_PREFIX}/servers/{}", segment(name)))
            .await
    }

    pub async fn fail_server(&self, name: &str) -> Result<Server, ClientError> {
        self.post(&format!("{API_PREFIX}/servers/{}/fail", segment(name)), &())
            .await
    }

    // ---- disks -----------------------------------------------------------

    pub async fn list_disks(&self) -> Result<Vec<Disk>, ClientError> {
        self.get(&format!("{API_PREFIX}/disks")).await
    }

    pub async fn disk(&self, id: u64) -> Result<Disk, ClientError> {
        self.get(&format!("{API_PREFIX}/disks/{id}")).await
    }

    pub async fn create_disk(&self, req: &CreateDisk) -> Result<Disk, ClientError> {
        self.post(&format!("{API_PREFIX}/disks"), req).await
    }

    pub async fn remove_disk(&self, id: u64) -> Result<(), ClientError> {
        self.delete(&format!("{API_PREFIX}/disks/{id}")).await
    }

    pub async fn fail_disk(&self, id: u64) -> Result<Disk, ClientError> {
        self.post(&format!("{API_PREFIX}/disks/{id}/fail"), &())
            .await
    }

    // ---- volumes ---------------------------------------------------------

    pub async fn list_volumes(&self) -> Result<Vec<Volume>, ClientError> {
        self.get(&format!("{API_PREFIX}/volumes")).await
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeDetail, ClientError> {
        self.get(&format!("{API_PREFIX}/volumes/{}", segment(name)))
            .await
    }

    pub async fn create_volume(&self, req: &CreateVolume) -> Result<VolumeDetail, ClientError> {
        self.post(&format!("{API_PREFIX}/volumes"), req).await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("{API_PREFIX}/volumes/{}", segment(name)))
            .await
    }

    pub async fn attach_volume(
        &self,
        name: &str,
        server: &str,
    ) -> Result<VolumeDetail, ClientError> {
        let body = AttachVolume {
            server: server.to_string(),
        };
        self.post(
            &format!("{API_PREFIX}/volumes/{}/attach", segment(name)),
            &body,
        )
        .await
    }

    pub async fn detach_volume(&self, name: &str) -> Result<VolumeDetail, ClientError> {
        self.post(
            &format!("{API_PREFIX}/volumes/{}/detach", segment(name)),
            &(),
        )
        .await
    }

    pub async fn resize_volume(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeDetail, ClientError> {
        let body = ResizeVolume { size_bytes };
        self.post(
            &format!("{API_PREFIX}/volumes/{}/resize", segment(name)),
            &body,
        )
        .await
    }

    pub async fn list_volumes_in(&self, group: &str) -> Result<Vec<Volume>, ClientError> {
        self.get(&format!("{API_PREFIX}/volumes?group={}", segment(group)))
            .await
    }

    pub async fn update_volume(
        &self,
        name: &str,
        req: &UpdateVolume,
    ) -> Result<VolumeDetail, ClientError> {
        self.call(
            Method::PATCH,
            &format!("{API_PREFIX}/volumes/{}", segment(name)),
            Some(req),
            Duration::ZERO,
        )
        .await
    }

    // ---- groups ----------------------------------------------------------

    pub async fn list_groups(&self) -> Result<Vec<Group>, ClientError> {
        self.get(&format!("{API_PREFIX}/groups")).await
    }

    pub async fn group(&self, name: &str) -> Result<Group, ClientError> {
        self.get(&format!("{API_PREFIX}/groups/{}", segment(name)))
            .await
    }

    pub async fn create_group(&self, req: &CreateGroup) -> Result<Group, ClientError> {
        self.post(&format!("{API_PREFIX}/groups"), req).await
    }

    pub async fn update_group(&self, name: &str, req: &UpdateGroup) -> Result<Group, ClientError> {
        self.call(
            Method::PATCH,
            &format!("{API_PREFIX}/groups/{}", segment(name)),
            Some(req),
            Duration::ZERO,
        )
        .await
    }

    pub async fn delete_group(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("{API_PREFIX}/groups/{}", segment(name)))
            .await
    }

    // ---- agents ----------------------------------------------------------

    pub async fn register_agent(
        &self,
        req: &RegisterAgent,
    ) -> Result<AgentRegistered, ClientError> {
        self.post(&format!("{API_PREFIX}/agent/register"), req)
            .await
    }

    pub async fn heartbeat(&self, req: &Heartbeat) -> Result<HeartbeatAck, ClientError> {
        self.post(&format!("{API_PREFIX}/agent/heartbeat"), req)
            .await
    }

    /// Attaches `volume` to the calling agent's own `server`.
    pub async fn agent_attach(
        &self,
        server: &str,
        volume: &str,
    ) -> Result<VolumeDetail, ClientError> {
        let body = AgentAttachment {
            server: server.into(),
            volume: volume.into(),
        };
        self.post(&format!("{API_PREFIX}/agent/attach"), &body)
            .await
    }

    /// Detaches `volume` from the calling agent's own `server`.
    pub async fn agent_detach(
        &self,
        server: &str,
        volume: &str,
    ) -> Result<VolumeDetail, ClientError> {
        let body = AgentAttachment {
            server: server.into(),
            volume: volume.into(),
        };
        self.post(&format!("{API_PREFIX}/agent/detach"), &body)
            .await
    }

    /// Long-polls the desired state of `server`: answers at once when the
    /// manager's generation differs from `known_generation`, otherwise when
    /// it changes or `wait` passes.
    pub async fn desired_state(
        &self,
        server: &str,
        known_generation: Option<u64>,
        wait: Duration,
    ) -> Result<DesiredState, ClientError> {
        let mut path = format!(
            "{API_PREFIX}/agent/desired-state?server={}&wait_ms={}",
            segment(server),
            wait.as_millis()
        );
        if let Some(g) = known_generation {
            path.push_str(&format!("&generation={g}"));
        }
        self.call::<(), _>(Method::GET, &path, None, wait).await
    }
}
