//! The ordered feed: every event of the store, once, in commit-safe order, without gaps.
//!
//! Positions are handed out at insert, but transactions commit in another order, so a
//! reader that takes "position > last seen" skips an event whose transaction was still
//! open when a later position was read. This reader orders by the writing transaction's
//! id and then position, and only reads rows of transactions older than the oldest one
//! still running (`pg_snapshot_xmin`): rows of in-flight transactions wait until they
//! finish. Per aggregate the order is the sequence order, because a command's transaction
//! gets its id only when it writes, after the previous event's transaction committed.

use chrono::{DateTime, Utc};
use lis_commands::connection::connection;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};

/// Where a reader of the feed is: the (transaction id, position) of the last event read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeedPosition {
    pub tx_id: u64,
    pub position: i64,
}

/// An event as stored, with its place in the feed. The payload and metadata are the
/// stored JSON text, byte for byte, so that a consumer can recompute the hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub position: i64,
    pub tx_id: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub payload: Box<RawValue>,
    pub metadata: Box<RawValue>,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

impl StoredEvent {
    pub fn feed_position(&self) -> FeedPosition {
        FeedPosition {
            tx_id: self.tx_id,
            position: self.position,
        }
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event {position} is unreadable: {message}")]
    Corrupt { position: i64, message: String },
    #[error("events were written up to transaction {max_tx} but this cluster is at {current}: a restore onto a new cluster must move its transaction counter on first (pg_resetwal -x; docs/reliability.md)")]
    CounterBehind { max_tx: String, current: String },
}

/// The columns of an event as the feed hands it on, in the order [`decode_row`] reads.
const COLUMNS: &str = "position, tx_id::text AS tx_id, aggregate_type, aggregate_id, sequence,
    event_type, event_version, recorded_at, payload::text AS payload, metadata::text AS metadata,
    prev_hash, hash";

/// The feed's query after the position that `after` (an SQL row of `xid8`, `bigint`)
/// names, at most `$n` events (`limit` names the parameter).
fn feed_sql(after: &str, limit: &str) -> String {
    format!(
        "SELECT {COLUMNS}
           FROM events
          WHERE (tx_id, position) > {after}
            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY events.tx_id, events.position
          LIMIT {limit}"
    )
}

/// The next events after `after`, at most `limit`, that are safe to hand on.
pub async fn read_after(
    pool: &PgPool,
    after: FeedPosition,
    limit: i64,
) -> Result<Vec<StoredEvent>, FeedError> {
    let rows = sqlx::query(&feed_sql("($1::text::xid8, $2)", "$3"))
        .bind(after.tx_id.to_string())
        .bind(after.position)
        .bind(limit)
        .fetch_all(&mut *connection(pool).await?)
        .await?;
    rows.iter().map(decode_row).collect()
}

/// The next events, at most `limit`, after the position saved in `table` (a read
/// model's one-row `feed_position`; the start of the feed while it is empty), in one
/// statement: an idle reader's poll is a single round trip.
pub async fn read_after_saved(
    pool: &PgPool,
    table: &str,
    limit: i64,
) -> Result<Vec<StoredEvent>, FeedError> {
    let after = format!(
        "(coalesce((SELECT tx_id FROM {table}), '0')::xid8,
          coalesce((SELECT position FROM {table}), 0))"
    );
    let rows = sqlx::query(&feed_sql(&after, "$1"))
        .bind(limit)
        .fetch_all(&mut *connection(pool).await?)
        .await?;
    rows.iter().map(decode_row).collect()
}

fn decode_row(row: &PgRow) -> Result<StoredEvent, FeedError> {
    let position: i64 = row.get("position");
    let corrupt = |message: String| FeedError::Corrupt { position, message };
    let tx: String = row.get("tx_id");
    Ok(StoredEvent {
        position,
        tx_id: tx.parse().map_err(|e| corrupt(format!("tx_id: {e}")))?,
        aggregate_type: row.get("aggregate_type"),
        aggregate_id: row.get("aggregate_id"),
        sequence: row.get("sequence"),
        event_type: row.get("event_type"),
        event_version: row.get("event_version"),
        recorded_at: row.get("recorded_at"),
        payload: RawValue::from_string(row.get("payload"))
            .map_err(|e| corrupt(format!("payload: {e}")))?,
        metadata: RawValue::from_string(row.get("metadata"))
            .map_err(|e| corrupt(format!("metadata: {e}")))?,
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
    })
}

/// Refuses a database whose cluster's transaction counter is not past every stored
/// event's `tx_id` — a dump restored onto a new cluster without moving the counter on
/// (docs/reliability.md, step 3): the feed would hold every event back, silently.
pub async fn check_transaction_counter(pool: &PgPool) -> Result<(), FeedError> {
    let (behind, max_tx, current): (bool, Option<String>, String) = sqlx::query_as(
        "SELECT coalesce(max(tx_id) >= pg_current_xact_id(), false), max(tx_id)::text,
                pg_current_xact_id()::text
           FROM events",
    )
    .fetch_one(pool)
    .await?;
    if behind {
        return Err(FeedError::CounterBehind {
            max_tx: max_tx.unwrap_or_default(),
            current,
        });
    }
    Ok(())
}

/// The saved position of a feed consumer (the start of the feed if none).
pub async fn load_checkpoint<'e>(
    db: impl PgExecutor<'e>,
    consumer: &str,
) -> Result<FeedPosition, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tx_id::text AS tx_id, position FROM feed_checkpoints WHERE consumer = $1",
    )
    .bind(consumer)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(r) => FeedPosition {
            tx_id: r.get::<String, _>("tx_id").parse().unwrap_or(0),
            position: r.get("position"),
        },
        None => FeedPosition::default(),
    })
}

/// Saves a consumer's position (call it in the transaction that applied the events).
pub async fn save_checkpoint<'e>(
    db: impl PgExecutor<'e>,
    consumer: &str,
    at: FeedPosition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO feed_checkpoints (consumer, tx_id, position) VALUES ($1, $2::text::xid8, $3)
         ON CONFLICT (consumer) DO UPDATE SET tx_id = excluded.tx_id, position = excluded.position,
                                              updated_at = clock_timestamp()",
    )
    .bind(consumer)
    .bind(at.tx_id.to_string())
    .bind(at.position)
    .execute(db)
    .await?;
    Ok(())
}
