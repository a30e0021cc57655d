//! Rebuilds: the resync jobs that restore failed legs, as `vsky rebuild
//! list` shows them.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use vsky_api::types::{ErrorBody, RebuildList};
use vsky_model::JobState;

use crate::http::convert;
use crate::http::error::{ApiError, ApiQuery};
use crate::http::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RebuildQuery {
    /// Also list finished jobs (done or failed; the most recent 1000 are
    /// kept).
    #[serde(default)]
    all: bool,
}

/// Lists the rebuild (resync) jobs: queued and running ones, and with
/// `all=true` recent finished ones too.
#[utoipa::path(get, path = "/api/v1/rebuilds", tag = "recovery", params(RebuildQuery),
    responses((status = 200, body = RebuildList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RebuildQuery>,
) -> Result<Json<RebuildList>, ApiError> {
    let recovery = app.recovery.clone();
    Ok(Json(app.manager.read(|c| {
        let jobs: Vec<_> = c.jobs().filter(|j| q.all || j.is_active()).collect();
        RebuildList {
            queued: jobs.iter().filter(|j| j.state == JobState::Queued).count(),
            running: jobs.iter().filter(|j| j.state == JobState::Running).count(),
            rebuilds: jobs
                .iter()
                .map(|j| convert::rebuild(c, j, recovery.rate(j.id)))
                .collect(),
        }
    })?))
}
