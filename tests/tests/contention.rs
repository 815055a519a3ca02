//! 100 clients racing verify / authorise / amend on one result: the history stays a
//! valid sequence, every loser gets a conflict or a rule refusal (409), and no
//! acknowledged change is lost.

use lis_commands::CommandError;
use lis_domain::actor::{ActorId, Role};
use lis_domain::result::{LabResult, ResultCommand, ResultStatus};
use lis_domain::text::Reason;
use lis_domain::value::ResultValue;
use lis_tests::{actor, place, received_serum, record_k, TestDb};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_racing_clients_leave_a_valid_history() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let order = place(&ledger, "MRN-C1", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-C1", &["K"]).await;
    let (id, record) = record_k(sample, 4.0);
    ledger
        .execute_result(id, record, &actor("tech.1", Role::Technologist))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..100 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let (command, ctx) = match i % 3 {
                0 => (
                    ResultCommand::Verify {
                        by: ActorId::parse("tech.1").unwrap(),
                    },
                    actor("tech.1", Role::Technologist),
                ),
                1 => (
                    ResultCommand::Authorise {
                        by: ActorId::parse("path.1").unwrap(),
                    },
                    actor("path.1", Role::Pathologist),
                ),
                _ => (
                    ResultCommand::Amend {
                        value: ResultValue::Numeric {
                            value: 4.0 + f64::from(i) / 100.0,
                            unit: "mmol/L".into(),
                        },
                        reason: Reason::parse("recalculated").unwrap(),
                    },
                    actor("path.1", Role::Pathologist),
                ),
            };
            ledger.execute_result(id, command, &ctx).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(CommandError::Conflict { .. } | CommandError::Rejected { .. }) => {}
            Err(e) => panic!("a loser must get 409, not {e}"),
        }
    }
    // Every acknowledged command is one event after the recording, in an unbroken sequence.
    let sequences: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_type = 'Result' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id.to_string())
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(sequences, (1..=(1 + won) as i64).collect::<Vec<_>>());
    // The history replays into a valid state: verified before released, amended only after.
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Result' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id.to_string())
    .fetch_all(&db.app)
    .await
    .unwrap();
    let verified = types.iter().position(|t| t == "ResultVerified");
    let released = types.iter().position(|t| t == "ResultAuthorised");
    if let Some(r) = released {
        assert!(verified.is_some_and(|v| v < r), "{types:?}");
    }
    if let Some(first_amend) = types.iter().position(|t| t == "ResultAmended") {
        assert!(released.is_some_and(|r| r < first_amend), "{types:?}");
    }
    let state: LabResult = ledger.result(id).await.unwrap();
    assert!(matches!(
        state.status(),
        Some(ResultStatus::Recorded | ResultStatus::Verified | ResultStatus::Released)
    ));
    assert!(lis_commands::audit::verify_chains(&db.app, &mut |_| {})
        .await
        .unwrap()
        .is_intact());
    db.drop().await;
}
