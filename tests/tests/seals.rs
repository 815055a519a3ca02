//! The relay's audit seals: a Merkle log of every event in relay order with signed
//! checkpoints, which catch what the hash chain alone cannot — a deleted last event, a
//! whole chain rewritten with recomputed hashes — and prove an event's inclusion.

use base64::Engine;
use lis_projections::relay::{Relay, RelayConfig};
use lis_projections::seal::Sealer;
use lis_projections::seal_audit::{prove, verify_external, verify_seals};
use lis_tests::{place, received_serum, released_k, TestDb};
use sqlx::PgPool;

fn sealer() -> Sealer {
    Sealer::from_base64_seed(
        "lab-test",
        &base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
    )
    .unwrap()
}

/// Relays until every event of the store is in the log. Each call is a new relay, which
/// reads the log's leaves as they stand, four at a time (at first, none).
async fn seal_all(pool: &PgPool) {
    let config = RelayConfig {
        seal_every_events: 1,
        origin: "lisledger/test".into(),
        leaves_per_read: 4,
        ..RelayConfig::default()
    };
    let relay = Relay::new(pool.clone(), config, sealer()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        relay.drain().await.unwrap();
        let (events, leaves): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM audit_log_leaves)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if events == leaves {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "relay stalled at {leaves} of {events}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn history(db: &TestDb) -> i64 {
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-700", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-700", &["K"]).await;
    released_k(&ledger, sample, 4.4).await;
    sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap()
}

#[tokio::test]
async fn sealed_history_verifies_and_proves_inclusion() {
    let db = TestDb::new().await;
    let last = history(&db).await;
    seal_all(&db.app).await;
    let verifier = sealer().verifier();
    let report = verify_seals(&db.app, &verifier, &mut |_| {}).await.unwrap();
    assert_eq!(report.leaves, 6);
    assert!(report.checkpoints >= 1);
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let first: i64 =
        sqlx::query_scalar("SELECT position FROM audit_log_leaves WHERE leaf_index = 0")
            .fetch_one(&db.app)
            .await
            .unwrap();
    let proof = prove(&db.app, &verifier, first).await.unwrap();
    assert!(proof.verified);
    assert_eq!(proof.leaf_index, 0);
    let err = prove(&db.app, &verifier, last + 100).await.unwrap_err();
    assert!(err.to_string().contains("has been sealed"), "{err}");

    // A checkpoint from today, handed to the quality manager, is consistent with the
    // log after more events.
    let (size, note): (i64, String) = sqlx::query_as(
        "SELECT tree_size, signed_note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    history_more(&db).await;
    seal_all(&db.app).await;
    assert_eq!(
        verify_external(&db.app, &verifier, &note)
            .await
            .unwrap()
            .tree_size,
        size as u64
    );
    let grown: i64 = sqlx::query_scalar("SELECT max(tree_size) FROM audit_checkpoints")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!((size, grown), (6, 8));
    // The new relay took the lead over 6 leaves (reads of 4 and 2) and sealed on: every
    // checkpoint is the root of the log as stored.
    let report = verify_seals(&db.app, &verifier, &mut |_| {}).await.unwrap();
    assert_eq!(report.leaves, 8);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    history_more(&db).await;
    seal_all(&db.app).await;
    let report = verify_seals(&db.app, &verifier, &mut |_| {}).await.unwrap();
    assert_eq!(report.leaves, 10, "read 4, 4 and none");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    db.drop().await;
}

async fn history_more(db: &TestDb) {
    let ledger = db.ledger().await;
    place(&ledger, "MRN-701", &["NA"]).await;
    place(&ledger, "MRN-702", &["NA"]).await;
}

#[tokio::test]
async fn seals_catch_what_the_chain_alone_cannot() {
    let db = TestDb::new().await;
    history(&db).await;
    seal_all(&db.app).await;
    let verifier = sealer().verifier();
    let note: String = sqlx::query_scalar(
        "SELECT signed_note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();

    // 1. The result's last event (its release) is deleted: its chain still looks whole.
    // 2. The order's only event is rewritten and its hash recomputed: a consistent chain.
    db.tamper(&[
        "DELETE FROM events WHERE aggregate_type = 'Result'
            AND sequence = (SELECT max(sequence) FROM events WHERE aggregate_type = 'Result')",
        "UPDATE events SET payload = replace(payload::text, 'Dr Rao', 'Dr Roy')::json WHERE aggregate_type = 'Order'",
        "UPDATE events SET hash = lis_event_hash(prev_hash, aggregate_type, aggregate_id, sequence, event_type,
                                                 event_version, payload, metadata, recorded_at)
          WHERE aggregate_type = 'Order'",
    ])
    .await;

    let chains = lis_commands::audit::verify_chains(&db.app, &mut |_| {})
        .await
        .unwrap();
    assert!(
        chains.is_intact(),
        "the per-aggregate chains alone see nothing: {:?}",
        chains.broken
    );
    let report = verify_seals(&db.app, &verifier, &mut |_| {}).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("is gone")),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("no longer matches")),
        "{:?}",
        report.problems
    );

    // Rewriting the log's leaves too cannot reproduce the signed roots.
    db.tamper(&[
        "UPDATE audit_log_leaves l SET leaf_hash = sha256('\\x00'::bytea || int8send(l.position) || e.hash)
           FROM events e WHERE e.position = l.position",
    ])
    .await;
    let report = verify_seals(&db.app, &verifier, &mut |_| {}).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("no longer have the signed root")),
        "{:?}",
        report.problems
    );
    let err = verify_external(&db.app, &verifier, &note)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("history was rewritten"), "{err}");
    db.drop().await;
}

#[tokio::test]
async fn a_checkpoint_signed_with_another_key_is_refused() {
    let db = TestDb::new().await;
    history(&db).await;
    seal_all(&db.app).await;
    let stranger = Sealer::from_base64_seed(
        "lab-test",
        &base64::engine::general_purpose::STANDARD.encode([8u8; 32]),
    )
    .unwrap();
    let report = verify_seals(&db.app, &stranger.verifier(), &mut |_| {})
        .await
        .unwrap();
    assert!(!report.problems.is_empty());
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.contains("signature does not verify")),
        "{:?}",
        report.problems
    );
    db.drop().await;
}
