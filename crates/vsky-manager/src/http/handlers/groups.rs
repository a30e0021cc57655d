//! Groups of volumes (XAPI storage repositories): create, list, show,
//! rename, delete when empty.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vsky_api::types::{CreateGroup, ErrorBody, Group, UpdateGroup};

use crate::http::convert;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::http::state::AppState;

#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<Group>), (status = 401, body = ErrorBody)))]
pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(app.manager.read(|c| {
        c.groups().map(|g| convert::group(c, g)).collect()
    })?))
}

/// Creates a group; repeating a create with the same uuid is a no-op.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = Group), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let group = app
        .manager
        .mutate(move |c, _| {
            let name = req.name.clone();
            let changes = c.create_group(vsky_model::Group {
                display_name: req.display_name.unwrap_or_else(|| req.name.clone()),
                name: req.name,
                uuid: req.uuid,
                description: req.description,
            })?;
            Ok((convert::group(c, c.group(&name)?), changes))
        })
        .await?;
    tracing::info!(group = %group.name, "group created");
    Ok((StatusCode::CREATED, Json(group)))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(app.manager.read(|c| {
        c.group(&name).map(|g| convert::group(c, g))
    })??))
}

#[utoipa::path(patch, path = "/api/v1/groups/{name}", tag = "groups", request_body = UpdateGroup,
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = Group), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateGroup>,
) -> Result<Json<Group>, ApiError> {
    let n = name.clone();
    let group = app
        .manager
        .mutate(move |c, _| {
            let update = vsky_model::GroupUpdate {
                display_name: req.display_name,
                description: req.description,
            };
            let changes = c.update_group(&n, update)?;
            Ok((convert::group(c, c.group(&n)?), changes))
        })
        .await?;
    tracing::info!(group = %name, "group updated");
    Ok(Json(group))
}

/// Deletes a group that holds no volume.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let n = name.clone();
    app.manager
        .mutate(move |c, _| Ok(((), c.delete_group(&n)?)))
        .await?;
    tracing::info!(group = %name, "group deleted");
    Ok(StatusCode::NO_CONTENT)
}
