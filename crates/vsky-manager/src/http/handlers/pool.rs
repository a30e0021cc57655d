//! The pool as a whole: rebalancing legs between disks.

use axum::Json;
use axum::extract::State;
use vsky_api::types::{
    ErrorBody, REBALANCE_MAX_MOVES_DEFAULT, REBALANCE_MAX_MOVES_MAX, RebalanceRequest,
    RebalanceResponse,
};

use crate::events::{NewEvent, Severity};
use crate::http::convert;
use crate::http::error::{ApiError, ApiOptionalJson};
use crate::http::state::AppState;
use crate::recovery::{describe_job, rebuild_queued};

/// Plans moves from the fullest disks (by the fraction of their chunks in
/// use) to the emptiest, as long as each move narrows the gap, under the
/// placement rules (distinct servers, failure domains, disk class). Legs
/// whose mirrored disk is degraded or already has a job wait for a later
/// call. The moves are resync jobs (`/api/v1/rebuilds`, kind `move`) that
/// run under the per-disk limit, repairs first; each new leg syncs before
/// the old chunk is released. The body may be left out (or `{}`): at most
/// 64 moves.
#[utoipa::path(post, path = "/api/v1/pool/rebalance", tag = "pool",
    request_body(content = Option<RebalanceRequest>, description = "optional; an empty body takes the defaults"),
    responses((status = 200, body = RebalanceResponse, description = "the moves planned (possibly none)"),
        (status = 400, body = ErrorBody, description = "max_moves out of 1..=10000, or a bad body"),
        (status = 415, body = ErrorBody)))]
pub async fn rebalance(
    State(app): State<AppState>,
    ApiOptionalJson(req): ApiOptionalJson<RebalanceRequest>,
) -> Result<Json<RebalanceResponse>, ApiError> {
    let max_moves = req.max_moves.unwrap_or(REBALANCE_MAX_MOVES_DEFAULT);
    if !(1..=REBALANCE_MAX_MOVES_MAX).contains(&max_moves) {
        return Err(ApiError::bad_request(format!(
            "invalid max_moves {max_moves}: must be 1 to {REBALANCE_MAX_MOVES_MAX} (leave it out for {REBALANCE_MAX_MOVES_DEFAULT})"
        )));
    }
    let (answer, queued) = app
        .manager
        .mutate(move |c, secrets| {
            let before = c.fill_spread();
            let (moves, changes) = c.rebalance(max_moves as usize, secrets);
            // As the recovery loop does for the jobs it plans.
            let queued: Vec<(vsky_model::JobId, String, String)> = moves
                .iter()
                .filter_map(|p| c.job(p.job).ok())
                .map(|j| (j.id, c.volume_label(j.volume), describe_job(c, j)))
                .collect();
            let moves = moves.iter().map(|p| convert::planned_move(c, p)).collect();
            Ok((
                (
                    RebalanceResponse {
                        moves,
                        fill_spread_before: before,
                    },
                    queued,
                ),
                changes,
            ))
        })
        .await?;
    let n = answer.moves.len();
    let message = match (answer.moves.first(), answer.moves.last()) {
        (Some(first), Some(last)) => format!(
            "rebalance planned {n} moves (rebuilds {} to {}; at most {max_moves} asked), fill spread {:.1}% before",
            first.rebuild,
            last.rebuild,
            answer.fill_spread_before * 100.0
        ),
        _ => format!(
            "rebalance planned no move: none narrows the fill spread of {:.1}% under the placement rules",
            answer.fill_spread_before * 100.0
        ),
    };
    app.event(NewEvent::new(Severity::Info, "rebalance_planned", message));
    for (id, volume, what) in queued {
        app.event(rebuild_queued(id, volume, &what));
    }
    Ok(Json(answer))
}
