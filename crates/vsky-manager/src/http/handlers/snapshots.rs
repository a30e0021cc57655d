//! Snapshots, clones and reverts of thin volumes (docs/design/snapshots.md;
//! the rules are `vsky-model`'s `cluster/chains.rs`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vsky_api::types::{ErrorBody, NewVolumeName, RevertVolume, VolumeDetail};
use vsky_model::ModelError;

use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::http::state::AppState;
use crate::recovery::unix_now;

/// Takes a snapshot of a detached thin volume: a read-only volume with
/// the data the volume has now, at no copy. Refused (409) while the volume
/// is attached: its head would have to switch it onto a new top in the
/// kernel, which heads do not do yet.
#[utoipa::path(post, path = "/api/v1/volumes/{name}/snapshot", tag = "volumes", request_body = NewVolumeName,
    params(("name" = String, Path, description = "the thin volume")),
    responses((status = 201, body = VolumeDetail, description = "the snapshot"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn snapshot(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<NewVolumeName>,
) -> Result<(StatusCode, Json<VolumeDetail>), ApiError> {
    let n = name.clone();
    let detail = app
        .manager
        .mutate(move |c, secrets| {
            if c.volume_by_name(&n)?.attachment.is_some() {
                return Err(ModelError::Conflict(format!(
                    "volume '{n}' is attached, and heads cannot switch an attached volume onto a new top yet; detach it, take the snapshot, and attach it again"
                )));
            }
            let (id, changes) = c.snapshot_volume(&n, &req.name, unix_now(), secrets)?;
            let snap = c.volume(id).expect("just created");
            Ok((convert::volume_detail(c, snap), changes))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "volume_snapshot",
            format!("snapshot {} taken of volume {name}", detail.volume.name),
        )
        .volume(&name),
    );
    Ok((StatusCode::CREATED, Json(detail)))
}

/// Clones a snapshot or a detached thin volume: a new thin volume that
/// reads the source's data, written independently of it, at no copy.
#[utoipa::path(post, path = "/api/v1/volumes/{name}/clone", tag = "volumes", request_body = NewVolumeName,
    params(("name" = String, Path, description = "the snapshot or detached thin volume to clone")),
    responses((status = 201, body = VolumeDetail, description = "the clone"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn clone(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<NewVolumeName>,
) -> Result<(StatusCode, Json<VolumeDetail>), ApiError> {
    let n = name.clone();
    let detail = app
        .manager
        .mutate(move |c, secrets| {
            let (id, changes) = c.clone_volume(&n, &req.name, unix_now(), secrets)?;
            let clone = c.volume(id).expect("just created");
            Ok((convert::volume_detail(c, clone), changes))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "volume_cloned",
            format!("volume {} cloned from {name}", detail.volume.name),
        )
        .volume(&detail.volume.name),
    );
    Ok((StatusCode::CREATED, Json(detail)))
}

/// Takes a detached thin volume back to one of its snapshots: afterwards
/// it reads exactly what the snapshot reads; what it was written since is
/// released.
#[utoipa::path(post, path = "/api/v1/volumes/{name}/revert", tag = "volumes", request_body = RevertVolume,
    params(("name" = String, Path, description = "the thin volume")),
    responses((status = 200, body = VolumeDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn revert(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RevertVolume>,
) -> Result<Json<VolumeDetail>, ApiError> {
    let n = name.clone();
    let snapshot = req.snapshot.clone();
    let detail = app
        .manager
        .mutate(move |c, secrets| {
            let changes = c.revert_volume(&n, &req.snapshot, secrets)?;
            Ok((convert::volume_detail(c, c.volume_by_name(&n)?), changes))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "volume_reverted",
            format!("volume {name} reverted to snapshot {snapshot}"),
        )
        .volume(&name),
    );
    Ok(Json(detail))
}
