//! Snapshots, clones and reverts of thin volumes (docs/design/snapshots.md;
//! the rules are `vsky-model`'s `cluster/chains.rs`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::time::Duration;
use vsky_api::types::{ErrorBody, NewVolumeName, RevertVolume, VolumeDetail};

use vsky_model::{Changes, Cluster, ModelError, VolumeMetaUpdate, limits};

use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::http::state::AppState;
use crate::recovery::unix_now;

/// Takes a snapshot of a thin volume: a read-only volume with the data the
/// volume has now, at no copy. For an attached volume the answer waits
/// until its head has switched the volume onto a new top (the VM's I/O
/// pauses for milliseconds); if it has not within
/// `SNAPSHOT_SWITCH_WAIT_SECONDS`, the snapshot is dropped and the answer
/// is 504 (the volume keeps writing, nothing is lost).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/snapshot", tag = "volumes", request_body = NewVolumeName,
    params(("name" = String, Path, description = "the thin volume")),
    responses((status = 201, body = VolumeDetail, description = "the snapshot"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 504, body = ErrorBody),
        (status = 507, body = ErrorBody)))]
pub async fn snapshot(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<NewVolumeName>,
) -> Result<(StatusCode, Json<VolumeDetail>), ApiError> {
    let n = name.clone();
    let (id, detail) = app
        .manager
        .mutate(move |c, secrets| {
            let (id, mut changes) = c.snapshot_volume(&n, &req.name, unix_now(), secrets)?;
            changes.merge(replace_keys(c, &req)?);
            let snap = c.volume(id).expect("just created");
            Ok(((id, convert::volume_detail(c, snap)), changes))
        })
        .await?;
    let snap = detail.volume.name.clone();
    wait_until_switched(&app, &name, &snap, id).await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "volume_snapshot",
            format!("snapshot {snap} taken of volume {name}"),
        )
        .volume(&name),
    );
    let detail = app.manager.read(|c| {
        c.volume_by_name(&snap)
            .map(|v| convert::volume_detail(c, v))
    })??;
    Ok((StatusCode::CREATED, Json(detail)))
}

/// Gives the new volume of `req` the keys it asks for instead of its
/// source's, in the mutation that made it (all or nothing).
fn replace_keys(c: &mut Cluster, req: &NewVolumeName) -> Result<Changes, ModelError> {
    let Some(keys) = &req.keys else {
        return Ok(Changes::default());
    };
    let unset_keys = c
        .volume_by_name(&req.name)?
        .meta
        .keys
        .keys()
        .filter(|k| !keys.contains_key(*k))
        .cloned()
        .collect();
    c.update_volume_meta(
        &req.name,
        VolumeMetaUpdate {
            set_keys: keys.clone(),
            unset_keys,
            ..VolumeMetaUpdate::default()
        },
    )
}

/// Waits until snapshot `id` of `volume` is ready (its head switched);
/// on timeout drops the pending snapshot and answers 504.
async fn wait_until_switched(
    app: &AppState,
    volume: &str,
    snap: &str,
    id: vsky_model::VolumeId,
) -> Result<(), ApiError> {
    let wait = Duration::from_secs(limits::SNAPSHOT_SWITCH_WAIT_SECONDS);
    let ready = super::wait_for_state(
        app,
        wait,
        "`vsky volume show` tells whether the snapshot was kept",
        || {
            // Gone: deleted meanwhile, or dropped because the attachment
            // ended.
            match app
                .manager
                .read(|c| c.volume(id).map(|_| c.snapshot_is_ready(id)))?
            {
                Some(true) => Ok(Some(())),
                Some(false) => Ok(None),
                None => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "snapshot_dropped",
                    format!(
                        "the snapshot {snap} of volume '{volume}' was dropped before its head switched (the volume was detached or deleted meanwhile); take it again"
                    ),
                )),
            }
        },
    )
    .await?;
    if ready.is_some() {
        return Ok(());
    }
    // Still pending: nothing reads it yet, so dropping it is safe. By id:
    // another snapshot may have its name by now.
    let dropped = app
        .manager
        .mutate(move |c, _| match c.volume(id) {
            Some(v) if !c.snapshot_is_ready(id) => {
                let name = v.name.clone();
                Ok((true, c.delete_volume(&name)?))
            }
            _ => Ok((false, Default::default())),
        })
        .await?;
    if !dropped {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "snapshot_not_switched",
        format!(
            "the head of volume '{volume}' did not switch it onto its new top within {}s, so snapshot {snap} was dropped; the volume keeps writing and lost nothing. See the agent log on its head, then take the snapshot again",
            wait.as_secs()
        ),
    ))
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
            let (id, mut changes) = c.clone_volume(&n, &req.name, unix_now(), secrets)?;
            changes.merge(replace_keys(c, &req)?);
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
