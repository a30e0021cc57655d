//! Volumes: create, list, show with layout, delete, attach, detach, grow.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vsky_api::types::{
    AttachVolume, CreateVolume, DetachVolume, ErrorBody, ResizeVolume, UpdateVolume, Volume,
    VolumeDetail,
};
use vsky_model::{NewVolume, Stripe, limits};

use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiOptionalJson, ApiPath, ApiQuery};
use crate::http::state::AppState;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only volumes of this group.
    group: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", params(ListQuery),
    responses((status = 200, body = Vec<Volume>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Volume>>, ApiError> {
    let volumes = app.manager.read(|c| match &q.group {
        None => Ok(c.volumes().map(|v| convert::volume(c, v)).collect()),
        Some(g) => c
            .group(g)
            .map(|_| c.volumes_in(g).map(|v| convert::volume(c, v)).collect()),
    })??;
    Ok(Json(volumes))
}

/// Changes a volume's display name, description or keys.
#[utoipa::path(patch, path = "/api/v1/volumes/{name}", tag = "volumes", request_body = UpdateVolume,
    params(("name" = String, Path, description = "volume name")),
    responses((status = 200, body = VolumeDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateVolume>,
) -> Result<Json<VolumeDetail>, ApiError> {
    let n = name.clone();
    let detail = app
        .manager
        .mutate(move |c, _| {
            let update = vsky_model::VolumeMetaUpdate {
                display_name: req.display_name,
                description: req.description,
                set_keys: req.set_keys,
                unset_keys: req.unset_keys,
            };
            let changes = c.update_volume_meta(&n, update)?;
            Ok((convert::volume_detail(c, c.volume_by_name(&n)?), changes))
        })
        .await?;
    tracing::info!(volume = %name, "volume metadata updated");
    Ok(Json(detail))
}

/// Creates a volume; all or nothing.
#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", request_body = CreateVolume,
    responses((status = 201, body = VolumeDetail), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 507, body = ErrorBody, description = "the pool cannot place the volume")))]
pub async fn create(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateVolume>,
) -> Result<(StatusCode, Json<VolumeDetail>), ApiError> {
    let detail = app
        .manager
        .mutate(move |c, secrets| {
            let new = NewVolume {
                name: req.name,
                size_bytes: req.size_bytes,
                replicas: req.replicas,
                stripe: req.stripe.map(|s| Stripe {
                    width: s.width,
                    unit_bytes: s.unit_bytes,
                }),
                class: req.class,
                near_server: req.near_server,
                meta: vsky_model::VolumeMeta {
                    group: req.group,
                    display_name: req.display_name,
                    description: req.description,
                    keys: req.keys,
                    sharable: req.sharable,
                },
                thin: req.thin,
            };
            let (id, changes) = c.create_volume(new, secrets)?;
            Ok((
                convert::volume_detail(c, c.volume(id).expect("just created")),
                changes,
            ))
        })
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "volume_created",
            format!(
                "volume {} created: {} bytes, {} mirrored disks",
                detail.volume.name,
                detail.volume.size_bytes,
                detail.layout.len()
            ),
        )
        .volume(&detail.volume.name),
    );
    Ok((StatusCode::CREATED, Json(detail)))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "volume name")),
    responses((status = 200, body = VolumeDetail), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<VolumeDetail>, ApiError> {
    let detail = app.manager.read(|c| {
        c.volume_by_name(&name).map(|v| {
            let mut d = convert::volume_detail(c, v);
            // The pools its head reports (the model keeps no usage).
            for l in &mut d.layers {
                l.pool = c.pool_writer(&l.name).and_then(|(_, block)| {
                    let usage = app.recovery.pool_usage(&l.name)?;
                    Some(convert::pool_use(&usage, block))
                });
            }
            d
        })
    })??;
    Ok(Json(detail))
}

/// Deletes a detached volume; its chunks are wiped, then reused.
#[utoipa::path(delete, path = "/api/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "volume name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "attached")))]
pub async fn delete(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let n = name.clone();
    app.manager
        .mutate(move |c, _| Ok(((), c.delete_volume(&n)?)))
        .await?;
    app.event(
        NewEvent::new(
            Severity::Info,
            "volume_deleted",
            format!("volume {name} deleted"),
        )
        .volume(&name),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Attaches a volume to a head server (idempotent for the same server).
/// With `read_only`, a snapshot is read on the server alongside any others
/// (its read ends with a detach naming the server); any other volume is
/// attached as for a write.
/// Refused (409 `storage_only`) on a server whose agent runs with
/// `--storage-only`: nothing there could assemble it. Refused (409
/// `attached_elsewhere` / `releasing_elsewhere`) while another head holds
/// it, unless that head is gone (declared failed, or silent longer than
/// `--head-grace`): then the old head is fenced first (every leg gets a new
/// secret export name) and the volume moves (event `volume_taken_over`).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/attach", tag = "volumes", request_body = AttachVolume,
    params(("name" = String, Path, description = "volume name")),
    responses((status = 200, body = VolumeDetail), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<AttachVolume>,
) -> Result<Json<VolumeDetail>, ApiError> {
    let detail = super::attach_volume_as(&app, &name, &req.server, req.read_only, false).await?;
    Ok(Json(detail))
}

/// Detaches a volume (idempotent).
///
/// Graceful by default: the attachment becomes `releasing`, the head tears
/// its devices down and reports them gone with its next heartbeat, and only
/// then does the attachment end (every leg gets a new secret export name,
/// so the old names open nothing any more). Meanwhile no other server may
/// attach (409 `releasing_elsewhere`). A head that is failed never confirms:
/// its releasing attachments wait for a forced detach.
///
/// With `{"force": true}` it is the fencing operation, for a head that is
/// dead or cut off: the attachment ends at once, whatever its state, and
/// the storage agents cut the old head's NBD connections and refuse its
/// names (event `volume_force_detached`); it also ends every read of a
/// snapshot. `{"server": "…"}` ends that server's read of a snapshot (or
/// releases the volume if that server is its head); a snapshot read on
/// servers needs it.
#[utoipa::path(post, path = "/api/v1/volumes/{name}/detach", tag = "volumes", request_body(content = Option<DetachVolume>, description = "optional; `{\"force\": true}` fences the head and ends every read, `{\"server\": \"…\"}` ends that server's read of a snapshot"),
    params(("name" = String, Path, description = "volume name")),
    responses((status = 200, body = VolumeDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn detach(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiOptionalJson(req): ApiOptionalJson<DetachVolume>,
) -> Result<Json<VolumeDetail>, ApiError> {
    let (n, force, reader) = (name.clone(), req.force, req.server.clone());
    let (detail, head, changed) = app
        .manager
        .mutate(move |c, secrets| {
            let head = c
                .volume_by_name(&n)?
                .attachment
                .as_ref()
                .and_then(|a| c.server(a.head))
                .map(|s| s.name.clone());
            let changes = if force {
                c.force_detach_volume(&n, secrets)?.1
            } else {
                c.release_or_end_read(&n, reader.as_deref())?
            };
            let changed = !changes.is_empty();
            Ok((
                (
                    convert::volume_detail(c, c.volume_by_name(&n)?),
                    head,
                    changed,
                ),
                changes,
            ))
        })
        .await?;
    if let Some(head) = head.filter(|_| changed) {
        let event = if force {
            NewEvent::new(
                Severity::Warning,
                "volume_force_detached",
                format!(
                    "volume {name} force-detached from {head}: its legs have new export names, the old head's connections are cut"
                ),
            )
        } else {
            NewEvent::new(
                Severity::Info,
                "volume_releasing",
                format!(
                    "volume {name} is being released by {head}; detached once {head} has torn its devices down"
                ),
            )
        };
        app.event(event.volume(&name).server(&head));
    }
    Ok(Json(detail))
}

/// Grows a volume (all or nothing); shrinking is refused.
///
/// An attached volume grows online: the answer comes once its head serves
/// the new size (the new mirrored disks assembled, the volume device's
/// table swapped under I/O), so that when it returns the VM's disk has
/// grown. Refused (409, nothing changed) when the head has been silent too
/// long to apply it; 504 when the head has not applied it within
/// `GROW_APPLY_WAIT_SECONDS`: the volume is grown in the manager and keeps
/// serving its old size until the head does (it retries on every
/// reconcile; `served_bytes` tells).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/resize", tag = "volumes", request_body = ResizeVolume,
    params(("name" = String, Path, description = "volume name")),
    responses((status = 200, body = VolumeDetail), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 504, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn resize(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ResizeVolume>,
) -> Result<Json<VolumeDetail>, ApiError> {
    let n = name.clone();
    let wait = match req.wait_seconds {
        None => limits::GROW_APPLY_WAIT_SECONDS,
        Some(w) if w <= limits::GROW_APPLY_WAIT_SECONDS => w,
        Some(w) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "wait_seconds {w} is more than the {}s a grow may wait for the head; ask again (a repeated grow to the same size only waits) or watch `served_bytes`",
                    limits::GROW_APPLY_WAIT_SECONDS
                ),
            ));
        }
    };
    let head_grace = app.recovery.config.head_grace;
    let ages = app.recovery.heartbeat_ages(&app.manager)?;
    let (before, detail) = app
        .manager
        .mutate(move |c, secrets| {
            let before = c.volume_by_name(&n)?.size_bytes;
            let silent_for = |h| ages.get(&h).copied().unwrap_or_default();
            let changes = c.resize_volume(&n, req.size_bytes, &silent_for, head_grace, secrets)?;
            Ok((
                (before, convert::volume_detail(c, c.volume_by_name(&n)?)),
                changes,
            ))
        })
        .await?;
    let size = detail.volume.size_bytes;
    if size != before {
        app.event(
            NewEvent::new(
                Severity::Info,
                "volume_resized",
                format!("volume {name} grown from {before} to {size} bytes"),
            )
            .volume(&name),
        );
    }
    wait_until_served(&app, &name, size, Duration::from_secs(wait)).await?;
    let detail = app.manager.read(|c| {
        c.volume_by_name(&name)
            .map(|v| convert::volume_detail(c, v))
    })??;
    Ok(Json(detail))
}

/// Waits until the head of `name`, if it is attached, serves `size` bytes
/// (see [`resize`]).
async fn wait_until_served(
    app: &AppState,
    name: &str,
    size: u64,
    wait: Duration,
) -> Result<(), ApiError> {
    // The head, and the size it serves, as last seen.
    let mut last = (String::new(), None);
    let served = super::wait_for_state(
        app,
        wait,
        "see `vsky volume show` for the volume's served size",
        || {
            let (head, served) = app.manager.read(|c| {
                let v = c.volume_by_name(name)?;
                Ok::<_, vsky_model::ModelError>(match &v.attachment {
                    Some(a) if !a.is_releasing() => {
                        (c.server(a.head).map(|s| s.name.clone()), a.served_bytes)
                    }
                    // Detached (or being released) meanwhile: it assembles
                    // at its new size wherever it is attached next.
                    _ => (None, None),
                })
            })??;
            let Some(head) = head else {
                return Ok(Some(()));
            };
            if served.is_some_and(|s| s >= size) || wait.is_zero() {
                return Ok(Some(()));
            }
            last = (head, served);
            Ok(None)
        },
    )
    .await?;
    if served.is_some() {
        return Ok(());
    }
    let (head, served) = last;
    let serving = served.map_or(
        "its old size (it has not reported a size: agents older than online resize never do, upgrade it)".to_string(),
        |s| format!("{s} bytes"),
    );
    Err(ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "grow_not_applied",
        format!(
            "volume '{name}' has grown to {size} bytes in the manager, but its head '{head}' has not applied it within {}s and keeps serving {serving}; it retries on every reconcile: see the agent log on '{head}' and `vsky volume show {name}` (served size)",
            wait.as_secs()
        ),
    ))
}
