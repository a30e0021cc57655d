//! Agent endpoints: registration, heartbeat with observations, and the
//! long-polled desired state.
//!
//! These take an agent token (or the admin token). A token bound to a server
//! acts for that server only.

use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use vsky_api::types::{
    AgentAttachment, AgentRegistered, DesiredState, ErrorBody, Heartbeat, HeartbeatAck,
    RegisterAgent, RegisteredDisk, VolumeDetail,
};
use vsky_model::{ChunkRef, DiskId, NewDisk, NewServer};

use crate::auth::Principal;
use crate::http::AppState;
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiQuery};

/// Longest a desired-state long-poll may wait.
const LONG_POLL_MAX: Duration = Duration::from_secs(60);

fn check_principal(principal: &Principal, server: &str) -> Result<(), ApiError> {
    if principal.may_act_for(server) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this agent token is bound to another server, not '{server}'"
        )))
    }
}

/// Registers (or updates) the calling agent's server and its disks.
#[utoipa::path(post, path = "/api/v1/agent/register", tag = "agent", request_body = RegisterAgent,
    responses((status = 200, body = AgentRegistered), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn register(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<RegisterAgent>,
) -> Result<Json<AgentRegistered>, ApiError> {
    check_principal(&principal, &req.server)?;
    let server = req.server.clone();
    let answer = app
        .manager
        .mutate(move |c, _| {
            let new = NewServer {
                name: req.server.clone(),
                address: req.address,
                labels: req.labels,
            };
            let (id, mut changes) = c.register_server(new)?;
            let mut disks = Vec::new();
            for d in req.disks {
                let new = NewDisk {
                    server: req.server.clone(),
                    path: d.path,
                    size_bytes: d.size_bytes,
                    class: d.class,
                };
                let (disk_id, ch) = c.register_disk(new)?;
                changes.next_id |= ch.next_id;
                changes.disks.extend(ch.disks);
                let disk = c.disk(disk_id)?;
                disks.push(RegisteredDisk {
                    id: disk.id.0,
                    path: disk.path.clone(),
                    chunk_count: disk.chunk_count,
                });
            }
            let s = c.settings();
            let answer = AgentRegistered {
                server_id: id.0,
                chunk_size_bytes: s.chunk_size_bytes,
                leg_meta_bytes: s.leg_meta_bytes,
                disk_header_bytes: s.disk_header_bytes,
                disks,
            };
            Ok((answer, changes))
        })
        .await?;
    app.manager
        .saw_heartbeat(vsky_model::ServerId(answer.server_id));
    tracing::info!(server = %server, disks = answer.disks.len(), "agent registered");
    Ok(Json(answer))
}

/// Records a heartbeat and what the agent observed (wiped chunks, failed
/// legs).
#[utoipa::path(post, path = "/api/v1/agent/heartbeat", tag = "agent", request_body = Heartbeat,
    responses((status = 200, body = HeartbeatAck), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn heartbeat(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    check_principal(&principal, &req.server)?;
    let server_id = app
        .manager
        .read(|c| c.server_by_name(&req.server).map(|s| s.id))??;
    app.manager.saw_heartbeat(server_id);
    let generation =
        if req.wiped_chunks.is_empty() && req.failed_legs.is_empty() {
            app.manager.read(|c| c.generation())?
        } else {
            let server = req.server.clone();
            app.manager
            .mutate(move |c, _| {
                // Observations can be stale by the time they arrive (the
                // volume was detached or deleted, the disk removed): those
                // are dropped, not refused, or one stale item would block
                // every later heartbeat of the agent.
                let chunks: Vec<ChunkRef> = req
                    .wiped_chunks
                    .iter()
                    .map(|w| ChunkRef { disk: DiskId(w.disk_id), index: w.index })
                    .filter(|ch| c.disk(ch.disk).is_ok_and(|d| d.server == server_id))
                    .collect();
                let (freed, mut changes) = c.chunks_wiped(server_id, &chunks)?;
                if freed > 0 {
                    tracing::info!(server = %server, freed, "wiped chunks returned to the pool");
                }
                for f in &req.failed_legs {
                    match c.report_leg_failed(server_id, &f.volume, f.mirrored_disk, f.leg) {
                        Ok(ch) => {
                            if !ch.is_empty() {
                                tracing::warn!(server = %server, volume = %f.volume,
                                    mirrored_disk = f.mirrored_disk, leg = f.leg, "leg failed");
                            }
                            changes.volumes.extend(ch.volumes);
                            changes.jobs.extend(ch.jobs);
                            changes.disks.extend(ch.disks);
                        }
                        Err(e) => tracing::info!(server = %server, volume = %f.volume, error = %e,
                            "stale failed-leg report dropped"),
                    }
                }
                Ok((c.generation(), changes))
            })
            .await?
        };
    Ok(Json(HeartbeatAck { generation }))
}

/// Attaches a volume to the calling agent's own server (the datapath
/// plugin's path to an attach, with no admin token on the host).
#[utoipa::path(post, path = "/api/v1/agent/attach", tag = "agent", request_body = AgentAttachment,
    responses((status = 200, body = VolumeDetail), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<AgentAttachment>,
) -> Result<Json<VolumeDetail>, ApiError> {
    check_principal(&principal, &req.server)?;
    let (volume, server) = (req.volume.clone(), req.server.clone());
    let detail = app
        .manager
        .mutate(move |c, _| {
            let changes = c.attach_volume(&req.volume, &req.server)?;
            Ok((
                convert::volume_detail(c, c.volume_by_name(&req.volume)?),
                changes,
            ))
        })
        .await?;
    tracing::info!(volume = %volume, server = %server, "volume attached by its head's agent");
    Ok(Json(detail))
}

/// Detaches a volume from the calling agent's own server; refused if it is
/// attached elsewhere.
#[utoipa::path(post, path = "/api/v1/agent/detach", tag = "agent", request_body = AgentAttachment,
    responses((status = 200, body = VolumeDetail), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<AgentAttachment>,
) -> Result<Json<VolumeDetail>, ApiError> {
    check_principal(&principal, &req.server)?;
    let (volume, server) = (req.volume.clone(), req.server.clone());
    let detail = app
        .manager
        .mutate(move |c, _| {
            let head = c.server_by_name(&req.server)?.id;
            let attached = c
                .volume_by_name(&req.volume)?
                .attachment
                .as_ref()
                .map(|a| a.head);
            if let Some(h) = attached.filter(|h| *h != head) {
                return Err(vsky_model::ModelError::AttachedElsewhere {
                    volume: req.volume.clone(),
                    server: c.server(h).map(|s| s.name.clone()).unwrap_or_default(),
                });
            }
            let changes = c.detach_volume(&req.volume)?;
            Ok((
                convert::volume_detail(c, c.volume_by_name(&req.volume)?),
                changes,
            ))
        })
        .await?;
    tracing::info!(volume = %volume, server = %server, "volume detached by its head's agent");
    Ok(Json(detail))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DesiredQuery {
    /// The server whose desired state to fetch.
    server: String,
    /// The generation the agent already holds: the answer waits until the
    /// cluster's generation differs (or `wait_ms` passes).
    generation: Option<u64>,
    /// How long to wait for a change, in milliseconds (at most 60000).
    #[serde(default)]
    wait_ms: u64,
}

/// The desired state of one server: chunks to export, chunks to wipe,
/// volumes to assemble. Long-polls when `generation` is given.
#[utoipa::path(get, path = "/api/v1/agent/desired-state", tag = "agent", params(DesiredQuery),
    responses((status = 200, body = DesiredState), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn desired_state(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<DesiredQuery>,
) -> Result<Json<DesiredState>, ApiError> {
    check_principal(&principal, &q.server)?;
    let server_id = app
        .manager
        .read(|c| c.server_by_name(&q.server).map(|s| s.id))??;
    if let Some(known) = q.generation {
        let mut rx = app.manager.subscribe();
        let mut stopping = app.manager.stopping();
        let wait = Duration::from_millis(q.wait_ms).min(LONG_POLL_MAX);
        // Wake on any change of generation, on shutdown, or after `wait`;
        // either way answer with the state as it is then.
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = rx.wait_for(|g| *g != known) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        })
        .await;
    }
    let state = app
        .manager
        .read(|c| convert::desired_state(c, c.agent_view(server_id)))?;
    Ok(Json(state))
}
