//! Disks: add to a server, list, show, remove when empty, mark failed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vsky_api::types::{CreateDisk, Disk, ErrorBody};
use vsky_model::{DiskId, NewDisk};

use crate::events::{NewEvent, Severity};
use crate::http::AppState;
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiPath};

#[utoipa::path(get, path = "/api/v1/disks", tag = "disks",
    responses((status = 200, body = Vec<Disk>), (status = 401, body = ErrorBody)))]
pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<Disk>>, ApiError> {
    Ok(Json(app.manager.read(|c| {
        c.disks().map(|d| convert::disk(c, d)).collect()
    })?))
}

#[utoipa::path(post, path = "/api/v1/disks", tag = "disks", request_body = CreateDisk,
    responses((status = 201, body = Disk), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateDisk>,
) -> Result<(StatusCode, Json<Disk>), ApiError> {
    let disk = app
        .manager
        .mutate(move |c, _| {
            let new = NewDisk {
                server: req.server,
                path: req.path,
                size_bytes: req.size_bytes,
                class: req.class,
            };
            let (id, changes) = c.add_disk(new)?;
            Ok((convert::disk(c, c.disk(id)?), changes))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "disk_added",
            format!(
                "disk {} ({}, {} chunks) added to {}",
                disk.id, disk.path, disk.chunk_count, disk.server
            ),
        )
        .server(&disk.server),
    );
    Ok((StatusCode::CREATED, Json(disk)))
}

#[utoipa::path(get, path = "/api/v1/disks/{id}", tag = "disks",
    params(("id" = u64, Path, description = "disk id")),
    responses((status = 200, body = Disk), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Disk>, ApiError> {
    Ok(Json(app.manager.read(|c| {
        c.disk(DiskId(id)).map(|d| convert::disk(c, d))
    })??))
}

/// Removes a disk; refused while any of its chunks is used.
#[utoipa::path(delete, path = "/api/v1/disks/{id}", tag = "disks",
    params(("id" = u64, Path, description = "disk id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    app.manager
        .mutate(move |c, _| Ok(((), c.remove_disk(DiskId(id))?)))
        .await?;
    app.event(NewEvent::new(
        Severity::Info,
        "disk_removed",
        format!("disk {id} removed"),
    ));
    Ok(StatusCode::NO_CONTENT)
}

/// Declares a disk failed: its legs fail and it gets no new chunks.
#[utoipa::path(post, path = "/api/v1/disks/{id}/fail", tag = "disks",
    params(("id" = u64, Path, description = "disk id")),
    responses((status = 200, body = Disk), (status = 404, body = ErrorBody)))]
pub async fn fail(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Disk>, ApiError> {
    let disk = app
        .manager
        .mutate(move |c, _| {
            let changes = c.fail_disk(DiskId(id))?;
            Ok((convert::disk(c, c.disk(DiskId(id))?), changes))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Error,
            "disk_failed",
            format!(
                "disk {id} ({}) of server '{}' declared failed by an admin: its legs are being replaced",
                disk.path, disk.server
            ),
        )
        .server(&disk.server),
    );
    Ok(Json(disk))
}
