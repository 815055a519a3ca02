//! Snapshots against their events.
//!
//! A snapshot is a cache of an aggregate's state, not part of the audit trail, and it is
//! updatable by the application role; but commands decide on it. A snapshot that differs
//! from the state its events give (written behind the ledger's back, or by a version
//! whose rules folded the events otherwise) would let a command pass a rule the history
//! does not support, with no trace in the chains. So `audit verify` replays each
//! snapshotted aggregate up to the snapshot's sequence and compares the two states.

use crate::ledger::{event_store, EventStoreOf, LedgerConfig};
use cqrs_es::{Aggregate, AggregateError, EventStore};
use futures::TryStreamExt;
use lis_domain::order::Order;
use lis_domain::patient_record::PatientRecord;
use lis_domain::result::LabResult;
use lis_domain::sample::Sample;
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::fmt;

/// A snapshot that is not the state of its aggregate's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMismatch {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub last_sequence: i64,
}

impl fmt::Display for SnapshotMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: the snapshot at sequence {} is not the state its events give (delete it: commands then replay the events)",
            self.aggregate_type, self.aggregate_id, self.last_sequence
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Snapshots compared with their events.
    pub checked: u64,
    /// Snapshots of an older shape of their aggregate, which the store does not use (it
    /// replays the events instead).
    pub unused: u64,
    pub differing: Vec<SnapshotMismatch>,
}

impl SnapshotReport {
    pub fn is_intact(&self) -> bool {
        self.differing.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotAuditError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{aggregate_type} {aggregate_id}: its events cannot be read: {message}")]
    Events {
        aggregate_type: String,
        aggregate_id: String,
        message: String,
    },
}

/// Compares every snapshot with the state of its aggregate's events up to its sequence.
/// `progress` is called with the number of snapshots looked at so far, after each.
pub async fn verify_snapshots(
    pool: &PgPool,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<SnapshotReport, SnapshotAuditError> {
    let config = LedgerConfig::default();
    let orders = event_store::<Order>(pool, &config);
    let samples = event_store::<Sample>(pool, &config);
    let results = event_store::<LabResult>(pool, &config);
    let patients = event_store::<PatientRecord>(pool, &config);
    let rows: Vec<(String, String, i64, Value)> = sqlx::query(
        "SELECT aggregate_type, aggregate_id, last_sequence, payload FROM snapshots
          ORDER BY aggregate_type, aggregate_id, last_sequence",
    )
    // Through `connection`, as every read of the verification (a request cut short
    // closes it rather than give it back mid-statement).
    .fetch(&mut *crate::connection::connection(pool).await?)
    .map_ok(|row| {
        (
            row.get("aggregate_type"),
            row.get("aggregate_id"),
            row.get("last_sequence"),
            row.get("payload"),
        )
    })
    .try_collect()
    .await?;
    let mut report = SnapshotReport::default();
    for (aggregate_type, aggregate_id, last_sequence, payload) in rows {
        let same = match aggregate_type.as_str() {
            "Order" => same_state(&orders, &aggregate_id, last_sequence, payload).await,
            "Sample" => same_state(&samples, &aggregate_id, last_sequence, payload).await,
            "Result" => same_state(&results, &aggregate_id, last_sequence, payload).await,
            "Patient" => same_state(&patients, &aggregate_id, last_sequence, payload).await,
            // A snapshot of no aggregate the ledger has is used by nothing.
            _ => Ok(None),
        }
        .map_err(|message| SnapshotAuditError::Events {
            aggregate_type: aggregate_type.clone(),
            aggregate_id: aggregate_id.clone(),
            message,
        })?;
        progress(report.checked + report.unused + 1);
        match same {
            None => report.unused += 1,
            Some(true) => report.checked += 1,
            Some(false) => {
                report.checked += 1;
                report.differing.push(SnapshotMismatch {
                    aggregate_type,
                    aggregate_id,
                    last_sequence,
                });
            }
        }
    }
    Ok(report)
}

/// Whether `snapshot` is the state of the aggregate's first `last_sequence` events;
/// `None` if the store would not use it (an older shape it cannot read).
async fn same_state<A: Aggregate>(
    store: &EventStoreOf<A>,
    id: &str,
    last_sequence: i64,
    snapshot: Value,
) -> Result<Option<bool>, String> {
    let Ok(snapshot) = serde_json::from_value::<A>(snapshot) else {
        return Ok(None);
    };
    let events = store
        .load_events(id)
        .await
        .map_err(|e: AggregateError<A::Error>| e.to_string())?;
    let mut replayed = A::default();
    let mut reached = 0;
    for envelope in events {
        if envelope.sequence as i64 > last_sequence {
            break;
        }
        reached = envelope.sequence as i64;
        replayed.apply(envelope.payload);
    }
    // Compared as the store reads them: the snapshot through the aggregate's own type.
    let (snapshot, replayed) = (
        serde_json::to_value(&snapshot).map_err(|e| e.to_string())?,
        serde_json::to_value(&replayed).map_err(|e| e.to_string())?,
    );
    Ok(Some(reached == last_sequence && snapshot == replayed))
}
