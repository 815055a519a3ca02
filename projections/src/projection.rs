//! Projections: how a read model is built from events, exactly once in effect.
//!
//! Each projection owns one PostgreSQL schema (`proj_<name>`) holding its tables plus two
//! of the engine's: `offsets` (last sequence applied per aggregate) and `feed_position`
//! (how far it has read the ordered feed, in single-node mode). A batch of events and the
//! offsets it advances commit in one transaction; an event at or below its aggregate's
//! offset is a redelivery and is skipped; an event beyond offset + 1 is a gap, which is
//! reported and stops the batch — never applied past the hole.

use crate::envelope::Envelope;
use crate::erasure::{BatchLinks, Erased};
use crate::feed::FeedPosition;
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use lis_domain::order::OrderEvent;
use lis_domain::patient_record::PatientEvent;
use lis_domain::result::ResultEvent;
use lis_domain::sample::SampleEvent;
use lis_domain::upcast::upcasters;
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

/// An event of any aggregate, decoded (and upcast) from its envelope. (Short-lived, one
/// at a time: the size difference between variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LabEvent {
    Order(OrderEvent),
    Sample(SampleEvent),
    Result(ResultEvent),
    Patient(PatientEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event {aggregate_type} {aggregate_id} #{sequence} cannot be decoded: {message}")]
    Undecodable {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        message: String,
    },
    #[error("gap in {aggregate_type} {aggregate_id}: expected sequence {expected}, got {got}; not applied")]
    Gap {
        aggregate_type: String,
        aggregate_id: String,
        expected: i64,
        got: i64,
    },
    #[error("unknown projection `{0}` (known: orders, specimens, results, analytics)")]
    Unknown(String),
    #[error("read-model store error: {0}")]
    Sink(String),
}

/// The envelope's aggregate id as a UUID (every aggregate of the ledger has one).
pub fn aggregate_uuid(env: &Envelope) -> Result<uuid::Uuid, ProjectionError> {
    uuid::Uuid::parse_str(&env.aggregate_id).map_err(|e| ProjectionError::Undecodable {
        aggregate_type: env.aggregate_type.clone(),
        aggregate_id: env.aggregate_id.clone(),
        sequence: env.sequence,
        message: format!("aggregate id: {e}"),
    })
}

/// The domain's upcasters, made once (they are consulted for every event).
static UPCASTERS: LazyLock<Vec<Box<dyn EventUpcaster>>> = LazyLock::new(upcasters);

/// Decodes an envelope's payload into the domain event, through the upcasters.
pub fn decode(env: &Envelope) -> Result<LabEvent, ProjectionError> {
    let undecodable = |message: String| ProjectionError::Undecodable {
        aggregate_type: env.aggregate_type.clone(),
        aggregate_id: env.aggregate_id.clone(),
        sequence: env.sequence,
        message,
    };
    let needs_upcast = UPCASTERS
        .iter()
        .any(|u| u.can_upcast(&env.event_type, &env.event_version));
    if !needs_upcast {
        // The current shape: straight from the stored text, without a JSON tree between.
        // If that fails, the tree below decides: it reads a payload the way PostgreSQL
        // does (a repeated key: the last one wins), where derived serde refuses it.
        let mut text = serde_json::Deserializer::from_str(env.payload.get());
        if let Ok(event) = typed(&env.aggregate_type, &mut text) {
            if text.end().is_ok() {
                return Ok(event);
            }
        }
    }
    let payload: serde_json::Value =
        serde_json::from_str(env.payload.get()).map_err(|e| undecodable(e.to_string()))?;
    let mut event = SerializedEvent::new(
        env.aggregate_id.clone(),
        env.sequence as usize,
        env.aggregate_type.clone(),
        env.event_type.clone(),
        env.event_version.clone(),
        payload,
        serde_json::Value::Null,
    );
    for u in UPCASTERS.iter() {
        if u.can_upcast(&event.event_type, &event.event_version) {
            event = u.upcast(event);
        }
    }
    typed(&env.aggregate_type, event.payload).map_err(undecodable)
}

/// Reads a payload (stored text or a JSON tree) as its aggregate's event type.
fn typed<'de, D: serde::Deserializer<'de>>(
    aggregate_type: &str,
    payload: D,
) -> Result<LabEvent, String> {
    use serde::Deserialize;
    let event = match aggregate_type {
        "Order" => OrderEvent::deserialize(payload).map(LabEvent::Order),
        "Sample" => SampleEvent::deserialize(payload).map(LabEvent::Sample),
        "Result" => ResultEvent::deserialize(payload).map(LabEvent::Result),
        "Patient" => PatientEvent::deserialize(payload).map(LabEvent::Patient),
        other => return Err(format!("unknown aggregate type {other}")),
    };
    event.map_err(|e| e.to_string())
}

/// A read model.
#[async_trait::async_trait]
pub trait Projection: Send + Sync {
    fn name(&self) -> &'static str;
    /// `CREATE TABLE IF NOT EXISTS …` statements, unqualified (run in the projection's schema).
    fn ddl(&self) -> &'static str;
    /// Applies one event inside the batch's transaction (search_path is the schema).
    async fn apply(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        event: &LabEvent,
    ) -> Result<(), ProjectionError>;
    /// The statement that deletes this model's rows of erased patients' records
    /// ([`crate::erasure`]): `$1` patients, `$2` orders, `$3` samples, `$4` results (uuid
    /// arrays). Required, so that no model forgets erasure; empty for a model whose rows
    /// live outside PostgreSQL (it overrides [`Projection::purge`]).
    fn purge_sql(&self) -> &'static str;

    /// Deletes the rows of erased patients' records inside the batch's transaction.
    /// Called only when a batch touched such a record.
    async fn purge(&self, conn: &mut PgConnection, erased: &Erased) -> Result<(), ProjectionError> {
        crate::erasure::purge_with(conn, self.purge_sql(), erased).await
    }

    /// Applies a batch's events — each the next of its aggregate, in feed order — inside
    /// the batch's transaction. By default one at a time; a model may write them in fewer
    /// statements ([`apply_folded`]) as long as its tables end the same.
    async fn apply_run(
        &self,
        conn: &mut PgConnection,
        events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        for (env, event) in events {
            self.apply(conn, env, event).await?;
        }
        Ok(())
    }

    /// Brings the model's derived tables (rows computed from many of its rows, such as a
    /// patient's cumulative report) up to date with a batch's `events`, inside the batch's
    /// transaction, after [`Projection::apply_run`] and before erased records are purged
    /// (the purge removes derived rows too). A rebuild's bulk phase skips this and calls
    /// [`Projection::build_derived`] once at its end.
    async fn refresh_derived(
        &self,
        _conn: &mut PgConnection,
        _events: &[(&Envelope, &LabEvent)],
    ) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// Builds the next part of the derived tables from the whole model (search_path is
    /// the schema), after the key `after` (`None`: from the start), and returns the last
    /// key it built, or `None` when nothing was left: the end of a rebuild's bulk phase,
    /// called until it returns `None`, each part in its own transaction. A part is of a
    /// fixed size, so that no transaction holds an id for long however large the model
    /// grows: while one does, the ordered feed stalls every live reader.
    async fn build_derived(
        &self,
        _conn: &mut PgConnection,
        _after: Option<uuid::Uuid>,
    ) -> Result<Option<uuid::Uuid>, ProjectionError> {
        Ok(None)
    }

    /// Whether [`Projection::apply_run`] writes outside PostgreSQL (MongoDB) and so may
    /// wait on another server. Such a batch must not hold a transaction id while it
    /// waits: the ordered feed holds back every event committed after the oldest
    /// transaction id still open, so every other model, and the relay, would wait too.
    /// Its offsets are then guarded by advisory locks (which take no transaction id)
    /// instead of row locks.
    fn writes_elsewhere(&self) -> bool {
        false
    }
}

/// What [`Pending::fold`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Folded into the pending writes (or it changes nothing).
    Taken,
    /// It touches a row already pending in a way that cannot be folded: write the
    /// pending rows first, then fold it.
    FlushFirst,
    /// A rare event: write the pending rows, then apply it alone with
    /// [`Projection::apply`].
    Alone,
}

/// A model's writes for a run of events, folded per row and written with one multi-row
/// statement per kind of write (`INSERT … SELECT FROM unnest(…)`, `UPDATE … FROM
/// unnest(…)`). Folding must give the rows sequential application would: inserts are
/// written before updates, and an update folded over another keeps what applying both
/// in order keeps.
#[async_trait::async_trait]
pub trait Pending: Default + Send {
    fn fold(&mut self, env: &Envelope, event: &LabEvent) -> Result<Fold, ProjectionError>;
    /// Writes and forgets the pending rows.
    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), ProjectionError>;
}

/// [`Projection::apply_run`] through a model's [`Pending`] writes.
pub async fn apply_folded<P: Pending>(
    projection: &dyn Projection,
    conn: &mut PgConnection,
    events: &[(&Envelope, &LabEvent)],
) -> Result<(), ProjectionError> {
    let mut pending = P::default();
    for (env, event) in events {
        match pending.fold(env, event)? {
            Fold::Taken => {}
            Fold::FlushFirst => {
                pending.flush(conn).await?;
                if pending.fold(env, event)? != Fold::Taken {
                    pending.flush(conn).await?;
                    projection.apply(conn, env, event).await?;
                }
            }
            Fold::Alone => {
                pending.flush(conn).await?;
                projection.apply(conn, env, event).await?;
            }
        }
    }
    pending.flush(conn).await
}

const ENGINE_DDL: &str = "
CREATE TABLE IF NOT EXISTS offsets (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    last_sequence  bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id));
CREATE TABLE IF NOT EXISTS feed_position (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    tx_id     text   NOT NULL,
    position  bigint NOT NULL);
CREATE TABLE IF NOT EXISTS progress (
    singleton      bool PRIMARY KEY DEFAULT true CHECK (singleton),
    events_applied bigint NOT NULL,
    max_position   bigint NOT NULL,
    updated_at     timestamptz NOT NULL);";

/// The schema of a projection.
pub fn schema_of(name: &str) -> String {
    format!("proj_{name}")
}

/// The advisory lock held while a read model's schema is created or brought up to date.
pub const SCHEMA_LOCK: i64 = 7_302_418;

/// Creates the schema and tables if missing.
///
/// Processes starting together (the API, the projection workers) each create the schemas
/// they need: concurrent `IF NOT EXISTS` DDL fails on the catalogue's unique index, so one
/// creator at a time. `CREATE INDEX IF NOT EXISTS` still locks its table, and can deadlock
/// with a worker applying a batch to the same tables: the loser is tried again. So is a
/// creator that waited for the lock while another made the schema: its catalogue cache
/// may still say the schema is missing (a backend reads other sessions' catalogue
/// changes when it locks a table or starts a transaction, not when it gets an advisory
/// lock), and it then fails on `pg_namespace`'s unique index (23505). Its next attempt
/// is a new transaction, and sees the schema.
pub async fn ensure_schema(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
) -> Result<(), ProjectionError> {
    create_with_retries(conn, projection, schema, Existing::BringUpToDate).await
}

/// Creates the schema and tables only if the schema has no `offsets` table yet, checked
/// under the schema lock. For a rebuild, which must not run the DDL over a live model's
/// existing tables: `CREATE … IF NOT EXISTS` locks each existing table before it skips
/// it, and deadlocks with a live worker writing them. Checked under the lock, so that a
/// worker creating its schema at that moment is waited for, not raced.
pub async fn ensure_schema_exists(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
) -> Result<(), ProjectionError> {
    create_with_retries(conn, projection, schema, Existing::Leave).await
}

/// What [`create_schema`] does with a schema that already has its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Runs the DDL over it (new tables and indexes of a newer release).
    BringUpToDate,
    /// Leaves it as it is.
    Leave,
}

async fn create_with_retries(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    existing: Existing,
) -> Result<(), ProjectionError> {
    let mut attempt = 1;
    loop {
        match create_schema(conn, projection, schema, existing).await {
            Err(ProjectionError::Database(sqlx::Error::Database(e)))
                if attempt < 5 && matches!(e.code().as_deref(), Some("40P01" | "23505")) =>
            {
                tracing::info!(%schema, attempt, error = %e, "collided creating a read model's schema; again");
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Drops a read model's `schema`, if it exists, a table per transaction and then the
/// rest (on a connection outside a transaction). Dropping a large table holds a
/// transaction id while its buffers are cleared: a model's whole old schema at 1M
/// events took 1.1 s in one transaction, and for that long the ordered feed handed
/// nothing on.
pub async fn drop_schema(conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    for table in tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS {schema}.{table} CASCADE"))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn create_schema(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    existing: Existing,
) -> Result<(), ProjectionError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    if existing == Existing::Leave {
        // A query of the catalogue, not `to_regclass`: its snapshot is taken after the
        // lock, so it sees a schema another creator committed while this one waited.
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = $1 AND tablename = 'offsets')",
        )
        .bind(schema)
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            tx.commit().await?;
            return Ok(());
        }
    }
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut *tx)
        .await?;
    // One statement at a time (the DDL holds no `;` inside a statement).
    for statement in ENGINE_DDL
        .split(';')
        .chain(crate::erasure::DDL.split(';'))
        .chain(projection.ddl().split(';'))
    {
        if statement.trim().is_empty() {
            continue;
        }
        if let Some((table, column)) = added_column(statement) {
            // `ADD COLUMN IF NOT EXISTS` takes the table's ACCESS EXCLUSIVE lock before
            // it looks, and every reader queues behind it: look first.
            let present: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT FROM pg_attribute
                                 WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped)",
            )
            .bind(table)
            .bind(column)
            .fetch_one(&mut *tx)
            .await?;
            if present {
                continue;
            }
        }
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The table and column of an `ALTER TABLE t ADD COLUMN IF NOT EXISTS c …` statement
/// (a column a newer release adds to an existing model). One column a statement: one
/// that adds more (a comma) is run as it is, taking the lock.
fn added_column(statement: &str) -> Option<(&str, &str)> {
    if statement.contains(',') {
        return None;
    }
    match statement.split_whitespace().collect::<Vec<_>>()[..] {
        ["ALTER", "TABLE", table, "ADD", "COLUMN", "IF", "NOT", "EXISTS", column, ..] => {
            Some((table, column))
        }
        _ => None,
    }
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub skipped: usize,
}

/// Each aggregate's last applied sequence, keyed by (aggregate type, aggregate id).
pub type OffsetMap = HashMap<(String, String), i64>;

/// Where a batch finds, and leaves, each aggregate's last applied sequence.
pub enum Offsets<'a> {
    /// The schema's `offsets` table: the batch's rows are read (and locked) in one
    /// statement at its start and written back in one at its end.
    Table,
    /// A rebuild's own copy: the schema is private to the rebuild until it is swapped
    /// in, so the offsets stay in memory and are written once ([`write_offsets`]), and
    /// derived tables are built once at the end ([`Projection::build_derived`]).
    Memory(&'a mut OffsetMap),
}

/// Applies `events` to the projection's tables in `schema`, on `conn`, inside the caller's
/// transaction, and (in feed mode) records the feed position reached.
pub async fn apply_in(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    events: &[Envelope],
    feed_at: Option<FeedPosition>,
) -> Result<BatchOutcome, ProjectionError> {
    let events: Vec<(&Envelope, Option<&LabEvent>)> = events.iter().map(|e| (e, None)).collect();
    apply_events(conn, projection, schema, &events, feed_at, Offsets::Table).await
}

/// [`apply_in`] for events already decoded (a rebuild decodes each event once for all
/// the models it rebuilds), with the offsets kept where `offsets` says.
pub async fn apply_decoded_in(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    events: &[(Envelope, LabEvent)],
    feed_at: Option<FeedPosition>,
    offsets: Offsets<'_>,
) -> Result<BatchOutcome, ProjectionError> {
    let events: Vec<(&Envelope, Option<&LabEvent>)> =
        events.iter().map(|(e, event)| (e, Some(event))).collect();
    apply_events(conn, projection, schema, &events, feed_at, offsets).await
}

/// Applies `events`, each with its decoded event if the caller has it (decoded here
/// otherwise, only if it is applied).
async fn apply_events(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    events: &[(&Envelope, Option<&LabEvent>)],
    feed_at: Option<FeedPosition>,
    offsets: Offsets<'_>,
) -> Result<BatchOutcome, ProjectionError> {
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut *conn)
        .await?;
    let mut outcome = BatchOutcome::default();
    let mut max_position = 0i64;
    let loaded;
    let before: &OffsetMap = match &offsets {
        Offsets::Memory(map) => map,
        Offsets::Table => {
            let envelopes: Vec<&Envelope> = events.iter().map(|(e, _)| *e).collect();
            let lock = if projection.writes_elsewhere() {
                OffsetLock::Advisory(schema)
            } else {
                OffsetLock::Rows
            };
            loaded = read_offsets(conn, &envelopes, lock).await?;
            &loaded
        }
    };
    // This batch's advances, kept apart until the batch has been applied: a failed batch
    // leaves a rebuild's in-memory offsets as they were.
    let mut advanced = OffsetMap::new();
    let mut links = BatchLinks::default();
    let mut run: Vec<(&Envelope, Cow<LabEvent>)> = Vec::with_capacity(events.len());
    for &(env, decoded) in events {
        let key = (env.aggregate_type.clone(), env.aggregate_id.clone());
        let last = advanced
            .get(&key)
            .or_else(|| before.get(&key))
            .copied()
            .unwrap_or(0);
        if env.sequence <= last {
            outcome.skipped += 1;
            continue;
        }
        if env.sequence > last + 1 {
            return Err(ProjectionError::Gap {
                aggregate_type: env.aggregate_type.clone(),
                aggregate_id: env.aggregate_id.clone(),
                expected: last + 1,
                got: env.sequence,
            });
        }
        let event = match decoded {
            Some(event) => Cow::Borrowed(event),
            None => Cow::Owned(decode(env)?),
        };
        links.note(aggregate_uuid(env)?, &event);
        run.push((env, event));
        advanced.insert(key, env.sequence);
        outcome.applied += 1;
        max_position = max_position.max(env.position);
    }
    let run: Vec<(&Envelope, &LabEvent)> = run.iter().map(|(e, event)| (*e, &**event)).collect();
    projection.apply_run(conn, &run).await?;
    if matches!(offsets, Offsets::Table) {
        projection.refresh_derived(conn, &run).await?;
    }
    if !advanced.is_empty() {
        let erased = links.resolve(conn).await?;
        if !erased.is_empty() {
            projection.purge(conn, &erased).await?;
        }
        match offsets {
            Offsets::Table => upsert_offsets(conn, advanced).await?,
            Offsets::Memory(map) => map.extend(advanced),
        }
    }
    if outcome.applied > 0 {
        sqlx::query(
            "INSERT INTO progress (events_applied, max_position, updated_at) VALUES ($1, $2, clock_timestamp())
             ON CONFLICT (singleton) DO UPDATE SET events_applied = progress.events_applied + excluded.events_applied,
                 max_position = greatest(progress.max_position, excluded.max_position), updated_at = clock_timestamp()",
        )
        .bind(outcome.applied as i64)
        .bind(max_position)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(at) = feed_at {
        sqlx::query(
            "INSERT INTO feed_position (tx_id, position) VALUES ($1, $2)
             ON CONFLICT (singleton) DO UPDATE SET tx_id = excluded.tx_id, position = excluded.position",
        )
        .bind(at.tx_id.to_string())
        .bind(at.position)
        .execute(&mut *conn)
        .await?;
    }
    Ok(outcome)
}

/// How a batch keeps another worker of its model off its aggregates' offsets until it
/// commits (two consumers of one model overlap while Kafka moves a partition).
#[derive(Debug, Clone, Copy)]
enum OffsetLock<'a> {
    /// `SELECT … FOR UPDATE` of the offset rows: simplest, but a row lock gives the
    /// transaction an id at once.
    Rows,
    /// Transaction-level advisory locks on the aggregates' keys, in `schema`'s class,
    /// taken in one order (no deadlock): no transaction id until the batch writes its
    /// offsets, after its writes elsewhere are done ([`Projection::writes_elsewhere`]).
    Advisory(&'a str),
}

/// The offsets of every aggregate in `events`, locked against the model's other workers,
/// and read.
async fn read_offsets(
    conn: &mut PgConnection,
    events: &[&Envelope],
    lock: OffsetLock<'_>,
) -> Result<OffsetMap, ProjectionError> {
    let mut keys: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (types, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let rows: Vec<(String, String, i64)> = match lock {
        OffsetLock::Rows => {
            sqlx::query_as(
                "SELECT o.aggregate_type, o.aggregate_id, o.last_sequence
                   FROM offsets o JOIN unnest($1::text[], $2::text[]) AS k(t, i)
                     ON o.aggregate_type = k.t AND o.aggregate_id = k.i
                  ORDER BY 1, 2
                    FOR UPDATE OF o",
            )
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
        }
        OffsetLock::Advisory(schema) => {
            // Locks first, in a statement of their own: under read committed each
            // statement reads from a snapshot taken when it starts, so the read below
            // sees what a worker that held a lock committed before releasing it.
            sqlx::query(
                "SELECT count(pg_advisory_xact_lock(hashtext($3), h))
                   FROM (SELECT DISTINCT hashtext(t || '/' || i) AS h
                           FROM unnest($1::text[], $2::text[]) AS k(t, i) ORDER BY h) keys",
            )
            .bind(&types)
            .bind(&ids)
            .bind(schema)
            .execute(&mut *conn)
            .await?;
            sqlx::query_as(
                "SELECT o.aggregate_type, o.aggregate_id, o.last_sequence
                   FROM offsets o JOIN unnest($1::text[], $2::text[]) AS k(t, i)
                     ON o.aggregate_type = k.t AND o.aggregate_id = k.i",
            )
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    Ok(rows.into_iter().map(|(t, i, s)| ((t, i), s)).collect())
}

/// Writes `offsets` into the current schema's `offsets`.
async fn upsert_offsets(
    conn: &mut PgConnection,
    offsets: OffsetMap,
) -> Result<(), ProjectionError> {
    let rows: Vec<((String, String), i64)> = offsets.into_iter().collect();
    insert_offsets(
        conn,
        "INSERT INTO offsets (aggregate_type, aggregate_id, last_sequence)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET last_sequence = excluded.last_sequence",
        &rows,
    )
    .await
}

/// Runs `sql` (an INSERT from `unnest($1 types, $2 ids, $3 sequences)`) over `rows`.
async fn insert_offsets(
    conn: &mut PgConnection,
    sql: &str,
    rows: &[((String, String), i64)],
) -> Result<(), ProjectionError> {
    let types: Vec<&str> = rows.iter().map(|((t, _), _)| t.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|((_, i), _)| i.as_str()).collect();
    let sequences: Vec<i64> = rows.iter().map(|(_, s)| *s).collect();
    sqlx::query(sql)
        .bind(&types)
        .bind(&ids)
        .bind(&sequences)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes a rebuild's in-memory offsets into `schema`'s table, which is empty (a fresh
/// schema's), by `COPY` in key order: sorted rows go into the primary-key index near
/// its right edge, where the map's own order inserted them at random (1M events, 436k
/// aggregates: 6.0 s as random-order upserts, 0.9 s as sorted inserts alone; with the
/// other models' work alongside, 4.2–4.7 s as sorted multi-row INSERTs, 2.6–2.9 s by
/// `COPY`). One `COPY` per [`OFFSETS_PER_COPY`] rows: on a connection outside a
/// transaction each is its own, and none holds a transaction id for long (one `COPY`
/// of them all held it, and so stalled the feed's readers, for those 2.6–2.9 s).
pub(crate) async fn write_offsets(
    conn: &mut PgConnection,
    schema: &str,
    offsets: OffsetMap,
) -> Result<(), ProjectionError> {
    let mut rows: Vec<((String, String), i64)> = offsets.into_iter().collect();
    rows.sort_unstable();
    let statement =
        format!("COPY {schema}.offsets (aggregate_type, aggregate_id, last_sequence) FROM STDIN");
    let mut text = String::with_capacity(1 << 20);
    for rows in rows.chunks(OFFSETS_PER_COPY) {
        let mut copy = conn.copy_in_raw(&statement).await?;
        for chunk in rows.chunks(10_000) {
            text.clear();
            for ((aggregate_type, aggregate_id), sequence) in chunk {
                copy_field(&mut text, aggregate_type);
                text.push('\t');
                copy_field(&mut text, aggregate_id);
                // Writing to a String cannot fail.
                let _ = writeln!(text, "\t{sequence}");
            }
            copy.send(text.as_bytes()).await?;
        }
        copy.finish().await?;
    }
    Ok(())
}

/// Offsets per `COPY` of [`write_offsets`]: ~0.2–0.3 s each on the benchmark machine.
const OFFSETS_PER_COPY: usize = 50_000;

/// `value` as a field of `COPY`'s text format: a backslash, tab, newline or carriage
/// return in it is escaped.
fn copy_field(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Applies a batch in its own transaction.
pub async fn apply_batch(
    pool: &PgPool,
    projection: &dyn Projection,
    events: &[Envelope],
    feed_at: Option<FeedPosition>,
) -> Result<BatchOutcome, ProjectionError> {
    let schema = schema_of(projection.name());
    let mut tx = lis_commands::connection::begin(pool).await?;
    let outcome = apply_in(&mut tx, projection, &schema, events, feed_at).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The feed position a projection's schema has reached (single-node mode).
pub async fn feed_position(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<FeedPosition, ProjectionError> {
    let row = sqlx::query(&format!(
        "SELECT tx_id, position FROM {schema}.feed_position"
    ))
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(r) => FeedPosition {
            tx_id: r.get::<String, _>("tx_id").parse().unwrap_or(0),
            position: r.get("position"),
        },
        None => FeedPosition::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lis_domain::sample::SampleEvent;

    #[test]
    fn an_added_column_is_named_from_its_statement() {
        assert_eq!(
            added_column("\nALTER TABLE results ADD COLUMN IF NOT EXISTS amended_at timestamptz"),
            Some(("results", "amended_at"))
        );
        assert_eq!(
            added_column("ALTER TABLE results ADD COLUMN amended_at timestamptz"),
            None
        );
        assert_eq!(
            added_column(
                "ALTER TABLE r ADD COLUMN IF NOT EXISTS a int, ADD COLUMN IF NOT EXISTS b int"
            ),
            None
        );
        assert_eq!(
            added_column("CREATE TABLE IF NOT EXISTS results (x int)"),
            None
        );
    }

    #[test]
    fn a_copy_field_escapes_what_copy_text_format_reads_as_structure() {
        let mut out = String::new();
        copy_field(&mut out, "a\tb\\c\nd\re-é");
        assert_eq!(out, "a\\tb\\\\c\\nd\\re-é");
    }

    /// An envelope whose payload is `payload`, byte for byte, as stored.
    fn envelope(event_type: &str, event_version: &str, payload: &str) -> Envelope {
        let mut env: Envelope = serde_json::from_value(serde_json::json!({
            "envelope_version": 1,
            "event_id": uuid::Uuid::nil(),
            "position": 7,
            "aggregate_type": "Sample",
            "aggregate_id": "7f0c1f5e-2a53-4a3c-9d55-0a6c1c1a2b3d",
            "sequence": 2,
            "event_type": event_type,
            "event_version": event_version,
            "recorded_at": "2026-03-03T08:00:00Z",
            "actor": {"id": "courier.1", "role": "phlebotomist"},
            "correlation_id": null,
            "payload": {},
            "prev_hash": "00",
            "hash": "00",
        }))
        .unwrap();
        env.payload = serde_json::value::RawValue::from_string(payload.to_string()).unwrap();
        env
    }

    /// A hand-over's fields other than its temperature.
    const HAND_OVER: &str = r#""from": "Ward 3 nurse", "to": "Courier", "location": "Ward 3", "at": "2026-03-03T08:00:00Z""#;

    fn temperature(event: LabEvent) -> Option<f64> {
        match event {
            LabEvent::Sample(SampleEvent::SampleHandedOver(h)) => h.temperature_celsius,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_current_event_and_an_old_one_through_its_upcaster_decode_alike() {
        let current = envelope(
            "SampleHandedOver",
            "2.0.0",
            &format!(r#"{{"SampleHandedOver": {{{HAND_OVER}, "temperature_celsius": 4.0}}}}"#),
        );
        let old = envelope(
            "SampleHandedOver",
            "1.0",
            &format!(r#"{{"SampleHandedOver": {{{HAND_OVER}, "temp_c": 4.0}}}}"#),
        );
        assert_eq!(temperature(decode(&current).unwrap()), Some(4.0));
        assert_eq!(temperature(decode(&old).unwrap()), Some(4.0));
    }

    #[test]
    fn a_repeated_key_reads_as_postgresql_reads_it_the_last_one_wins() {
        let repeated = envelope(
            "SampleHandedOver",
            "2.0.0",
            &format!(
                r#"{{"SampleHandedOver": {{{HAND_OVER}, "temperature_celsius": 9.0, "temperature_celsius": 4.0}}}}"#
            ),
        );
        assert_eq!(temperature(decode(&repeated).unwrap()), Some(4.0));
    }

    #[test]
    fn an_event_that_does_not_fit_its_type_is_undecodable_and_says_which() {
        let wrong = envelope(
            "SampleHandedOver",
            "2.0.0",
            r#"{"SampleHandedOver": {"to": 3}}"#,
        );
        match decode(&wrong) {
            Err(ProjectionError::Undecodable {
                aggregate_type,
                sequence,
                ..
            }) => assert_eq!((aggregate_type.as_str(), sequence), ("Sample", 2)),
            other => panic!("expected undecodable, got {other:?}"),
        }
    }
}
