//! The agent's local REST API, for the SMAPIv3 datapath plugin on the same
//! host: activate a volume here for a domain (and wait for its device),
//! deactivate it (and, with its last activation, wait for the teardown),
//! and report what is assembled.
//!
//! It listens on loopback (or wherever `--api-listen` says) and requires a
//! bearer token from `--api-token-file`, compared in constant time. The
//! agent forwards attach/detach to the manager's agent endpoints with its
//! own token, so the plugin needs no admin token on the host.
//!
//! - `GET  /v1/health`                 (no token)
//! - `GET  /v1/volumes`                assembled volumes, with the domains
//!   that activated each
//! - `POST /v1/volumes/{name}/attach`  `{"domain", "mode": "rw"|"ro"}` (both
//!   optional; no body: domain `""`, read-write) → `{"name", "device",
//!   "activations"}` once assembled. Another domain reuses the device.
//! - `POST /v1/volumes/{name}/detach`  `{"domain"}`: ends that domain's
//!   activation; `{"if_unused": true}`: nobody's, but releases an unused
//!   volume; no body: every activation (the admin's release). → `{"name",
//!   "remaining", "released"}`. With no activation left, it answers once
//!   the device is torn down here and the volume released in the manager
//!   (409 `busy` if the device is held open); otherwise at once, leaving
//!   the device.
//!
//! Which domains hold which volume ([`crate::activations`]) is kept in
//! `--activations-file`, so a restarted agent still knows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vsky_api::Client;
use vsky_sync::LockExt;

use crate::activations::{self, Activations, Decision, Loaded, Mode, Release};
use crate::shared::Shared;

/// How long an attach or detach waits for the local devices to follow.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token: String,
    /// Where the table of activations is kept (`--activations-file`).
    pub activations_file: PathBuf,
}

#[derive(Clone)]
pub(crate) struct Context {
    pub client: Client,
    pub server: String,
    pub head: bool,
    pub shared: Arc<Shared>,
}

#[derive(Clone)]
struct AppState {
    ctx: Context,
    token: Arc<String>,
    table: Arc<Table>,
}

#[derive(Serialize)]
struct ErrorBody {
    code: String,
    message: String,
}

struct ApiError(StatusCode, String, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ErrorBody {
                code: self.1,
                message: self.2,
            }),
        )
            .into_response()
    }
}

impl From<vsky_api::ClientError> for ApiError {
    fn from(e: vsky_api::ClientError) -> Self {
        match &e {
            vsky_api::ClientError::Api { status, code, .. } => ApiError(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                code.clone(),
                e.to_string(),
            ),
            _ => ApiError(
                StatusCode::BAD_GATEWAY,
                "manager_unreachable".into(),
                e.to_string(),
            ),
        }
    }
}

#[derive(Serialize)]
struct Attached {
    name: String,
    device: String,
    /// How many domains on this host now hold the volume.
    activations: usize,
}

#[derive(Serialize)]
struct Detached {
    name: String,
    /// How many domains still hold the volume here.
    remaining: usize,
    /// Whether the device went and the manager released the volume.
    released: bool,
}

/// The body of an attach.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AttachRequest {
    /// xapi's domain; `""` for callers that name none (older plugins, an
    /// admin's `curl`).
    #[serde(default)]
    domain: String,
    mode: Option<Mode>,
}

/// The body of a detach.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DetachRequest {
    domain: Option<String>,
    /// Release only if no domain holds the volume (`Datapath.close`).
    #[serde(default)]
    if_unused: bool,
}

pub(crate) async fn spawn(
    config: ApiConfig,
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let table = Arc::new(Table::open(config.activations_file, &ctx.shared).await);
    let state = AppState {
        ctx,
        token: Arc::new(config.token),
        table,
    };
    let app = axum::Router::new()
        .route("/v1/volumes", get(list))
        .route("/v1/volumes/{name}/attach", post(attach))
        .route("/v1/volumes/{name}/detach", post(detach))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route("/v1/health", get(|| async { Json(serde_json_ok()) }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen for the local API on {}: {e}", config.listen)
        })?;
    tracing::info!(address = %config.listen, "local API serving");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "local API stopped");
        }
    });
    Ok(())
}

fn serde_json_ok() -> std::collections::BTreeMap<&'static str, &'static str> {
    [("status", "ok")].into_iter().collect()
}

async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let expected = state.token.as_bytes();
    let ok = presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !ok {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized".into(),
            "missing or invalid bearer token".into(),
        )
        .into_response();
    }
    next.run(req).await
}

#[derive(Serialize)]
struct LocalVolume {
    name: String,
    device: String,
    /// The domains that activated the volume here, and how.
    domains: BTreeMap<String, Mode>,
    /// Someone the agent cannot name holds it too (its activations file
    /// could not be read at start).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unknown_holder: bool,
}

async fn list(State(state): State<AppState>) -> Json<Vec<LocalVolume>> {
    let assembled = state.ctx.shared.assembled.lock_unpoisoned().clone();
    let table = state.table.current.lock().await;
    Json(
        assembled
            .into_iter()
            .map(|(name, assembled)| {
                let holders = table.holders(&name).cloned().unwrap_or_default();
                LocalVolume {
                    name,
                    device: assembled.device.display().to_string(),
                    domains: holders.domains,
                    unknown_holder: holders.unknown,
                }
            })
            .collect(),
    )
}

/// Waits until `done` holds for the local assembly state.
async fn settle(shared: &Shared, done: impl Fn(&Shared) -> bool) -> bool {
    let mut rx = shared.assembly.subscribe();
    let wait = async {
        loop {
            if done(shared) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(SETTLE_TIMEOUT, wait).await.is_ok() && done(shared)
}

/// Activates a volume here for a domain: records the activation (before
/// anything else, so a device never exists without its holder on file),
/// then attaches the volume in the manager (idempotent: a second domain
/// reuses the device) and waits until it is assembled.
async fn attach(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Attached>, ApiError> {
    let request: AttachRequest = parse_body(&body, "{\"domain\": \"…\", \"mode\": \"rw\"|\"ro\"}")?;
    check_domain(&request.domain)?;
    let mode = request.mode.unwrap_or(Mode::ReadWrite);
    let ctx = &state.ctx;
    if !ctx.head {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "storage_only".into(),
            "this agent runs with --storage-only and cannot assemble volumes".into(),
        ));
    }
    let _volume = state.table.lock_volume(&name).await;
    let gone = ctx.shared.gone(&name);
    let domain = request.domain.as_str();
    let new = state
        .table
        .update(true, |t| {
            // Holders of a device that went some other way (an admin's
            // detach through the manager) hold nothing now.
            if gone {
                t.forget(&name);
            }
            let new = !t.holds(&name, domain);
            t.activate(&name, domain, mode);
            new
        })
        .await?;
    match assemble(ctx, &name, mode == Mode::ReadOnly).await {
        Ok(device) => {
            let activations = state.table.count(&name).await;
            Ok(Json(Attached {
                name,
                device,
                activations,
            }))
        }
        Err(e) => {
            // This activation did not happen; its domain holds nothing
            // (unless it held the volume before).
            if new && let Err(undo) = state.table.update(true, |t| t.undo(&name, domain)).await {
                tracing::error!(volume = %name, domain, error = %undo.2, "cannot drop a failed activation from the table; the next deactivate of this domain does");
            }
            Err(e)
        }
    }
}

/// Attaches the volume to this server in the manager (`read_only`: a
/// snapshot as one of its readers) and waits until it is assembled here;
/// its device.
async fn assemble(ctx: &Context, name: &str, read_only: bool) -> Result<String, ApiError> {
    ctx.client
        .agent_attach(&ctx.server, name, read_only)
        .await?;
    let assembled = |s: &Shared| s.assembled.lock_unpoisoned().contains_key(name);
    if !settle(&ctx.shared, assembled).await {
        return Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "not_assembled".into(),
            format!("volume '{name}' is attached but not assembled yet; see the agent log"),
        ));
    }
    Ok(ctx.shared.assembled.lock_unpoisoned()[name]
        .device
        .display()
        .to_string())
}

/// How long a detach waits for the manager to end the release once the
/// devices are gone (the heartbeat that says so goes out at once).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);
const RELEASE_POLL: Duration = Duration::from_millis(100);

/// Ends activations of a volume here ([`DetachRequest`]); with the last
/// one, tears the device down and releases the volume ([`release_here`]).
/// Until that release succeeds the activation stays on file, so a failed
/// one (a busy device) is retried by the next deactivate.
///
/// A detach without a body ends every activation, as before domains were
/// counted. It stays because it is the admin's way out (and an older
/// plugin's only way): it is what clears an unknown holder left by an
/// unreadable activations file, and the busy check still refuses a device
/// held open, so a running VM's disk is never torn down by it. The plugin
/// itself never sends it.
async fn detach(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Detached>, ApiError> {
    let request: DetachRequest = parse_body(&body, "{\"domain\": \"…\"} or {\"if_unused\": true}")?;
    let how = match (request.domain, request.if_unused) {
        (Some(_), true) => {
            return Err(bad_request(
                "give either a domain or if_unused, not both".into(),
            ));
        }
        (Some(domain), false) => {
            check_domain(&domain)?;
            Release::Domain(domain)
        }
        (None, true) => Release::IfUnused,
        (None, false) => Release::Everything,
    };
    let ctx = &state.ctx;
    let _volume = state.table.lock_volume(&name).await;
    let gone = ctx.shared.gone(&name);
    let apply = |t: &mut Activations| {
        if gone {
            t.forget(&name);
        }
        t.release(&name, &how)
    };
    match state.table.peek(apply).await {
        Decision::Keep { remaining } => {
            state.table.update(true, apply).await?;
            Ok(Json(Detached {
                name,
                remaining,
                released: false,
            }))
        }
        Decision::Unknown => {
            state.table.update(true, apply).await?;
            Err(ApiError(
                StatusCode::CONFLICT,
                "activations_unknown".into(),
                format!(
                    "volume '{name}' stays assembled: the activations file {} could not be read when the agent started (see its log), so the agent cannot tell whether another domain on this host still uses {device}. Check which VMs use it (xe vbd-list vdi-uuid=…; fuser -vm {device}), then release it with a detach without a body (POST /v1/volumes/{name}/detach), which still refuses a device held open",
                    state.table.path.display(),
                    device = device_path(&name)
                ),
            ))
        }
        Decision::TearDown => {
            release_here(ctx, &name).await?;
            // The device is gone: the table must say so even if the file
            // cannot be written (a start drops the stale entry anyway).
            let _ = state.table.update(false, apply).await;
            Ok(Json(Detached {
                name,
                remaining: 0,
                released: true,
            }))
        }
    }
}

/// Detaches a volume from this host, in two phases, and answers only once
/// the volume is released: its devices here are gone and the manager no
/// longer lists it attached to this server, so another host's activate
/// (the next step of a live migration) does not meet "releasing".
///
/// A device held open (a VM's blkback, a mount, a process) cannot be torn
/// down: that is refused (409 `busy`) before the manager is asked, so it
/// changes nothing; if it is opened in between, the teardown fails, the
/// answer is the same, and the attachment stays releasing (no other host
/// can attach) until the device is closed or attached here again.
async fn release_here(ctx: &Context, name: &str) -> Result<(), ApiError> {
    if ctx.head
        && let Some(n) = held_open(name).await?
    {
        return Err(busy(
            name,
            &format!("held open {n} time(s)"),
            Held::Unchanged,
        ));
    }
    ctx.shared.teardown_errors.lock_unpoisoned().remove(name);
    let detail = match ctx.client.agent_detach(&ctx.server, name).await {
        Ok(detail) => detail,
        // Released here already and attached to another host since: the
        // source of a live migration, whose cleanup repeats deactivate and
        // detach after the destination activated. Nothing of it is here
        // to release, and the new host's attachment is not ours to touch.
        Err(vsky_api::ClientError::Api { code, .. })
            if code == "attached_elsewhere" && ctx.shared.gone(name) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    // Devices gone, or a teardown failed since the request.
    let settled =
        |s: &Shared| s.gone(name) || s.teardown_errors.lock_unpoisoned().contains_key(name);
    if !settle(&ctx.shared, settled).await {
        return Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "still_assembled".into(),
            format!(
                "volume '{name}' is releasing in the manager but its devices are still here after {}s; see the agent log. No other host can attach it until they are gone",
                SETTLE_TIMEOUT.as_secs()
            ),
        ));
    }
    if !ctx.shared.gone(name)
        && let Some(why) = ctx
            .shared
            .teardown_errors
            .lock_unpoisoned()
            .get(name)
            .cloned()
    {
        // A snapshot's read ended in the manager at once (readers are
        // not released in two phases); any other volume stays releasing.
        let held = if detail.volume.snapshot_of.is_some() {
            Held::ReadEnded
        } else {
            Held::Releasing
        };
        return Err(busy(name, &why, held));
    }
    // The heartbeat saying the devices are gone went out at once; wait for
    // the manager to end the attachment.
    let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    let mut volume = detail.volume;
    while !released_from(&volume, &ctx.server) {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                "still_releasing".into(),
                format!(
                    "volume '{name}' is torn down here, but the manager has not ended its attachment after {}s (are heartbeats reaching it? see the agent log); try the detach again",
                    RELEASE_TIMEOUT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(RELEASE_POLL).await;
        // Idempotent: a releasing volume stays releasing; a released one
        // reports no attachment (or another host's, once one attached).
        volume = match ctx.client.agent_detach(&ctx.server, name).await {
            Ok(d) => d.volume,
            Err(vsky_api::ClientError::Api { code, .. }) if code == "attached_elsewhere" => break,
            Err(e) => return Err(e.into()),
        };
    }
    Ok(())
}

/// How often, and how far apart, a detach looks at the device's open count
/// before it refuses: a short open (udev probing a new device, a monitoring
/// read) is waited out, a VM's or a mount's is not.
const OPEN_CHECKS: u32 = 5;
const OPEN_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The number of openers holding the volume's device open now, if it stays
/// held open over [`OPEN_CHECKS`] looks; `None` when it is free or not
/// assembled here (or its open count cannot be read: then the teardown
/// will tell).
async fn held_open(name: &str) -> Result<Option<i32>, ApiError> {
    for attempt in 1..=OPEN_CHECKS {
        let volume = name.to_string();
        let open =
            tokio::task::spawn_blocking(move || crate::head::Head::volume_open_count(&volume))
                .await
                .map_err(|e| internal(format!("device check failed: {e}")))?;
        match open {
            Ok(Some(n)) if n > 0 => {
                if attempt == OPEN_CHECKS {
                    return Ok(Some(n));
                }
                tokio::time::sleep(OPEN_CHECK_INTERVAL).await;
            }
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::debug!(volume = %name, error = %e, "cannot read the device's open count");
                return Ok(None);
            }
        }
    }
    Ok(None)
}

/// Whether the manager no longer lists the volume attached to `server`,
/// nor read there.
fn released_from(volume: &vsky_api::types::Volume, server: &str) -> bool {
    volume.attached_to.as_deref() != Some(server) && !volume.read_on.iter().any(|s| s == server)
}

/// The answer to a detach whose device is held open.
/// Where a detach refused as busy left the volume.
enum Held {
    /// The manager was not asked.
    Unchanged,
    /// The volume's attachment is releasing.
    Releasing,
    /// The snapshot's read here ended in the manager.
    ReadEnded,
}

fn busy(name: &str, why: &str, held: Held) -> ApiError {
    let state = match held {
        Held::Releasing => {
            "The volume stays releasing (no other host can attach it) until its devices are gone: close whatever holds the device (the agent retries the teardown on its own), or activate it on this host again to keep using it"
        }
        Held::ReadEnded => {
            "The snapshot is no longer read here in the manager (so it may be deleted, and then its reads here fail), but its device stays until it is closed: close whatever holds it (the agent retries the teardown on its own), or activate it read-only again to keep reading"
        }
        Held::Unchanged => {
            "Nothing changed (the manager was not asked). Close whatever holds the device (a VM's disk, a mount, a process: see `fuser -vm` or `lsof` on it) and detach again"
        }
    };
    ApiError(
        StatusCode::CONFLICT,
        "busy".into(),
        format!(
            "volume '{name}' cannot be detached: {} is in use on this host ({why}). {state}.",
            device_path(name)
        ),
    )
}

/// The volume's device node as this agent names it (for messages).
fn device_path(name: &str) -> String {
    format!("/dev/mapper/{}{name}", vsky_kernel::dm::name_prefix())
}

fn internal(message: String) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal".into(),
        message,
    )
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request".into(), message)
}

/// Reads a JSON request body; an empty one is the default request (what
/// callers that predate the body send).
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes, expected: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        bad_request(format!(
            "cannot read the request body ({e}); expected {expected}"
        ))
    })
}

/// Refuses a domain string no xapi sends (too long, control characters).
fn check_domain(domain: &str) -> Result<(), ApiError> {
    if domain.len() > activations::MAX_DOMAIN_LEN || domain.chars().any(char::is_control) {
        return Err(bad_request(format!(
            "domain must be at most {} bytes without control characters (xapi's look like \"3\" or \"u0-…\")",
            activations::MAX_DOMAIN_LEN
        )));
    }
    Ok(())
}

/// The activations table as the API keeps it: in memory, mirrored to its
/// file after every change, and one lock per volume so that the
/// activations and releases of one volume run one at a time (an attach
/// waiting for its device and a detach of the same volume must not
/// interleave), while other volumes proceed.
struct Table {
    path: PathBuf,
    current: tokio::sync::Mutex<Activations>,
    /// One entry per volume name ever activated or released here: small,
    /// and dropping entries safely would need a second lock.
    volumes: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Table {
    /// Loads the table at start. Volumes without devices here lose their
    /// entries (their devices went while the agent was down, or the host
    /// rebooted). An unreadable file is set aside (`<file>.unreadable`) and
    /// every assembled volume gets an unknown holder: never tear down a
    /// device on a guess.
    async fn open(path: PathBuf, shared: &Shared) -> Table {
        let mut here = shared.present.lock_unpoisoned().clone();
        here.extend(shared.assembled.lock_unpoisoned().keys().cloned());
        let (table, changed) = match activations::load(&path) {
            Loaded::Table(mut t) => {
                let before = t.clone();
                t.retain_assembled(|v| here.contains(v));
                let changed = t != before;
                (t, changed)
            }
            Loaded::Missing => {
                if !here.is_empty() {
                    tracing::warn!(
                        file = %path.display(),
                        volumes = ?here,
                        "no activations file while volumes are assembled (the first start of an agent that counts activations per domain?); the first deactivate of each releases it, as before"
                    );
                }
                (Activations::default(), false)
            }
            Loaded::Unreadable(why) => {
                let mut aside = path.clone().into_os_string();
                aside.push(".unreadable");
                let kept = std::fs::rename(&path, &aside).is_ok();
                tracing::error!(
                    file = %path.display(),
                    error = %why,
                    kept_as = kept.then(|| PathBuf::from(&aside).display().to_string()),
                    volumes = ?here,
                    "cannot read the activations file: the assembled volumes are treated as held by an unknown domain, so no deactivate tears them down; once no VM uses one, release it with a detach without a body"
                );
                (Activations::unknown(here), true)
            }
        };
        if changed {
            let (p, t) = (path.clone(), table.clone());
            match tokio::task::spawn_blocking(move || activations::save(&p, &t)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot write the activations file")
                }
                Err(e) => tracing::warn!(error = %e, "writing the activations file failed"),
            }
        }
        Table {
            path,
            current: tokio::sync::Mutex::new(table),
            volumes: Mutex::default(),
        }
    }

    /// Holds `volume`'s lock until the guard drops.
    async fn lock_volume(&self, volume: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .volumes
            .lock_unpoisoned()
            .entry(volume.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// What `change` would answer, without applying it.
    async fn peek<R>(&self, change: impl FnOnce(&mut Activations) -> R) -> R {
        let mut scratch = self.current.lock().await.clone();
        change(&mut scratch)
    }

    /// Applies `change` and writes the file. If the file cannot be written
    /// the change is refused (`must_save`) or kept in memory with an error
    /// logged (when it only records what already happened).
    async fn update<R>(
        &self,
        must_save: bool,
        change: impl FnOnce(&mut Activations) -> R,
    ) -> Result<R, ApiError> {
        let mut current = self.current.lock().await;
        let mut next = current.clone();
        let answer = change(&mut next);
        let (path, table) = (self.path.clone(), next.clone());
        let saved = tokio::task::spawn_blocking(move || activations::save(&path, &table))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        match saved {
            Ok(()) => {}
            Err(e) if must_save => {
                return Err(internal(format!(
                    "cannot write the activations file {}: {e}; nothing was changed. Check that its directory is writable (vsky-agent --activations-file)",
                    self.path.display()
                )));
            }
            Err(e) => tracing::error!(
                file = %self.path.display(),
                error = %e,
                "cannot write the activations file; the table in memory is right, and the next start drops entries of volumes no longer assembled"
            ),
        }
        *current = next;
        Ok(answer)
    }

    /// How many domains hold `volume` now.
    async fn count(&self, volume: &str) -> usize {
        self.current
            .lock()
            .await
            .holders(volume)
            .map_or(0, activations::Holders::count)
    }
}

#[cfg(test)]
mod tests;
