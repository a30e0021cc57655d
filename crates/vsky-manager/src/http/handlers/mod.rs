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

use crate::events::{NewEvent, Severity};
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
