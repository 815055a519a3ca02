//! 100 clients racing verify / authorise / amend on one result, each trying again after
//! it loses: the history stays a valid sequence (one verification, one release, then
//! the amendments), every loser gets a conflict or a rule refusal (409), and no
//! acknowledged change is lost: the result shows the last acknowledged amendment.
//!
//! And commands on different records of one order racing on a rule across them (a
//! test's cancellation and its result's release; a tube's rejection and the release):
//! the one stored second is decided again on what the first stored.

use cqrs_es::EventStore;
use lis_commands::store::SnapshotEventStore;
use lis_commands::{CommandError, CommandOutcome, Ledger};
use lis_domain::actor::{ActorId, Role};
use lis_domain::catalogue::CatalogueVersion;
use lis_domain::ids::{OrderId, ResultId, SampleId};
use lis_domain::order::{Order, OrderCommand, OrderEvent, OrderedTest};
use lis_domain::result::{LabResult, ResultCommand, ResultStatus};
use lis_domain::sample::{RejectionReason, SampleCommand};
use lis_domain::text::Reason;
use lis_domain::value::ResultValue;
use lis_tests::{
    actor, code, collection, place, received_serum, record_k, record_na, verified, OrderTurn,
    TestDb,
};
use std::collections::HashMap;
use std::future::Future;
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

type Outcome = Result<CommandOutcome, CommandError>;

/// Runs two commands of `order` so that each is decided before the other is stored:
/// they queue at their appends behind the test's hold on the order's turn, `first`
/// first, and go when it is let go. Before the order's records took turns, nothing
/// queued and both could be stored.
async fn decided_together(
    db: &TestDb,
    order: OrderId,
    first: impl Future<Output = Outcome> + Send + 'static,
    second: impl Future<Output = Outcome> + Send + 'static,
) -> (Outcome, Outcome) {
    let turn = OrderTurn::hold(db, order).await;
    let first = tokio::spawn(first);
    turn.queued(db, 1).await;
    let second = tokio::spawn(second);
    turn.queued(db, 2).await;
    turn.release().await;
    (first.await.unwrap(), second.await.unwrap())
}

/// A received tube with a verified potassium result, awaiting release.
async fn verified_k(ledger: &Ledger, mrn: &str) -> (OrderId, SampleId, ResultId) {
    let order = place(ledger, mrn, &["K", "NA"]).await.order_id;
    let sample = received_serum(ledger, order, &format!("ACC-{mrn}"), &["K", "NA"]).await;
    (order, sample, verified(ledger, record_k(sample, 4.2)).await)
}

async fn authorising(ledger: Arc<Ledger>, result: ResultId) -> Outcome {
    let by = ActorId::parse("path.1").unwrap();
    let path = actor("path.1", Role::Pathologist);
    ledger
        .execute_result(result, ResultCommand::Authorise { by }, &path)
        .await
}

async fn cancelling_k(ledger: Arc<Ledger>, order: OrderId) -> Outcome {
    let command = OrderCommand::CancelTest {
        test: code("K"),
        reason: Reason::parse("clinician withdrew the request").unwrap(),
    };
    let reception = actor("reception.1", Role::Reception);
    ledger.execute_order(order, command, &reception).await
}

fn refused(outcome: Outcome, expected: &str) -> String {
    match outcome {
        Err(CommandError::Rejected { rule, message }) if rule == expected => message,
        other => panic!("expected a refusal {expected}, got {other:?}"),
    }
}

async fn events_of(db: &TestDb, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&db.app)
        .await
        .unwrap()
}

/// A test's cancellation and its result's release, each decided before the other was
/// stored: the release, second in turn, is decided again and refused (before the order's
/// records took turns, both were stored: a released result of a cancelled test).
#[tokio::test]
async fn a_release_decided_before_its_tests_cancellation_was_stored_is_decided_again() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let (order, _, result) = verified_k(&ledger, "MRN-T1").await;
    let (cancel, release) = decided_together(
        &db,
        order,
        cancelling_k(ledger.clone(), order),
        authorising(ledger.clone(), result),
    )
    .await;
    cancel.expect("the cancellation, first in turn, is stored");
    refused(release, "result.test-cancelled");
    assert_eq!(ledger.decided_again(), 1);
    assert_eq!(events_of(&db, "ResultAuthorised").await, 0);
    db.drop().await;
}

/// The same race the other way round: the release first in turn is stored, and the
/// cancellation is decided again and refused (a released result is amended or
/// retracted, its test not cancelled).
#[tokio::test]
async fn a_cancellation_decided_before_a_release_was_stored_is_decided_again() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let (order, _, result) = verified_k(&ledger, "MRN-T2").await;
    let (release, cancel) = decided_together(
        &db,
        order,
        authorising(ledger.clone(), result),
        cancelling_k(ledger.clone(), order),
    )
    .await;
    release.expect("the release, first in turn, is stored");
    refused(cancel, "order.test-released");
    assert_eq!(ledger.decided_again(), 1);
    assert_eq!(events_of(&db, "TestCancelled").await, 0);
    db.drop().await;
}

async fn rejecting(ledger: Arc<Ledger>, sample: SampleId) -> Outcome {
    let tech = actor("tech.1", Role::Technologist);
    let command = SampleCommand::Reject {
        reason: RejectionReason::Mislabelled,
        detail: None,
    };
    ledger.execute_sample(sample, command, &tech).await
}

/// A tube's rejection stored while a release of its result waited for its turn: the
/// release is decided again and refused, so that no release follows the rejection in
/// the log.
#[tokio::test]
async fn a_release_decided_before_its_tubes_rejection_was_stored_is_decided_again() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let (order, sample, result) = verified_k(&ledger, "MRN-T3").await;
    let (reject, release) = decided_together(
        &db,
        order,
        rejecting(ledger.clone(), sample),
        authorising(ledger.clone(), result),
    )
    .await;
    reject.expect("the rejection, first in turn, is stored");
    refused(release, "result.sample-rejected");
    assert_eq!(events_of(&db, "ResultAuthorised").await, 0);
    db.drop().await;
}

/// The same for a result's recording: none is recorded on a tube after its rejection.
#[tokio::test]
async fn a_recording_decided_before_its_tubes_rejection_was_stored_is_decided_again() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let order = place(&ledger, "MRN-T7", &["K"]).await.order_id;
    let sample = received_serum(&ledger, order, "ACC-T7", &["K"]).await;
    let recording = {
        let ledger = ledger.clone();
        async move {
            let (id, record) = record_k(sample, 4.2);
            let tech = actor("tech.1", Role::Technologist);
            ledger.execute_result(id, record, &tech).await
        }
    };
    let (reject, record) =
        decided_together(&db, order, rejecting(ledger.clone(), sample), recording).await;
    reject.expect("the rejection, first in turn, is stored");
    refused(record, "result.sample-rejected");
    assert_eq!(events_of(&db, "ResultRecorded").await, 0);
    db.drop().await;
}

/// And for a tube's collection: none is collected for an order after its cancellation.
#[tokio::test]
async fn a_collection_decided_before_its_orders_cancellation_was_stored_is_decided_again() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let order = place(&ledger, "MRN-T8", &["K"]).await.order_id;
    let cancelling = {
        let ledger = ledger.clone();
        async move {
            let command = OrderCommand::Cancel {
                reason: Reason::parse("patient discharged").unwrap(),
            };
            let reception = actor("reception.1", Role::Reception);
            ledger.execute_order(order, command, &reception).await
        }
    };
    let collecting = {
        let ledger = ledger.clone();
        async move {
            let (sample, command) = collection(order, "ACC-T8", "serum", "red/SST", &["K"]);
            let phleb = actor("phleb.1", Role::Phlebotomist);
            ledger.execute_sample(sample, command, &phleb).await
        }
    };
    let (cancel, collect) = decided_together(&db, order, cancelling, collecting).await;
    cancel.expect("the cancellation, first in turn, is stored");
    refused(collect, "sample.order-cancelled");
    assert_eq!(events_of(&db, "SampleCollected").await, 0);
    db.drop().await;
}

/// One test of an order resulted on two tubes (a repeat draw) and both released in the
/// same instant: one is stored, the other decided again and refused, as it is when sent
/// after the first; once the first is retracted, the second is released.
#[tokio::test]
async fn two_tubes_results_of_one_test_are_not_both_released_even_in_the_same_instant() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let order = place(&ledger, "MRN-T4", &["K"]).await.order_id;
    let first = received_serum(&ledger, order, "ACC-T4-1", &["K"]).await;
    let second = received_serum(&ledger, order, "ACC-T4-2", &["K"]).await;
    let (first, second) = (
        verified(&ledger, record_k(first, 4.2)).await,
        verified(&ledger, record_k(second, 4.2)).await,
    );
    let (first_release, second_release) = decided_together(
        &db,
        order,
        authorising(ledger.clone(), first),
        authorising(ledger.clone(), second),
    )
    .await;
    first_release.expect("the first in turn is released");
    let message = refused(second_release, "result.test-already-released");
    assert!(message.contains(&first.to_string()), "{message}");
    assert_eq!(events_of(&db, "ResultAuthorised").await, 1);
    // Retracted (entered in error), the first no longer stands in the way.
    let path = actor("path.1", Role::Pathologist);
    let retract = ResultCommand::Retract {
        reason: Reason::parse("wrong tube").unwrap(),
    };
    ledger.execute_result(first, retract, &path).await.unwrap();
    authorising(ledger.clone(), second).await.unwrap();
    db.drop().await;
}

/// A panel's tests released at once are not decided again for each other: a release
/// checks again the releases of its own test only.
#[tokio::test]
async fn releases_of_an_orders_different_tests_at_once_are_each_decided_once() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let (order, sample, k) = verified_k(&ledger, "MRN-T5").await;
    let na = verified(&ledger, record_na(sample, 140.0)).await;
    let (first, second) = decided_together(
        &db,
        order,
        authorising(ledger.clone(), k),
        authorising(ledger.clone(), na),
    )
    .await;
    first.expect("potassium released");
    second.expect("sodium released");
    assert_eq!(ledger.decided_again(), 0);
    db.drop().await;
}

/// The append's check reads what other commands committed while it waited for the
/// order's turn: read committed's fresh snapshot for each query. At a stricter level it
/// would read a snapshot from before the wait and could pass a release of a cancelled
/// test: a database set so is refused, not trusted.
#[tokio::test]
async fn a_database_at_a_stricter_isolation_level_is_refused_not_trusted() {
    let db = TestDb::new().await;
    let su = db.superuser().await;
    sqlx::query(&format!(
        "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
        db.name
    ))
    .execute(&su)
    .await
    .unwrap();
    su.close().await;
    let pool = TestDb::pool_as(lis_eventstore_migrations::APP_ROLE, &db.name).await;
    let ledger = Ledger::new(pool.clone(), Default::default(), db.vault().await);
    let placed = ledger
        .place_order(
            lis_tests::new_order("MRN-T6", &["K"]),
            &actor("reception.1", Role::Reception),
        )
        .await;
    match placed {
        Err(CommandError::Internal(message)) => {
            assert!(message.contains("read committed"), "{message}")
        }
        other => panic!("an append at repeatable read must be refused: {other:?}"),
    }
    assert_eq!(events_of(&db, "OrderPlaced").await, 0);
    pool.close().await;
    db.drop().await;
}

/// A release whose order changes before each of its five attempts to append (another
/// writer adds a test each time, outside the turn, while the release waits at its
/// append) gives up as `contended`, storing nothing, after deciding four times more.
#[tokio::test]
async fn a_command_whose_reads_keep_changing_gives_up_contended_storing_nothing() {
    let db = TestDb::new().await;
    let ledger = Arc::new(db.ledger().await);
    let (order, _, result) = verified_k(&ledger, "MRN-T9").await;
    let orders: SnapshotEventStore<Order> = SnapshotEventStore::new(db.app.clone(), 1000, vec![]);
    let mut turn = OrderTurn::hold(&db, order).await;
    let release = tokio::spawn(authorising(ledger.clone(), result));
    for added in ["CL", "CA", "GLU", "HB", "WBC"] {
        // The release is decided and waits at its append...
        turn.queued(&db, 1).await;
        // ...while its order changes: a test added (as a raw append, not in the turn).
        let context = orders.load_aggregate(&order.to_string()).await.unwrap();
        let added = OrderEvent::TestsAdded {
            tests: vec![OrderedTest {
                code: code(added),
                catalogue_version: CatalogueVersion(1),
            }],
        };
        let meta = HashMap::from([
            ("actor_id".to_string(), "reception.1".to_string()),
            ("actor_role".to_string(), "reception".to_string()),
        ]);
        orders
            .append(vec![added], context, meta, None)
            .await
            .unwrap();
        turn.let_one_through().await;
    }
    turn.release().await;
    match release.await.unwrap() {
        Err(CommandError::Contended { aggregate_id, .. }) => {
            assert_eq!(aggregate_id, result.to_string())
        }
        other => panic!("a release whose order kept changing must give up: {other:?}"),
    }
    assert_eq!(ledger.decided_again(), 4);
    assert_eq!(events_of(&db, "ResultAuthorised").await, 0);
    db.drop().await;
}
