//! Health and the cluster summary.

use axum::Json;
use axum::extract::State;
use vsky_api::types::{ClusterSummary, ErrorBody, Health};

use crate::http::convert;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::manager::Role;

/// Liveness: answers without a token.
#[utoipa::path(get, path = "/api/v1/health", tag = "cluster",
    responses((status = 200, body = Health)))]
pub async fn health(State(app): State<AppState>) -> Json<Health> {
    let role = app.manager.role();
    let leader = match &role {
        Role::Standby { leader } => leader.clone(),
        _ => None,
    };
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        role: role.name().into(),
        leader,
    })
}

/// Servers, disks, capacity, volumes and redundancy at a glance.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterSummary), (status = 401, body = ErrorBody)))]
pub async fn summary(State(app): State<AppState>) -> Result<Json<ClusterSummary>, ApiError> {
    Ok(Json(
        app.manager
            .read(|c| convert::summary(c.cluster_id(), c.summary()))?,
    ))
}
