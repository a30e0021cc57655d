//! A standby manager answers reads and refuses writes.
//!
//! With several managers on one etcd store, only the elected leader writes
//! (`crate::leader`). Every other method than GET, HEAD and OPTIONS changes
//! something, so on a standby it is refused here, before its handler runs,
//! with 503 `not_leader`, the leader's URL in the body (`leader`) and the
//! `x-vsky-leader` header. Nothing was done, so clients may safely send the
//! same request to the leader; `vsky_api::Client` does that on its own.
//!
//! Why 503 and not a 307 redirect: HTTP clients drop the `Authorization`
//! header when a redirect changes host or port, so a redirect would turn
//! into a confusing 401 at the leader.
//!
//! A write that slips past this check while leadership changes hands is
//! still refused: the store fences every commit on the leader's lease.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::manager::Role;

pub async fn refuse_writes(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if reads {
        return next.run(req).await;
    }
    match app.manager.role() {
        Role::Standby { leader } => ApiError::not_leader(leader).into_response(),
        Role::Single | Role::Leader => next.run(req).await,
    }
}
