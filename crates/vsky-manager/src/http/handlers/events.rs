//! The event log, for `vsky events` and monitoring: pages by sequence
//! number, with an optional long-poll for followers.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use vsky_api::types::{ErrorBody, EventList};

use crate::http::error::{ApiError, ApiQuery};
use crate::http::state::AppState;

/// Most events one answer carries.
const PAGE_MAX: usize = 1000;
/// Longest a follower's request may wait for a new event.
const WAIT_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events after this sequence number (0: from the oldest kept).
    #[serde(default)]
    since: u64,
    /// At most this many events (default and maximum 1000).
    limit: Option<usize>,
    /// When nothing newer than `since` exists, wait up to this many
    /// milliseconds for it (at most 60000).
    #[serde(default)]
    wait_ms: u64,
}

/// Lists recent events (server and leg failures, rebuilds queued, started,
/// done and failed, …), oldest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "recovery", params(EventQuery),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<EventList>, ApiError> {
    let limit = q.limit.unwrap_or(PAGE_MAX);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={PAGE_MAX}"
        )));
    }
    let log = &app.recovery.events;
    let mut page = log.page(q.since, limit);
    if page.events.is_empty() && q.wait_ms > 0 {
        let mut last = log.subscribe();
        let mut stopping = app.manager.stopping();
        let since = page.next;
        let wait = Duration::from_millis(q.wait_ms).min(WAIT_MAX);
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = last.wait_for(|seq| *seq > since) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        })
        .await;
        page = log.page(q.since, limit);
    }
    Ok(Json(EventList {
        events: page.events,
        next: page.next,
        truncated: page.truncated,
    }))
}
