//! End to end over real Kafka: the relay and the projection workers as separate
//! processes, killed with SIGKILL mid-stream and restarted; afterwards every read model
//! equals a fresh rebuild, the analytics equal a fresh replay, and the audit trail and
//! its seals verify. Also: transactions that commit out of order are both published.

mod support;

use lis_tests::{assert_models_equal_rebuilds, lab_day_numbered, TestDb};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{assert_analytics_equal_replay, kafka_brokers, wait_projected, wait_sealed, Stack};

/// A consumer of this stack's topics (named by their variables), from the earliest message.
fn reader(stack: &Stack, topic_vars: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("lis-test-reader-{}", stack.id))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topics: Vec<String> = topic_vars.iter().map(|t| stack.get(t)).collect();
    consumer
        .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_out_survives_sigkill_of_the_relay_and_the_workers() {
    let db = TestDb::new().await;
    let stack = Stack::new(&db, true);
    let all = ["orders", "specimens", "results", "analytics"];
    let project_args = ["project", "orders", "specimens", "results", "analytics"];
    let mut relay = stack.spawn("relay", &["relay"]);
    let mut workers = stack.spawn("project", &project_args);

    let ledger = Arc::new(db.ledger().await);
    let writer = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for n in 1..=8 {
                lab_day_numbered(&ledger, 800 + n).await;
            }
        })
    };
    // Kill each role mid-stream and bring it back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay.kill9();
    relay = stack.spawn("relay", &["relay"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    workers.kill9();
    workers = stack.spawn("project", &project_args);
    writer.await.unwrap();

    wait_projected(&db, &all, Duration::from_secs(120), &[&relay, &workers]).await;
    relay.kill9();
    workers.kill9();

    // Every read model equals one rebuilt from the event store.
    assert_models_equal_rebuilds(&db.app).await;
    // The analytics built through Kafka equal a fresh replay into another database.
    let expected = assert_analytics_equal_replay(&db, &stack).await;
    let volumes = expected["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 3, "{volumes:?}");
    assert!(volumes.iter().all(|v| v["tests"] == 8), "{volumes:?}");

    // The audit trail and its seals (written by a relay killed mid-batch) verify.
    stack.assert_audit_verifies();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_that_commit_out_of_order_are_both_published() {
    use sqlx::Connection;
    let db = TestDb::empty().await;
    let stack = Stack::new(&db, true);
    let mut relay = stack.spawn("relay", &["relay"]);
    let url = db.url_as(lis_eventstore_migrations::APP_ROLE);
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                  VALUES ('Order', $1, 1, 'OrderPlaced', '1.0.0', '{\"OrderPlaced\":{}}', '{\"actor_id\":\"a\",\"actor_role\":\"admin\"}')";
    let mut early = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut late = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut early).await.unwrap();
    sqlx::query(insert)
        .bind("early")
        .execute(&mut early)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    sqlx::query(insert)
        .bind("late")
        .execute(&mut late)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut late).await.unwrap();
    // The relay is running while "late" is committed and "early" is not.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("COMMIT").execute(&mut early).await.unwrap();

    let consumer = reader(&stack, &["LIS_TOPIC_ORDERS"]);
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "published only {seen:?}\n{}",
            relay.log_tail()
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            let env: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            seen.insert(env["aggregate_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["early".to_string(), "late".to_string()].into());
    relay.kill9();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_lab_runs_on_postgresql_alone() {
    // No LIS_KAFKA_BROKERS: the workers read the event store's ordered feed and the
    // relay only seals.
    let db = TestDb::new().await;
    let stack = Stack::new(&db, false);
    let mut relay = stack.spawn("relay", &["relay"]);
    let mut workers = stack.spawn("project", &["project", "orders", "specimens", "results"]);
    let ledger = db.ledger().await;
    lab_day_numbered(&ledger, 950).await;
    workers.kill9();
    workers = stack.spawn("project", &["project", "orders", "specimens", "results"]);
    lab_day_numbered(&ledger, 951).await;
    wait_projected(
        &db,
        &["orders", "specimens", "results"],
        Duration::from_secs(60),
        &[&relay, &workers],
    )
    .await;
    assert_models_equal_rebuilds(&db.app).await;
    // Seals are written within a second (LIS_SEAL_EVERY_SECS=1) of the last event.
    wait_sealed(&db, &relay, Duration::from_secs(30)).await;
    relay.kill9();
    workers.kill9();
    let verify = stack.run(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_over_kafka_purges_every_model_and_no_message_carries_identity() {
    use lis_domain::actor::Role;
    use lis_domain::text::Reason;
    let db = TestDb::new().await;
    let stack = Stack::new(&db, true);
    let all = ["orders", "specimens", "results", "analytics"];
    let mut relay = stack.spawn("relay", &["relay"]);
    let mut workers = stack.spawn(
        "project",
        &["project", "orders", "specimens", "results", "analytics"],
    );
    let ledger = db.ledger().await;
    let (erased_order, _) = lab_day_numbered(&ledger, 970).await;
    let (kept_order, _) = lab_day_numbered(&ledger, 971).await;
    let order = lis_domain::ids::OrderId::from_uuid(erased_order);
    let patient = ledger
        .order(order)
        .await
        .unwrap()
        .facts()
        .unwrap()
        .patient_id;
    let rows = |order: uuid::Uuid| {
        let pool = db.app.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT (SELECT count(*) FROM proj_orders.orders WHERE order_id = $1)
                      + (SELECT count(*) FROM proj_orders.order_tests WHERE order_id = $1)
                      + (SELECT count(*) FROM proj_specimens.specimens WHERE order_id = $1)
                      + (SELECT count(*) FROM proj_results.results WHERE order_id = $1)",
            )
            .bind(order)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    wait_projected(&db, &all, Duration::from_secs(90), &[&relay, &workers]).await;
    assert!(rows(erased_order).await > 0, "the patient was projected");
    ledger
        .erase_patient(
            patient,
            Reason::parse("patient request, DPDP s.12").unwrap(),
            &lis_tests::actor("admin.1", Role::Admin),
        )
        .await
        .unwrap();
    wait_projected(&db, &all, Duration::from_secs(90), &[&relay, &workers]).await;

    // The read models hold nothing of the erased patient's order; the other stays.
    assert_eq!(rows(erased_order).await, 0);
    assert!(rows(kept_order).await > 0);
    let mongo = mongodb::Client::with_uri_str(support::mongo_url())
        .await
        .unwrap()
        .database(&stack.get("LIS_MONGO_DATABASE"));
    let facts = mongo.collection::<mongodb::bson::Document>("order_facts");
    let find = |id: uuid::Uuid| facts.find_one(mongodb::bson::doc! { "_id": id.to_string() });
    assert!(
        find(erased_order).await.unwrap().is_none(),
        "analytics kept the erased order"
    );
    assert!(find(kept_order).await.unwrap().is_some());

    // Every message on every topic, before and after the erasure: ciphertext only.
    let consumer = reader(
        &stack,
        &[
            "LIS_TOPIC_ORDERS",
            "LIS_TOPIC_SAMPLES",
            "LIS_TOPIC_RESULTS",
            "LIS_TOPIC_PATIENTS",
        ],
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    let needles = [
        "Asha Verma",
        "MRN-970",
        "91-2345-6789-0123",
        "+919845012345",
        "Lake View Road",
        "1980-05-17",
    ];
    let (mut seen, mut erasures) = (0i64, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < total {
        assert!(
            Instant::now() < deadline,
            "read {seen} of {total} messages\n{}",
            relay.log_tail()
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            let text = String::from_utf8_lossy(m.payload().unwrap()).to_string();
            for n in needles {
                assert!(!text.contains(n), "{n} in a published message: {text}");
            }
            erasures += usize::from(text.contains("\"PatientErased\""));
            seen += 1;
        }
    }
    assert_eq!(erasures, 1);
    relay.kill9();
    workers.kill9();
    assert_models_equal_rebuilds(&db.app).await;
    mongo.drop().await.unwrap();
    db.drop().await;
}
