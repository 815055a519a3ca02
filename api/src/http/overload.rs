//! Bounds the requests the API serves at once. Beyond the bound a request is answered
//! 503 at once, with Retry-After, instead of queueing for a database connection until
//! the pool's acquire timeout: under overload some callers are refused quickly and the
//! rest are served in bounded time. Probes, metrics and the long-lived event streams
//! are not counted.

use super::problem::Problem;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Permits for requests in flight; `None` = unbounded.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Option<Arc<Semaphore>>);

impl InFlight {
    /// At most `limit` requests at once (0 = unbounded).
    pub fn new(limit: usize) -> Self {
        Self((limit > 0).then(|| Arc::new(Semaphore::new(limit))))
    }
}

/// Paths served whatever the load.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/events/stream")
}

pub async fn shed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(permits) = &state.in_flight.0 else {
        return next.run(request).await;
    };
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    match permits.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "The ledger is serving as many requests as it can",
            )
            .detail("too many requests in flight; retry shortly");
            p.retry_after = Some(1);
            p.into_response()
        }
    }
}
