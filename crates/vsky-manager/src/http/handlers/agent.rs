//! Agent endpoints: registration, heartbeat with observations, and the
//! long-polled desired state.
//!
//! These take an agent token (or the admin token). A token bound to a server
//! acts for that server only.
//!
//! The handlers only translate: the cluster's rules are model methods
//! (`Cluster::register_reported_disk` judges each registered disk,
//! `Cluster::apply_heartbeat` judges a heartbeat's observations and drops
//! the stale ones, `Cluster::attach_volume` and `release_volume` the
//! agent's own attaches and detaches). A handler parses the body, calls the
//! model inside `Manager::mutate` (all or nothing), and turns the outcome
//! into events, metrics and the answer. The recovery loop's in-memory
//! state (suspected servers, legs brought back once, rate samples) is fed
//! from here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use vsky_api::types::{
    AgentAttachment, AgentRegistered, ChunkId, DesiredState, ErrorBody, Heartbeat, HeartbeatAck,
    RefusedDisk, RegisterAgent, RegisteredDisk, VolumeDetail,
};
use vsky_model::{
    AgentReport, ChunkRef, DiskId, DiskLabel, DiskVerdict, DroppedReport, FoundLabel,
    HeartbeatEvent, HeartbeatOutcome, JobId, JobKind, LegFailure, MoveReason, NewDisk, NewServer,
    PoolGrowth, PoolUsage, ReportedDisk, ResyncStatus, ResyncUpdate, ScrubResult, ScrubVerdict,
    ServerId, ServerState, WipedChunk,
};

use crate::auth::Principal;
use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiQuery};
use crate::http::state::AppState;

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
    // A held server that speaks again gets its failed legs back first and
    // loses its hold only then: a recovery pass in between would replace
    // the legs it is about to bring back.
    let held = app.recovery.is_held(server_id);
    if held || failed_for_silence {
        bring_back_legs(&app, server_id, &req.server).await?;
    }
    if held {
        app.recovery.returned(server_id);
    }
    // Agents that checked their mirrors on their own timer (before the
    // manager scheduled every scrub) send no scrub id: an event only. The
    // manager's scrubs end their runs in `apply_heartbeat`.
    for scrub in req.scrubs.iter().filter(|s| s.scrub.is_none()) {
        app.recovery.scrub_finished(
            &req.server,
            &scrub.volume,
            scrub.mirrored_disk,
            scrub.mismatched_sectors,
        );
    }
    // The rules (who may report what, which reports are stale) are
    // `Cluster::apply_heartbeat`'s; this converts the report and turns the
    // outcome into events and metrics.
    let report = agent_report(&req);
    // Usage for metrics and `volume show`, from the head that writes each
    // pool only (a bounded list: the model refuses longer ones).
    if report.pools.len() <= vsky_model::limits::HEARTBEAT_ASSEMBLED_MAX {
        let accepted: Vec<PoolUsage> = app.manager.read(|c| {
            report
                .pools
                .iter()
                .filter(|u| c.pool_growth(server_id, u) != PoolGrowth::Stale)
                .cloned()
                .collect()
        })?;
        app.recovery.record_pools(&accepted);
    }
    if app
        .manager
        .read(|c| c.heartbeat_is_quiet(server_id, &report))?
    {
        let generation = app.manager.read(|c| c.generation())?;
        return Ok(Json(HeartbeatAck { generation }));
    }
    let recovery = Arc::clone(&app.recovery);
    let outcome = app
        .manager
        .mutate(move |c, secrets| {
            let (outcome, changes) =
                c.apply_heartbeat(server_id, &report, crate::recovery::unix_now(), secrets)?;
            // Held inside the mutation that fails the legs: the recovery
            // pass runs under the same lock, so none can see the failed legs
            // without the hold and replace the legs of a server that merely
            // went away (its silence is noticed only seconds later).
            for s in &outcome.suspects {
                recovery.suspect(*s);
            }
            Ok((outcome, changes))
        })
        .await?;
    let server = req.server.as_str();
    log_outcome(server, &outcome);
    // Rate samples only from the executor's accepted reports.
    for (job, bytes_done) in outcome.progress {
        app.recovery.progress(job, bytes_done);
    }
    for s in &outcome.scrubs_finished {
        app.recovery
            .scrub_finished(server, &s.volume, s.mirrored_disk, s.mismatched_sectors);
    }
    for e in &outcome.events {
        if let Some(job) = e.job() {
            app.recovery.forget(job);
        }
        match e {
            HeartbeatEvent::PoolGrown { layer, .. } => app.recovery.pool_grown(layer),
            // Said on every report until there is room: told once.
            HeartbeatEvent::PoolExhausted { layer, full, .. }
                if !app.recovery.pool_exhausted(layer, *full) =>
            {
                continue;
            }
            _ => {}
        }
        app.event(heartbeat_event(server, req.assembled.is_some(), e));
    }
    Ok(Json(HeartbeatAck {
        generation: outcome.generation,
    }))
}

/// The REST heartbeat in the model's terms. Reports without a release id
/// (`wiped_chunks`) are for release 0: they free only chunks freed before
/// release ids. Scrub reports without a scrub id are no verdict on a run.
fn agent_report(req: &Heartbeat) -> AgentReport {
    let chunk = |ch: &ChunkId| ChunkRef {
        disk: DiskId(ch.disk_id),
        index: ch.index,
    };
    let unnumbered = req
        .wiped_chunks
        .iter()
        .map(|ch| (ch, vsky_model::UNNUMBERED_RELEASE));
    let wiped = unnumbered
        .chain(req.wiped.iter().map(|w| (&w.chunk, w.release)))
        .map(|(ch, release)| WipedChunk {
            chunk: chunk(ch),
            release,
        })
        .collect();
    let failed_legs = req
        .failed_legs
        .iter()
        .map(|f| LegFailure {
            volume: f.volume.clone(),
            mirrored_disk: f.mirrored_disk,
            leg: f.leg,
            chunk: f.chunk.as_ref().map(chunk),
        })
        .collect();
    let resyncs = req
        .resyncs
        .iter()
        .map(|r| ResyncUpdate {
            job: JobId(r.job),
            status: match (&r.error, &r.failed_source) {
                (Some(error), Some(source)) => ResyncStatus::SourceFailed {
                    source: chunk(source),
                    error: error.clone(),
                },
                (Some(error), None) => ResyncStatus::Failed {
                    error: error.clone(),
                },
                (None, _) if r.done => ResyncStatus::Done,
                (None, _) => ResyncStatus::Copying {
                    bytes_done: r.bytes_done,
                },
            },
        })
        .collect();
    let scrubs = req
        .scrubs
        .iter()
        .filter_map(|s| {
            Some(ScrubVerdict {
                scrub: s.scrub?,
                volume: s.volume.clone(),
                mirrored_disk: s.mirrored_disk,
                result: match &s.error {
                    Some(error) => ScrubResult::NotDone {
                        error: error.clone(),
                    },
                    None => ScrubResult::Read {
                        mismatched_sectors: s.mismatched_sectors,
                        unreadable_legs: s.unreadable_legs.clone(),
                    },
                },
            })
        })
        .collect();
    AgentReport {
        wiped,
        failed_legs,
        resyncs,
        scrubs,
        assembled: req.assembled.clone(),
        served: req
            .served
            .iter()
            .map(|s| (s.volume.clone(), s.size_bytes))
            .collect(),
        switched: req.switched.clone(),
        pools: req
            .pools
            .iter()
            .map(|p| PoolUsage {
                layer: p.layer.clone(),
                used_data_blocks: p.used_data_blocks,
                total_data_blocks: p.total_data_blocks,
                used_meta_blocks: p.used_meta_blocks,
                total_meta_blocks: p.total_meta_blocks,
                out_of_data_space: p.out_of_data_space,
            })
            .collect(),
    }
}

/// Logs what a heartbeat freed and what of it was dropped.
fn log_outcome(server: &str, outcome: &HeartbeatOutcome) {
    if outcome.freed > 0 {
        tracing::info!(
            server,
            freed = outcome.freed,
            "wiped chunks returned to the pool"
        );
    }
    if outcome.unnumbered_still_releasing > 0 {
        tracing::warn!(
            server,
            chunks = outcome.unnumbered_still_releasing,
            "agent reports wipes without release ids (an older agent?); those chunks stay releasing until it is upgraded"
        );
    }
    for d in &outcome.dropped {
        match d {
            DroppedReport::FailureOfReplacedChunk { volume } => {
                tracing::info!(server, %volume, "failure report about a replaced chunk dropped")
            }
            DroppedReport::StaleFailure { volume, error } => {
                tracing::info!(server, %volume, %error, "stale failed-leg report dropped")
            }
            DroppedReport::NotExecutor { job } => {
                tracing::debug!(server, %job, "resync report from a non-executor dropped")
            }
            DroppedReport::StaleCopySource { job } => {
                tracing::debug!(server, %job, "stale copy-source report dropped")
            }
            DroppedReport::ScrubOfMissingVolume { volume } => {
                tracing::debug!(server, %volume, "scrub report about a missing volume dropped")
            }
            DroppedReport::StaleScrub { volume, scrub } => {
                tracing::debug!(server, %volume, scrub, "stale scrub report dropped")
            }
            DroppedReport::ScrubFailureRefused { scrub, error } => {
                tracing::info!(server, scrub, %error, "scrub failure report dropped")
            }
            DroppedReport::ScrubRefused { scrub, error } => {
                tracing::warn!(server, scrub, %error, "scrub report refused")
            }
        }
    }
}

/// The event-log entry for what `server`'s heartbeat changed.
/// `assembled_known`: the agent listed its assembled volumes (an older
/// agent cannot, and its releases end at once).
fn heartbeat_event(server: &str, assembled_known: bool, e: &HeartbeatEvent) -> NewEvent {
    match e {
        HeartbeatEvent::LegFailed {
            volume,
            mirrored_disk,
            leg,
        } => NewEvent::new(
            Severity::Warning,
            "leg_failed",
            format!(
                "head {server} reports leg {leg} of mirrored disk {mirrored_disk} of volume {volume} failed"
            ),
        )
        .server(server)
        .volume(volume),
        HeartbeatEvent::ResyncSourceFailed {
            job,
            volume,
            source,
            error,
            another_source,
        } => {
            let next = if *another_source {
                "it starts again from another healthy leg, onto the same new chunk"
            } else {
                "no other healthy leg holds the data: it tries the same one again"
            };
            NewEvent::new(
                Severity::Warning,
                "rebuild_source_failed",
                format!(
                    "{job} on {server} could not read its source (disk {} chunk {}): {error}; {next}",
                    source.disk.0, source.index
                ),
            )
            .server(server)
            .volume(volume)
            .rebuild(job.0)
        }
        HeartbeatEvent::ResyncFailed {
            job,
            volume,
            kind,
            error,
        } => {
            let next = match kind {
                JobKind::Repair => "the leg gets a new replacement",
                JobKind::Move {
                    reason: MoveReason::Drain,
                    ..
                } => "the move is dropped and the leg stays where it was; the drain plans it again",
                JobKind::Move { .. } => "the move is dropped and the leg stays where it was",
            };
            NewEvent::new(
                Severity::Error,
                "rebuild_failed",
                format!("{job} failed on {server}: {error}; {next}"),
            )
            .server(server)
            .volume(volume)
            .rebuild(job.0)
        }
        HeartbeatEvent::ResyncDone { job, volume, kind } => NewEvent::new(
            Severity::Info,
            "rebuild_done",
            if matches!(kind, JobKind::Move { .. }) {
                format!(
                    "{job} done: volume {volume}: the leg moved, its old chunk is wiped and freed"
                )
            } else {
                format!("{job} done: volume {volume} mirrored disk has its leg back")
            },
        )
        .server(server)
        .volume(volume)
        .rebuild(job.0),
        HeartbeatEvent::ScrubFailed {
            volume,
            mirrored_disk,
            error,
        } => NewEvent::new(
            Severity::Warning,
            "scrub_failed",
            format!(
                "scrub of volume {volume} mirrored disk {mirrored_disk} by {server} could not be done: {error}; it is tried again later"
            ),
        )
        .server(server)
        .volume(volume),
        HeartbeatEvent::ScrubUnreadable {
            volume,
            mirrored_disk,
            legs,
        } => {
            let legs: Vec<String> = legs
                .iter()
                .map(|(l, holder)| format!("leg {l} on {holder}"))
                .collect();
            NewEvent::new(
                Severity::Warning,
                "scrub_unreadable",
                format!(
                    "scrub of volume {volume} mirrored disk {mirrored_disk} by {server}: {} could not be read; failed, being replaced from the other legs",
                    legs.join(", ")
                ),
            )
            .server(server)
            .volume(volume)
        }
        HeartbeatEvent::Released { volume } => NewEvent::new(
            Severity::Info,
            "volume_detached",
            if assembled_known {
                format!(
                    "volume {volume} detached: its head {server} has torn its devices down; its legs have new export names"
                )
            } else {
                format!(
                    "volume {volume} detached from {server}, whose agent cannot report its devices (an older agent): released at once; its legs have new export names"
                )
            },
        )
        .server(server)
        .volume(volume),
        HeartbeatEvent::GrowApplied { volume, size_bytes } => NewEvent::new(
            Severity::Info,
            "volume_grown_online",
            format!("volume {volume} grown online: its head {server} serves {size_bytes} bytes"),
        )
        .server(server)
        .volume(volume),
        HeartbeatEvent::PoolGrown {
            volume,
            layer,
            mirrored_disks,
        } => NewEvent::new(
            Severity::Info,
            "pool_grown",
            format!(
                "thin volume {volume}: its head {server} reported its pool ({layer}) filling; it now has {mirrored_disks} mirrored disks"
            ),
        )
        .server(server)
        .volume(volume),
        HeartbeatEvent::PoolExhausted {
            volume,
            layer,
            full,
            error,
        } => NewEvent::new(
            if *full {
                Severity::Error
            } else {
                Severity::Warning
            },
            "pool_exhausted",
            format!(
                "thin volume {volume}: its pool ({layer}) on {server} needs to grow and cannot: {error}. {} Add disks or servers, or free space (delete volumes or snapshots); the pool grows as soon as chunks are free",
                if *full {
                    "It is full: the head holds writes to new blocks and fails them after the kernel's no_space_timeout (60 s by default); written data stays intact."
                } else {
                    "Writes go on until the pool is full, then wait."
                }
            ),
        )
        .server(server)
        .volume(volume),
        HeartbeatEvent::Switched { volume } => NewEvent::new(
            Severity::Info,
            "volume_switched",
            format!(
                "volume {volume}: its head {server} writes the new top of its snapshot; the snapshot is ready"
            ),
        )
        .server(server)
        .volume(volume),
    }
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
            for (addr, _) in legs {
                // Stale candidates (replaced or failed meanwhile) are skipped.
                if let Ok(ch) = c.leg_returned(addr)
                    && !ch.is_empty()
                {
                    changes.merge(ch);
                    back.push(format!(
                        "{} {}/{}",
                        c.volume_label(addr.volume),
                        addr.mirrored_disk,
                        addr.leg
                    ));
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

/// Attaches a volume to the calling agent's own server (the datapath
/// plugin's path to an attach, with no admin token on the host). Refused
/// (409 `storage_only`) when that agent registered with `--storage-only`.
/// A read-only attach of a snapshot makes the server one of its readers
/// (any number of servers at once); of any other volume, it is the one
/// attachment, as for a write.
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
    let detail =
        super::attach_volume_as(&app, &req.volume, &req.server, req.read_only, true).await?;
    Ok(Json(detail))
}

/// Detaches a volume from the calling agent's own server, gracefully;
/// refused if it is attached elsewhere. The attachment becomes
/// `releasing`: the agent's desired state no longer lists the volume, and
/// the attachment ends (the legs get new secret export names, see the
/// admin detach) once the agent's heartbeat no longer lists it assembled.
/// A snapshot this server reads stops being read here at once
/// (`cluster/readers.rs`).
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
            if c.is_reader(&req.volume, head) {
                let (_, changes) = c.end_reader(&req.volume, &req.server)?;
                return Ok((
                    (
                        convert::volume_detail(c, c.volume_by_name(&req.volume)?),
                        false,
                    ),
                    changes,
                ));
            }
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
