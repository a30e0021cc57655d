//! Servers: register, list, show, remove when empty, mark failed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vsky_api::types::{CreateServer, ErrorBody, Server};
use vsky_model::NewServer;

use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::http::state::AppState;

#[utoipa::path(get, path = "/api/v1/servers", tag = "servers",
    responses((status = 200, body = Vec<Server>), (status = 401, body = ErrorBody)))]
pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<Server>>, ApiError> {
    Ok(Json(app.manager.read(|c| {
        c.servers().map(|s| convert::server(c, s)).collect()
    })?))
}

#[utoipa::path(post, path = "/api/v1/servers", tag = "servers", request_body = CreateServer,
    responses((status = 201, body = Server), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateServer>,
) -> Result<(StatusCode, Json<Server>), ApiError> {
    let server = app
        .manager
        .mutate(move |c, _| {
            let (id, changes) = c.add_server(NewServer {
                name: req.name,
                address: req.address,
                labels: req.labels,
            })?;
            Ok((
                convert::server(c, c.server(id).expect("just added")),
                changes,
            ))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "server_added",
            format!("server {} added at {}", server.name, server.address),
        )
        .server(&server.name),
    );
    Ok((StatusCode::CREATED, Json(server)))
}

#[utoipa::path(get, path = "/api/v1/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "server name")),
    responses((status = 200, body = Server), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Server>, ApiError> {
    let server = app
        .manager
        .read(|c| c.server_by_name(&name).map(|s| convert::server(c, s)))??;
    Ok(Json(server))
}

/// Removes a server and its disks; refused while any chunk of it is used.
#[utoipa::path(delete, path = "/api/v1/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "server name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let n = name.clone();
    app.manager
        .mutate(move |c, _| Ok(((), c.remove_server(&n)?)))
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "server_removed",
            format!("server {name} removed"),
        )
        .server(&name),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Declares a server failed: its legs fail and it gets no new chunks.
#[utoipa::path(post, path = "/api/v1/servers/{name}/fail", tag = "servers",
    params(("name" = String, Path, description = "server name")),
    responses((status = 200, body = Server), (status = 404, body = ErrorBody)))]
pub async fn fail(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Server>, ApiError> {
    let n = name.clone();
    let server = app
        .manager
        .mutate(move |c, _| {
            let changes = c.fail_server(&n)?;
            Ok((convert::server(c, c.server_by_name(&n)?), changes))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Error,
            "server_failed",
            format!("server '{name}' declared failed by an admin: its legs are being replaced"),
        )
        .server(&name),
    );
    Ok(Json(server))
}

/// Starts draining a server (all its disks): it keeps serving its legs,
/// takes no new chunks, and the manager moves its legs to other servers,
/// one copy at a time per mirrored disk and under the per-disk resync
/// limit (repairs first). Redundancy never drops. Idempotent. Remove the
/// server once it holds no leg (`legs_left` 0).
#[utoipa::path(post, path = "/api/v1/servers/{name}/drain", tag = "servers",
    params(("name" = String, Path, description = "server name")),
    responses((status = 200, body = Server, description = "the server, now draining"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the server failed (its legs are being replaced already)")))]
pub async fn drain(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Server>, ApiError> {
    let (server, changed) = set_draining(&app, &name, true).await?;
    if changed {
        app.event(
            NewEvent::new(
                Severity::Info,
                "server_draining",
                format!(
                    "server '{name}' is draining: it takes no new chunks and the {} legs on its disks are moved to other servers",
                    server.legs_left
                ),
            )
            .server(&name),
        );
    }
    Ok(Json(server))
}

/// Stops draining a server: it takes new chunks again. Moves already
/// queued or running finish; no new ones are planned. Disks drained on
/// their own stay draining. Idempotent.
#[utoipa::path(delete, path = "/api/v1/servers/{name}/drain", tag = "servers",
    params(("name" = String, Path, description = "server name")),
    responses((status = 200, body = Server, description = "the server, no longer draining"),
        (status = 404, body = ErrorBody)))]
pub async fn stop_drain(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Server>, ApiError> {
    let (server, changed) = set_draining(&app, &name, false).await?;
    if changed {
        app.event(
            NewEvent::new(
                Severity::Info,
                "server_drain_stopped",
                format!(
                    "server '{name}' stopped draining with {} legs left; it takes new chunks again (moves under way finish)",
                    server.legs_left
                ),
            )
            .server(&name),
        );
    }
    Ok(Json(server))
}

/// Starts or stops a server's drain; returns the server and whether
/// anything changed (an event is due only then).
async fn set_draining(
    app: &AppState,
    name: &str,
    draining: bool,
) -> Result<(Server, bool), ApiError> {
    let n = name.to_string();
    Ok(app
        .manager
        .mutate(move |c, _| {
            let changes = if draining {
                c.drain_server(&n)?
            } else {
                c.stop_drain_server(&n)?
            };
            let changed = !changes.is_empty();
            Ok((
                (convert::server(c, c.server_by_name(&n)?), changed),
                changes,
            ))
        })
        .await?)
}
