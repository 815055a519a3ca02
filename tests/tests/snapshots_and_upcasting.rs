//! Long histories load from snapshots; events of an older schema load through upcasters.

use lis_domain::actor::Role;
use lis_domain::sample::{HandOver, SampleCommand};
use lis_domain::text::{PersonName, Place};
use lis_tests::{actor, place, received_serum, TestDb};

fn hand_over(i: usize) -> SampleCommand {
    SampleCommand::HandOver(HandOver {
        from: PersonName::parse(&format!("Holder {i}")).unwrap(),
        to: PersonName::parse(&format!("Holder {}", i + 1)).unwrap(),
        location: Place::parse("Transport").unwrap(),
        at: chrono::Utc::now(),
        temperature_celsius: Some(4.0 + i as f64 / 10.0),
    })
}

#[tokio::test]
async fn a_long_custody_chain_is_snapshotted_and_loads_the_same() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-400", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-400", &["K"]).await;
    for i in 0..45 {
        ledger
            .execute_sample(
                sample,
                hand_over(i),
                &actor("courier.1", Role::Phlebotomist),
            )
            .await
            .unwrap();
    }
    // 47 events with a snapshot every 20: the snapshot holds the state at event 40.
    let last: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM snapshots WHERE aggregate_id = $1")
            .bind(sample.to_string())
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(last, 40);
    let loaded = ledger.sample(sample).await.unwrap();
    assert_eq!(loaded.custody_chain().len(), 45);
    assert_eq!(
        loaded.custody_chain()[44].temperature_celsius,
        Some(4.0 + 4.4)
    );
    db.drop().await;
}

#[tokio::test]
async fn a_version_1_hand_over_in_the_store_loads_through_the_upcaster() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-401", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-401", &["K"]).await;
    // An event as a 1.0 writer stored it: the temperature was called `temp_c`.
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           VALUES ('Sample', $1, 3, 'SampleHandedOver', '1.0',
                   '{"SampleHandedOver":{"from":"Ward 3","to":"Courier","location":"Ward 3","at":"2026-03-03T08:00:00Z","temp_c":6.5}}',
                   '{"actor_id":"courier.1","actor_role":"phlebotomist"}')"#,
    )
    .bind(sample.to_string())
    .execute(&db.app)
    .await
    .unwrap();
    let loaded = ledger.sample(sample).await.unwrap();
    assert_eq!(loaded.custody_chain().len(), 1);
    assert_eq!(loaded.custody_chain()[0].temperature_celsius, Some(6.5));
    // The stored bytes are untouched: the audit trail still verifies.
    let report = lis_commands::audit::verify_chains(&db.app, &mut |_| {})
        .await
        .unwrap();
    assert!(report.is_intact());
    db.drop().await;
}
