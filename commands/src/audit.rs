//! The audit-trail verifier: recomputes every event's hash from its stored bytes and
//! checks each aggregate's chain link by link.
//!
//! This is an independent implementation of the layout that the database trigger
//! `events_seal` computes (docs/architecture.md): if the two ever disagree, every chain
//! breaks at once, which a test guards against on tricky data. For each damaged
//! aggregate the first broken link is reported; later links of a broken chain prove
//! nothing more.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use std::fmt;

/// Domain-separation prefix of every event hash (layout version 1).
pub const HASH_PREFIX: &[u8] = b"lisledger.event.v1";

/// The stored fields of one event that its hash covers.
#[derive(Debug, Clone)]
pub struct HashedFields<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    /// The `json` column's stored text, byte for byte.
    pub payload: &'a str,
    pub metadata: &'a str,
    pub recorded_at: DateTime<Utc>,
}

fn frame(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// SHA-256 over the prefix, the previous hash and the length-framed fields.
pub fn event_hash(prev_hash: &[u8], f: &HashedFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_PREFIX);
    h.update(prev_hash);
    frame(&mut h, f.aggregate_type.as_bytes());
    frame(&mut h, f.aggregate_id.as_bytes());
    h.update(f.sequence.to_be_bytes());
    frame(&mut h, f.event_type.as_bytes());
    frame(&mut h, f.event_version.as_bytes());
    frame(&mut h, f.payload.as_bytes());
    frame(&mut h, f.metadata.as_bytes());
    h.update(f.recorded_at.timestamp_micros().to_be_bytes());
    h.finalize().into()
}

/// What is wrong with a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The sequence skips a number: an event is missing.
    SequenceGap { expected: i64 },
    /// `prev_hash` is not the previous event's `hash`.
    PrevHashMismatch,
    /// The stored hash is not the hash of the stored bytes: the row was changed.
    HashMismatch { stored: String, computed: String },
}

/// The first broken link of one aggregate's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
    pub problem: Problem,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} broken at sequence {} (position {}): ",
            self.aggregate_type, self.aggregate_id, self.sequence, self.position
        )?;
        match &self.problem {
            Problem::SequenceGap { expected } => write!(f, "sequence {expected} is missing"),
            Problem::PrevHashMismatch => {
                f.write_str("prev_hash does not match the previous event's hash")
            }
            Problem::HashMismatch { stored, computed } => {
                write!(f, "stored hash {stored} but the stored bytes hash to {computed}: the row was altered")
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub aggregates: u64,
    pub broken: Vec<ChainBreak>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.broken.is_empty()
    }
}

/// Number of events in the store (for a progress bar).
pub async fn count_events(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
}

/// What [`verify_chains`] reads: every event's hashed fields, its links and position, in
/// chain order. (Benchmark 4 feeds the same rows to `sha256sum` as its baseline.)
pub const CHAINS_IN_ORDER: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload::text AS payload, metadata::text AS metadata, recorded_at,
       prev_hash, hash, position
  FROM events
 ORDER BY aggregate_type, aggregate_id, sequence";

/// Recomputes every chain, streaming the store in (type, id, sequence) order.
/// `progress` is called with the number of events checked so far, every 1,000 events.
pub async fn verify_chains(
    pool: &PgPool,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<VerifyReport, sqlx::Error> {
    // Taken through `connection`, so that a verification cut short (the API's bound on
    // its progress) closes this connection rather than give it back mid-statement.
    let mut conn = crate::connection::connection(pool).await?;
    let mut rows = sqlx::query(CHAINS_IN_ORDER).fetch(&mut *conn);
    let mut report = VerifyReport::default();
    // (type, id) of the chain being walked, its last hash and sequence, and whether it broke.
    let mut current: Option<(String, String)> = None;
    let mut last_hash: Vec<u8> = vec![0; 32];
    let mut last_sequence = 0i64;
    let mut broken = false;
    while let Some(row) = rows.try_next().await? {
        report.events += 1;
        if report.events % 1000 == 0 {
            progress(report.events);
        }
        let aggregate_type: String = row.get("aggregate_type");
        let aggregate_id: String = row.get("aggregate_id");
        let same = current
            .as_ref()
            .is_some_and(|(t, i)| *t == aggregate_type && *i == aggregate_id);
        if !same {
            report.aggregates += 1;
            current = Some((aggregate_type.clone(), aggregate_id.clone()));
            last_hash = vec![0; 32];
            last_sequence = 0;
            broken = false;
        }
        if broken {
            continue;
        }
        let sequence: i64 = row.get("sequence");
        let position: i64 = row.get("position");
        let prev_hash: Vec<u8> = row.get("prev_hash");
        let stored: Vec<u8> = row.get("hash");
        let fields = HashedFields {
            aggregate_type: &aggregate_type,
            aggregate_id: &aggregate_id,
            sequence,
            event_type: row.get("event_type"),
            event_version: row.get("event_version"),
            payload: row.get("payload"),
            metadata: row.get("metadata"),
            recorded_at: row.get("recorded_at"),
        };
        let problem = if sequence != last_sequence + 1 {
            Some(Problem::SequenceGap {
                expected: last_sequence + 1,
            })
        } else if prev_hash != last_hash {
            Some(Problem::PrevHashMismatch)
        } else {
            let computed = event_hash(&prev_hash, &fields);
            (computed.as_slice() != stored.as_slice()).then(|| Problem::HashMismatch {
                stored: hex::encode(&stored),
                computed: hex::encode(computed),
            })
        };
        if let Some(problem) = problem {
            broken = true;
            report.broken.push(ChainBreak {
                aggregate_type,
                aggregate_id,
                sequence,
                position,
                problem,
            });
            continue;
        }
        last_hash = stored;
        last_sequence = sequence;
    }
    progress(report.events);
    Ok(report)
}
