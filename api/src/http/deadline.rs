//! A deadline for every request (`LIS_REQUEST_TIMEOUT_SECS`): one still unanswered by
//! then is answered 503 with Retry-After and its work dropped, so that a database that
//! fell silent mid-statement costs a caller seconds, not the quarter of an hour TCP
//! takes to give up. Each request runs inside `lis_commands::connection::scoped`: a
//! connection it leaves mid-statement when cut short is closed, not given back to wait
//! on the silence with its place in the pool.
//!
//! `GET /audit/verification` reads the whole store, which takes longer than any deadline
//! fit for the rest as the store grows (42 s at 7.5 million events, docs/benchmarks.md):
//! it is bound by its progress instead ([`while_progressing`]), and given up when it has
//! read nothing for a deadline. Event streams answer at once; their reads have a bound
//! of their own (`stream.rs`).

use super::problem::Problem;
use super::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lis_commands::connection::{scoped, scoped_for};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What long work reports as it goes ([`while_progressing`]).
#[derive(Clone)]
pub struct Progress {
    started: Instant,
    /// When it last progressed, in milliseconds after `started`.
    last: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The work has moved on (read more rows).
    pub fn tick(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// Runs `work` inside [`scoped`] for as long as it reports progress at least once every
/// `limit`, however long it takes in all: `None` when it stalled for `limit` (the
/// database fell silent mid-read), and the connections it then held were closed.
pub async fn while_progressing<F: Future>(
    limit: Duration,
    work: impl FnOnce(Progress) -> F,
) -> Option<F::Output> {
    let progress = Progress::new();
    let work = scoped(work(progress.clone()));
    tokio::pin!(work);
    let look_every = (limit / 4).max(Duration::from_millis(10));
    loop {
        if let Ok(output) = tokio::time::timeout(look_every, &mut work).await {
            return Some(output);
        }
        if progress.idle() >= limit {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_that_progresses_runs_past_the_limit_and_work_that_stalls_is_given_up() {
        let limit = Duration::from_millis(500);
        let started = Instant::now();
        let done = while_progressing(limit, |progress| async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                progress.tick();
            }
            "done"
        })
        .await;
        assert_eq!(done, Some("done"));
        assert!(started.elapsed() >= 3 * limit, "{:?}", started.elapsed());

        let started = Instant::now();
        let stalled = while_progressing(limit, |progress| async move {
            progress.tick();
            tokio::time::sleep(Duration::from_secs(30)).await;
            "done"
        })
        .await;
        assert_eq!(stalled, None);
        let took = started.elapsed();
        assert!(took >= limit && took < 10 * limit, "{took:?}");
    }
}
