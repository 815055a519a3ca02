//! The envelope an event travels in on Kafka (and on the API's event stream).
//!
//! Documented by `docs/events/envelope.schema.json`. The payload is the stored JSON text,
//! byte for byte, and the envelope carries the chain hashes, so a consumer can check an
//! event against the audit trail without database access.

use crate::feed::{hex_bytes, StoredEvent};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Envelope schema version.
pub const ENVELOPE_VERSION: u32 = 1;

const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3b8e_55a1_0c4f_4d2b_a6e1_92f4_7c0d_18e5);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvelopeActor {
    pub id: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub envelope_version: u32,
    /// Stable id of the event: UUID v5 of (aggregate type, aggregate id, sequence).
    pub event_id: Uuid,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub actor: EnvelopeActor,
    pub correlation_id: Option<String>,
    pub payload: Box<RawValue>,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

/// The stable id of an event.
pub fn event_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    let name = format!("{aggregate_type}\u{1f}{aggregate_id}\u{1f}{sequence}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// The stored metadata's fields an envelope carries (a field of another type reads as
/// absent).
#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default, deserialize_with = "text_or_none")]
    actor_id: Option<String>,
    #[serde(default, deserialize_with = "text_or_none")]
    actor_role: Option<String>,
    #[serde(default, deserialize_with = "text_or_none")]
    correlation_id: Option<String>,
}

impl Metadata {
    /// Reads the fields straight from the stored text; if that fails (a repeated key,
    /// which derived serde refuses), through a JSON tree, which keeps the last value of
    /// a key as PostgreSQL's `->>` does.
    fn read(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_else(|_| {
            let tree: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            let field = |key: &str| tree.get(key).and_then(|v| v.as_str()).map(str::to_string);
            Self {
                actor_id: field("actor_id"),
                actor_role: field("actor_role"),
                correlation_id: field("correlation_id"),
            }
        })
    }
}

fn text_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

impl From<&StoredEvent> for Envelope {
    fn from(e: &StoredEvent) -> Self {
        // Only the metadata's actor and correlation are read, without a JSON tree: this
        // runs for every event the relay sends and every event a rebuild reads.
        let meta = Metadata::read(e.metadata.get());
        Self {
            envelope_version: ENVELOPE_VERSION,
            event_id: event_id(&e.aggregate_type, &e.aggregate_id, e.sequence),
            position: e.position,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: e.sequence,
            event_type: e.event_type.clone(),
            event_version: e.event_version.clone(),
            recorded_at: e.recorded_at,
            actor: EnvelopeActor {
                id: meta.actor_id.unwrap_or_default(),
                role: meta.actor_role.unwrap_or_default(),
            },
            correlation_id: meta.correlation_id,
            payload: e.payload.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(metadata: &str) -> StoredEvent {
        StoredEvent {
            position: 1,
            tx_id: 1,
            aggregate_type: "Order".into(),
            aggregate_id: "o".into(),
            sequence: 1,
            event_type: "OrderPlaced".into(),
            event_version: "1.0.0".into(),
            recorded_at: Utc::now(),
            payload: RawValue::from_string("{}".into()).unwrap(),
            metadata: RawValue::from_string(metadata.into()).unwrap(),
            prev_hash: vec![0; 32],
            hash: vec![1; 32],
        }
    }

    #[test]
    fn the_envelope_carries_the_actor_and_correlation_of_the_stored_metadata() {
        let e = Envelope::from(&stored(
            r#"{"actor_id":"tech.1","actor_role":"technologist","correlation_id":"c-9","reason":"r","extra":{"a":[1]}}"#,
        ));
        assert_eq!(e.actor.id, "tech.1");
        assert_eq!(e.actor.role, "technologist");
        assert_eq!(e.correlation_id.as_deref(), Some("c-9"));
    }

    #[test]
    fn a_repeated_metadata_key_reads_as_postgresql_reads_it_the_last_one_wins() {
        let e = Envelope::from(&stored(
            r#"{"actor_id":"a","actor_role":"technologist","actor_id":"b","correlation_id":"c-1"}"#,
        ));
        assert_eq!(e.actor.id, "b");
        assert_eq!(e.actor.role, "technologist");
        assert_eq!(e.correlation_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn metadata_fields_missing_or_of_another_type_read_as_absent() {
        let e = Envelope::from(&stored(r#"{"actor_id":7,"actor_role":"auditor"}"#));
        assert_eq!(e.actor.id, "");
        assert_eq!(e.actor.role, "auditor");
        assert_eq!(e.correlation_id, None);
    }
}
