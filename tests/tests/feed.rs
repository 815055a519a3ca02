//! The ordered feed never skips an event whose transaction commits late.

use lis_projections::feed::{
    load_checkpoint, read_after, read_after_saved, save_checkpoint, FeedPosition,
};
use lis_tests::TestDb;
use sqlx::{Connection, PgConnection};

async fn insert_in(conn: &mut PgConnection, aggregate_id: &str) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', $1, 1, 'OrderPlaced', '1.0.0', '{\"OrderPlaced\":{}}', '{\"actor_id\":\"a\",\"actor_role\":\"admin\"}')",
    )
    .bind(aggregate_id)
    .execute(conn)
    .await
    .unwrap();
}

/// Reads from `start` until `n` events are there. The feed holds events back while any
/// transaction of the cluster (another test's) is open, so it may take a few tries.
async fn read_until(
    pool: &sqlx::PgPool,
    start: FeedPosition,
    n: usize,
) -> Vec<lis_projections::feed::StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let batch = read_after(pool, start, 100).await.unwrap();
        if batch.len() >= n {
            return batch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "feed stalled at {}",
            batch.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_transactions_that_commit_out_of_order_are_both_read_in_a_safe_order() {
    let db = TestDb::empty().await;
    let url = db.url_as(lis_eventstore_migrations::APP_ROLE);
    let mut early = PgConnection::connect(&url).await.unwrap();
    let mut late = PgConnection::connect(&url).await.unwrap();

    // The early transaction takes the lower position but commits last.
    sqlx::query("BEGIN").execute(&mut early).await.unwrap();
    insert_in(&mut early, "early").await;
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    insert_in(&mut late, "late").await;
    sqlx::query("COMMIT").execute(&mut late).await.unwrap();

    // A naive reader sees "late" and would move its checkpoint past "early" for good.
    let naive: Vec<String> =
        sqlx::query_scalar("SELECT aggregate_id FROM events WHERE position > 0 ORDER BY position")
            .fetch_all(&db.app)
            .await
            .unwrap();
    assert_eq!(naive, ["late"]);

    // The feed holds "late" back while "early" is in flight.
    let start = FeedPosition::default();
    assert!(read_after(&db.app, start, 100).await.unwrap().is_empty());

    sqlx::query("COMMIT").execute(&mut early).await.unwrap();
    let batch = read_until(&db.app, start, 2).await;
    let ids: Vec<&str> = batch.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["early", "late"]);
    assert!(batch[0].position < batch[1].position);

    // Reading on from the last event returns nothing more; a checkpoint round-trips.
    let last = batch[1].feed_position();
    assert!(read_after(&db.app, last, 100).await.unwrap().is_empty());
    save_checkpoint(&db.app, "test", last).await.unwrap();
    assert_eq!(load_checkpoint(&db.app, "test").await.unwrap(), last);
    early.close().await.unwrap();
    late.close().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn the_feed_keeps_the_stored_bytes_and_pages_in_order() {
    let db = TestDb::empty().await;
    let mut conn = db.app.acquire().await.unwrap();
    for i in 0..25 {
        insert_in(&mut conn, &format!("agg-{i:02}")).await;
    }
    drop(conn);
    let mut seen = Vec::new();
    let mut at = FeedPosition::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 25 {
        let batch = read_after(&db.app, at, 7).await.unwrap();
        assert!(batch.len() <= 7);
        if let Some(last) = batch.last() {
            at = last.feed_position();
        }
        seen.extend(batch);
        assert!(
            std::time::Instant::now() < deadline,
            "feed stalled at {}",
            seen.len()
        );
    }
    assert!(read_after(&db.app, at, 7).await.unwrap().is_empty());
    assert!(seen
        .windows(2)
        .all(|w| w[0].feed_position() < w[1].feed_position()));
    assert_eq!(seen[0].payload.get(), r#"{"OrderPlaced":{}}"#);
    let envelope = lis_projections::envelope::Envelope::from(&seen[0]);
    assert_eq!(envelope.actor.role, "admin");
    db.drop().await;
}

#[tokio::test]
async fn the_feed_orders_by_transaction_id_as_a_number() {
    // Transaction ids 999 and 1000 (a fresh or restored cluster crosses such a boundary;
    // every cluster does, one digit at a time): as text "1000" sorts first.
    let db = TestDb::empty().await;
    let insert = |tx: &str, id: &str| {
        format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                                 tx_id, recorded_at, prev_hash, hash)
             VALUES ('Order', '{id}', 1, 'OrderPlaced', '1.0.0', '{{\"OrderPlaced\":{{}}}}',
                     '{{\"actor_id\":\"a\",\"actor_role\":\"admin\"}}', '{tx}', clock_timestamp(),
                     '\\x{zero}', '\\x{zero}')",
            zero = "00".repeat(32)
        )
    };
    db.tamper(&[&insert("999", "first"), &insert("1000", "second")])
        .await;
    let events = read_until(&db.app, FeedPosition::default(), 2).await;
    let order: Vec<(&str, u64)> = events
        .iter()
        .map(|e| (e.aggregate_id.as_str(), e.tx_id))
        .collect();
    assert_eq!(order, [("first", 999), ("second", 1000)]);
    db.drop().await;
}

#[tokio::test]
async fn a_model_reads_on_from_its_saved_position_in_one_statement() {
    let db = TestDb::empty().await;
    let mut conn = db.app.acquire().await.unwrap();
    for i in 0..5 {
        insert_in(&mut conn, &format!("agg-{i}")).await;
    }
    let orders = lis_projections::models::orders::Orders;
    let schema = "proj_feed_saved";
    lis_projections::projection::ensure_schema(&mut conn, &orders, schema)
        .await
        .unwrap();
    drop(conn);
    let table = format!("{schema}.feed_position");
    let all = read_until(&db.app, FeedPosition::default(), 5).await;

    // Nothing saved yet: from the start of the feed, as a reader from position zero.
    let from_start = read_after_saved(&db.app, &table, 100).await.unwrap();
    let ids = |events: &[lis_projections::feed::StoredEvent]| -> Vec<String> {
        events.iter().map(|e| e.aggregate_id.clone()).collect()
    };
    assert_eq!(ids(&from_start), ids(&all));

    // Saved after the second event: the rest, and the limit holds.
    let saved = all[1].feed_position();
    sqlx::query(&format!(
        "INSERT INTO {table} (tx_id, position) VALUES ($1, $2)"
    ))
    .bind(saved.tx_id.to_string())
    .bind(saved.position)
    .execute(&db.app)
    .await
    .unwrap();
    let rest = read_after_saved(&db.app, &table, 100).await.unwrap();
    assert_eq!(ids(&rest), ids(&all[2..]));
    assert_eq!(
        ids(&read_after_saved(&db.app, &table, 2).await.unwrap()),
        ids(&all[2..4])
    );
    assert_eq!(
        ids(&read_after(&db.app, saved, 100).await.unwrap()),
        ids(&rest)
    );
    db.drop().await;
}
