//! `Idempotency-Key`: a retried command request returns the first response and never
//! writes a second event.
//!
//! The key is claimed (a row per caller and key) before the command runs; the response is
//! stored with it. A retry with the same body gets the stored response; the same key with
//! a different body is refused (422); a retry while the first is still running gets 409.
//! A first attempt that failed on a dependency (5xx) releases the key for a retry.

use super::problem::Problem;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

pub enum Claim {
    /// Run the command, then `finish`.
    Run(Option<String>),
    /// The stored response of an earlier identical request.
    Replay(StatusCode, serde_json::Value),
}

/// Claims `Idempotency-Key` for this caller and body, or finds its stored response.
pub async fn claim(
    pool: &PgPool,
    headers: &HeaderMap,
    actor: &str,
    body: &[u8],
) -> Result<Claim, Problem> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(Claim::Run(None));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| Problem::bad_request("Idempotency-Key must be 1 to 200 visible characters"))?
        .to_string();
    let hash = Sha256::digest(body).to_vec();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (actor_id, key, request_sha256) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(actor)
    .bind(&key)
    .bind(&hash)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::Run(Some(key)));
    }
    let (stored_hash, status, body): (Vec<u8>, Option<i32>, Option<serde_json::Value>) = sqlx::query_as(
        "SELECT request_sha256, response_status, response_body FROM idempotency_keys WHERE actor_id = $1 AND key = $2",
    )
    .bind(actor)
    .bind(&key)
    .fetch_one(pool)
    .await?;
    if stored_hash != hash {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
        )
        .detail("this Idempotency-Key was used with a different request body"));
    }
    match (status, body) {
        (Some(s), Some(b)) => Ok(Claim::Replay(
            StatusCode::from_u16(s as u16).unwrap_or(StatusCode::OK),
            b,
        )),
        _ => Err(Problem::conflict(
            "idempotency-in-progress",
            "The first request with this Idempotency-Key is still running",
            "retry in a moment",
        )),
    }
}

/// Stores the response of a claimed key (or releases it after a 5xx, so a retry runs).
pub async fn finish(
    pool: &PgPool,
    actor: &str,
    key: &str,
    status: StatusCode,
    body: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    if status.is_server_error() {
        sqlx::query("DELETE FROM idempotency_keys WHERE actor_id = $1 AND key = $2 AND response_status IS NULL")
            .bind(actor)
            .bind(key)
            .execute(pool)
            .await?;
    } else {
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4, completed_at = clock_timestamp()
              WHERE actor_id = $1 AND key = $2",
        )
        .bind(actor)
        .bind(key)
        .bind(i32::from(status.as_u16()))
        .bind(body)
        .execute(pool)
        .await?;
    }
    Ok(())
}
