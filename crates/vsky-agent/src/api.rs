//! The agent's local REST API, for the SMAPIv3 datapath plugin on the same
//! host: attach a volume here (and wait for its device), detach it (and
//! wait for the teardown), and report what is assembled.
//!
//! It listens on loopback (or wherever `--api-listen` says) and requires a
//! bearer token from `--api-token-file`, compared in constant time. The
//! agent forwards attach/detach to the manager's agent endpoints with its
//! own token, so the plugin needs no admin token on the host.
//!
//! - `GET  /v1/health`                 (no token)
//! - `GET  /v1/volumes`                assembled volumes and mirror health
//! - `POST /v1/volumes/{name}/attach`  → `{"name", "device"}` once assembled
//! - `POST /v1/volumes/{name}/detach`  → `{"name"}` once torn down here and
//!   released in the manager (409 `busy` if the device is held open)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use vsky_api::Client;

use crate::reconcile::{Shared, lock_shared};

/// How long an attach or detach waits for the local devices to follow.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token: String,
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
}

#[derive(Serialize)]
struct Detached {
    name: String,
}

pub(crate) async fn spawn(
    config: ApiConfig,
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState {
        ctx,
        token: Arc::new(config.token),
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
}

async fn list(State(state): State<AppState>) -> Json<Vec<LocalVolume>> {
    let assembled = lock_shared(&state.ctx.shared.assembled).clone();
    Json(
        assembled
            .into_iter()
            .map(|(name, device)| LocalVolume {
                name,
                device: device.display().to_string(),
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

async fn attach(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Attached>, ApiError> {
    let ctx = &state.ctx;
    if !ctx.head {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "storage_only".into(),
            "this agent runs with --storage-only and cannot assemble volumes".into(),
        ));
    }
    ctx.client.agent_attach(&ctx.server, &name).await?;
    let assembled = |s: &Shared| lock_shared(&s.assembled).contains_key(&name);
    if !settle(&ctx.shared, assembled).await {
        return Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "not_assembled".into(),
            format!("volume '{name}' is attached but not assembled yet; see the agent log"),
        ));
    }
    let device = lock_shared(&ctx.shared.assembled)[&name]
        .display()
        .to_string();
    Ok(Json(Attached { name, device }))
}

/// How long a detach waits for the manager to end the release once the
/// devices are gone (the heartbeat that says so goes out at once).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);
const RELEASE_POLL: Duration = Duration::from_millis(100);

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
async fn detach(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Detached>, ApiError> {
    let ctx = &state.ctx;
    if ctx.head
        && let Some(n) = held_open(&name).await?
    {
        return Err(busy(&name, &format!("held open {n} time(s)"), false));
    }
    lock_shared(&ctx.shared.teardown_errors).remove(&name);
    let detail = ctx.client.agent_detach(&ctx.server, &name).await?;
    // Devices gone, or a teardown failed since the request.
    let settled = |s: &Shared| s.gone(&name) || lock_shared(&s.teardown_errors).contains_key(&name);
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
    if !ctx.shared.gone(&name)
        && let Some(why) = lock_shared(&ctx.shared.teardown_errors).get(&name).cloned()
    {
        return Err(busy(&name, &why, true));
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
        volume = match ctx.client.agent_detach(&ctx.server, &name).await {
            Ok(d) => d.volume,
            Err(vsky_api::ClientError::Api { code, .. }) if code == "attached_elsewhere" => break,
            Err(e) => return Err(e.into()),
        };
    }
    Ok(Json(Detached { name }))
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

/// Whether the manager no longer lists the volume attached to `server`.
fn released_from(volume: &vsky_api::types::Volume, server: &str) -> bool {
    volume.attached_to.as_deref() != Some(server)
}

/// The answer to a detach whose device is held open.
fn busy(name: &str, why: &str, releasing: bool) -> ApiError {
    let state = if releasing {
        "The volume stays releasing (no other host can attach it) until its devices are gone: close whatever holds the device (the agent retries the teardown on its own), or activate it on this host again to keep using it"
    } else {
        "Nothing changed (the manager was not asked). Close whatever holds the device (a VM's disk, a mount, a process: see `fuser -vm` or `lsof` on it) and detach again"
    };
    ApiError(
        StatusCode::CONFLICT,
        "busy".into(),
        format!(
            "volume '{name}' cannot be detached: /dev/mapper/vsky-{name} is in use on this host ({why}). {state}."
        ),
    )
}

fn internal(message: String) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal".into(),
        message,
    )
}
