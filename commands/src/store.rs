//! The event store each aggregate type runs on: postgres-es's `events` and `snapshots`
//! tables (its layout and serialised form, so postgres-es reads what is written here),
//! snapshots every N events, and the domain's upcasters.
//!
//! Why not postgres-es's own repository: it loads an aggregate in two statements
//! (snapshot, then events, the second built as a new SQL string each time, so never a
//! prepared plan) and appends in four (BEGIN, one INSERT per event, COMMIT, and the
//! caller then had to look its event up again for the position). Here an aggregate
//! loads in one statement and a command's events append in one, which returns where they
//! landed. A commit that takes a snapshot writes it in the same statement when it
//! appends in its order's turn (an order's, tube's or result's events: [`crate::reads`]),
//! so that the turn is never held across a round trip; else (a patient's record) in the
//! same transaction. Database errors are sorted by kind and SQLSTATE
//! ([`crate::error::is_unavailable`]), where postgres-es's reach the caller as
//! "unexpected" text.
//!
//! Why not cqrs-es 0.5's snapshot store: its `EventSink` applies each new event to the
//! aggregate while the command is handled, and its snapshot store applies the same events
//! again before serialising the snapshot, so every snapshot double-counts the events of
//! the command that crossed the boundary. This store serialises the aggregate as the
//! command left it — events applied exactly once. A snapshot of an older aggregate shape
//! is ignored and the aggregate replayed from its first event.

use cqrs_es::persist::{EventStoreAggregateContext, EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::collections::HashMap;

use crate::connection::connection;
use crate::error::is_unavailable;
use crate::reads::{Columns, InTurn, ReadChanged, READ_CHANGED};

/// Where one appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's sequence within its aggregate (the aggregate's new version).
    pub sequence: i64,
    /// Its global position in the store.
    pub position: i64,
}

pub struct SnapshotEventStore<A: Aggregate> {
    pool: PgPool,
    snapshot_every: usize,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    command_timeout: std::time::Duration,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

/// The aggregate's snapshot (if any, `kind` 0) then its events after it (`kind` 1).
const LOAD: &str = "
SELECT 0 AS kind, last_sequence AS sequence, current_snapshot, NULL::text AS event_type,
       NULL::text AS event_version, payload, NULL::json AS metadata
  FROM snapshots
 WHERE aggregate_type = $1 AND aggregate_id = $2
UNION ALL
SELECT 1, sequence, NULL, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2
   AND sequence > coalesce((SELECT max(last_sequence) FROM snapshots
                             WHERE aggregate_type = $1 AND aggregate_id = $2), 0)
 ORDER BY kind, sequence";

/// Every event of the aggregate, from its first (no snapshot).
const LOAD_ALL: &str = "
SELECT sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2
 ORDER BY sequence";

/// A command's events in one statement. The bind type is jsonb, stored as json: the
/// same text postgres-es wrote, so every event in the store has one form.
const APPEND: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT $1, $2, u.sequence, u.event_type, u.event_version, u.payload::json, u.metadata::json
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
       AS u(sequence, event_type, event_version, payload, metadata)
 ORDER BY u.sequence
RETURNING sequence, position";

/// [`APPEND`] in the turn of the record's order, checking first that what the command
/// read of the order's other records is as it read it, and writing the snapshot if one
/// is due, in one statement (migration 0016, [`crate::reads`]).
const APPEND_IN_TURN: &str = "
SELECT appended_sequence AS sequence, appended_position AS position
  FROM lis_append_in_turn($8, $1, $2, $3::bigint[], $4::text[], $5::text[], $6::jsonb[],
                          $7::jsonb[], $9::text[], $10::text[], $11::text[], $12::bigint[],
                          $13::jsonb, $14, $15)";

/// Sends the statement that makes a command durable (an autocommitted append, or a
/// COMMIT), marking it sent and, once the server answers either way, answered
/// ([`crate::connection::WriteWatch`]): cut short or lost in between, the command may
/// or may not be stored.
async fn durable<T, E: std::error::Error>(
    write: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, AggregateError<E>> {
    crate::connection::write_sent();
    let answer = write.await;
    if matches!(&answer, Ok(_) | Err(sqlx::Error::Database(_))) {
        crate::connection::write_answered();
    }
    answer.map_err(database_error)
}

/// A unique violation is a concurrent writer (the loser of a race on the same sequence
/// number); a record the command read that changed before its append is
/// [`ReadChanged`]; the database being away is a connection error; anything else is a
/// defect.
fn database_error<E: std::error::Error>(e: sqlx::Error) -> AggregateError<E> {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
            AggregateError::AggregateConflict
        }
        sqlx::Error::Database(d) if d.code().as_deref() == Some(READ_CHANGED) => {
            AggregateError::UnexpectedError(Box::new(ReadChanged(d.message().to_string())))
        }
        _ if is_unavailable(&e) => AggregateError::DatabaseConnectionError(Box::new(e)),
        _ => AggregateError::UnexpectedError(Box::new(e)),
    }
}

impl<A: Aggregate> SnapshotEventStore<A> {
    pub fn new(
        pool: PgPool,
        snapshot_every: usize,
        upcasters: Vec<Box<dyn EventUpcaster>>,
    ) -> Self {
        Self {
            pool,
            snapshot_every: snapshot_every.max(1),
            upcasters,
            command_timeout: std::time::Duration::from_secs(30),
            _aggregate: std::marker::PhantomData,
        }
    }

    /// How long a command on this store may hold its connection (30 s unless set):
    /// see [`crate::connection::within`].
    pub fn with_command_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    pub fn command_timeout(&self) -> std::time::Duration {
        self.command_timeout
    }

    fn deserialize(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        events
            .into_iter()
            .map(|e| {
                let e = self.upcasters.iter().fold(e, |e, u| {
                    if u.can_upcast(&e.event_type, &e.event_version) {
                        u.upcast(e)
                    } else {
                        e
                    }
                });
                EventEnvelope::<A>::try_from(e).map_err(AggregateError::from)
            })
            .collect()
    }

    /// The pool it reads and writes through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every stored event of the aggregate, oldest first, as stored (not yet upcast).
    async fn load_all(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, AggregateError<A::Error>> {
        let mut conn = connection(&self.pool).await.map_err(database_error)?;
        let rows = sqlx::query(LOAD_ALL)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(database_error)?;
        drop(conn);
        Ok(rows
            .iter()
            .map(|row| serialized_event::<A>(aggregate_id, row))
            .collect())
    }

    /// Appends the events a command decided on `context` and says where each landed.
    /// Two commands racing on one aggregate collide on the (type, id, sequence) key:
    /// the loser gets [`AggregateError::AggregateConflict`] and writes nothing. With
    /// `turn`, in the turn of the record's order, and only if what the command read of
    /// the order's other records is unchanged (else [`ReadChanged`], nothing written).
    pub async fn append(
        &self,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        metadata: HashMap<String, String>,
        turn: Option<&InTurn>,
    ) -> Result<Vec<Appended>, AggregateError<A::Error>> {
        let envelopes = envelopes(events, &context, metadata);
        self.write(&envelopes, context, turn).await
    }

    /// Writes `envelopes` (numbered on from `context`), with a snapshot when they cross
    /// a multiple of `snapshot_every`.
    async fn write(
        &self,
        envelopes: &[EventEnvelope<A>],
        context: EventStoreAggregateContext<A>,
        turn: Option<&InTurn>,
    ) -> Result<Vec<Appended>, AggregateError<A::Error>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let serialized = envelopes
            .iter()
            .map(SerializedEvent::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let last = context.current_sequence + serialized.len();
        let sequences: Vec<i64> = serialized.iter().map(|e| e.sequence as i64).collect();
        let types: Vec<&str> = serialized.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<&str> = serialized
            .iter()
            .map(|e| e.event_version.as_str())
            .collect();
        let payloads: Vec<&Value> = serialized.iter().map(|e| &e.payload).collect();
        let metadatas: Vec<&Value> = serialized.iter().map(|e| &e.metadata).collect();
        let insert = sqlx::query(if turn.is_some() {
            APPEND_IN_TURN
        } else {
            APPEND
        })
        .bind(A::TYPE)
        .bind(&context.aggregate_id)
        .bind(&sequences)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadatas);
        // Snapshot when this commit crosses a multiple of `snapshot_every`. The aggregate
        // in the context already holds the new events (the sink applied them).
        let snapshot = (last / self.snapshot_every
            > context.current_sequence / self.snapshot_every)
            .then(|| serde_json::to_value(&context.aggregate))
            .transpose()
            .map_err(|e| AggregateError::UnexpectedError(Box::new(e)))?;
        let turn = turn.map(|turn| (&turn.order, turn.columns()));
        let rows = match (&turn, snapshot) {
            // In the order's turn, the snapshot too is written by the one statement.
            (Some((order, Columns(kinds, ids, tests, read_versions))), snapshot) => {
                let insert = insert
                    .bind(order)
                    .bind(kinds)
                    .bind(ids)
                    .bind(tests)
                    .bind(read_versions)
                    .bind(snapshot)
                    .bind(last as i64)
                    .bind(context.current_snapshot.map(|n| n as i64));
                let mut conn = connection(&self.pool).await.map_err(database_error)?;
                durable(insert.fetch_all(&mut *conn)).await?
            }
            (None, Some(payload)) => {
                let mut conn = connection(&self.pool).await.map_err(database_error)?;
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err(database_error)?;
                let rows = insert.fetch_all(&mut *tx).await.map_err(database_error)?;
                let written = match context.current_snapshot {
                    None => sqlx::query(
                        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
                         VALUES ($1, $2, $3, 1, $4)",
                    )
                    .bind(A::TYPE)
                    .bind(&context.aggregate_id)
                    .bind(last as i64)
                    .bind(&payload),
                    Some(n) => sqlx::query(
                        "UPDATE snapshots SET last_sequence = $3, current_snapshot = $4 + 1, payload = $5
                          WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $4",
                    )
                    .bind(A::TYPE)
                    .bind(&context.aggregate_id)
                    .bind(last as i64)
                    .bind(n as i64)
                    .bind(&payload),
                }
                .execute(&mut *tx)
                .await
                .map_err(database_error)?;
                if written.rows_affected() != 1 {
                    return Err(AggregateError::AggregateConflict);
                }
                durable(tx.commit()).await?;
                rows
            }
            (None, None) => {
                let mut conn = connection(&self.pool).await.map_err(database_error)?;
                durable(insert.fetch_all(&mut *conn)).await?
            }
        };
        let mut appended: Vec<Appended> = rows
            .iter()
            .map(|r| Appended {
                sequence: r.get("sequence"),
                position: r.get("position"),
            })
            .collect();
        appended.sort_by_key(|a| a.sequence);
        Ok(appended)
    }
}

fn serialized_event<A: Aggregate>(aggregate_id: &str, row: &PgRow) -> SerializedEvent {
    SerializedEvent::new(
        aggregate_id.to_string(),
        row.get::<i64, _>("sequence") as usize,
        A::TYPE.to_string(),
        row.get("event_type"),
        row.get("event_version"),
        row.get("payload"),
        row.get("metadata"),
    )
}

impl<A: Aggregate> EventStore<A> for SnapshotEventStore<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let events = self.load_all(aggregate_id).await?;
        self.deserialize(events)
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Self::AC, AggregateError<A::Error>> {
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate: A::default(),
            current_sequence: 0,
            current_snapshot: None,
        };
        let mut conn = connection(&self.pool).await.map_err(database_error)?;
        let rows = sqlx::query(LOAD)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(database_error)?;
        drop(conn);
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.get::<i32, _>("kind") == 0 {
                context.current_snapshot = Some(row.get::<i64, _>("current_snapshot") as usize);
                match serde_json::from_value::<A>(row.get("payload")) {
                    Ok(aggregate) => {
                        context.aggregate = aggregate;
                        context.current_sequence = row.get::<i64, _>("sequence") as usize;
                    }
                    // A snapshot of an older aggregate shape: replay from the start.
                    Err(_) => {
                        events = self.load_all(aggregate_id).await?;
                        break;
                    }
                }
            } else {
                events.push(serialized_event::<A>(aggregate_id, row));
            }
        }
        for envelope in self.deserialize(events)? {
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let envelopes = envelopes(events, &context, metadata);
        self.write(&envelopes, context, None).await?;
        Ok(envelopes)
    }
}

/// The command's events as envelopes, numbered on from the aggregate's current sequence.
fn envelopes<A: Aggregate>(
    events: Vec<A::Event>,
    context: &EventStoreAggregateContext<A>,
    metadata: HashMap<String, String>,
) -> Vec<EventEnvelope<A>> {
    events
        .into_iter()
        .zip(context.current_sequence + 1..)
        .map(|(payload, sequence)| EventEnvelope {
            aggregate_id: context.aggregate_id.clone(),
            sequence,
            payload,
            metadata: metadata.clone(),
        })
        .collect()
}
