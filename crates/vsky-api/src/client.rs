//! A typed async client of REST API v1.
//!
//! Errors keep the manager's machine code and message intact, so a CLI can
//! print exactly what the manager said and scripts can match on the code.
//!
//! **Failover.** The manager URL may list several managers, comma-separated
//! (an HA group on etcd: one leader, standbys). A request goes to the
//! manager that answered last. It moves on, to the leader a standby names
//! in its `not_leader` answer or else to the next URL, when
//! - a standby answers `not_leader`, or a stopping manager
//!   `shutting_down` (either did nothing, so resending is safe);
//! - a manager cannot be reached: for reads always, for changes only when
//!   the connection was never made, so a change that may have reached a
//!   manager is never sent twice (its outcome is reported instead).
//!
//! When every manager has been tried (an election is under way, or all
//! are down), it waits and tries again until the failover wait (15 s by
//! default) runs out. With a single URL, an unreachable manager is
//! reported at once, as before.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use vsky_sync::LockExt;

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
    /// Manager base URL, e.g. `https://manager:8080`, or several
    /// comma-separated (`https://mgr1:8080,https://mgr2:8080`) for managers
    /// on etcd: the client follows the leader (see the module docs).
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
    /// The managers as configured, in order.
    bases: Arc<Vec<url::Url>>,
    /// The manager that answered last (or the leader a standby named);
    /// shared by clones, so one discovery serves every task.
    preferred: Arc<Mutex<url::Url>>,
    configured: String,
    token: Option<String>,
    timeout: Duration,
    failover_wait: Duration,
}

/// How long a request keeps trying other managers, by default: longer than
/// a leader election with the default lease (about 7 s).
pub const FAILOVER_WAIT_DEFAULT: Duration = Duration::from_secs(15);
/// How long an idle pooled connection to a manager is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one attempt at one manager says about trying another.
enum Attempt {
    /// Try the next manager: the named leader first, if any.
    Elsewhere(ClientError, Option<String>),
    /// Final: success is returned directly, this is a definite error.
    Final(ClientError),
}

fn parse_base(url: &str) -> Result<url::Url, ClientError> {
    let base = url::Url::parse(url).map_err(|e| {
        ClientError::Config(format!(
            "invalid manager URL: {e}; expected e.g. http://127.0.0.1:8080 (several: comma-separated)"
        ))
    })?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(ClientError::Config(format!(
            "manager URL '{}' must start with http:// or https://",
            shown(&base)
        )));
    }
    Ok(base)
}

/// A URL as errors may show it: any `user:password@` replaced by `***@`,
/// since errors end up on terminals and in logs.
fn shown(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut bare = url.clone();
    // Both fail only for URLs that cannot carry credentials at all.
    let _ = bare.set_password(None);
    let _ = bare.set_username("***");
    bare.to_string()
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
        let bases = config
            .manager_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(parse_base)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = bases.first().cloned() else {
            return Err(ClientError::Config(format!(
                "invalid manager URL '{}': expected e.g. http://127.0.0.1:8080 (several: comma-separated)",
                config.manager_url
            )));
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Below the manager's idle keep-alive close (--header-timeout,
            // 15 s by default), so a request never races that close on a
            // pooled connection.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
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
            bases: Arc::new(bases),
            preferred: Arc::new(Mutex::new(first)),
            configured: config.manager_url.trim().to_string(),
            token: config.token,
            timeout: config.timeout.unwrap_or(Duration::from_secs(30)),
            failover_wait: FAILOVER_WAIT_DEFAULT,
        })
    }

    /// How long a request keeps trying other managers when none accepts
    /// it (see the module docs).
    pub fn with_failover_wait(mut self, wait: Duration) -> Self {
        self.failover_wait = wait;
        self
    }

    /// The manager URL(s) as configured.
    pub fn base_url(&self) -> &str {
        &self.configured
    }

    /// The manager requests go to first: the one that answered last.
    pub fn current_url(&self) -> String {
        self.preferred().as_str().to_string()
    }

    fn preferred(&self) -> url::Url {
        self.preferred.lock_unpoisoned().clone()
    }

    async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra_timeout: Duration,
    ) -> Result<R, ClientError> {
        let deadline = Instant::now() + self.failover_wait;
        let mut pause = Duration::from_millis(100);
        loop {
            // One round: the preferred manager, then every configured one,
            // with a leader named by a standby jumping the queue.
            let mut queue: std::collections::VecDeque<url::Url> = std::iter::once(self.preferred())
                .chain(self.bases.iter().cloned())
                .collect();
            let mut tried: Vec<url::Url> = Vec::new();
            let mut last = None;
            while let Some(base) = queue.pop_front() {
                if tried.contains(&base) {
                    continue;
                }
                tried.push(base.clone());
                match self
                    .attempt(&base, method.clone(), path, body, extra_timeout)
                    .await
                {
                    Ok(value) => {
                        *self.preferred.lock_unpoisoned() = base;
                        return Ok(value);
                    }
                    Err(Attempt::Final(e)) => return Err(e),
                    Err(Attempt::Elsewhere(e, leader)) => {
                        if let Some(leader) = leader.as_deref().and_then(|l| parse_base(l).ok()) {
                            queue.push_front(leader);
                        }
                        last = Some(e);
                    }
                }
            }
            let last = last.expect("at least one manager was tried");
            // A single manager that cannot be reached: say so at once.
            let unreachable_single =
                self.bases.len() == 1 && matches!(last, ClientError::Transport { .. });
            if unreachable_single || Instant::now() + pause > deadline {
                return Err(last);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// One request to one manager.
    async fn attempt<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        base: &url::Url,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra_timeout: Duration,
    ) -> Result<R, Attempt> {
        let reads = matches!(method, Method::GET | Method::HEAD);
        let target = format!("{}{}", base.as_str().trim_end_matches('/'), path);
        // Errors name the URL without its credentials, if it has any.
        let url = format!("{}{}", shown(base).trim_end_matches('/'), path);
        let mut req = self
            .http
            .request(method, &target)
            .timeout(self.timeout + extra_timeout);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let transport = |source: reqwest::Error| {
            // A change is only resent when it certainly never left.
            let resend = reads || source.is_connect();
            let e = ClientError::Transport {
                url: url.clone(),
                source: source.without_url(),
            };
            if resend {
                Attempt::Elsewhere(e, None)
            } else {
                Attempt::Final(e)
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| {
            Attempt::Final(ClientError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => {
                    // Both say nothing was done: resending is safe.
                    let elsewhere = e.code == "not_leader" || e.code == "shutting_down";
                    let err = ClientError::Api {
                        status: status.as_u16(),
                        code: e.code,
                        message: e.message,
                    };
                    if elsewhere {
                        Attempt::Elsewhere(err, e.leader)
                    } else {
                        Attempt::Final(err)
                    }
                }
                Err(_) => Attempt::Final(ClientError::Decode {
                    url,
                    status: status.as_u16(),
                    detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                }),
            });
        }
        let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            bytes::Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Final(ClientError::Decode {
                url,
                status: status.as_u16(),
                detail: e.to_string(),
            })
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

    /// A DELETE whose answer carries a body.
    async fn delete_returning<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call::<(), R>(Method::DELETE, path, None, Duration::ZERO)
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

    /// Starts draining a server: it takes no new chunks and its legs move
    /// to other servers. Idempotent.
    pub async fn drain_server(&self, name: &str) -> Result<Server, ClientError> {
        self.post(
            &format!("{API_PREFIX}/servers/{}/drain", segment(name)),
            &(),
        )
        .await
    }

    /// Stops draining a server; moves already under way finish.
    pub async fn stop_drain_server(&self, name: &str) -> Result<Server, ClientError> {
        self.delete_returning(&format!("{API_PREFIX}/servers/{}/drain", segment(name)))
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

    /// Starts draining a disk: it takes no new chunks and its legs move to
    /// other disks. Idempotent.
    pub async fn drain_disk(&self, id: u64) -> Result<Disk, ClientError> {
        self.post(&format!("{API_PREFIX}/disks/{id}/drain"), &())
            .await
    }

    /// Stops draining a disk; moves already under way finish.
    pub async fn stop_drain_disk(&self, id: u64) -> Result<Disk, ClientError> {
        self.delete_returning(&format!("{API_PREFIX}/disks/{id}/drain"))
            .await
    }

    // ---- pool --------------------------------------------------------------

    /// Plans moves from the fullest disks to the emptiest (at most
    /// `req.max_moves`, the manager's default when absent).
    pub async fn rebalance(
        &self,
        req: &RebalanceRequest,
    ) -> Result<RebalanceResponse, ClientError> {
        self.post(&format!("{API_PREFIX}/pool/rebalance"), req)
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
        self.attach_volume_as(name, server, false).await
    }

    /// Attaches a volume, or with `read_only` reads a snapshot on `server`
    /// (see [`AttachVolume::read_only`]).
    pub async fn attach_volume_as(
        &self,
        name: &str,
        server: &str,
        read_only: bool,
    ) -> Result<VolumeDetail, ClientError> {
        let body = AttachVolume {
            server: server.to_string(),
            read_only,
        };
        self.post(
            &format!("{API_PREFIX}/volumes/{}/attach", segment(name)),
            &body,
        )
        .await
    }

    /// A graceful detach: the attachment is `releasing` until the head
    /// reports its devices gone (`Volume::attachment_state`).
    pub async fn detach_volume(&self, name: &str) -> Result<VolumeDetail, ClientError> {
        self.post(
            &format!("{API_PREFIX}/volumes/{}/detach", segment(name)),
            &DetachVolume::default(),
        )
        .await
    }

    /// A graceful detach from `server`: its read of snapshot `name` ends
    /// at once, or, if it is the volume's head, the volume starts
    /// releasing (as [`Self::detach_volume`]).
    pub async fn detach_from(&self, name: &str, server: &str) -> Result<VolumeDetail, ClientError> {
        self.post(
            &format!("{API_PREFIX}/volumes/{}/detach", segment(name)),
            &DetachVolume {
                server: Some(server.to_string()),
                ..DetachVolume::default()
            },
        )
        .await
    }

    /// The fencing operation: ends the attachment at once, cutting the old
    /// head off its legs, for a head that is dead or cut off.
    pub async fn force_detach_volume(&self, name: &str) -> Result<VolumeDetail, ClientError> {
        self.post(
            &format!("{API_PREFIX}/volumes/{}/detach", segment(name)),
            &DetachVolume {
                force: true,
                ..DetachVolume::default()
            },
        )
        .await
    }

    /// Grows a volume; for an attached one, waits up to `wait_seconds`
    /// (`None`: the manager's default) for its head to serve the new size.
    pub async fn resize_volume(
        &self,
        name: &str,
        size_bytes: u64,
        wait_seconds: Option<u64>,
    ) -> Result<VolumeDetail, ClientError> {
        let body = ResizeVolume {
            size_bytes,
            wait_seconds,
        };
        self.call(
            Method::POST,
            &format!("{API_PREFIX}/volumes/{}/resize", segment(name)),
            Some(&body),
            crate::RESIZE_EXTRA_WAIT,
        )
        .await
    }

    /// Takes snapshot `snapshot` of thin volume `name`; of an attached one,
    /// answered once its head has switched (see [`crate::SNAPSHOT_EXTRA_WAIT`]).
    pub async fn snapshot_volume(
        &self,
        name: &str,
        snapshot: &str,
    ) -> Result<VolumeDetail, ClientError> {
        let body = NewVolumeName {
            name: snapshot.to_string(),
            keys: None,
        };
        self.call(
            Method::POST,
            &format!("{API_PREFIX}/volumes/{}/snapshot", segment(name)),
            Some(&body),
            crate::SNAPSHOT_EXTRA_WAIT,
        )
        .await
    }

    /// Clones the snapshot or detached thin volume `source` as `clone`.
    pub async fn clone_volume(
        &self,
        source: &str,
        clone: &str,
    ) -> Result<VolumeDetail, ClientError> {
        let body = NewVolumeName {
            name: clone.to_string(),
            keys: None,
        };
        self.post(
            &format!("{API_PREFIX}/volumes/{}/clone", segment(source)),
            &body,
        )
        .await
    }

    /// Takes the detached thin volume `name` back to its snapshot
    /// `snapshot`.
    pub async fn revert_volume(
        &self,
        name: &str,
        snapshot: &str,
    ) -> Result<VolumeDetail, ClientError> {
        let body = RevertVolume {
            snapshot: snapshot.to_string(),
        };
        self.post(
            &format!("{API_PREFIX}/volumes/{}/revert", segment(name)),
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

    /// Attaches `volume` to the calling agent's own `server`; `read_only`:
    /// as one of a snapshot's readers (see [`AgentAttachment::read_only`]).
    pub async fn agent_attach(
        &self,
        server: &str,
        volume: &str,
        read_only: bool,
    ) -> Result<VolumeDetail, ClientError> {
        let body = AgentAttachment {
            server: server.into(),
            volume: volume.into(),
            read_only,
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
            read_only: false,
        };
        self.post(&format!("{API_PREFIX}/agent/detach"), &body)
            .await
    }

    // ---- recovery ----------------------------------------------------------

    /// Rebuild jobs: active ones, plus recent finished ones with `all`.
    pub async fn rebuilds(&self, all: bool) -> Result<RebuildList, ClientError> {
        self.get(&format!("{API_PREFIX}/rebuilds?all={all}")).await
    }

    /// Events after `since`; waits up to `wait` for one when none is newer.
    pub async fn events(
        &self,
        since: u64,
        limit: Option<usize>,
        wait: Duration,
    ) -> Result<EventList, ClientError> {
        let mut path = format!(
            "{API_PREFIX}/events?since={since}&wait_ms={}",
            wait.as_millis()
        );
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        self.call::<(), _>(Method::GET, &path, None, wait).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a manager URL's `user:password@` was repeated in every
    /// error that named the URL.
    #[tokio::test]
    async fn errors_never_repeat_a_password_from_the_url() {
        let client = Client::new(ClientConfig {
            manager_url: "http://admin:pa55word@127.0.0.1:1".into(),
            token: Some("t".repeat(16)),
            timeout: Some(Duration::from_millis(200)),
            ..ClientConfig::default()
        })
        .unwrap();
        let err = client.list_volumes().await.unwrap_err().to_string();
        assert!(!err.contains("pa55word"), "{err}");
        assert!(err.contains("http://***@127.0.0.1:1"), "{err}");
        let Err(err) = Client::new(ClientConfig {
            manager_url: "ftp://admin:pa55word@h".into(),
            ..ClientConfig::default()
        }) else {
            panic!("an ftp:// manager URL was accepted")
        };
        assert!(!err.to_string().contains("pa55word"), "{err}");
    }
}
