//! One module per resource. Handlers only translate: parse the request,
//! call one model operation through the `Manager` (`crate::manager`),
//! convert the answer.

pub mod agent;
pub mod cluster;
pub mod disks;
pub mod events;
pub mod groups;
pub mod pool;
pub mod rebuilds;
pub mod servers;
pub mod snapshots;
pub mod volumes;

use std::time::Duration;

use axum::http::StatusCode;
use vsky_api::types::VolumeDetail;
use vsky_model::ReadOnlyAttach;

use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Waits for an answer that depends on an agent (a head serving a grown
/// volume, a head switching a volume onto a snapshot's new top): asks
/// `check` now and after every change of the cluster, until it gives a
/// value or `wait` has passed (`None`). `after` says where to look if the
/// manager shuts down meanwhile (503).
pub(crate) async fn wait_for_state<T>(
    app: &AppState,
    wait: Duration,
    after: &str,
    mut check: impl FnMut() -> Result<Option<T>, ApiError>,
) -> Result<Option<T>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = app.manager.subscribe();
    loop {
        if let Some(found) = check()? {
            return Ok(Some(found));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Err(_) => return Ok(None),
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    format!("the manager is shutting down; {after}"),
                ));
            }
            Ok(Ok(())) => {}
        }
    }
}

/// The event of an attach that took a volume over from a gone head (the
/// admin's attach and the head agent's share it).
pub(crate) fn taken_over_event(volume: &str, from: &str, to: &str) -> NewEvent {
    NewEvent::new(
        Severity::Warning,
        "volume_taken_over",
        format!(
            "volume {volume} taken over from {from} (declared failed, or silent longer than --head-grace) by {to}: its legs have new export names, so {from} can no longer write them"
        ),
    )
    .volume(volume)
    .server(from)
}

/// An attach, the admin's or a head agent's (`by_agent`): read-write, taking
/// the volume over from a gone head; or read-only, a snapshot read on
/// `server` (`cluster/readers.rs`), any other volume attached as for a
/// write. Logs what happened.
pub(crate) async fn attach_volume_as(
    app: &AppState,
    volume: &str,
    server: &str,
    read_only: bool,
    by_agent: bool,
) -> Result<VolumeDetail, ApiError> {
    let gone = app.recovery.gone_heads(&app.manager)?;
    let (v, s) = (volume.to_string(), server.to_string());
    let ((how, changed), detail) = app
        .manager
        .mutate(move |c, secrets| {
            let is_gone = |h| gone.contains(&h);
            let (how, changes) = if read_only {
                c.attach_read_only(&v, &s)?
            } else {
                let (taken_from, changes) =
                    c.attach_volume_taking_over(&v, &s, &is_gone, secrets)?;
                (ReadOnlyAttach::Head { taken_from }, changes)
            };
            let changed = !changes.is_empty();
            Ok((
                (
                    (how, changed),
                    convert::volume_detail(c, c.volume_by_name(&v)?),
                ),
                changes,
            ))
        })
        .await?;
    let by = if by_agent { " by its agent" } else { "" };
    match how {
        ReadOnlyAttach::Reader if changed => app.event(
            NewEvent::new(
                Severity::Info,
                "snapshot_read",
                format!("snapshot {volume} is read on {server} (read-only attach{by})"),
            )
            .volume(volume)
            .server(server),
        ),
        ReadOnlyAttach::Reader => {}
        ReadOnlyAttach::Head { taken_from } => {
            if let Some(from) = &taken_from {
                app.event(taken_over_event(volume, from, server));
            }
            app.event(
                NewEvent::new(
                    Severity::Info,
                    "volume_attached",
                    format!("volume {volume} attached to {server}{by}"),
                )
                .volume(volume)
                .server(server),
            );
        }
    }
    Ok(detail)
}
