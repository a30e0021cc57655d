//! The REST API v1: routing, the request pipeline, and the OpenAPI document.
//!
//! Before the pipeline, the front door (`crate::serve`) bounds every
//! connection: connection caps per source and in total, deadlines for the
//! TLS handshake, the request head and the body, and JSON answers for
//! heads hyper cannot parse (400, 414, 431).
//!
//! Pipeline, outermost first: panic catcher (a bug answers 500 JSON, never a
//! dropped connection) → request id + tracing span + metrics → URI length
//! (414 over `limits::HTTP_URI_BYTES_MAX`) → bearer-token authentication
//! (health and the OpenAPI document stay open) → standby refusal of writes
//! (`standby.rs`) → body limit → handler. Handlers read bodies through
//! `error::ApiJson`/`ApiOptionalJson`, which take JSON objects only
//! (`json.rs`) and answer 408 when the body misses `--body-timeout`.
//!
//! Access (`required_access`): `/api/v1/health` and `/api/v1/openapi.json`
//! are open, `/api/v1/agent/…` takes an agent or the admin token, `/metrics`
//! the metrics or the admin token, and everything else the admin token.
//! The agent handlers then check that a server-bound token acts only for
//! its own server.
//!
//! Observability: the request id is the caller's `x-request-id` when it is
//! plain (at most 64 letters, digits, `-` or `_`), else a generated one; it
//! names the request's tracing span (with method and route template), is
//! echoed in the response header and in every error body. Handlers log one
//! `info` line per successful change; refusals log at `info`, server
//! errors at `error`. Metrics are labelled by route template, so their
//! cardinality is bounded.

pub mod convert;
pub mod error;
pub mod handlers;
pub mod json;
pub mod standby;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;

use crate::auth::Principal;
use error::{ApiError, REQUEST_ID};
use handlers::{
    agent, cluster, disks, events, groups, pool, rebuilds, servers, snapshots, volumes,
};
pub use state::AppState;

/// Largest request body accepted.
const BODY_BYTES_MAX: usize = 1 << 20;

#[derive(OpenApi)]
#[openapi(
    info(title = "VastSky manager API", version = "1",
        description = "Cluster block storage for XCP-ng/XenServer: servers, disks, mirrored volumes. \
All endpoints but health and this document need `Authorization: Bearer <token>`."),
    paths(
        cluster::health, cluster::summary,
        servers::list, servers::create, servers::show, servers::remove, servers::fail,
        servers::drain, servers::stop_drain,
        disks::list, disks::create, disks::show, disks::remove, disks::fail,
        disks::drain, disks::stop_drain,
        pool::rebalance,
        volumes::list, volumes::create, volumes::show, volumes::update, volumes::delete, volumes::attach, volumes::detach, volumes::resize,
        snapshots::snapshot, snapshots::clone, snapshots::revert,
        groups::list, groups::create, groups::show, groups::update, groups::delete,
        rebuilds::list, events::list,
        agent::register, agent::heartbeat, agent::desired_state, agent::attach, agent::detach,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "cluster"), (name = "servers"), (name = "disks"), (name = "volumes"),
        (name = "groups", description = "named groups of volumes: XAPI storage repositories"),
        (name = "pool", description = "moving legs between disks: rebalancing"),
        (name = "recovery", description = "rebuilds of failed legs, moves of healthy ones, and the event log"),
        (name = "agent", description = "called by vsky-agent; agent tokens are accepted here")),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

async fn metrics_text(State(app): State<AppState>) -> Result<Response, ApiError> {
    let text = app.metrics.render(&app.manager, &app.recovery)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /api/v1/openapi.json",
    )
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(cluster::health))
        .route("/openapi.json", get(openapi_json))
        .route("/cluster", get(cluster::summary))
        .route("/servers", get(servers::list).post(servers::create))
        .route(
            "/servers/{name}",
            get(servers::show).delete(servers::remove),
        )
        .route("/servers/{name}/fail", post(servers::fail))
        .route(
            "/servers/{name}/drain",
            post(servers::drain).delete(servers::stop_drain),
        )
        .route("/disks", get(disks::list).post(disks::create))
        .route("/disks/{id}", get(disks::show).delete(disks::remove))
        .route("/disks/{id}/fail", post(disks::fail))
        .route(
            "/disks/{id}/drain",
            post(disks::drain).delete(disks::stop_drain),
        )
        .route("/pool/rebalance", post(pool::rebalance))
        .route("/volumes", get(volumes::list).post(volumes::create))
        .route(
            "/volumes/{name}",
            get(volumes::show)
                .patch(volumes::update)
                .delete(volumes::delete),
        )
        .route("/groups", get(groups::list).post(groups::create))
        .route(
            "/groups/{name}",
            get(groups::show)
                .patch(groups::update)
                .delete(groups::delete),
        )
        .route("/volumes/{name}/attach", post(volumes::attach))
        .route("/volumes/{name}/detach", post(volumes::detach))
        .route("/volumes/{name}/resize", post(volumes::resize))
        .route("/volumes/{name}/snapshot", post(snapshots::snapshot))
        .route("/volumes/{name}/clone", post(snapshots::clone))
        .route("/volumes/{name}/revert", post(snapshots::revert))
        .route("/rebuilds", get(rebuilds::list))
        .route("/events", get(events::list))
        .route("/agent/register", post(agent::register))
        .route("/agent/heartbeat", post(agent::heartbeat))
        .route("/agent/desired-state", get(agent::desired_state))
        .route("/agent/attach", post(agent::attach))
        .route("/agent/detach", post(agent::detach));
    Router::new()
        .nest(vsky_api::API_PREFIX, api)
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            standby::refuse_writes,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(refuse_long_uri))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the manager log",
            )
            .into_response()
        }))
        .with_state(state)
}

/// 414 for a URI (path and query) longer than any valid request's.
async fn refuse_long_uri(req: Request, next: Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > vsky_model::limits::HTTP_URI_BYTES_MAX {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request's URI is {len} bytes, longer than {} bytes",
                vsky_model::limits::HTTP_URI_BYTES_MAX
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Which token a path needs.
fn required_access(path: &str) -> Access {
    if path == "/metrics" {
        return Access::MetricsOrAdmin;
    }
    let p = path.strip_prefix(vsky_api::API_PREFIX).unwrap_or("");
    match p {
        "/health" | "/openapi.json" => Access::Open,
        _ if p.starts_with("/agent/") => Access::AgentOrAdmin,
        _ => Access::Admin,
    }
}

enum Access {
    Open,
    AgentOrAdmin,
    MetricsOrAdmin,
    Admin,
}

async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let access = required_access(req.uri().path());
    if matches!(access, Access::Open) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let principal = presented.and_then(|t| app.tokens.authenticate(t));
    match (access, principal) {
        (_, None) => ApiError::unauthorized().into_response(),
        (Access::Admin | Access::MetricsOrAdmin, Some(Principal::Agent { .. })) => {
            ApiError::forbidden(
                "agent tokens may only call /api/v1/agent/ endpoints; use the admin token",
            )
            .into_response()
        }
        (Access::Admin | Access::AgentOrAdmin, Some(Principal::Metrics)) => {
            ApiError::forbidden("metrics tokens may only read /metrics; use the admin token")
                .into_response()
        }
        (_, Some(p)) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
    }
}

/// Request ids: the caller's `x-request-id` if it is short and plain,
/// otherwise a process-unique counter.
fn request_id(req: &Request) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(String::from)
        .unwrap_or_else(|| format!("r{:x}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

async fn observe(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let method = req.method().clone();
    // The route template, not the raw path, keeps metric labels bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let start = Instant::now();
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(req), span.clone()),
        )
        .await;
    let elapsed = start.elapsed();
    let status = response.status();
    app.metrics
        .observe_request(method.as_str(), &route, status.as_u16(), elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "served"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
