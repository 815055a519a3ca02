//! Running projections: from the ordered feed (single-node mode, PostgreSQL alone), from
//! Kafka (the production topology: one consumer group per projection), and rebuilding a
//! projection from the whole event store without stopping queries.

use crate::envelope::Envelope;
use crate::feed::{read_after, FeedPosition, FeedWaker};
use crate::projection::{
    apply_batch, apply_in, ensure_schema, feed_position, schema_of, BatchOutcome, Projection,
    ProjectionError,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use sqlx::{Acquire, PgPool};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Feed(#[from] crate::feed::FeedError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading ahead failed: {0}")]
    ReadAhead(String),
    #[error("message at {topic}/{partition}@{offset} is not an event envelope: {message}")]
    BadMessage {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
}

impl WorkerError {
    /// A gap or an undecodable event needs a person; everything else is retried.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WorkerError::Projection(
                ProjectionError::Gap { .. } | ProjectionError::Undecodable { .. }
            ) | WorkerError::BadMessage { .. }
        )
    }
}

/// Single-node mode: reads the ordered feed and applies it, batch by batch; the feed
/// position commits with the batch.
pub async fn run_from_feed(
    pool: PgPool,
    projection: Arc<dyn Projection>,
    batch: i64,
    poll: Duration,
) -> Result<(), WorkerError> {
    let schema = schema_of(projection.name());
    ensure_schema(&mut *pool.acquire().await?, projection.as_ref(), &schema).await?;
    let mut waker = FeedWaker::new(&pool, poll).await;
    loop {
        let n = feed_step(&pool, projection.as_ref(), batch).await?;
        if n == 0 {
            waker.wait().await;
        }
    }
}

/// One batch from the feed; returns the number of events read.
pub async fn feed_step(
    pool: &PgPool,
    projection: &dyn Projection,
    batch: i64,
) -> Result<usize, WorkerError> {
    let schema = schema_of(projection.name());
    let at = feed_position(&mut *pool.acquire().await?, &schema).await?;
    let events = read_after(pool, at, batch).await?;
    let Some(last) = events.last().map(|e| e.feed_position()) else {
        return Ok(0);
    };
    let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
    apply_batch(pool, projection, &envelopes, Some(last)).await?;
    Ok(events.len())
}

/// Kafka mode: one consumer group per projection over the event topics. An event is
/// applied (exactly once in effect, by its aggregate's offset) before its Kafka offset
/// is committed, so a crash only redelivers.
pub async fn run_from_kafka(
    pool: PgPool,
    projection: Arc<dyn Projection>,
    brokers: &str,
    group: &str,
    topics: &[&str],
) -> Result<(), WorkerError> {
    let schema = schema_of(projection.name());
    ensure_schema(&mut *pool.acquire().await?, projection.as_ref(), &schema).await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(topics)?;
    tracing::info!(
        projection = projection.name(),
        ?topics,
        "projection consuming from Kafka"
    );
    loop {
        let message = consumer.recv().await?;
        let env: Envelope =
            serde_json::from_slice(message.payload().unwrap_or_default()).map_err(|e| {
                WorkerError::BadMessage {
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                    message: e.to_string(),
                }
            })?;
        let outcome =
            apply_batch(&pool, projection.as_ref(), std::slice::from_ref(&env), None).await?;
        if outcome.skipped > 0 {
            tracing::debug!(event = %env.event_id, "redelivered event skipped");
        }
        consumer.commit_message(&message, CommitMode::Async)?;
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub outcome: BatchOutcome,
}

/// Events per batch of a rebuild's bulk replay.
const REBUILD_BATCH: i64 = 5000;

/// Replays the whole event store into a fresh schema, then swaps it in for the live one
/// in one transaction (queries see the old model or the new, never a half-built one).
/// The live projection's tables are locked for the final catch-up and the swap, so no
/// event applied to the old model in the meantime is lost.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<RebuildReport, WorkerError> {
    let live = schema_of(projection.name());
    let fresh = format!("{live}_rebuild");
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {fresh} CASCADE"))
        .execute(&mut *conn)
        .await?;
    ensure_schema(&mut conn, projection, &fresh).await?;
    ensure_schema(&mut conn, projection, &live).await?;
    let mut report = RebuildReport::default();
    let mut at = FeedPosition::default();
    // Bulk replay, batch by batch; the next batch is read while this one is written.
    let read = |after: FeedPosition| {
        let pool = pool.clone();
        tokio::spawn(async move { read_after(&pool, after, REBUILD_BATCH).await })
    };
    let mut next = read(at);
    loop {
        let mut events = next
            .await
            .map_err(|e| WorkerError::ReadAhead(e.to_string()))??;
        if events.is_empty() {
            // Read while our own transaction was open, the feed may have stopped short.
            events = read_after(pool, at, REBUILD_BATCH).await?;
        }
        let Some(last) = events.last().map(|e| e.feed_position()) else {
            break;
        };
        next = read(last);
        let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
        let mut tx = pool.begin().await?;
        let o = apply_in(&mut tx, projection, &fresh, &envelopes, Some(last)).await?;
        tx.commit().await?;
        report.events += events.len() as u64;
        report.outcome.applied += o.applied;
        report.outcome.skipped += o.skipped;
        at = last;
        progress(report.events);
    }
    // Final catch-up and swap, with the live model's writers held off.
    let mut tx = conn.begin().await?;
    sqlx::query(&format!("LOCK TABLE {live}.offsets IN EXCLUSIVE MODE"))
        .execute(&mut *tx)
        .await?;
    loop {
        let events = read_after(pool, at, REBUILD_BATCH).await?;
        let Some(last) = events.last().map(|e| e.feed_position()) else {
            break;
        };
        let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
        let o = apply_in(&mut tx, projection, &fresh, &envelopes, Some(last)).await?;
        report.events += events.len() as u64;
        report.outcome.applied += o.applied;
        report.outcome.skipped += o.skipped;
        at = last;
    }
    let old = format!("{live}_old");
    sqlx::query(&format!("ALTER SCHEMA {live} RENAME TO {old}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("ALTER SCHEMA {fresh} RENAME TO {live}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {old} CASCADE"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    progress(report.events);
    Ok(report)
}

/// Compile-time check: the workers can run on tokio's multi-threaded runtime (sqlx's
/// executors make it easy to lose `Send` without noticing).
#[allow(dead_code)]
fn assert_workers_are_send(pool: PgPool, p: Arc<dyn Projection>) {
    fn is_send<T: Send>(_: T) {}
    is_send(run_from_feed(
        pool.clone(),
        p.clone(),
        1,
        Duration::from_secs(1),
    ));
    is_send(run_from_kafka(pool.clone(), p.clone(), "", "", &[]));
    is_send(rebuild(&pool, p.as_ref(), &mut |_| {}));
}
