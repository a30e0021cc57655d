//! Servers: register, list, show, remove when empty, mark failed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vsky_api::types::{CreateServer, ErrorBody, Server};
use vsky_model::NewServer;

use crate::events::{NewEvent, Severity};
use crate::http::AppState;
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiPath};

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
