//! A deadline for every request (`LIS_REQUEST_TIMEOUT_SECS`): one still unanswered by
//! then is answered 503 with Retry-After and its work dropped, so that a database that
//! fell silent mid-statement costs a caller seconds, not the quarter of an hour TCP
//! takes to give up. Each request runs inside `lis_commands::connection::scoped`: a
//! connection it leaves mid-statement when cut short is closed, not given back to wait
//! on the silence with its place in the pool.
//!
//! `GET /audit/verification` has no deadline: it reads the whole store, which takes
//! longer than any deadline fit for the rest as the store grows (42 s at 7.5 million
//! events, docs/benchmarks.md). Event streams answer at once; their reads have a bound
//! of their own (`stream.rs`).

use super::problem::Problem;
use super::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lis_commands::connection::{scoped, scoped_for};

/// Paths that may take longer than the deadline.
fn exempt(path: &str) -> bool {
    path == "/audit/verification"
}

pub async fn bound(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if exempt(request.uri().path()) {
        return scoped(next.run(request)).await;
    }
    let limit = state.request_timeout;
    match scoped_for(limit, next.run(request)).await {
        Some(response) => response,
        None => {
            tracing::warn!(
                limit_secs = limit.as_secs_f64(),
                "request given up at its deadline"
            );
            Problem::unavailable(format!(
                "no answer within {} s (the database may be slow or unreachable); retry shortly",
                limit.as_secs_f64()
            ))
            .into_response()
        }
    }
}
