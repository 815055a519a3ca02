//! 100 clients racing verify / authorise / amend on one result, each trying again after
//! it loses: the history stays a valid sequence (one verification, one release, then
//! the amendments), every loser gets a conflict or a rule refusal (409), and no
//! acknowledged change is lost: the result shows the last acknowledged amendment.

use lis_commands::CommandError;
use lis_domain::actor::{ActorId, Role};
use lis_domain::result::{LabResult, ResultCommand, ResultStatus};
use lis_domain::text::Reason;
use lis_domain::value::ResultValue;
use lis_tests::{actor, place, received_serum, record_k, TestDb};
use std::sync::Arc;

/// Tries a client makes before it gives up.
const ATTEMPTS: usize = 40;

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
            // A client that lost tries again, as a real one would after a 409, so that
            // the race goes on past the first winner: verification, then release, then
            // amendments, each won by one of the clients racing for it.
            let mut outcomes = Vec::new();
            for _ in 0..ATTEMPTS {
                let outcome = ledger.execute_result(id, command.clone(), &ctx).await;
                let won = outcome.is_ok();
                outcomes.push(outcome);
                if won {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (command, outcomes)
        }));
    }
    let (mut won, mut conflicts) = (0, 0);
    let (mut verified, mut authorised, mut amended) = (0, 0, 0);
    // The acknowledged amendment with the highest version: what the result must show.
    let mut last_amendment: Option<(i64, ResultValue)> = None;
    for t in tasks {
        let (command, outcomes) = t.await.unwrap();
        for outcome in outcomes {
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(CommandError::Conflict { .. }) => {
                    conflicts += 1;
                    continue;
                }
                Err(CommandError::Rejected { .. }) => continue,
                Err(e) => panic!("a loser must get 409, not {e}"),
            };
            won += 1;
            match &command {
                ResultCommand::Verify { .. } => verified += 1,
                ResultCommand::Authorise { .. } => authorised += 1,
                ResultCommand::Amend { value, .. } => {
                    amended += 1;
                    if last_amendment
                        .as_ref()
                        .is_none_or(|(v, _)| *v < outcome.version)
                    {
                        last_amendment = Some((outcome.version, value.clone()));
                    }
                }
                other => panic!("not raced here: {other:?}"),
            }
        }
    }
    // The race happened (commands loaded the same version and lost at the append), and
    // went past the first winner: one verification, one release, then amendments.
    assert!(conflicts > 0, "no two commands overlapped");
    assert_eq!((verified, authorised), (1, 1));
    assert!(amended > 1, "{amended} amendments won");
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
    // No acknowledged update lost: the result shows the last acknowledged amendment (an
    // amendment is the only command here that changes the value once released).
    if let Some((_, value)) = last_amendment {
        assert_eq!(state.value(), Some(&value));
    }
    assert!(lis_commands::audit::verify_chains(&db.app, &mut |_| {})
        .await
        .unwrap()
        .is_intact());
    db.drop().await;
}
