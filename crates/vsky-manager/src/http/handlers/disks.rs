//! Disks: add to a server, list, show, remove when empty, mark failed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vsky_api::types::{CreateDisk, Disk, ErrorBody};
use vsky_model::{DiskId, NewDisk};

use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::http::state::AppState;

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

/// Starts draining a disk: it keeps serving its legs, takes no new chunks,
/// and the manager moves its legs to other disks, one copy at a time per
/// mirrored disk and under the per-disk resync limit (repairs first).
/// Redundancy never drops: each new leg syncs before the old one leaves.
/// Idempotent. Remove the disk once it holds no leg (`legs_left` 0).
#[utoipa::path(post, path = "/api/v1/disks/{id}/drain", tag = "disks",
    params(("id" = u64, Path, description = "disk id")),
    responses((status = 200, body = Disk, description = "the disk, now draining"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the disk failed (its legs are being replaced already)")))]
pub async fn drain(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Disk>, ApiError> {
    let (disk, changed) = set_draining(&app, id, true).await?;
    if changed {
        app.event(
            NewEvent::new(
                Severity::Info,
                "disk_draining",
                format!(
                    "disk {id} ({}) of server '{}' is draining: it takes no new chunks and its {} legs are moved to other disks",
                    disk.path, disk.server, disk.legs_left
                ),
            )
            .server(&disk.server),
        );
    }
    Ok(Json(disk))
}

/// Stops draining a disk: it takes new chunks again. Moves already queued
/// or running finish; no new ones are planned. A disk of a draining server
/// stays draining (stop the server's drain). Idempotent.
#[utoipa::path(delete, path = "/api/v1/disks/{id}/drain", tag = "disks",
    params(("id" = u64, Path, description = "disk id")),
    responses((status = 200, body = Disk, description = "the disk, no longer draining unless its server is"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stop_drain(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Disk>, ApiError> {
    let (disk, changed) = set_draining(&app, id, false).await?;
    if changed {
        let still = if disk.draining {
            format!(
                "; it stays draining because server '{}' is draining",
                disk.server
            )
        } else {
            "; it takes new chunks again".to_string()
        };
        app.event(
            NewEvent::new(
                Severity::Info,
                "disk_drain_stopped",
                format!(
                    "disk {id} ({}) of server '{}' stopped draining with {} legs left{still} (moves under way finish)",
                    disk.path, disk.server, disk.legs_left
                ),
            )
            .server(&disk.server),
        );
    }
    Ok(Json(disk))
}

/// Starts or stops a disk's drain; returns the disk and whether anything
/// changed (an event is due only then).
async fn set_draining(app: &AppState, id: u64, draining: bool) -> Result<(Disk, bool), ApiError> {
    Ok(app
        .manager
        .mutate(move |c, _| {
            let changes = if draining {
                c.drain_disk(DiskId(id))?
            } else {
                c.stop_drain_disk(DiskId(id))?
            };
            let changed = !changes.is_empty();
            Ok(((convert::disk(c, c.disk(DiskId(id))?), changed), changes))
        })
        .await?)
}
