//! Turning every failure into a JSON error body, in one place.
//!
//! Model errors map by kind (bad input 400, not found 404, conflict 409, no
//! capacity 507, corrupt records 500); store errors and a poisoned manager
//! are 503 `store_unavailable`; a standby, or a deposed leader whose commit
//! etcd fenced, is 503 `not_leader` with the leader's URL when known
//! (nothing was done). JSON and path rejections from axum (400, 413, 415)
//! and a body that misses its deadline (408, or 503 `shutting_down`) are
//! rewritten into the same body shape, `ErrorBody { code, message,
//! request_id }`, so clients only ever parse one error format; the `code`
//! strings are stable (the model's come from `ModelError::code`).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use vsky_api::types::ErrorBody;
use vsky_model::{ErrorKind, ModelError};

use crate::manager::ManagerError;
use crate::store::StoreError;

/// Response header naming the leading manager on `not_leader` answers.
pub const LEADER_HEADER: &str = "x-vsky-leader";

tokio::task_local! {
    /// The id of the request being served, for error bodies.
    pub static REQUEST_ID: String;
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// With `not_leader`: where the leader is.
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            leader: None,
        }
    }

    /// 503 `not_leader`: this manager is a standby (or was deposed), and
    /// nothing was done. Clients retry at `leader`.
    pub fn not_leader(leader: Option<String>) -> Self {
        let message = StoreError::NotLeader {
            leader: leader.clone(),
        }
        .to_string();
        ApiError {
            leader,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token; pass the admin token (vsky --token-file) or an agent token",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let status = match e.kind() {
            ErrorKind::BadInput => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Capacity => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::Model(m) => m.into(),
            ManagerError::Store(StoreError::NotLeader { leader }) => ApiError::not_leader(leader),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // 507 (no capacity) is the pool's state, `not_leader` a standby's
        // normal answer and `shutting_down` a stopping one's, not manager
        // failures.
        if self.status.is_server_error()
            && self.status != StatusCode::INSUFFICIENT_STORAGE
            && self.code != "not_leader"
            && self.code != "shutting_down"
        {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        } else {
            tracing::info!(code = self.code, message = %self.message, "request refused");
        }
        let leader_header = self
            .leader
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok());
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
            request_id: REQUEST_ID.try_with(Clone::clone).ok(),
            leader: self.leader,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(v) = leader_header {
            response.headers_mut().insert(LEADER_HEADER, v);
        }
        response
    }
}

/// A JSON request body: `Content-Type: application/json` and a JSON object
/// that deserializes into `T`, through [`super::json::from_slice`] (no
/// struct given as an array, at any depth). Every failure is an
/// [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(&req) {
            return Err(not_json());
        }
        let bytes = read_body(req, state).await?;
        parse_object(&bytes, false).map(ApiJson)
    }
}

fn is_json_content_type(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
}

fn not_json() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
    )
}

/// The whole body, within the body limit and `--body-timeout`.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is larger than 1 MiB",
                );
            }
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = source {
                match err.downcast_ref::<crate::serve::BodyCut>() {
                    Some(cut @ crate::serve::BodyCut::TimedOut(_)) => {
                        return ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            format!("{cut}; send the whole body without pausing"),
                        );
                    }
                    Some(cut @ crate::serve::BodyCut::ShuttingDown) => {
                        return ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "shutting_down",
                            format!("{cut} and did nothing; send the request again (to another manager if there are several)"),
                        );
                    }
                    None => {}
                }
                source = err.source();
            }
            ApiError::bad_request(format!("cannot read the body: {}", e.body_text()))
        })
}

/// Parses a body that must be a JSON object (or, if `null_allowed`, `null`).
fn parse_object<T: DeserializeOwned>(bytes: &[u8], null_allowed: bool) -> Result<T, ApiError> {
    if !super::json::top_level_is_object(bytes, null_allowed)
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::bad_request(
            "invalid JSON body: it must be a JSON object with named fields (see /api/v1/openapi.json)",
        ));
    }
    super::json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A JSON body that may be left out: no body (or only whitespace) is
/// `T::default()`, whatever the content type, and so is `null`; any other
/// body must be a JSON object, with the same errors as [`ApiJson`].
pub struct ApiOptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for ApiOptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = is_json_content_type(&req);
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(ApiOptionalJson(T::default()));
        }
        if !json_type {
            return Err(not_json());
        }
        // `null` is an absent body too.
        parse_object::<Option<T>>(&bytes, true).map(|v| ApiOptionalJson(v.unwrap_or_default()))
    }
}

/// `axum::extract::Path` with rejections rewritten.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| {
                ApiError::bad_request(format!("invalid path: {}", e.body_text()))
            })
    }
}

/// `axum::extract::Query` with rejections rewritten.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("invalid query: {}", e.body_text()))
            })
    }
}
