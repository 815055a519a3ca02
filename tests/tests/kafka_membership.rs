//! A Kafka consumer that cannot get into its group is made anew after its deadline, not
//! left waiting for messages that never come (see `lis_projections::membership`).

use lis_projections::models;
use lis_projections::worker::{run_from_kafka, Batching, WorkerError};
use lis_tests::TestDb;
use std::time::Duration;

/// The results model consuming `topic` from `brokers` as `group`, with a 2 s join
/// deadline, for at most `secs` (`Err(Elapsed)`: still running then).
async fn consume_for(
    db: &TestDb,
    brokers: &str,
    group: &str,
    topic: &str,
    secs: u64,
) -> Result<Result<(), WorkerError>, tokio::time::error::Elapsed> {
    let batching = Batching {
        join_deadline: Duration::from_secs(2),
        ..Batching::default()
    };
    tokio::time::timeout(
        Duration::from_secs(secs),
        run_from_kafka(
            db.app.clone(),
            models::by_name("results").unwrap(),
            brokers,
            group,
            &[topic],
            batching,
        ),
    )
    .await
}

#[tokio::test]
async fn a_consumer_that_never_joins_its_group_is_given_up_after_its_deadline() {
    // A "broker" that takes connections and never answers: the consumer cannot join.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = listener.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            connections.push(connection);
        }
    });
    let db = TestDb::new().await;
    let outcome = consume_for(
        &db,
        &broker,
        "lis-test-black-hole",
        "lis.test.black-hole",
        20,
    )
    .await;
    match outcome {
        Ok(Err(WorkerError::OutsideGroup { group, waited })) => {
            assert_eq!(group, "lis-test-black-hole");
            assert!(waited > Duration::from_secs(2), "{waited:?}");
        }
        other => panic!("the consumer outside its group was not given up: {other:?}"),
    }
    held.abort();
    db.drop().await;
}

#[tokio::test]
async fn a_consumer_in_its_group_is_kept_however_long_it_waits_for_messages() {
    // The real broker assigns the consumer its partition; no message ever comes. Well
    // past its deadline it is still running: an assignment, not a message, is what
    // keeps it.
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let brokers = std::env::var("LIS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = format!("lis.test.membership.{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for created in admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("Kafka (deploy/kafka.sh)")
    {
        created.expect("topic created");
    }
    let db = TestDb::new().await;
    let group = format!("lis-test-membership-{}", uuid::Uuid::new_v4().simple());
    let outcome = consume_for(&db, &brokers, &group, &topic, 15).await;
    assert!(
        outcome.is_err(),
        "the consumer stopped although it was in its group: {outcome:?}"
    );
    admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await
        .unwrap();
    db.drop().await;
}
