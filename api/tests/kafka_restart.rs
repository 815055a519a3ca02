//! The Kafka broker restarted mid-stream: the relay and the workers resume by
//! themselves, and nothing is lost or applied twice. A standby relay takes over when the
//! leader dies.
//! (Its own test binary: it stops the shared local broker, so it must not run beside
//! other Kafka tests; cargo runs test binaries one after another.)

mod support;

use lis_tests::{assert_models_equal_rebuilds, lab_day_numbered, TestDb};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::{wait_projected, Stack};

fn kafka(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(action)
        .status()
        .expect("run deploy/kafka.sh");
    assert!(status.success(), "deploy/kafka.sh {action} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_workers_resume_after_a_broker_restart_and_a_standby_takes_over() {
    let db = TestDb::new().await;
    let stack = Stack::new(&db, true);
    let names = ["orders", "specimens", "results"];
    let mut leader = stack.spawn("relay-a", &["relay"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let standby = stack.spawn("relay-b", &["relay"]);
    let workers = stack.spawn("project", &["project", "orders", "specimens", "results"]);
    let ledger = db.ledger().await;
    lab_day_numbered(&ledger, 901).await;
    wait_projected(
        &db,
        &names,
        Duration::from_secs(90),
        &[&leader, &standby, &workers],
    )
    .await;

    // The broker goes away; the lab keeps working (PostgreSQL is the source of truth).
    kafka("stop");
    lab_day_numbered(&ledger, 902).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka("start");
    lab_day_numbered(&ledger, 903).await;
    wait_projected(
        &db,
        &names,
        Duration::from_secs(120),
        &[&leader, &standby, &workers],
    )
    .await;

    // One relay leads, the other stands by. Then the leader dies; the standby takes the
    // lead and carries on.
    let read = |r: &support::Role| std::fs::read_to_string(&r.log).unwrap_or_default();
    assert!(
        read(&leader).contains("relay is the leader"),
        "{}",
        leader.log_tail()
    );
    assert!(
        !read(&standby).contains("relay is the leader"),
        "{}",
        standby.log_tail()
    );
    leader.kill9();
    lab_day_numbered(&ledger, 904).await;
    wait_projected(&db, &names, Duration::from_secs(90), &[&standby, &workers]).await;
    assert!(
        read(&standby).contains("relay is the leader"),
        "{}",
        standby.log_tail()
    );
    // Through the outage and the leader's death (the standby publishes again what the
    // leader had not checkpointed), nothing was applied twice or missed, and the trail
    // verifies.
    drop((standby, workers));
    assert_models_equal_rebuilds(&db.app).await;
    stack.assert_audit_verifies();
    db.drop().await;
}
