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
    AgentAttachment, AgentRegistered, ChunkId, DesiredState, ErrorBody, FailedLeg, Heartbeat,
    HeartbeatAck, RefusedDisk, RegisterAgent, RegisteredDisk, ScrubReport, VolumeDetail,
};
use vsky_model::{
    ChunkRef, DiskId, DiskLabel, DiskVerdict, FoundLabel, JobId, NewDisk, NewServer, ReportedDisk,
    ServerId, ServerState, WipedChunk,
};

use crate::auth::Principal;
use crate::events::{NewEvent, Severity};
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

/// Refuses a `storage-only` agent token the head role for `server`;
/// `next` says what to do instead.
fn check_may_head(principal: &Principal, server: &str, next: &str) -> Result<(), ApiError> {
    if principal.may_head() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "server '{server}' cannot head volumes: its agent token is marked `storage-only` in the manager's agent token file; {next}"
        )))
    }
}

/// Registers (or updates) the calling agent's server and its disks. Each
/// disk is judged on its own by what the agent read in its header
/// (`vsky_model::cluster::identity`): the answer lists the disks to serve
/// and those refused (another cluster's or server's disk, a replaced,
/// shrunk or unreadable one), and a refused disk the manager knows is
/// failed, so one bad disk never stops the others.
#[utoipa::path(post, path = "/api/v1/agent/register", tag = "agent", request_body = RegisterAgent,
    responses((status = 200, body = AgentRegistered), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn register(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<RegisterAgent>,
) -> Result<Json<AgentRegistered>, ApiError> {
    check_principal(&principal, &req.server)?;
    if !req.storage_only {
        check_may_head(
            &principal,
            &req.server,
            "run its agent with --storage-only, or give it a token without `storage-only` if it should head volumes",
        )?;
    }
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
            changes.merge(c.set_storage_only(id, req.storage_only)?);
            let mut disks = Vec::new();
            let mut refused_disks = Vec::new();
            let mut failed = Vec::new();
            for d in req.disks {
                let found = match (d.problem, d.label) {
                    (Some(problem), _) => FoundLabel::Unusable(problem),
                    (None, Some(l)) => FoundLabel::Labelled(DiskLabel {
                        cluster_id: l.cluster_id,
                        disk: DiskId(l.disk_id),
                        server: l.server,
                    }),
                    (None, None) => FoundLabel::Blank,
                };
                let path = d.path.clone();
                let report = ReportedDisk {
                    disk: NewDisk {
                        server: req.server.clone(),
                        path: d.path,
                        size_bytes: d.size_bytes,
                        class: d.class,
                    },
                    found,
                };
                let (verdict, ch) = c.register_reported_disk(report)?;
                changes.merge(ch);
                match verdict {
                    DiskVerdict::Serve { disk, .. } => {
                        let disk = c.disk(disk)?;
                        disks.push(RegisteredDisk {
                            id: disk.id.0,
                            path: disk.path.clone(),
                            chunk_count: disk.chunk_count,
                        });
                    }
                    DiskVerdict::Refused {
                        disk,
                        reason,
                        failed_now,
                    } => {
                        if failed_now {
                            failed.extend(disk);
                        }
                        refused_disks.push(RefusedDisk {
                            path,
                            disk_id: disk.map(|d| d.0),
                            reason,
                        });
                    }
                }
            }
            let s = c.settings();
            let answer = AgentRegistered {
                server_id: id.0,
                chunk_size_bytes: s.chunk_size_bytes,
                leg_meta_bytes: s.leg_meta_bytes,
                disk_header_bytes: s.disk_header_bytes,
                disks,
                cluster_id: c.cluster_id().to_string(),
                refused_disks,
            };
            Ok(((answer, failed), changes))
        })
        .await?;
    let (answer, failed) = answer;
    app.manager
        .saw_heartbeat(vsky_model::ServerId(answer.server_id));
    for r in &answer.refused_disks {
        let failed_now = r.disk_id.is_some_and(|d| failed.contains(&DiskId(d)));
        let event = if failed_now {
            NewEvent::new(
                Severity::Error,
                "disk_failed",
                format!(
                    "disk {} of server '{server}' failed at registration: {}",
                    r.disk_id.unwrap_or_default(),
                    r.reason
                ),
            )
        } else {
            NewEvent::new(Severity::Warning, "disk_refused", r.reason.clone())
        };
        tracing::warn!(server = %server, path = %r.path, reason = %r.reason, "disk refused at registration");
        app.event(event.server(&server));
    }
    tracing::info!(server = %server, disks = answer.disks.len(), refused = answer.refused_disks.len(), "agent registered");
    Ok(Json(answer))
}

/// Records a heartbeat and what the agent observed (wiped chunks, failed
/// legs, resync progress, scrub verdicts).
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
    app.recovery.heard_from(&req.server);
    let failed_for_silence = app.manager.read(|c| {
        c.server(server_id)
            .is_some_and(|s| s.state == ServerState::Failed && s.failed_by_silence)
    })?;
    if failed_for_silence {
        return_to_service(&app, server_id, &req.server).await?;
    }
    if app.recovery.returned(server_id) || failed_for_silence {
        bring_back_legs(&app, server_id, &req.server).await?;
    }
    // Agents that checked their mirrors on their own timer (before the
    // manager scheduled every scrub) send no scrub id: an event only. The
    // manager's scrubs end their runs below.
    for scrub in req.scrubs.iter().filter(|s| s.scrub.is_none()) {
        app.recovery.scrub_finished(&req.server, scrub);
    }
    let scheduled_scrubs = req.scrubs.iter().any(|s| s.scrub.is_some());
    // Releasing attachments of this server whose devices are gone (or all
    // of them, if the agent cannot say: `assembled` is None) end below.
    let releases = app.manager.read(|c| {
        c.releasing_on(server_id).any(|(_, name)| {
            req.assembled
                .as_ref()
                .is_none_or(|list| !list.contains(&name))
        })
    })?;
    if !releases
        && req.wiped_chunks.is_empty()
        && req.wiped.is_empty()
        && req.failed_legs.is_empty()
        && req.resyncs.is_empty()
        && !scheduled_scrubs
    {
        let generation = app.manager.read(|c| c.generation())?;
        return Ok(Json(HeartbeatAck { generation }));
    }
    let server = req.server.clone();
    let reporter = req.server.clone();
    let (generation, events, suspects, progress, scrubbed) = app
        .manager
        .mutate(move |c, secrets| {
            // Observations can be stale by the time they arrive (the
            // volume was detached or deleted, the disk removed, the leg
            // replaced, the job requeued): those are dropped, not refused,
            // or one stale item would block every later heartbeat.
            let mut events = Vec::new();
            // Servers holding the legs reported failed: held for their grace
            // period unless they show they are alive.
            let mut suspects = Vec::new();
            let mut progress = Vec::new();
            // Reports without a release id (`wiped_chunks`) are for
            // release 0: they free only chunks freed before release ids.
            let unnumbered = req
                .wiped_chunks
                .iter()
                .map(|ch| (ch, vsky_model::UNNUMBERED_RELEASE));
            let wiped: Vec<WipedChunk> = unnumbered
                .chain(req.wiped.iter().map(|w| (&w.chunk, w.release)))
                .map(|(ch, release)| WipedChunk {
                    chunk: ChunkRef { disk: DiskId(ch.disk_id), index: ch.index },
                    release,
                })
                .filter(|w| c.disk(w.chunk.disk).is_ok_and(|d| d.server == server_id))
                .collect();
            let (freed, mut changes) = c.chunks_wiped(server_id, &wiped)?;
            if freed > 0 {
                tracing::info!(server = %server, freed, "wiped chunks returned to the pool");
            }
            let outdated = wiped
                .iter()
                .filter(|w| w.release == vsky_model::UNNUMBERED_RELEASE)
                .filter(|w| {
                    c.disk(w.chunk.disk).is_ok_and(|d| {
                        d.releasing.get(&w.chunk.index).is_some_and(|&r| r != w.release)
                    })
                })
                .count();
            if outdated > 0 {
                tracing::warn!(server = %server, chunks = outdated, "agent reports wipes without release ids (an older agent?); those chunks stay releasing until it is upgraded");
            }
            for f in &req.failed_legs {
                if let Some(reported) = f.chunk
                    && current_chunk(c, f) != Some(reported)
                {
                    tracing::info!(server = %server, volume = %f.volume, "failure report about a replaced chunk dropped");
                    continue;
                }
                let holder = current_chunk(c, f)
                    .and_then(|ch| c.disk(DiskId(ch.disk_id)).ok())
                    .map(|d| d.server);
                match c.report_leg_failed(server_id, &f.volume, f.mirrored_disk, f.leg) {
                    Ok(ch) => {
                        if !ch.volumes.is_empty() {
                            suspects.extend(holder);
                            events.push(
                                NewEvent::new(
                                    Severity::Warning,
                                    "leg_failed",
                                    format!(
                                        "head {server} reports leg {} of mirrored disk {} of volume {} failed",
                                        f.leg, f.mirrored_disk, f.volume
                                    ),
                                )
                                .server(&server)
                                .volume(&f.volume),
                            );
                        }
                        changes.merge(ch);
                    }
                    Err(e) => tracing::info!(server = %server, volume = %f.volume, error = %e,
                        "stale failed-leg report dropped"),
                }
            }
            for r in &req.resyncs {
                let job = JobId(r.job);
                // Only the job's current executor may move it on.
                if c.job_executor(job).map(|e| e.server()) != Some(server_id) {
                    tracing::debug!(server = %server, %job, "resync report from a non-executor dropped");
                    continue;
                }
                let volume = c.job(job).map(|j| c.volume_label(j.volume)).unwrap_or_default();
                let kind = c.job(job).map(|j| j.kind).unwrap_or_default();
                let is_move = matches!(kind, vsky_model::JobKind::Move { .. });
                let source = c.job(job).ok().and_then(|j| j.source);
                let ch = if let (Some(error), Some(failed)) = (&r.error, r.failed_source) {
                    // The copy could not read its source: another healthy
                    // leg is tried, the target stays. A report about an
                    // earlier attempt's source is stale.
                    if source.map(|s| (s.disk.0, s.index)) != Some((failed.disk_id, failed.index)) {
                        tracing::debug!(server = %server, %job, "stale copy-source report dropped");
                        continue;
                    }
                    let (ch, another) = c.copy_source_failed(job, error)?;
                    let next = if another {
                        "it starts again from another healthy leg, onto the same new chunk"
                    } else {
                        "no other healthy leg holds the data: it tries the same one again"
                    };
                    events.push(
                        NewEvent::new(
                            Severity::Warning,
                            "rebuild_source_failed",
                            format!(
                                "{job} on {server} could not read its source (disk {} chunk {}): {error}; {next}",
                                failed.disk_id, failed.index
                            ),
                        )
                        .server(&server)
                        .volume(&volume)
                        .rebuild(job.0),
                    );
                    ch
                } else if let Some(error) = &r.error {
                    let next = match kind {
                        vsky_model::JobKind::Repair => "the leg gets a new replacement",
                        vsky_model::JobKind::Move { reason: vsky_model::MoveReason::Drain, .. } => {
                            "the move is dropped and the leg stays where it was; the drain plans it again"
                        }
                        vsky_model::JobKind::Move { .. } => {
                            "the move is dropped and the leg stays where it was"
                        }
                    };
                    events.push(
                        NewEvent::new(
                            Severity::Error,
                            "rebuild_failed",
                            format!("{job} failed on {server}: {error}; {next}"),
                        )
                        .server(&server)
                        .volume(&volume)
                        .rebuild(job.0),
                    );
                    c.fail_job(job, error)?
                } else if r.done {
                    events.push(
                        NewEvent::new(
                            Severity::Info,
                            "rebuild_done",
                            if is_move {
                                format!("{job} done: volume {volume}: the leg moved, its old chunk is wiped and freed")
                            } else {
                                format!("{job} done: volume {volume} mirrored disk has its leg back")
                            },
                        )
                        .server(&server)
                        .volume(&volume)
                        .rebuild(job.0),
                    );
                    c.finish_job(job)?
                } else {
                    progress.push((job, r.bytes_done));
                    c.job_progress(job, r.bytes_done)?
                };
                changes.merge(ch);
            }
            let scrubbed = finish_scrubs(c, server_id, &server, &req.scrubs, &mut events, &mut changes);
            let (released, ch) =
                c.head_reports_assembled(server_id, req.assembled.as_deref(), secrets)?;
            changes.merge(ch);
            for volume in released {
                events.push(
                    NewEvent::new(
                        Severity::Info,
                        "volume_detached",
                        if req.assembled.is_some() {
                            format!("volume {volume} detached: its head {server} has torn its devices down; its legs have new export names")
                        } else {
                            format!("volume {volume} detached from {server}, whose agent cannot report its devices (an older agent): released at once; its legs have new export names")
                        },
                    )
                    .server(&server)
                    .volume(&volume),
                );
            }
            Ok(((c.generation(), events, suspects, progress, scrubbed), changes))
        })
        .await?;
    // Rate samples only from the executor's accepted reports.
    for (job, bytes_done) in progress {
        app.recovery.progress(job, bytes_done);
    }
    for s in suspects {
        app.recovery.suspect(s);
    }
    for scrub in &scrubbed {
        app.recovery.scrub_finished(&reporter, scrub);
    }
    for e in events {
        if let Some(job) = e.rebuild {
            app.recovery.forget(JobId(job));
        }
        app.event(e);
    }
    Ok(Json(HeartbeatAck { generation }))
}

/// Ends the runs of the scrubs reported (`scrub` set) by their executor: records the scrub, and fails the legs that could not
/// be read (a `scrub_unreadable` event each time), or, for a scrub that
/// could not be done, lets it be tried again later (`scrub_failed`).
/// Reports of runs that ended, changed or belong to another executor are
/// dropped: the agent sends a verdict until the manager stops listing the
/// scrub. Returns the verdicts accepted, for their events and metrics.
fn finish_scrubs(
    c: &mut vsky_model::Cluster,
    server_id: ServerId,
    server: &str,
    reports: &[ScrubReport],
    events: &mut Vec<NewEvent>,
    changes: &mut vsky_model::Changes,
) -> Vec<ScrubReport> {
    let now = crate::recovery::unix_now();
    let mut accepted = Vec::new();
    for r in reports {
        let Some(id) = r.scrub else { continue };
        let Some(volume) = c.volume_by_name(&r.volume).ok().map(|v| v.id) else {
            tracing::debug!(server, volume = %r.volume, "scrub report about a missing volume dropped");
            continue;
        };
        let m = r.mirrored_disk;
        // Only the run's executor may end it.
        if c.scrub(volume, m).map(|run| (run.id, run.executor)) != Some((id, server_id)) {
            tracing::debug!(server, volume = %r.volume, scrub = id, "stale scrub report dropped");
            continue;
        }
        let what = format!("volume {} mirrored disk {m}", r.volume);
        if let Some(error) = &r.error {
            match c.scrub_failed(volume, m, id, now) {
                Ok(ch) => {
                    changes.merge(ch);
                    events.push(
                        NewEvent::new(
                            Severity::Warning,
                            "scrub_failed",
                            format!(
                                "scrub of {what} by {server} could not be done: {error}; it is tried again later"
                            ),
                        )
                        .server(server)
                        .volume(&r.volume),
                    );
                }
                Err(e) => {
                    tracing::info!(server, scrub = id, error = %e, "scrub failure report dropped")
                }
            }
            continue;
        }
        let legs: Vec<String> = r
            .unreadable_legs
            .iter()
            .map(|l| {
                let holder = c
                    .volume(volume)
                    .and_then(|v| v.mirrored_disks.get(m as usize)?.legs.get(usize::from(*l)))
                    .and_then(|leg| c.disk(leg.chunk.disk).ok())
                    .and_then(|d| c.server(d.server))
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                format!("leg {l} on {holder}")
            })
            .collect();
        match c.finish_scrub(volume, m, id, now, &r.unreadable_legs) {
            Ok(ch) => {
                changes.merge(ch);
                if !legs.is_empty() {
                    events.push(
                        NewEvent::new(
                            Severity::Warning,
                            "scrub_unreadable",
                            format!(
                                "scrub of {what} by {server}: {} could not be read; failed, being replaced from the other legs",
                                legs.join(", ")
                            ),
                        )
                        .server(server)
                        .volume(&r.volume),
                    );
                }
                accepted.push(r.clone());
            }
            Err(e) => tracing::warn!(server, scrub = id, error = %e, "scrub report refused"),
        }
    }
    accepted
}

/// The agent of a server declared failed for its silence speaks again: the
/// server takes new chunks again (its replaced chunks are wiped first).
async fn return_to_service(
    app: &AppState,
    server_id: ServerId,
    server: &str,
) -> Result<(), ApiError> {
    let back = app
        .manager
        .mutate(move |c, _| {
            let changes = c.server_returned(server_id)?;
            Ok((!changes.is_empty(), changes))
        })
        .await?;
    if back {
        app.event(
            NewEvent::new(
                Severity::Info,
                "server_back",
                format!(
                    "server '{server}' answers again after it was declared failed for its silence: it serves new chunks again"
                ),
            )
            .server(server),
        );
    }
    Ok(())
}

/// A server a head had reported legs failed on speaks again: each of its
/// failed legs that nothing replaces yet is active again (once), and its
/// head re-adds it to the mirror, which catches up on the regions written
/// meanwhile instead of copying the whole leg. A leg that fails again is
/// replaced.
async fn bring_back_legs(
    app: &AppState,
    server_id: ServerId,
    server: &str,
) -> Result<(), ApiError> {
    let candidates = app.manager.read(|c| c.failed_legs_on(server_id))?;
    let legs = app.recovery.first_returns(candidates);
    if legs.is_empty() {
        return Ok(());
    }
    let back = app
        .manager
        .mutate(move |c, _| {
            let mut changes = vsky_model::Changes::default();
            let mut back = Vec::new();
            for (volume, m, l, _) in legs {
                // Stale candidates (replaced or failed meanwhile) are skipped.
                if let Ok(ch) = c.leg_returned(volume, m, l)
                    && !ch.is_empty()
                {
                    changes.merge(ch);
                    back.push(format!("{} {m}/{l}", c.volume_label(volume)));
                }
            }
            Ok((back, changes))
        })
        .await?;
    if !back.is_empty() {
        app.event(
            NewEvent::new(
                Severity::Info,
                "legs_returned",
                format!(
                    "server '{server}' is back within its grace period: {} legs active again and catching up ({})",
                    back.len(),
                    back.join(", ")
                ),
            )
            .server(server),
        );
    }
    Ok(())
}

/// The chunk a failure report's slot holds now, if the slot exists.
fn current_chunk(c: &vsky_model::Cluster, f: &FailedLeg) -> Option<ChunkId> {
    let v = c.volume_by_name(&f.volume).ok()?;
    let leg = v
        .mirrored_disks
        .get(f.mirrored_disk as usize)?
        .legs
        .get(usize::from(f.leg))?;
    Some(ChunkId {
        disk_id: leg.chunk.disk.0,
        index: leg.chunk.index,
    })
}

/// Attaches a volume to the calling agent's own server (the datapath
/// plugin's path to an attach, with no admin token on the host). Refused
/// (409 `storage_only`) when that agent registered with `--storage-only`.
#[utoipa::path(post, path = "/api/v1/agent/attach", tag = "agent", request_body = AgentAttachment,
    responses((status = 200, body = VolumeDetail), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<AgentAttachment>,
) -> Result<Json<VolumeDetail>, ApiError> {
    check_principal(&principal, &req.server)?;
    check_may_head(
        &principal,
        &req.server,
        "attach the volume on a head, or give this server a token without `storage-only` if it should head volumes",
    )?;
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
    app.event(
        NewEvent::new(
            Severity::Info,
            "volume_attached",
            format!("volume {volume} attached to {server} by its agent"),
        )
        .volume(&volume)
        .server(&server),
    );
    Ok(Json(detail))
}

/// Detaches a volume from the calling agent's own server, gracefully;
/// refused if it is attached elsewhere. The attachment becomes
/// `releasing`: the agent's desired state no longer lists the volume, and
/// the attachment ends (the legs get new secret export names, see the
/// admin detach) once the agent's heartbeat no longer lists it assembled.
#[utoipa::path(post, path = "/api/v1/agent/detach", tag = "agent", request_body = AgentAttachment,
    responses((status = 200, body = VolumeDetail), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<AgentAttachment>,
) -> Result<Json<VolumeDetail>, ApiError> {
    check_principal(&principal, &req.server)?;
    let (volume, server) = (req.volume.clone(), req.server.clone());
    let (detail, changed) = app
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
            let changes = c.release_volume(&req.volume)?;
            let changed = !changes.is_empty();
            Ok((
                (
                    convert::volume_detail(c, c.volume_by_name(&req.volume)?),
                    changed,
                ),
                changes,
            ))
        })
        .await?;
    if changed {
        app.event(
            NewEvent::new(
                Severity::Info,
                "volume_releasing",
                format!("volume {volume} is being released by its head {server} (agent detach)"),
            )
            .volume(&volume)
            .server(&server),
        );
    }
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
    let state = app.manager.read(|c| {
        convert::desired_state(
            c,
            c.agent_view(server_id),
            app.recovery.config.rate_bytes_per_second,
        )
    })?;
    Ok(Json(state))
}
