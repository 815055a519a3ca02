//! docs/events/ holds the JSON Schema of every event type, generated from the domain's
//! own types, so the documentation cannot drift from the code. If this test fails after
//! a deliberate change to an event, regenerate the files with
//! `LIS_WRITE_DOCS=1 cargo test -p lis-tests --test event_docs` and commit them (and add
//! an upcaster if a stored event's shape changed).

use lis_domain::order::OrderEvent;
use lis_domain::patient_record::PatientEvent;
use lis_domain::result::ResultEvent;
use lis_domain::sample::SampleEvent;
use std::path::PathBuf;

/// The value with every object's keys in sorted order, whatever serde_json's
/// `preserve_order` feature (which feature unification may switch on) does.
fn canonical(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(canonical).collect())
        }
        other => other,
    }
}

fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "order-events.schema.json",
            serde_json::to_value(schemars::schema_for!(OrderEvent)).unwrap(),
        ),
        (
            "sample-events.schema.json",
            serde_json::to_value(schemars::schema_for!(SampleEvent)).unwrap(),
        ),
        (
            "result-events.schema.json",
            serde_json::to_value(schemars::schema_for!(ResultEvent)).unwrap(),
        ),
        (
            "patient-events.schema.json",
            serde_json::to_value(schemars::schema_for!(PatientEvent)).unwrap(),
        ),
    ]
}

#[test]
fn event_schemas_in_docs_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/events");
    let write = std::env::var("LIS_WRITE_DOCS").is_ok();
    for (file, schema) in schemas() {
        let text = serde_json::to_string_pretty(&canonical(schema)).unwrap() + "\n";
        let path = dir.join(file);
        if write {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is out of date: LIS_WRITE_DOCS=1 cargo test -p lis-tests --test event_docs",
            path.display()
        );
    }
}

#[test]
fn every_event_type_is_documented_in_its_schema() {
    let names = [
        (
            "order-events.schema.json",
            vec![
                "OrderPlaced",
                "TestsAdded",
                "TestCancelled",
                "OrderCancelled",
            ],
        ),
        (
            "sample-events.schema.json",
            vec![
                "SampleCollected",
                "SampleHandedOver",
                "SampleReceived",
                "SampleRejected",
                "SampleAliquoted",
                "AliquotCreated",
                "SampleStored",
                "SampleDisposed",
            ],
        ),
        (
            "result-events.schema.json",
            vec![
                "ResultRecorded",
                "ResultCorrected",
                "ResultVerified",
                "ResultAuthorised",
                "ResultAmended",
                "ResultRetracted",
                "RerunRequested",
                "CriticalValueNotified",
                "ResultAcknowledged",
            ],
        ),
        ("patient-events.schema.json", vec!["PatientErased"]),
    ];
    for ((file, schema), (_, events)) in schemas().iter().zip(names) {
        let text = schema.to_string();
        for e in events {
            assert!(text.contains(&format!("\"{e}\"")), "{file} lacks {e}");
        }
    }
}
