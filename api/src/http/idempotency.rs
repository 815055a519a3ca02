//! `Idempotency-Key`: a retried command request returns the first response and never
//! writes a second event.
//!
//! The key is claimed (a row per caller and key, with the command id the attempt will
//! write its events with) before the command runs, and the attempt holds the key's lock
//! until its response is stored with it. A retry of the same request (method, path and
//! body) gets the stored response; the same key with another request is refused (422);
//! a retry while the
//! first attempt still holds the lock gets 409.
//!
//! The lock is a transaction-level advisory lock, not a row lock: a row lock gives the
//! claim's transaction an id for as long as the command runs, and the ordered feed
//! hands on no event committed after the oldest open transaction id, so every keyed
//! command in flight would hold back every read model (`projections::feed`). The claim
//! takes an id only when it stores the response.
//!
//! An attempt that died in between (the API killed, the database restarted: its lock
//! goes with its connection) or failed on a dependency (5xx) leaves the key without a
//! response. The next retry takes the lock over and looks for events written under the
//! claim's command id: if the first attempt committed, the answer is rebuilt from its
//! events (never run twice); if not, the command runs now, under the same command id.
//! The locks are held on a pool of their own, so that they never starve the commands.

use super::problem::Problem;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use lis_commands::connection::{self, connection, Tx};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use uuid::Uuid;

pub enum Claim {
    /// Run the command (with this claim's command id, if keyed), then `finish`.
    Run(Option<Held>),
    /// The stored response of an earlier identical request.
    Replay(StatusCode, Value),
}

/// A claimed key: `tx` holds its lock until [`finish`].
pub struct Held {
    actor: String,
    pub key: String,
    pub command_id: Uuid,
    tx: Tx,
}

/// The advisory-lock class of claimed keys (the second key is a hash of the caller and
/// the key: two keys in flight at once with the same hash make one of them wait, as a
/// 409, a retry later).
pub const CLAIM_LOCK: i32 = 7_302_421;

/// The longest `Idempotency-Key` accepted.
pub const KEY_MAX: usize = 200;

/// Whether `k` is a key as the OpenAPI document describes it (`^[!-~]([ -~]*[!-~])?$`, at
/// most [`KEY_MAX`] long): printable ASCII, spaces only between other characters. A tab
/// or any other control character is refused. (HTTP itself strips spaces and tabs around
/// a header's value, RFC 9110 section 5.5, so those never reach here.)
pub fn is_key(k: &str) -> bool {
    let visible = |b: &u8| (b'!'..=b'~').contains(b);
    (1..=KEY_MAX).contains(&k.len())
        && k.bytes().all(|b| (b' '..=b'~').contains(&b))
        && k.as_bytes().first().is_some_and(visible)
        && k.as_bytes().last().is_some_and(visible)
}

/// What a retry does when the key's earlier attempt died before storing its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDeath {
    /// Answer with what the attempt's events show, if it wrote any, and this success
    /// status: a request of one command either wrote it or did not.
    Answer(StatusCode),
    /// Run the request again: one of several commands that finishes what an earlier
    /// attempt left part-written (a split into aliquots, whose children's ids come from
    /// the request), so that its events alone would be a partial answer.
    RunAgain,
}

/// Claims `Idempotency-Key` for this caller and request (`request`: its method and path;
/// `body`), or finds its response. `after_death` says how a retry of an attempt that died
/// is answered. The request is stored as an HMAC under
/// `secret` (the server's token key), never as a plain hash: a body may hold a password,
/// which a plain SHA-256 would let anyone with the table guess at hashing speed.
pub async fn claim(
    pool: &PgPool,
    headers: &HeaderMap,
    actor: &str,
    request: &str,
    body: &[u8],
    secret: &[u8],
    after_death: AfterDeath,
) -> Result<Claim, Problem> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(Claim::Run(None));
    };
    let key = std::str::from_utf8(key.as_bytes())
        .ok()
        .filter(|k| is_key(k))
        .ok_or_else(|| {
            Problem::bad_header(
                "Idempotency-Key must be 1 to 200 printable ASCII characters, spaces only between others",
            )
        })?
        .to_string();
    // The method and path as well as the body: the same body sent to another resource
    // (`{}` to verify another result, a reason to disable another user) is another
    // request, not a retry. So is the same command made on another version of its
    // record (`If-Match`): a 412 for the old one is no answer to it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .expect("HMAC takes a key of any length")
        .chain_update(request.as_bytes());
    if let Some(version) = headers.get(axum::http::header::IF_MATCH) {
        mac = mac
            .chain_update(b"\nif-match: ")
            .chain_update(version.as_bytes());
    }
    let hash = mac
        .chain_update(b"\n")
        .chain_update(body)
        .finalize()
        .into_bytes()
        .to_vec();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (actor_id, key, request_sha256, events_after)
         VALUES ($1, $2, $3, (SELECT coalesce(max(position), 0) FROM events))
         ON CONFLICT DO NOTHING",
    )
    .bind(actor)
    .bind(&key)
    .bind(&hash)
    .execute(&mut *connection(pool).await?)
    .await?
    .rows_affected()
        == 1;
    let stored_hash: Vec<u8> = if inserted {
        hash.clone()
    } else {
        sqlx::query_scalar(
            "SELECT request_sha256 FROM idempotency_keys WHERE actor_id = $1 AND key = $2",
        )
        .bind(actor)
        .bind(&key)
        .fetch_one(&mut *connection(pool).await?)
        .await?
    };
    if stored_hash != hash {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
        )
        .detail("this Idempotency-Key was used with a different request (method, path or body)"));
    }
    let mut tx = connection::begin(&claims_pool(pool)).await?;
    // The lock first, in a statement of its own: the read below then sees what an
    // attempt that held it committed (read committed: a snapshot per statement).
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2 || '/' || $3))")
            .bind(CLAIM_LOCK)
            .bind(actor)
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
    if !locked {
        return Err(Problem::conflict(
            "idempotency-in-progress",
            "The first request with this Idempotency-Key is still running",
            "retry in a moment",
        ));
    }
    let (status, response, command_id, events_after): (Option<i32>, Option<Value>, Uuid, i64) =
        sqlx::query_as(
            "SELECT response_status, response_body, command_id, events_after FROM idempotency_keys
              WHERE actor_id = $1 AND key = $2",
        )
        .bind(actor)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
    if let (Some(s), Some(b)) = (status, response) {
        return Ok(Claim::Replay(
            StatusCode::from_u16(s as u16).unwrap_or(StatusCode::OK),
            b,
        ));
    }
    let mut held = Held {
        actor: actor.to_string(),
        key,
        command_id,
        tx,
    };
    if let (false, AfterDeath::Answer(ok)) = (inserted, after_death) {
        // An earlier attempt died or failed: did its command commit?
        if let Some(answer) = answer_from_events(&mut held.tx, command_id, events_after).await? {
            tracing::info!(%command_id, "answered from the events of an earlier attempt");
            finish(held, ok, &answer).await?;
            return Ok(Claim::Replay(ok, answer));
        }
    }
    Ok(Claim::Run(Some(held)))
}

/// The pool the claims' locks are held on: one per database, as large as the commands'
/// own, so that claims waiting for their commands can never take every connection the
/// commands need.
fn claims_pool(pool: &PgPool) -> PgPool {
    static POOLS: OnceLock<Mutex<HashMap<String, PgPool>>> = OnceLock::new();
    let options = pool.connect_options();
    let key = format!("{options:?}");
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    pools
        .entry(key)
        .or_insert_with(|| {
            // The same options (size, timeouts, the test of idle connections).
            pool.options().clone().connect_lazy_with((*options).clone())
        })
        .clone()
}

/// The response of a command that committed under `command_id`, rebuilt from its events
/// as the endpoints answer: the aggregate's id, new version and the event's position
/// (with the order number for a new order; parent and children for aliquots).
async fn answer_from_events(
    tx: &mut Tx,
    command_id: Uuid,
    events_after: i64,
) -> Result<Option<Value>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT aggregate_id, sequence, position, payload -> 'OrderPlaced' ->> 'order_number'
           FROM events WHERE position > $1 AND metadata ->> 'command_id' = $2 ORDER BY position",
    )
    .bind(events_after)
    .bind(command_id.to_string())
    .fetch_all(&mut **tx)
    .await?;
    let mut outcomes: Vec<Value> = vec![];
    let mut order_number = None;
    for (id, version, position, number) in rows {
        let outcome = json!({ "id": id, "version": version, "position": position });
        match outcomes.iter_mut().find(|o| o["id"] == id) {
            Some(o) => *o = outcome,
            None => outcomes.push(outcome),
        }
        order_number = order_number.or(number);
    }
    if let (Some(n), Some(first)) = (order_number, outcomes.first_mut()) {
        first["order_number"] = json!(n);
    }
    Ok(match outcomes.len() {
        0 => None,
        1 => outcomes.pop(),
        _ => Some(json!({ "parent": outcomes[0], "children": outcomes[1..] })),
    })
}

/// Stores the response of a claimed key and releases it. After a 5xx nothing is stored
/// (the command may or may not have committed): the next retry finds out.
pub async fn finish(held: Held, status: StatusCode, body: &Value) -> Result<(), sqlx::Error> {
    let mut tx = held.tx;
    if status.is_server_error() {
        return tx.rollback().await;
    }
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4, completed_at = clock_timestamp()
          WHERE actor_id = $1 AND key = $2",
    )
    .bind(&held.actor)
    .bind(&held.key)
    .bind(i32::from(status.as_u16()))
    .bind(body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_printable_ascii_with_spaces_only_inside() {
        for good in ["k", "order 42 / retry", "~!", &"a".repeat(KEY_MAX)] {
            assert!(is_key(good), "{good:?}");
        }
        let long = "a".repeat(KEY_MAX + 1);
        for bad in ["", " ", " a", "a ", "a\tb", "a\u{7f}b", "é", "a\nb", &long] {
            assert!(!is_key(bad), "{bad:?}");
        }
    }
}
