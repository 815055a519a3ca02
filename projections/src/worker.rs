//! Running projections: from the ordered feed (single-node mode, PostgreSQL alone), from
//! Kafka (the production topology: one consumer group per projection), and rebuilding a
//! projection from the whole event store without stopping queries.

use crate::envelope::Envelope;
use crate::feed::{read_after, read_after_saved, FeedPosition};
use crate::membership::{Membership, Watchdog};
use crate::poll::{Poller, Polling};
use crate::projection::{
    apply_batch, apply_decoded_in, apply_in, decode, drop_schema, ensure_schema,
    ensure_schema_exists, schema_of, write_offsets, BatchOutcome, LabEvent, OffsetMap, Offsets,
    Projection, ProjectionError,
};
use lis_commands::connection::{connection, scoped_for};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, PgPool, Postgres};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    #[error("a batch was not done within {0:?} (the database did not answer): given up, its connections closed; it is tried again")]
    TimedOut(Duration),
    #[error(
        "the Kafka consumer of group {group} had no assignment for {waited:?}: it is made anew"
    )]
    OutsideGroup { group: String, waited: Duration },
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

/// How a worker groups events into batches. Every batch costs a transaction and a
/// handful of bookkeeping statements whatever its size, so under load a worker lets the
/// next batch fill for `linger` after a part-full one (single-node: from the part-full
/// read, so the apply's time counts; Kafka: after the batch's first message): a little
/// latency for far fewer commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Events per batch at most.
    pub max: usize,
    /// How long the next batch fills after a part-full one.
    pub linger: Duration,
    /// How soon to read the feed again when it had nothing new (single-node mode).
    pub polling: Polling,
    /// How long a Kafka consumer may be without an assignment before it is made anew
    /// ([`crate::membership`]).
    pub join_deadline: Duration,
    /// How long a batch (its reads and writes, and MongoDB's for the analytics) may take
    /// before it is given up and tried again ([`bounded`]).
    pub timeout: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max: 500,
            linger: Duration::from_millis(10),
            polling: Polling::default(),
            join_deadline: Duration::from_secs(30),
            timeout: Duration::from_secs(120),
        }
    }
}

/// A worker's start: its projection's schema made if missing, within `limit`.
async fn start(
    pool: &PgPool,
    projection: &dyn Projection,
    limit: Duration,
) -> Result<(), WorkerError> {
    let schema = schema_of(projection.name());
    bounded(limit, async {
        let mut conn = connection(pool).await?;
        Ok(ensure_schema(&mut conn, projection, &schema).await?)
    })
    .await
}

/// Single-node mode: reads the ordered feed and applies it, batch by batch; the feed
/// position commits with the batch.
pub async fn run_from_feed(
    pool: PgPool,
    projection: Arc<dyn Projection>,
    batching: Batching,
) -> Result<(), WorkerError> {
    start(&pool, projection.as_ref(), batching.timeout).await?;
    let mut poller = Poller::new(batching.polling, Instant::now());
    loop {
        let read = Instant::now();
        let n = bounded(
            batching.timeout,
            feed_step(&pool, projection.as_ref(), batching.max as i64),
        )
        .await?;
        if n == 0 {
            tokio::time::sleep(poller.wait(Instant::now())).await;
            continue;
        }
        poller.found(Instant::now());
        if n < batching.max {
            // The next batch fills from this read on, while this one is applied too: a
            // read no sooner than `linger` after the last, not `linger` after the apply.
            tokio::time::sleep(batching.linger.saturating_sub(read.elapsed())).await;
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
    let events = read_after_saved(pool, &format!("{schema}.feed_position"), batch).await?;
    let Some(last) = events.last().map(|e| e.feed_position()) else {
        return Ok(0);
    };
    let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
    apply_batch(pool, projection, &envelopes, Some(last)).await?;
    Ok(events.len())
}

/// Kafka mode: one consumer group per projection over the event topics. A batch of
/// events is applied (exactly once in effect, by each aggregate's offset) before its
/// Kafka offsets are committed, so a crash only redelivers.
pub async fn run_from_kafka(
    pool: PgPool,
    projection: Arc<dyn Projection>,
    brokers: &str,
    group: &str,
    topics: &[&str],
    batching: Batching,
) -> Result<(), WorkerError> {
    start(&pool, projection.as_ref(), batching.timeout).await?;
    let consumer: StreamConsumer<Membership> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create_with_context(Membership::default())?;
    consumer.subscribe(topics)?;
    tracing::info!(
        projection = projection.name(),
        ?topics,
        "projection consuming from Kafka"
    );
    let outcome = consume(&consumer, &pool, projection.as_ref(), group, batching).await;
    // Closing a consumer waits for its group to answer (librdkafka polls until it is
    // closed): done on a blocking thread, so that a broker that does not answer holds no
    // thread the other projections run on.
    tokio::task::spawn_blocking(move || drop(consumer));
    outcome
}

/// Applies what `consumer` receives, batch by batch, until an error.
async fn consume(
    consumer: &StreamConsumer<Membership>,
    pool: &PgPool,
    projection: &dyn Projection,
    group: &str,
    batching: Batching,
) -> Result<(), WorkerError> {
    let mut watchdog = Watchdog::new(batching.join_deadline, Instant::now());
    loop {
        // The first message waits as long as it takes, the consumer's membership looked
        // at every second; the rest of the batch at most `linger` (a cancelled `recv`
        // loses nothing: rdkafka documents it as safe).
        let first = loop {
            match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                Ok(message) => {
                    watchdog.message();
                    break message?.detach();
                }
                Err(_) => watchdog
                    .check(consumer.context().is_assigned(), Instant::now())
                    .map_err(|waited| WorkerError::OutsideGroup {
                        group: group.to_string(),
                        waited,
                    })?,
            }
        };
        let mut messages = vec![first];
        let until = tokio::time::Instant::now() + batching.linger;
        while messages.len() < batching.max {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(message) => messages.push(message?.detach()),
                Err(_) => break,
            }
        }
        let envelopes = messages
            .iter()
            .map(|m| {
                serde_json::from_slice::<Envelope>(m.payload().unwrap_or_default()).map_err(|e| {
                    WorkerError::BadMessage {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        message: e.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = bounded(batching.timeout, async {
            Ok(apply_batch(pool, projection, &envelopes, None).await?)
        })
        .await?;
        if outcome.skipped > 0 {
            tracing::debug!(skipped = outcome.skipped, "redelivered events skipped");
        }
        consumer.commit(&next_offsets(&messages)?, CommitMode::Async)?;
    }
}

/// Runs `batch` (a batch's work, or a worker's start) for at most `limit`. A network to
/// PostgreSQL that fell silent would otherwise hold the worker for as long as TCP takes
/// to give up (a quarter of an hour or more); given up, the connections it left in the
/// middle of a statement are closed, not given back to wait on the silence
/// ([`lis_commands::connection::scoped`]), and the caller starts the batch again. What
/// a batch cut short had written is rolled back, or, if its COMMIT had gone out,
/// committed with its offsets and feed position: tried again, it applies nothing twice.
pub async fn bounded<T>(
    limit: Duration,
    batch: impl std::future::Future<Output = Result<T, WorkerError>>,
) -> Result<T, WorkerError> {
    scoped_for(limit, batch)
        .await
        .unwrap_or(Err(WorkerError::TimedOut(limit)))
}

/// The offsets to commit after `messages` were applied: one past the last of each
/// partition.
fn next_offsets(messages: &[OwnedMessage]) -> Result<TopicPartitionList, WorkerError> {
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    for m in messages {
        let at = last.entry((m.topic(), m.partition())).or_insert(m.offset());
        *at = (*at).max(m.offset());
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        list.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
    }
    Ok(list)
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub outcome: BatchOutcome,
    /// Of `events`, those applied after the bulk phase: stored while it ran.
    pub caught_up: u64,
}

/// Events per batch of a rebuild's bulk replay.
const REBUILD_BATCH: i64 = 5000;

/// Replays the whole event store into a fresh schema, then swaps it in for the live one
/// in one transaction (queries see the old model or the new, never a half-built one).
/// The live projection's `offsets` table is locked for the final catch-up and the swap,
/// so the live worker, whose every batch writes it, applies nothing in the meantime.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<RebuildReport, WorkerError> {
    let mut reports = rebuild_all(pool, &[projection], progress).await?;
    Ok(reports.remove(0))
}

/// [`rebuild_all`] reading `batch` events at a time (5,000 by default): a test's small
/// store then takes many batches, as a lab's does.
pub async fn rebuild_all_in_batches(
    pool: &PgPool,
    projections: &[&dyn Projection],
    batch: i64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Vec<RebuildReport>, WorkerError> {
    rebuild_with(pool, projections, batch.max(1), progress).await
}

/// [`rebuild`] for several models at once, from one read of the event store: each
/// batch is read and decoded once, then written to every model at the same time, each
/// on its own connection. Needs a connection per model and one more; `progress` is
/// called with the events read so far. The reports are in the order of `projections`.
///
/// Each model is then swapped in by its own transaction, one after another, and logged
/// as it goes live: if one fails, the models before it are live and rebuilt, the rest
/// as they were (their half-built schemas are dropped by the next rebuild).
pub async fn rebuild_all(
    pool: &PgPool,
    projections: &[&dyn Projection],
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Vec<RebuildReport>, WorkerError> {
    rebuild_with(pool, projections, REBUILD_BATCH, progress).await
}

async fn rebuild_with(
    pool: &PgPool,
    projections: &[&dyn Projection],
    batch: i64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Vec<RebuildReport>, WorkerError> {
    let mut models = Vec::with_capacity(projections.len());
    for &projection in projections {
        models.push(Rebuilding::start(pool, projection).await?);
    }
    let started = Instant::now();
    let mut read = 0u64;
    let mut at = FeedPosition::default();
    // Bulk replay, batch by batch; the next batch is read (and decoded) while this one
    // is written. It ends at the first batch that is not full: the end of the store as
    // it was then. Reading on until a read finds nothing might never end while commands
    // keep coming; what comes later is caught up in `finish`.
    let read_ahead = |after: FeedPosition| {
        let pool = pool.clone();
        tokio::spawn(async move { read_decoded(&pool, after, batch).await })
    };
    let full = batch as usize;
    let mut next = Some(read_ahead(at));
    while let Some(reading) = next.take() {
        let (mut events, mut last) = reading
            .await
            .map_err(|e| WorkerError::ReadAhead(e.to_string()))??;
        if events.len() < full {
            // Read while our own transactions were open, the feed may have stopped short.
            (events, last) = read_decoded(pool, at, batch).await?;
        }
        let Some(last) = last else {
            break;
        };
        if events.len() == full {
            next = Some(read_ahead(last));
        }
        futures::future::try_join_all(models.iter_mut().map(|m| m.apply(&events, last))).await?;
        read += events.len() as u64;
        at = last;
        progress(read);
    }
    tracing::info!(
        events = read,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rebuild: bulk replay done"
    );
    // Indexes and offsets for every model at once, each on its own connection; then the
    // swaps, one after another.
    futures::future::try_join_all(models.iter_mut().map(|m| m.prepare())).await?;
    let mut reports = Vec::with_capacity(models.len());
    for model in models {
        reports.push(model.finish(pool, at, batch).await?);
    }
    progress(read);
    Ok(reports)
}

/// The next rebuild batch after `after`, decoded, and the feed position of its last event.
async fn read_decoded(
    pool: &PgPool,
    after: FeedPosition,
    batch: i64,
) -> Result<(Vec<(Envelope, LabEvent)>, Option<FeedPosition>), WorkerError> {
    let events = read_after(pool, after, batch).await?;
    let last = events.last().map(|e| e.feed_position());
    let decoded = events
        .iter()
        .map(|e| {
            let env = Envelope::from(e);
            decode(&env).map(|event| (env, event))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((decoded, last))
}

/// One model's side of a rebuild: its fresh schema, its own connection (a connection's
/// prepared statements are planned for one schema), and its offsets, kept in memory
/// (~100 bytes an aggregate) because nobody reads the fresh schema until the swap.
struct Rebuilding<'a> {
    projection: &'a dyn Projection,
    live: String,
    fresh: String,
    conn: PoolConnection<Postgres>,
    offsets: OffsetMap,
    report: RebuildReport,
    /// The fresh schema's secondary indexes, dropped for the bulk phase.
    deferred: Vec<String>,
    /// Whether [`Rebuilding::prepare`] has run.
    prepared: bool,
}

/// Drops the non-unique indexes of `schema` and returns their definitions. Maintaining
/// them row by row during a rebuild's bulk phase is slower than building each once
/// afterwards: benchmark 3 rebuilt orders in 29 s instead of 42–49 s, all three models
/// in 47–49 s instead of 71–80 s. Unique indexes (the primary keys the writes look rows
/// up by) stay.
async fn drop_secondary_indexes(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<Vec<String>, WorkerError> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT quote_ident(i.relname), pg_get_indexdef(i.oid)
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_namespace n ON n.oid = i.relnamespace
          WHERE n.nspname = $1 AND NOT x.indisunique
          ORDER BY i.relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {schema}.{name}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(indexes
        .into_iter()
        .map(|(_, definition)| definition)
        .collect())
}

/// `CREATE INDEX …` (as `pg_get_indexdef` gives it) as `CREATE INDEX CONCURRENTLY …`.
fn concurrently(definition: &str) -> String {
    match definition.strip_prefix("CREATE INDEX ") {
        Some(rest) => format!("CREATE INDEX CONCURRENTLY {rest}"),
        None => definition.to_string(),
    }
}

impl<'a> Rebuilding<'a> {
    async fn start(pool: &PgPool, projection: &'a dyn Projection) -> Result<Self, WorkerError> {
        let live = schema_of(projection.name());
        let fresh = format!("{live}_rebuild");
        let mut conn = pool.acquire().await?;
        // A half-built schema of a rebuild that stopped, and an old one left by a
        // rebuild that stopped between its swap and the drop.
        drop_schema(&mut conn, &fresh).await?;
        drop_schema(&mut conn, &format!("{live}_old")).await?;
        ensure_schema(&mut conn, projection, &fresh).await?;
        // The swap locks the live offsets, so they must exist; an existing live schema
        // is left alone (its DDL deadlocked live workers writing its tables).
        ensure_schema_exists(&mut conn, projection, &live).await?;
        let deferred = drop_secondary_indexes(&mut conn, &fresh).await?;
        Ok(Self {
            deferred,
            prepared: false,
            projection,
            live,
            fresh,
            conn,
            offsets: OffsetMap::new(),
            report: RebuildReport::default(),
        })
    }

    /// Writes one bulk batch to the fresh schema.
    async fn apply(
        &mut self,
        events: &[(Envelope, LabEvent)],
        last: FeedPosition,
    ) -> Result<(), WorkerError> {
        let mut tx = self.conn.begin().await?;
        let memory = Offsets::Memory(&mut self.offsets);
        let o = apply_decoded_in(
            &mut tx,
            self.projection,
            &self.fresh,
            events,
            Some(last),
            memory,
        )
        .await?;
        tx.commit().await?;
        self.report.add(events.len(), &o);
        Ok(())
    }

    /// Builds the secondary indexes, each once, the derived tables, and writes the
    /// offsets kept in memory: the fresh schema's last work before the live one is locked.
    ///
    /// None of it may hold a transaction id for long: while one is held, the ordered feed
    /// hands nothing on to the live models and the relay. So each index is built
    /// `CONCURRENTLY` (which takes none while it scans; a plain `CREATE INDEX` held one
    /// for 1.1–1.5 s at 1M events), the derived tables a part at a time, and the
    /// offsets by several `COPY`s, each in its own transaction. Nothing reads the fresh
    /// schema until the swap, so its parts may commit one by one; a rebuild that stops
    /// half-way leaves a fresh schema the next one drops.
    async fn prepare(&mut self) -> Result<(), WorkerError> {
        if self.prepared {
            return Ok(());
        }
        let started = Instant::now();
        for definition in std::mem::take(&mut self.deferred) {
            sqlx::query(&concurrently(&definition))
                .execute(&mut *self.conn)
                .await?;
        }
        let indexed = Instant::now();
        let mut after = None;
        loop {
            let mut tx = self.conn.begin().await?;
            sqlx::query(&format!("SET LOCAL search_path TO {}, public", self.fresh))
                .execute(&mut *tx)
                .await?;
            after = self.projection.build_derived(&mut tx, after).await?;
            tx.commit().await?;
            if after.is_none() {
                break;
            }
        }
        let derived = Instant::now();
        write_offsets(
            &mut self.conn,
            &self.fresh,
            std::mem::take(&mut self.offsets),
        )
        .await?;
        self.prepared = true;
        tracing::info!(
            projection = self.projection.name(),
            indexes_ms = (indexed - started).as_millis() as u64,
            derived_ms = (derived - indexed).as_millis() as u64,
            offsets_ms = derived.elapsed().as_millis() as u64,
            "rebuild: fresh schema prepared"
        );
        Ok(())
    }

    /// Catches up from `at` and swaps the fresh schema in. Prepares it first if that has
    /// not been done ([`Rebuilding::prepare`] leaves nothing to do a second time): a
    /// schema swapped in without its offsets would have every event applied again by the
    /// live worker.
    ///
    /// The events stored since the bulk phase ended are applied first a batch per
    /// transaction, with the live model running on; then, with the live model's writers
    /// held off by a lock on its offsets, the few stored since, and the swap. So the
    /// live model stops, and a transaction id is held, only for that last stretch.
    ///
    /// Each catch-up ends at its first batch that is not full, not at an empty read:
    /// while commands keep coming a read is rarely empty. What the swap relies on: the
    /// last read comes after the lock is held. A live batch commits holding its offsets
    /// rows, so every batch the live model committed is done by then, and each event it
    /// applied had been handed on by the ordered feed (directly, or through the relay in
    /// Kafka mode), whose horizon only moves forward. A batch that is not full means the
    /// feed had nothing more up to its horizon, so the fresh schema holds at least every
    /// event the live model holds. Events stored later are the live worker's to apply
    /// after the swap: from the fresh schema's feed position in single-node mode, from
    /// its Kafka offsets (past none of them) in Kafka mode; the per-aggregate offsets
    /// skip any it meets twice.
    async fn finish(
        mut self,
        pool: &PgPool,
        at: FeedPosition,
        batch: i64,
    ) -> Result<RebuildReport, WorkerError> {
        self.prepare().await?;
        let full = batch as usize;
        let mut at = at;
        loop {
            let mut tx = self.conn.begin().await?;
            let next = catch_up(&mut tx, pool, self.projection, &self.fresh, at, batch).await?;
            tx.commit().await?;
            let Some((last, events, outcome)) = next else {
                break;
            };
            self.report.add_caught_up(events, &outcome);
            at = last;
            if events < full {
                break;
            }
        }
        let (live, fresh) = (&self.live, &self.fresh);
        let mut tx = self.conn.begin().await?;
        let asked = Instant::now();
        sqlx::query(&format!("LOCK TABLE {live}.offsets IN EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await?;
        let locked = Instant::now();
        let mut locked_events = 0;
        while let Some((last, events, outcome)) =
            catch_up(&mut tx, pool, self.projection, fresh, at, batch).await?
        {
            self.report.add_caught_up(events, &outcome);
            locked_events += events;
            at = last;
            if events < full {
                break;
            }
        }
        let old = format!("{live}_old");
        sqlx::query(&format!("ALTER SCHEMA {live} RENAME TO {old}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER SCHEMA {fresh} RENAME TO {live}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // How long the live model stood still: from getting the lock to the commit. (The
        // wait for it is a live batch in flight finishing, while the model still works.)
        let (lock_wait_ms, locked_ms) = (
            (locked - asked).as_millis() as u64,
            locked.elapsed().as_millis() as u64,
        );
        drop_schema(&mut self.conn, &old).await?;
        tracing::info!(
            projection = self.projection.name(),
            events = self.report.events,
            lock_wait_ms,
            locked_ms,
            locked_events,
            "rebuilt read model is live"
        );
        Ok(self.report)
    }
}

impl RebuildReport {
    fn add(&mut self, events: usize, outcome: &BatchOutcome) {
        self.events += events as u64;
        self.outcome.applied += outcome.applied;
        self.outcome.skipped += outcome.skipped;
    }

    /// [`RebuildReport::add`] for a batch applied after the bulk phase.
    fn add_caught_up(&mut self, events: usize, outcome: &BatchOutcome) {
        self.add(events, outcome);
        self.caught_up += events as u64;
    }
}

/// Applies to `fresh`, in `conn`'s transaction, the next batch of the feed after `at`:
/// its last position, its size and what was applied; `None` when nothing is after `at`.
async fn catch_up(
    conn: &mut PgConnection,
    pool: &PgPool,
    projection: &dyn Projection,
    fresh: &str,
    at: FeedPosition,
    batch: i64,
) -> Result<Option<(FeedPosition, usize, BatchOutcome)>, WorkerError> {
    let events = read_after(pool, at, batch).await?;
    let Some(last) = events.last().map(|e| e.feed_position()) else {
        return Ok(None);
    };
    let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
    let outcome = apply_in(conn, projection, fresh, &envelopes, Some(last)).await?;
    Ok(Some((last, events.len(), outcome)))
}

/// Compile-time check: the workers can run on tokio's multi-threaded runtime (sqlx's
/// executors make it easy to lose `Send` without noticing).
#[allow(dead_code)]
fn assert_workers_are_send(pool: PgPool, p: Arc<dyn Projection>) {
    fn is_send<T: Send>(_: T) {}
    is_send(run_from_feed(pool.clone(), p.clone(), Batching::default()));
    is_send(run_from_kafka(
        pool.clone(),
        p.clone(),
        "",
        "",
        &[],
        Batching::default(),
    ));
    is_send(rebuild(&pool, p.as_ref(), &mut |_| {}));
}
