//! The event store as an audit trail: append-only by rule, hash-chained in the database,
//! and a verifier that recomputes the chain independently and catches tampering.

use lis_commands::audit::{event_hash, verify_chains, HashedFields, Problem};
use lis_domain::actor::Role;
use lis_domain::order::OrderCommand;
use lis_domain::sample::{HandOver, SampleCommand};
use lis_domain::text::{PersonName, Place};
use lis_tests::{actor, code, place, received_serum, released_k, TestDb};
use sqlx::{PgPool, Row};

async fn verify(pool: &PgPool) -> lis_commands::audit::VerifyReport {
    verify_chains(pool, &mut |_| {}).await.unwrap()
}

/// A small lab history: an order (placed, a test added), a sample (collected, received,
/// handed over to storage), a released result. Seven events.
async fn history(db: &TestDb) {
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-200", &["K"]).await;
    ledger
        .execute_order(
            order.order_id,
            OrderCommand::AddTests {
                tests: vec![code("NA")],
            },
            &actor("reception.1", Role::Reception),
        )
        .await
        .unwrap();
    let sample = received_serum(&ledger, order.order_id, "ACC-200", &["K"]).await;
    ledger
        .execute_sample(
            sample,
            SampleCommand::HandOver(HandOver {
                from: PersonName::parse("Bench 1").unwrap(),
                to: PersonName::parse("Cold room").unwrap(),
                location: Place::parse("Lab 2").unwrap(),
                at: chrono::Utc::now(),
                temperature_celsius: Some(4.0),
            }),
            &actor("tech.1", Role::Technologist),
        )
        .await
        .unwrap();
    released_k(&ledger, sample, 4.0).await;
}

#[tokio::test]
async fn the_application_role_cannot_change_or_remove_events() {
    let db = TestDb::new().await;
    history(&db).await;
    for sql in [
        "UPDATE events SET payload = '{}' WHERE sequence = 1",
        "DELETE FROM events WHERE sequence = 1",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(&db.app).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn even_the_owner_is_stopped_by_the_append_only_triggers() {
    let db = TestDb::new().await;
    history(&db).await;
    for (sql, op) in [
        (
            "UPDATE events SET payload = '{}' WHERE sequence = 1",
            "UPDATE",
        ),
        ("DELETE FROM events WHERE sequence = 1", "DELETE"),
        // CASCADE, so that the foreign key from the audit log does not refuse it first.
        ("TRUNCATE events CASCADE", "TRUNCATE"),
        ("UPDATE catalogue_tests SET name = 'x'", "UPDATE"),
        ("DELETE FROM catalogue_versions", "DELETE"),
    ] {
        let err = sqlx::query(sql).execute(&db.owner).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("append-only: {op} is not allowed")),
            "{sql}: {err}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(count, 8);
    db.drop().await;
}

#[tokio::test]
async fn the_database_computes_the_hash_and_ignores_what_the_client_sends() {
    let db = TestDb::new().await;
    // A client that tries to supply its own hash, time and transaction id.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                             recorded_at, tx_id, prev_hash, hash)
         VALUES ('Order', 'x', 1, 'OrderPlaced', '1.0.0', '{}', '{\"actor_id\":\"a\",\"actor_role\":\"admin\"}',
                 '2000-01-01', '1', decode(repeat('11', 32), 'hex'), decode(repeat('22', 32), 'hex'))",
    )
    .execute(&db.app)
    .await
    .unwrap();
    let row =
        sqlx::query("SELECT recorded_at, prev_hash, hash FROM events WHERE aggregate_id = 'x'")
            .fetch_one(&db.app)
            .await
            .unwrap();
    let recorded_at: chrono::DateTime<chrono::Utc> = row.get("recorded_at");
    assert!(recorded_at > chrono::Utc::now() - chrono::Duration::minutes(5));
    assert_eq!(row.get::<Vec<u8>, _>("prev_hash"), vec![0u8; 32]);
    assert_ne!(row.get::<Vec<u8>, _>("hash"), vec![0x22u8; 32]);
    assert!(verify(&db.app).await.is_intact());
    db.drop().await;
}

#[tokio::test]
async fn an_event_without_an_actor_or_with_a_gap_is_refused() {
    let db = TestDb::new().await;
    let no_actor = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', 'y', 1, 'OrderPlaced', '1.0.0', '{}', '{}')",
    )
    .execute(&db.app)
    .await
    .unwrap_err();
    assert!(
        no_actor.to_string().contains("events_metadata_names_actor"),
        "{no_actor}"
    );
    let gap = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', 'y', 2, 'TestsAdded', '1.0.0', '{}', '{\"actor_id\":\"a\",\"actor_role\":\"admin\"}')",
    )
    .execute(&db.app)
    .await
    .unwrap_err();
    assert!(gap.to_string().contains("has no predecessor"), "{gap}");
    db.drop().await;
}

#[tokio::test]
async fn the_sql_trigger_and_the_rust_verifier_agree_on_tricky_bytes() {
    let db = TestDb::new().await;
    let payloads = [
        r#"{"OrderPlaced":{"name":"Ñandú 测试 🧪","quote":"\"\\\/\b\f\n\r\t","esc":"\u00e9\u0000x"}}"#,
        r#"{ "spaced" :  [1,   2 ] , "big": 123456789012345678901234567890.123456789e300, "neg": -0.0 }"#,
        r#"{}"#,
        r#"{"deep":{"a":{"b":{"c":[null,true,false,{"d":""}]}}}}"#,
    ];
    let metadata = [
        r#"{"actor_id":"a","actor_role":"admin"}"#,
        r#"{"actor_role":"admin","actor_id":"ünï","reason":"línea\nnueva"}"#,
        r#"{"actor_id":"a","actor_role":"admin","client_addr":"::1"}"#,
        r#"{ "actor_id" : "a" , "actor_role" : "admin" }"#,
    ];
    for (i, (p, m)) in payloads.iter().zip(metadata).enumerate() {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('Tricky', 'agg-é', $1, 'Ev€nt', '1.0.0', $2::json, $3::json)",
        )
        .bind(i as i64 + 1)
        .bind(p)
        .bind(m)
        .execute(&db.app)
        .await
        .unwrap();
    }
    let rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text AS payload,
                metadata::text AS metadata, recorded_at, prev_hash, hash
           FROM events WHERE aggregate_type = 'Tricky' ORDER BY sequence",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    for (i, row) in rows.iter().enumerate() {
        // The json column keeps the text byte for byte.
        assert_eq!(row.get::<String, _>("payload"), payloads[i]);
        let fields = HashedFields {
            aggregate_type: row.get("aggregate_type"),
            aggregate_id: row.get("aggregate_id"),
            sequence: row.get("sequence"),
            event_type: row.get("event_type"),
            event_version: row.get("event_version"),
            payload: row.get("payload"),
            metadata: row.get("metadata"),
            recorded_at: row.get("recorded_at"),
        };
        let prev: Vec<u8> = row.get("prev_hash");
        let stored: Vec<u8> = row.get("hash");
        assert_eq!(event_hash(&prev, &fields).to_vec(), stored, "event {i}");
    }
    // The same holds under other session settings: the hash does not read them.
    let su = db.superuser().await;
    let mut conn = su.acquire().await.unwrap();
    sqlx::query("SET TimeZone = 'Asia/Kolkata'")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET DateStyle = 'SQL, DMY'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let same: bool = sqlx::query_scalar(
        "SELECT bool_and(hash = lis_event_hash(prev_hash, aggregate_type, aggregate_id, sequence, event_type,
                                                event_version, payload, metadata, recorded_at)) FROM events",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(same);
    drop(conn);
    su.close().await;
    assert!(verify(&db.app).await.is_intact());
    db.drop().await;
}

#[tokio::test]
async fn verify_names_the_first_broken_link_of_each_tampered_aggregate() {
    let db = TestDb::new().await;
    history(&db).await;
    let ledger = db.ledger().await;
    let other = place(&ledger, "MRN-201", &["NA"]).await;
    let clean = verify(&db.app).await;
    assert!(clean.is_intact());
    assert_eq!(clean.events, 9);
    assert_eq!(clean.aggregates, 4);

    // A superuser switches the triggers off and edits history.
    // 1. The released value of the result is changed.
    // 2. The sample's receipt is deleted (its hand-over follows it).
    db.tamper(&[
        "UPDATE events SET payload = replace(payload::text, '4.0', '5.9')::json
          WHERE aggregate_type = 'Result' AND sequence = 1",
        "DELETE FROM events WHERE aggregate_type = 'Sample' AND sequence = 2",
    ])
    .await;

    let report = verify(&db.app).await;
    assert_eq!(report.broken.len(), 2, "{:?}", report.broken);
    let result = report
        .broken
        .iter()
        .find(|b| b.aggregate_type == "Result")
        .unwrap();
    assert_eq!(result.sequence, 1);
    assert!(matches!(result.problem, Problem::HashMismatch { .. }));
    let sample = report
        .broken
        .iter()
        .find(|b| b.aggregate_type == "Sample")
        .unwrap();
    assert_eq!(sample.sequence, 3);
    assert_eq!(sample.problem, Problem::SequenceGap { expected: 2 });
    // The untouched order of another patient is not reported.
    assert!(report
        .broken
        .iter()
        .all(|b| b.aggregate_id != other.order_id.to_string()));
    db.drop().await;
}

#[tokio::test]
async fn an_edit_whose_row_hash_is_recomputed_still_breaks_the_next_link() {
    let db = TestDb::new().await;
    history(&db).await;
    // An attacker who knows the layout rewrites the order's first event and recomputes
    // its hash, but leaves the rest of the chain alone.
    db.tamper(&[
        "UPDATE events SET payload = replace(payload::text, 'Dr Rao', 'Dr Roy')::json
          WHERE aggregate_type = 'Order' AND sequence = 1",
        "UPDATE events SET hash = lis_event_hash(prev_hash, aggregate_type, aggregate_id, sequence, event_type,
                                                 event_version, payload, metadata, recorded_at)
          WHERE aggregate_type = 'Order' AND sequence = 1",
    ])
    .await;
    let report = verify(&db.app).await;
    assert_eq!(report.broken.len(), 1, "{:?}", report.broken);
    assert_eq!(report.broken[0].aggregate_type, "Order");
    assert_eq!(report.broken[0].sequence, 2);
    assert_eq!(report.broken[0].problem, Problem::PrevHashMismatch);
    db.drop().await;
}

#[tokio::test]
async fn a_snapshot_that_is_not_the_state_of_its_events_is_reported() {
    use lis_commands::snapshot_audit::verify_snapshots;
    let db = TestDb::new().await;
    // A snapshot every second event.
    let ledger = db
        .ledger_with(lis_commands::LedgerConfig {
            snapshot_every: 2,
            ..Default::default()
        })
        .await;
    let order = place(&ledger, "MRN-SNAP", &["K", "NA"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-SNAP", &["K", "NA"]).await;
    let (id, record) = lis_tests::record_k(sample, 4.1);
    let tech = actor("tech.1", Role::Technologist);
    ledger.execute_result(id, record, &tech).await.unwrap();
    let correct = lis_domain::result::ResultCommand::Correct {
        value: lis_domain::value::ResultValue::Numeric {
            value: 4.4,
            unit: "mmol/L".into(),
        },
        reason: lis_domain::text::Reason::parse("transcription error").unwrap(),
    };
    ledger.execute_result(id, correct, &tech).await.unwrap();
    let report = verify_snapshots(&db.app, &mut |_| {}).await.unwrap();
    assert!(report.checked >= 2, "{report:?}");
    assert!(report.is_intact(), "{report:?}");
    // The result's snapshot says it was verified, which no event says: commands would
    // let it be authorised.
    db.tamper(&[&format!(
        "UPDATE snapshots SET payload = replace(payload::text, '\"status\": \"recorded\"', '\"status\": \"verified\"')::json
          WHERE aggregate_type = 'Result' AND aggregate_id = '{id}'"
    )])
    .await;
    let tampered: bool = sqlx::query_scalar(
        "SELECT bool_or(payload::text LIKE '%\"status\": \"verified\"%') FROM snapshots WHERE aggregate_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert!(tampered, "the tampering took");
    let report = verify_snapshots(&db.app, &mut |_| {}).await.unwrap();
    assert_eq!(
        report
            .differing
            .iter()
            .map(|d| (
                d.aggregate_type.as_str(),
                d.aggregate_id.clone(),
                d.last_sequence
            ))
            .collect::<Vec<_>>(),
        [("Result", id.to_string(), 2)]
    );
    // The chains themselves are intact: only the snapshot check sees it.
    assert!(verify(&db.app).await.is_intact());
    db.drop().await;
}
