//! `GET /events/stream`: the event store as Server-Sent Events, for analytics consumers
//! without Kafka access. Catch-up from a cursor, then live; each event's SSE id is its
//! feed cursor (`<tx_id>:<position>`), so a client resumes with `Last-Event-ID` and
//! neither misses nor repeats an event. Filter by `aggregate_type` and `event_type`.
//! Analysts get de-identified events (no patient identity); auditors get them whole.
//! A stream ends when its token expires or is revoked (the user disabled, given another
//! role or a new password): it is checked again before every read of the store.
//! Each read is bounded ([`READ_BOUND`]) on a connection that is closed, not given back,
//! if the read is cut short (`lis_commands::connection::within`).

use super::auth::{Action, Caller};
use super::params::Params;
use super::problem::{FieldProblem, Problem};
use super::revocation::Verdict;
use super::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use lis_commands::connection::within;
use lis_domain::actor::Role;
use lis_projections::envelope::Envelope;
use lis_projections::feed::{read_after, FeedError, FeedPosition, StoredEvent};
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct StreamQuery {
    /// Start after this cursor (`<tx_id>:<position>`); `Last-Event-ID` wins if both are sent.
    pub after: Option<String>,
    pub aggregate_type: Option<String>,
    pub event_type: Option<String>,
}

/// How long one read of the store may take before the stream gives it up and tries
/// again (a connection whose answer the network lost would otherwise hold it for good).
const READ_BOUND: Duration = Duration::from_secs(10);

/// Parses a feed cursor.
pub fn cursor(raw: &str) -> Option<FeedPosition> {
    let (tx, pos) = raw.trim().split_once(':')?;
    Some(FeedPosition {
        tx_id: tx.parse().ok()?,
        position: pos.parse().ok()?,
    })
}

/// The envelope of an event as this caller may see it.
fn envelope(e: &StoredEvent, deidentify: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(Envelope::from(e)).unwrap_or_default();
    if deidentify {
        if let Some(placed) = v
            .pointer_mut("/payload/OrderPlaced")
            .and_then(|p| p.as_object_mut())
        {
            placed.remove("identity");
            placed.remove("clinical_notes");
        }
    }
    v
}

pub async fn events(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Params(q): Params<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    caller.require(Action::ReadStream)?;
    // A reconnecting browser resumes from the header; a client may name the query's
    // `after` instead. Each is refused as what it is: a header (400) or a field (422).
    let start = if let Some(header) = headers.get("last-event-id") {
        header.to_str().ok().and_then(cursor).ok_or_else(|| {
            Problem::bad_header(
                "Last-Event-ID is not a stream cursor (<tx_id>:<position>, the id of an event)",
            )
        })?
    } else if let Some(r) = q.after {
        cursor(&r).ok_or_else(|| {
            Problem::invalid(vec![FieldProblem {
                pointer: "/after".into(),
                detail: format!(
                    "`{r}` is not a stream cursor (<tx_id>:<position>, the id of an event)"
                ),
            }])
        })?
    } else {
        FeedPosition::default()
    };
    let deidentify = caller.actor.role != Role::Auditor;
    let (aggregate_type, event_type) = (q.aggregate_type, q.event_type);
    let state = (s.pool.clone(), start, VecDeque::<Event>::new());
    let (revocations, user, token) = (s.revocations.clone(), caller.actor.id, caller.token);
    let stream = futures::stream::unfold(state, move |(pool, mut at, mut pending)| {
        let (aggregate_type, event_type) = (aggregate_type.clone(), event_type.clone());
        let (revocations, user) = (revocations.clone(), user.clone());
        async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (pool, at, pending)));
                }
                let now = chrono::Utc::now().timestamp() as u64;
                // Revoked, or knowledge too old to trust (the client resumes from its
                // last event id once the records can be read again), or expired.
                let verdict = revocations.check(user.as_str(), token.generation);
                let revoked = matches!(verdict, Verdict::Revoked(_) | Verdict::Stale);
                if revoked || now > token.expires {
                    tracing::info!(user = %user, revoked, "event stream ended: its token expired or was revoked");
                    return None;
                }
                let read = within(&pool, READ_BOUND, read_after(&pool, at, 500))
                    .await
                    .unwrap_or_else(|timed_out| Err(FeedError::Database(timed_out)));
                match read {
                    Ok(batch) if !batch.is_empty() => {
                        for e in &batch {
                            at = e.feed_position();
                            let wanted = aggregate_type
                                .as_deref()
                                .is_none_or(|t| t == e.aggregate_type)
                                && event_type.as_deref().is_none_or(|t| t == e.event_type);
                            if wanted {
                                let data = envelope(e, deidentify).to_string();
                                pending.push_back(
                                    Event::default()
                                        .id(format!("{}:{}", at.tx_id, at.position))
                                        .event(e.event_type.clone())
                                        .data(data),
                                );
                            }
                        }
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream read failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::cursor;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = cursor("812:17").unwrap();
        assert_eq!((c.tx_id, c.position), (812, 17));
        assert!(cursor("17").is_none());
        assert!(cursor("a:b").is_none());
    }
}
