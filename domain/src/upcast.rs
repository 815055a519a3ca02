//! Upcasters: how events written under an older schema are read by today's code.
//!
//! Events are never rewritten (the store is append-only and hash-chained), so a schema
//! change ships with an upcaster that turns the old payload into the new shape as it is
//! loaded. The stored bytes, and so the hash chain, stay untouched.
//!
//! The worked example: `SampleHandedOver` 1.0 named the transport temperature `temp_c`;
//! 2.0 calls it `temperature_celsius`. Register [`upcasters`] on every event store.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::Value;

/// `SampleHandedOver` 1.x → 2.0: rename `temp_c` to `temperature_celsius`.
pub fn sample_handed_over_v2(mut payload: Value) -> Value {
    if let Some(body) = payload
        .get_mut("SampleHandedOver")
        .and_then(Value::as_object_mut)
    {
        if let Some(t) = body.remove("temp_c") {
            body.insert("temperature_celsius".to_string(), t);
        }
    }
    payload
}

/// Every upcaster of the domain, for the event store to apply on load.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "SampleHandedOver",
        "2.0",
        Box::new(sample_handed_over_v2),
    ))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::SampleEvent;
    use cqrs_es::persist::SerializedEvent;
    use serde_json::json;

    #[test]
    fn a_version_1_hand_over_reads_as_today_s_event() {
        let old = SerializedEvent {
            aggregate_id: "s".into(),
            sequence: 2,
            aggregate_type: "Sample".into(),
            event_type: "SampleHandedOver".into(),
            event_version: "1.0".into(),
            payload: json!({"SampleHandedOver": {
                "from": "Ward 3 nurse", "to": "Courier", "location": "Ward 3",
                "at": "2026-03-03T08:00:00Z", "temp_c": 4.0
            }}),
            metadata: json!({}),
        };
        let up = upcasters();
        assert!(up[0].can_upcast("SampleHandedOver", "1.0"));
        assert!(!up[0].can_upcast("SampleHandedOver", "2.0"));
        let new = up[0].upcast(old);
        assert_eq!(new.event_version, "2.0.0");
        let event: SampleEvent = serde_json::from_value(new.payload).unwrap();
        match event {
            SampleEvent::SampleHandedOver(h) => assert_eq!(h.temperature_celsius, Some(4.0)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
