//! Append and load through the ledger, the audit columns of every row, and optimistic
//! concurrency against the real PostgreSQL event store.

use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use lis_commands::reads::InTurn;
use lis_commands::store::SnapshotEventStore;
use lis_commands::CommandError;
use lis_domain::actor::{ActorId, Role};
use lis_domain::catalogue::CatalogueVersion;
use lis_domain::flags::Flag;
use lis_domain::ids::{AccessionNumber, SampleId, TestCode};
use lis_domain::order::{Order, OrderCommand, OrderEvent, OrderedTest, TestLine};
use lis_domain::result::{CriticalNotification, NotificationMethod, ResultCommand, ResultStatus};
use lis_domain::sample::{AliquotSpec, SampleCommand};
use lis_domain::text::{PersonName, Reason};
use lis_tests::{actor, code, place, received_serum, record_k, released_k, OrderTurn, TestDb};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;

#[tokio::test]
async fn a_lab_workflow_is_appended_and_loads_back_with_audit_columns() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-100", &["K", "NA"]).await;
    assert_eq!(order.outcome.version, 1);
    let sample = received_serum(&ledger, order.order_id, "ACC-100", &["K", "NA"]).await;
    let result = released_k(&ledger, sample, 4.2).await;

    let loaded = ledger.result(result).await.unwrap();
    assert_eq!(loaded.status(), Some(ResultStatus::Released));
    let order_state = ledger.order(order.order_id).await.unwrap();
    let facts = order_state.facts().unwrap();
    assert_eq!(facts.order_number, order.order_number);
    assert!(matches!(facts.tests[&code("K")], TestLine::Active { .. }));

    let rows = sqlx::query(
        "SELECT aggregate_type, sequence, event_type, position, tx_id::text AS tx, recorded_at,
                metadata ->> 'actor_id' AS actor, metadata ->> 'actor_role' AS role,
                metadata ->> 'correlation_id' AS correlation, metadata ->> 'client_addr' AS addr
           FROM events ORDER BY position",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    let types: Vec<String> = rows.iter().map(|r| r.get("event_type")).collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "SampleCollected",
            "SampleReceived",
            "ResultRecorded",
            "ResultVerified",
            "ResultAuthorised"
        ]
    );
    let actors: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get("actor"), r.get("role")))
        .collect();
    assert_eq!(actors[0], ("reception.1".into(), "reception".into()));
    assert_eq!(actors[5], ("path.1".into(), "pathologist".into()));
    for pair in rows.windows(2) {
        let (a, b): (i64, i64) = (pair[0].get("position"), pair[1].get("position"));
        assert!(a < b, "positions increase in commit order here");
        let (ta, tb): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            (pair[0].get("recorded_at"), pair[1].get("recorded_at"));
        assert!(ta <= tb);
    }
    for r in &rows {
        assert!(r.get::<Option<String>, _>("correlation").is_some());
        assert_eq!(
            r.get::<Option<String>, _>("addr").as_deref(),
            Some("127.0.0.1")
        );
        assert!(!r.get::<String, _>("tx").is_empty());
    }
    // The outcome of the last command names its event's global position.
    let last: i64 = rows.last().unwrap().get("position");
    let (id, _) = record_k(sample, 0.0);
    assert_eq!(id, result);
    let ack = ledger
        .execute_result(
            result,
            ResultCommand::Acknowledge {
                by: ActorId::parse("dr.rao").unwrap(),
            },
            &actor("dr.rao", Role::Clinician),
        )
        .await
        .unwrap();
    assert_eq!(ack.version, 4);
    assert!(ack.position > last);
    db.drop().await;
}

#[tokio::test]
async fn a_reason_given_with_a_command_is_kept_in_the_event_metadata() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-101", &["K", "NA"]).await;
    ledger
        .execute_order(
            order.order_id,
            OrderCommand::CancelTest {
                test: code("NA"),
                reason: Reason::parse("requested twice").unwrap(),
            },
            &actor("reception.1", Role::Reception),
        )
        .await
        .unwrap();
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT metadata ->> 'reason' FROM events WHERE event_type = 'TestCancelled'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(reason.as_deref(), Some("requested twice"));
    db.drop().await;
}

#[tokio::test]
async fn two_writers_from_the_same_version_one_wins_one_conflicts() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-102", &["K"]).await;
    let id = order.order_id.to_string();

    // Both writers load version 1, then both commit an event as version 2.
    let store: SnapshotEventStore<Order> = SnapshotEventStore::new(db.app.clone(), 20, vec![]);
    let first = store.load_aggregate(&id).await.unwrap();
    let second = store.load_aggregate(&id).await.unwrap();
    let meta = reception_metadata();
    let (a, b) = tokio::join!(
        store.commit(vec![tests_added("NA")], first, meta.clone()),
        store.commit(vec![tests_added("CL")], second, meta)
    );
    let conflicts = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(AggregateError::AggregateConflict)))
        .count();
    assert_eq!(conflicts, 1, "exactly one writer conflicts: {a:?} {b:?}");
    assert_eq!([&a, &b].iter().filter(|r| r.is_ok()).count(), 1);

    // Nothing lost and nothing doubled: the winner's event is version 2, and only it.
    let mut ctx = store.load_aggregate(&id).await.unwrap();
    let facts = ctx.aggregate().facts().unwrap();
    let winner = if a.is_ok() { "NA" } else { "CL" };
    let loser = if a.is_ok() { "CL" } else { "NA" };
    assert!(facts.tests.contains_key(&code(winner)));
    assert!(!facts.tests.contains_key(&code(loser)));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(&id)
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(count, 2);
    db.drop().await;
}

#[tokio::test]
async fn two_commands_on_the_version_they_read_one_wins_the_other_is_told_it_changed() {
    let db = TestDb::new().await;
    let ledger = std::sync::Arc::new(db.ledger().await);
    let order = place(&ledger, "MRN-103", &["K", "NA", "CL"]).await;
    // Appends wait on a lock while both commands load version 1 and decide.
    let su = db.superuser().await;
    let mut lock = su.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let cancel = |test: &'static str| {
        let ledger = ledger.clone();
        let id = order.order_id;
        tokio::spawn(async move {
            let ctx = actor("reception.1", Role::Reception);
            ctx.expected_version.set(1).unwrap();
            let command = OrderCommand::CancelTest {
                test: code(test),
                reason: Reason::parse("not needed").unwrap(),
            };
            ledger.execute_order(id, command, &ctx).await
        })
    };
    let (a, b) = (cancel("NA"), cancel("CL"));
    // Both appends are waiting on the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&su)
        .await
        .unwrap();
        if waiting == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{waiting} waiting");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    lock.commit().await.unwrap();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(
        [&a, &b].iter().filter(|r| r.is_ok()).count(),
        1,
        "{a:?} {b:?}"
    );
    // The loser named version 1, and the record changed while it ran: 412, not 409.
    let loser = if a.is_ok() { &b } else { &a };
    assert!(
        matches!(
            loser,
            Err(CommandError::Stale {
                expected: 1,
                current: None,
                position: Some(_),
                ..
            })
        ),
        "{loser:?}"
    );
    su.close().await;
    db.drop().await;
}

#[tokio::test]
async fn racing_commands_through_the_ledger_lose_no_update() {
    let db = TestDb::new().await;
    let ledger = std::sync::Arc::new(db.ledger().await);
    let order = place(&ledger, "MRN-103", &["K"]).await;
    let tests = [
        "NA", "CL", "CO2", "CA", "MG", "PHOS", "ALB", "TP", "CREA", "URIC",
    ];
    let mut handles = Vec::new();
    for t in tests {
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let r = ledger
                .execute_order(
                    order.order_id,
                    OrderCommand::AddTests {
                        tests: vec![code(t)],
                    },
                    &actor("reception.1", Role::Reception),
                )
                .await;
            (t, r)
        }));
    }
    let mut won = Vec::new();
    for h in handles {
        let (t, r) = h.await.unwrap();
        match r {
            Ok(_) => won.push(t),
            Err(CommandError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error for {t}: {e}"),
        }
    }
    assert!(!won.is_empty());
    let facts = ledger.order(order.order_id).await.unwrap().facts().unwrap();
    // Every acknowledged change is there; every refused one is absent.
    for t in tests {
        assert_eq!(
            facts.tests.contains_key(&code(t)),
            won.contains(&t),
            "test {t}"
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn a_refused_command_writes_nothing_and_says_why() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-104", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-104", &["K"]).await;
    let (id, _) = record_k(sample, 0.0);
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();

    let (_, wrong_unit) = {
        let (id, cmd) = record_k(sample, 4.0);
        let cmd = match cmd {
            ResultCommand::Record(mut r) => {
                r.value = lis_domain::value::ResultValue::Numeric {
                    value: 4.0,
                    unit: "mg/dL".into(),
                };
                ResultCommand::Record(r)
            }
            other => other,
        };
        (id, cmd)
    };
    match ledger
        .execute_result(id, wrong_unit, &actor("tech.1", Role::Technologist))
        .await
    {
        Err(CommandError::Invalid { rule, errors }) => {
            assert_eq!(rule, "result.invalid");
            assert_eq!(errors.0[0].field, "value/unit");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    match ledger
        .execute_result(
            id,
            ResultCommand::Verify {
                by: ActorId::parse("tech.1").unwrap(),
            },
            &actor("tech.1", Role::Technologist),
        )
        .await
    {
        Err(CommandError::Rejected { rule, .. }) => assert_eq!(rule, "result.not-recorded"),
        other => panic!("expected rejection, got {other:?}"),
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(before, after);
    db.drop().await;
}

#[tokio::test]
async fn flags_use_the_patients_previous_released_result_and_released_tests_cannot_be_cancelled() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let first = place(&ledger, "MRN-105", &["K"]).await;
    let s1 = received_serum(&ledger, first.order_id, "ACC-105-1", &["K"]).await;
    released_k(&ledger, s1, 3.0).await;

    // Released: the test can no longer be cancelled, nor the order.
    let refused = ledger
        .execute_order(
            first.order_id,
            OrderCommand::CancelTest {
                test: code("K"),
                reason: Reason::parse("not needed").unwrap(),
            },
            &actor("reception.1", Role::Reception),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Rejected {
                rule: "order.test-released",
                ..
            })
        ),
        "{refused:?}"
    );

    // A later sample of the same patient: delta check against 3.0.
    let second = place(&ledger, "MRN-105", &["K"]).await;
    let s2 = received_serum(&ledger, second.order_id, "ACC-105-2", &["K"]).await;
    let (id, record) = record_k(s2, 5.0);
    ledger
        .execute_result(id, record, &actor("tech.1", Role::Technologist))
        .await
        .unwrap();
    let flags: serde_json::Value = sqlx::query_scalar(
        "SELECT payload -> 'ResultRecorded' -> 'flags' FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(id.to_string())
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(flags, serde_json::json!([Flag::D]));
    db.drop().await;
}

#[tokio::test]
async fn a_split_sent_again_after_stopping_part_way_finishes_it_once() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let tech = actor("tech.1", Role::Technologist);
    let order = place(&ledger, "MRN-ALQ", &["K", "NA"]).await;
    let parent = received_serum(&ledger, order.order_id, "ACC-ALQ", &["K", "NA"]).await;
    let spec = |accession: &str, test: &str| {
        let accession = AccessionNumber::parse(accession).unwrap();
        AliquotSpec {
            sample_id: SampleId::aliquot_of(parent, &accession),
            accession_number: accession,
            tests: vec![code(test)],
        }
    };
    let children = vec![spec("ACC-ALQ-1", "K"), spec("ACC-ALQ-2", "NA")];
    // The first attempt stopped after the parent's record and the first child.
    let split = ledger
        .execute_sample(
            parent,
            SampleCommand::Aliquot {
                children: children.clone(),
            },
            &tech,
        )
        .await
        .unwrap();
    ledger
        .execute_sample(
            children[0].sample_id,
            SampleCommand::CreateAliquot {
                sample_id: children[0].sample_id,
                parent_id: parent,
            },
            &tech,
        )
        .await
        .unwrap();
    let count = || {
        let pool = db.app.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let before = count().await;
    // Sent again: the parent records nothing new, the missing child is made.
    for attempt in 0..2 {
        let outcomes = ledger
            .aliquot(parent, children.clone(), &tech)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        assert_eq!(count().await, before + 1, "attempt {attempt}");
        assert_eq!(
            (outcomes[0].version, outcomes[0].position),
            (split.version, split.position)
        );
        let made: Vec<String> = outcomes[1..]
            .iter()
            .map(|o| o.aggregate_id.clone())
            .collect();
        let expected: Vec<String> = children.iter().map(|c| c.sample_id.to_string()).collect();
        assert_eq!(made, expected);
    }
    let parent_splits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'SampleAliquoted'",
    )
    .bind(parent.to_string())
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(parent_splits, 1);
    for child in &children {
        let sample = ledger.sample(child.sample_id).await.unwrap();
        let facts = sample.facts().expect("created");
        assert_eq!(
            (facts.parent, &facts.accession_number),
            (Some(parent), &child.accession_number)
        );
    }
    // Another split naming a child already split off is refused, not listed twice.
    let again = ledger
        .aliquot(
            parent,
            vec![children[0].clone(), spec("ACC-ALQ-3", "K")],
            &tech,
        )
        .await;
    assert!(
        matches!(again, Err(CommandError::Invalid { .. })),
        "{again:?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn accession_numbers_are_unique_in_the_lab() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-106", &["K", "NA"]).await;
    received_serum(&ledger, order.order_id, "ACC-106", &["K"]).await;
    let again = lis_domain::ids::SampleId::new();
    let r = ledger
        .execute_sample(
            again,
            lis_domain::sample::SampleCommand::Collect(lis_domain::sample::CollectSample {
                sample_id: again,
                order_id: order.order_id,
                accession_number: lis_domain::ids::AccessionNumber::parse("ACC-106").unwrap(),
                specimen_type: "serum".into(),
                container: "red/SST".into(),
                tests: vec![code("NA")],
                collected_by: ActorId::parse("phleb.1").unwrap(),
                collected_at: chrono::Utc::now(),
            }),
            &actor("phleb.1", Role::Phlebotomist),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(CommandError::Rejected {
                rule: "sample.accession-in-use",
                ..
            })
        ),
        "{r:?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn several_events_of_one_command_append_in_order_chain_and_snapshot() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    // As any record appends, and as an order's records append, in its turn: the
    // snapshot then goes in the same statement.
    for in_turn in [false, true] {
        let order = place(&ledger, &format!("MRN-104-{in_turn}"), &["K"]).await;
        let id = order.order_id.to_string();
        // Snapshots every 2 events: appending versions 2 and 3 crosses the boundary at 2.
        let store: SnapshotEventStore<Order> = SnapshotEventStore::new(db.app.clone(), 2, vec![]);
        let mut context = store.load_aggregate(&id).await.unwrap();
        let meta = reception_metadata();
        // As a command's event sink does: the context's aggregate holds the new events.
        let events = vec![tests_added("NA"), tests_added("CL")];
        for e in &events {
            context.aggregate.apply(e.clone());
        }
        let turn = in_turn.then(|| InTurn {
            order: id.clone(),
            reads: vec![],
        });
        let appended = store
            .append(events, context, meta, turn.as_ref())
            .await
            .unwrap();
        let sequences: Vec<i64> = appended.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, [2, 3]);
        assert!(appended[0].position < appended[1].position);
        let stored: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT sequence, position FROM events WHERE aggregate_id = $1 AND sequence > 1 ORDER BY sequence",
        )
        .bind(&id)
        .fetch_all(&db.app)
        .await
        .unwrap();
        let answered: Vec<(i64, i64)> = appended.iter().map(|a| (a.sequence, a.position)).collect();
        assert_eq!(
            stored, answered,
            "the answer is where the events really are"
        );

        // The snapshot holds all three events, and loading from it equals a full replay.
        let snapshot: (i64, i64) = sqlx::query_as(
            "SELECT last_sequence, current_snapshot FROM snapshots WHERE aggregate_id = $1",
        )
        .bind(&id)
        .fetch_one(&db.app)
        .await
        .unwrap();
        assert_eq!(snapshot, (3, 1));
        let mut from_snapshot = store.load_aggregate(&id).await.unwrap();
        let replayed = SnapshotEventStore::<Order>::new(db.app.clone(), 1000, vec![])
            .load_events(&id)
            .await
            .unwrap();
        assert_eq!(replayed.len(), 3);
        let facts = from_snapshot.aggregate().facts().unwrap();
        for t in ["K", "NA", "CL"] {
            assert!(facts.tests.contains_key(&code(t)), "{t} after the snapshot");
        }
        // The whole state, not only the tests present: a snapshot that applied an event twice
        // or was not read at all (a silent fall-back to replay) would differ here.
        let mut folded = Order::default();
        for e in replayed {
            folded.apply(e.payload);
        }
        let folded = serde_json::to_value(&folded).unwrap();
        assert_eq!(
            serde_json::to_value(from_snapshot.aggregate()).unwrap(),
            folded
        );
        let stored: serde_json::Value =
            sqlx::query_scalar("SELECT payload::jsonb FROM snapshots WHERE aggregate_id = $1")
                .bind(&id)
                .fetch_one(&db.app)
                .await
                .unwrap();
        assert_eq!(
            stored, folded,
            "the snapshot was written from the right state"
        );
    }
    // The second event's trigger saw the first one in the same statement: intact chain.
    let report = lis_commands::audit::verify_chains(&db.app, &mut |_| {})
        .await
        .unwrap();
    assert!(report.is_intact(), "{report:?}");
    db.drop().await;
}

#[tokio::test]
async fn postgres_es_reads_what_the_store_wrote_as_the_store_reads_it() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-106", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-106", &["K"]).await;
    let result = released_k(&ledger, sample, 4.4).await;
    let repo = postgres_es::PostgresEventRepository::new(db.app.clone());
    // The store's own reads against postgres-es's, aggregate by aggregate: same events,
    // same numbers, same payloads and metadata.
    async fn same<A: Aggregate>(
        db: &TestDb,
        repo: &postgres_es::PostgresEventRepository,
        id: String,
    ) {
        use cqrs_es::persist::PersistedEventRepository;
        let theirs = repo.get_events::<A>(&id).await.unwrap();
        let ours = SnapshotEventStore::<A>::new(db.app.clone(), 1000, vec![])
            .load_events(&id)
            .await
            .unwrap();
        assert!(!ours.is_empty(), "{} {id} has events", A::TYPE);
        let theirs: Vec<_> = theirs
            .into_iter()
            .map(|e| (e.sequence, e.event_type, e.payload, e.metadata))
            .collect();
        let ours: Vec<_> = ours
            .into_iter()
            .map(|e| {
                let s = cqrs_es::persist::SerializedEvent::try_from(&e).unwrap();
                (s.sequence, s.event_type, s.payload, s.metadata)
            })
            .collect();
        assert_eq!(ours, theirs, "{} {id}", A::TYPE);
    }
    same::<Order>(&db, &repo, order.order_id.to_string()).await;
    same::<lis_domain::sample::Sample>(&db, &repo, sample.to_string()).await;
    same::<lis_domain::result::LabResult>(&db, &repo, result.to_string()).await;
    db.drop().await;
}

#[tokio::test]
async fn the_database_going_away_is_unavailable_and_a_bad_statement_is_a_defect() {
    use lis_commands::error::is_unavailable;
    use sqlx::Connection;
    let db = TestDb::new().await;
    let options = TestDb::options_as(lis_eventstore_migrations::APP_ROLE, &db.name);
    // A session ended by the server (as at a shutdown or restart: SQLSTATE 57P01).
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let ended = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(&ended, sqlx::Error::Database(d) if d.code().as_deref() == Some("57P01")),
        "the SQLSTATE branch is what is tested here: {ended:?}"
    );
    assert!(is_unavailable(&ended), "{ended:?}");
    // A connection to a port where nothing listens.
    let nowhere = sqlx::PgConnection::connect_with(&options.clone().port(1))
        .await
        .unwrap_err();
    assert!(is_unavailable(&nowhere), "{nowhere:?}");
    // Defects and refusals are not the database being away.
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    for bad in ["SELEC 1", "SELECT 1/0", "SELECT * FROM no_such_table"] {
        let e = sqlx::query(bad).execute(&mut conn).await.unwrap_err();
        assert!(!is_unavailable(&e), "{bad}: {e:?}");
        assert!(
            matches!(CommandError::from(e), CommandError::Internal(_)),
            "{bad}"
        );
    }
    conn.close().await.unwrap();
    db.drop().await;
}

/// A `TestsAdded` event of one test under catalogue version 1.
#[tokio::test]
async fn a_snapshot_written_meanwhile_is_a_conflict_and_an_unreadable_one_is_replayed_past() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    // As any record appends, and as an order's records append, in its turn (the snapshot
    // then in the same statement). The last order goes on to the unreadable snapshot.
    let store: SnapshotEventStore<Order> = SnapshotEventStore::new(db.app.clone(), 2, vec![]);
    let mut id = String::new();
    for in_turn in [false, true] {
        id = place(&ledger, &format!("MRN-105-{in_turn}"), &["K"])
            .await
            .order_id
            .to_string();
        let turn = in_turn.then(|| InTurn {
            order: id.clone(),
            reads: vec![],
        });
        let meta = reception_metadata();
        let append = |mut context: <SnapshotEventStore<Order> as EventStore<Order>>::AC,
                      codes: &[&str]| {
            let events: Vec<OrderEvent> = codes.iter().map(|c| tests_added(c)).collect();
            for e in &events {
                context.aggregate.apply(e.clone());
            }
            store.append(events, context, meta.clone(), turn.as_ref())
        };
        // Versions 2 and 3 cross the boundary at 2: the first snapshot.
        let context = store.load_aggregate(&id).await.unwrap();
        append(context, &["NA", "CL"]).await.unwrap();

        // Another writer's snapshot lands after this context was loaded. Crossing the next
        // boundary (4) with the stale context is a conflict, and none of its events stay.
        let stale = store.load_aggregate(&id).await.unwrap();
        assert_eq!(stale.current_snapshot, Some(1));
        sqlx::query(
            "UPDATE snapshots SET current_snapshot = current_snapshot + 1 WHERE aggregate_id = $1",
        )
        .bind(&id)
        .execute(&db.app)
        .await
        .unwrap();
        let count = || {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_id = $1")
                .bind(&id)
                .fetch_one(&db.app)
        };
        let before = count().await.unwrap();
        let refused = append(stale, &["CA"]).await.unwrap_err();
        assert!(
            matches!(refused, AggregateError::AggregateConflict),
            "{refused:?}"
        );
        assert_eq!(
            count().await.unwrap(),
            before,
            "the refused events were kept"
        );
    }
    // A snapshot this code cannot read (an older shape): loading replays every event.
    sqlx::query("UPDATE snapshots SET payload = '\"an older shape\"' WHERE aggregate_id = $1")
        .bind(&id)
        .execute(&db.app)
        .await
        .unwrap();
    let mut loaded = store.load_aggregate(&id).await.unwrap();
    let mut folded = Order::default();
    for e in store.load_events(&id).await.unwrap() {
        folded.apply(e.payload);
    }
    assert_eq!(loaded.current_sequence, 3);
    assert_eq!(
        serde_json::to_value(loaded.aggregate()).unwrap(),
        serde_json::to_value(&folded).unwrap()
    );
    let facts = loaded.aggregate().facts().unwrap();
    for t in ["K", "NA", "CL"] {
        assert!(facts.tests.contains_key(&code(t)), "{t} after the replay");
    }
    db.drop().await;
}

fn tests_added(code: &str) -> OrderEvent {
    OrderEvent::TestsAdded {
        tests: vec![OrderedTest {
            code: TestCode::parse(code).unwrap(),
            catalogue_version: CatalogueVersion(1),
        }],
    }
}

/// The least metadata the store accepts: an actor and a role.
fn reception_metadata() -> HashMap<String, String> {
    HashMap::from([
        ("actor_id".to_string(), "a".to_string()),
        ("actor_role".to_string(), "reception".to_string()),
    ])
}

/// A command takes one connection for all its statements (its aggregate's load, the
/// rules' look-ups, the patient's key, the append: `lis_commands::connection`), where it
/// took one for each, and sqlx tests a connection with a round trip each time it is
/// given back. Counted by the pool's releases, on a pool of one connection: a statement
/// that waited for a connection its own command holds would stop the command until the
/// pool's timeout.
#[tokio::test]
async fn a_command_takes_one_connection_for_all_its_statements() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let db = TestDb::new().await;
    let released = Arc::new(AtomicUsize::new(0));
    let counter = released.clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .after_release(move |_, _| {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(true)
            })
        })
        .connect_with(TestDb::options_as(
            lis_eventstore_migrations::APP_ROLE,
            &db.name,
        ))
        .await
        .unwrap();
    let ledger = lis_commands::Ledger::new(
        pool.clone(),
        lis_commands::LedgerConfig::default(),
        lis_tests::vault_on(&pool).await,
    );
    // A patient with a released potassium, and a second order for them: recording,
    // verifying and releasing its potassium look up the sample, the order, the
    // catalogue, the previous result and the patient's key.
    let first = place(&ledger, "MRN-ONE-CONN", &["K"]).await;
    let sample = received_serum(&ledger, first.order_id, "ACC-ONE-1", &["K"]).await;
    released_k(&ledger, sample, 4.0).await;
    let second = place(&ledger, "MRN-ONE-CONN", &["K"]).await;
    let sample = received_serum(&ledger, second.order_id, "ACC-ONE-2", &["K"]).await;
    let (id, record) = record_k(sample, 4.6);
    let given_back = || async {
        // The pool gives a connection back in a task of its own, after the command.
        for _ in 0..200 {
            if pool.num_idle() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        released.swap(0, Ordering::SeqCst)
    };
    given_back().await;
    let commands = [
        (record, actor("tech.1", Role::Technologist)),
        (
            ResultCommand::Verify {
                by: ActorId::parse("tech.1").unwrap(),
            },
            actor("tech.1", Role::Technologist),
        ),
        (
            ResultCommand::Authorise {
                by: ActorId::parse("path.1").unwrap(),
            },
            actor("path.1", Role::Pathologist),
        ),
    ];
    for (command, ctx) in commands {
        let name = command.name();
        ledger.execute_result(id, command, &ctx).await.unwrap();
        assert_eq!(given_back().await, 1, "connections taken by {name}");
    }
    let result = ledger.result(id).await.unwrap();
    assert_eq!(result.status(), Some(ResultStatus::Released));
    pool.close().await;
    db.drop().await;
}

/// While a command holds a connection, statements for its own pool (or a clone of it)
/// run on that connection, and statements for any other pool on that pool's own: never
/// as another role, or on another database, than the pool they were sent to.
#[tokio::test]
async fn a_commands_connection_serves_its_own_pool_and_no_other() {
    use lis_commands::connection::{connection, within};
    use lis_eventstore_migrations::{APP_ROLE, OWNER_ROLE};
    let db = TestDb::new().await;
    let who = |pool: sqlx::PgPool| async move {
        let row: (String, i32) = sqlx::query_as("SELECT current_user::text, pg_backend_pid()")
            .fetch_one(&mut *connection(&pool).await.unwrap())
            .await
            .unwrap();
        row
    };
    let (app, owner) = (db.app.clone(), db.owner.clone());
    let seen = within(&db.app, std::time::Duration::from_secs(30), async move {
        let first = who(app.clone()).await;
        let again = who(app.clone()).await;
        let other = who(owner).await;
        (first, again, other)
    })
    .await
    .unwrap();
    let ((user, pid), (user_again, pid_again), (other_user, other_pid)) = seen;
    assert_eq!(
        (user.as_str(), user_again.as_str(), other_user.as_str()),
        (APP_ROLE, APP_ROLE, OWNER_ROLE)
    );
    assert_eq!(
        pid, pid_again,
        "the command's statements share its connection"
    );
    assert_ne!(pid, other_pid);
    db.drop().await;
}

/// A fresh database and a pool of one connection to it.
async fn one_connection_pool() -> (TestDb, sqlx::PgPool) {
    let db = TestDb::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url_as(lis_eventstore_migrations::APP_ROLE))
        .await
        .unwrap();
    (db, pool)
}

/// `pg_sleep(secs)` on a connection from `lis_commands::connection`.
async fn sleep(
    pool: sqlx::PgPool,
    secs: f64,
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query("SELECT pg_sleep($1)")
        .bind(secs)
        .execute(&mut *lis_commands::connection::connection(&pool).await.unwrap())
        .await
}

/// The pool's (size, idle) once every connection taken is back or closed. Giving back
/// and closing happen in spawned tasks, and sqlx gives a close up to 5 s (it takes them
/// all while the server is busy with the statement).
async fn settled(pool: sqlx::PgPool) -> (u32, usize) {
    for _ in 0..500 {
        if pool.num_idle() == pool.size() as usize {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (pool.size(), pool.num_idle())
}

/// A command that finishes gives its connection back to the pool; one cut short, by its
/// timeout or by its caller dropping it mid-statement, closes it (a connection in the
/// middle of a statement would be tested on its way back by an unbounded round trip).
#[tokio::test]
async fn a_command_cut_short_closes_its_connection_and_one_that_finishes_returns_it() {
    use lis_commands::connection::within;
    use std::time::Duration;
    let (db, pool) = one_connection_pool().await;

    let done = within(&pool, Duration::from_secs(10), sleep(pool.clone(), 0.0)).await;
    assert!(done.unwrap().is_ok());
    assert_eq!(settled(pool.clone()).await, (1, 1), "given back, open");

    let timed_out = within(&pool, Duration::from_millis(200), sleep(pool.clone(), 30.0))
        .await
        .unwrap_err();
    assert!(
        matches!(&timed_out, sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{timed_out:?}"
    );
    assert!(lis_commands::error::is_unavailable(&timed_out));
    assert_eq!(
        settled(pool.clone()).await,
        (0, 0),
        "closed after the timeout"
    );

    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        within(&pool, Duration::from_secs(60), sleep(pool.clone(), 30.0)),
    )
    .await;
    assert!(dropped.is_err(), "the caller gave up first");
    assert_eq!(settled(pool.clone()).await, (0, 0), "closed when dropped");

    // The pool opens a fresh connection for the next command.
    let again = within(&pool, Duration::from_secs(10), sleep(pool.clone(), 0.0)).await;
    assert!(again.unwrap().is_ok());
    pool.close().await;
    db.drop().await;
}

/// Inside a request's scope, a connection taken for a statement goes back to the pool
/// when the request finishes, and is closed when the request is cut short in the middle
/// of the statement (its deadline, or its client gone); outside any scope, a connection
/// dropped mid-statement goes back to the pool as sqlx does it.
#[tokio::test]
async fn a_request_cut_short_closes_the_connection_it_holds_and_one_that_finishes_returns_it() {
    use lis_commands::connection::scoped;
    use std::time::Duration;
    let (db, pool) = one_connection_pool().await;

    assert!(scoped(sleep(pool.clone(), 0.0)).await.is_ok());
    assert_eq!(settled(pool.clone()).await, (1, 1), "given back, open");

    let cut =
        tokio::time::timeout(Duration::from_millis(200), scoped(sleep(pool.clone(), 0.5))).await;
    assert!(cut.is_err(), "the deadline came first");
    assert_eq!(settled(pool.clone()).await, (0, 0), "closed when cut short");

    // Outside a scope the same cut gives the connection back (sqlx's test on return
    // waits out the statement): the scope is what closes it.
    let cut = tokio::time::timeout(Duration::from_millis(200), sleep(pool.clone(), 0.5)).await;
    assert!(cut.is_err());
    assert_eq!(settled(pool.clone()).await, (1, 1), "given back, open");

    assert!(scoped(sleep(pool.clone(), 0.0)).await.is_ok());
    pool.close().await;
    db.drop().await;
}

/// A transaction begun by `lis_commands::connection::begin` inside a request: committed,
/// or dropped open when the request ends (rolled back on its way back, as sqlx's own
/// transaction is), its connection goes back to the pool; cut short in the middle of a
/// statement, it is closed. (User administration and the idempotency claims hold such
/// transactions.)
#[tokio::test]
async fn a_transaction_cut_short_closes_its_connection_and_one_dropped_open_is_rolled_back() {
    use lis_commands::connection::{begin, scoped};
    use std::time::Duration;
    let (db, pool) = one_connection_pool().await;
    let state = |pid: i32| {
        let app = db.app.clone();
        async move {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
                    .bind(pid)
                    .fetch_one(&app)
                    .await
                    .unwrap();
            state
        }
    };
    let pid_in_transaction = |pool: sqlx::PgPool, commit: bool| async move {
        let mut tx = begin(&pool).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        if commit {
            tx.commit().await.unwrap();
        }
        pid
    };

    let pid = scoped(pid_in_transaction(pool.clone(), true)).await;
    assert_eq!(settled(pool.clone()).await, (1, 1), "given back, open");
    let again = scoped(pid_in_transaction(pool.clone(), false)).await;
    assert_eq!(again, pid, "the same connection, given back");
    assert_eq!(settled(pool.clone()).await, (1, 1), "given back, open");
    assert_eq!(state(pid).await.as_deref(), Some("idle"), "rolled back");

    let cut = tokio::time::timeout(
        Duration::from_millis(200),
        scoped(async {
            let mut tx = begin(&pool).await.unwrap();
            sqlx::query("SELECT pg_sleep(0.5)")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }),
    )
    .await;
    assert!(cut.is_err(), "the deadline came first");
    assert_eq!(settled(pool.clone()).await, (0, 0), "closed when cut short");

    let fresh = scoped(pid_in_transaction(pool.clone(), true)).await;
    assert_ne!(fresh, pid, "a new connection");
    pool.close().await;
    db.drop().await;
}

/// Half past one in the morning of 4 March 2026 in India: still 3 March in UTC.
fn early_on_4_march_in_india() -> chrono::DateTime<chrono::Utc> {
    "2026-03-03T20:00:00Z".parse().unwrap()
}

/// An order's number carries the lab's calendar day, not UTC's: an order placed at
/// 01:30 in Kolkata is numbered on the 4th there, on the 3rd in a lab on UTC.
#[tokio::test]
async fn an_order_number_carries_the_labs_calendar_day() {
    let db = TestDb::new().await;
    for (zone, day) in [
        (chrono_tz::Asia::Kolkata, "20260304"),
        (chrono_tz::UTC, "20260303"),
    ] {
        let ledger = db
            .ledger_with(lis_commands::LedgerConfig {
                policy: lis_domain::services::LabPolicy {
                    time_zone: zone,
                    ..Default::default()
                },
                clock: early_on_4_march_in_india,
                ..Default::default()
            })
            .await;
        let placed = place(&ledger, &format!("MRN-DAY-{day}"), &["K"]).await;
        let number = placed.order_number.as_str();
        assert!(
            number.starts_with(&format!("ORD-{day}-")),
            "{zone}: {number}"
        );
    }
    db.drop().await;
}

/// A split whose parent's record is stored but whose aliquot's creation cannot reach the
/// database within the command's time is answered "outcome unknown", naming the parent:
/// its split is stored, and a caller told "unavailable" would take it for nothing
/// written. Sent again, the split finishes.
#[tokio::test]
async fn a_split_cut_short_after_its_parents_record_is_answered_outcome_unknown() {
    let db = TestDb::new().await;
    let ledger = Arc::new(
        db.ledger_with(lis_commands::LedgerConfig {
            // Long enough for the parent's split to wait out the test's steps on a busy
            // machine; the aliquot's creation then waits it out once.
            command_timeout: std::time::Duration::from_secs(6),
            ..Default::default()
        })
        .await,
    );
    let tech = actor("tech.1", Role::Technologist);
    let order = place(&ledger, "MRN-CUT", &["K"]).await.order_id;
    let parent = received_serum(&ledger, order, "ACC-CUT", &["K"]).await;
    let accession = AccessionNumber::parse("ACC-CUT-1").unwrap();
    let children = vec![AliquotSpec {
        sample_id: SampleId::aliquot_of(parent, &accession),
        accession_number: accession,
        tests: vec![code("K")],
    }];
    // The parent's split is decided and waits at its append for the order's turn...
    let turn = OrderTurn::hold(&db, order).await;
    let split = tokio::spawn({
        let (ledger, children, tech) = (ledger.clone(), children.clone(), tech.clone());
        async move { ledger.aliquot(parent, children, &tech).await }
    });
    turn.queued(&db, 1).await;
    // ...while the test closes the snapshots to readers (as their owner), so that the
    // aliquot's creation, which reads them first, waits past its command's time; then
    // the parent's split goes.
    let mut closed = db.owner.begin().await.unwrap();
    sqlx::query("LOCK TABLE snapshots IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *closed)
        .await
        .unwrap();
    turn.release().await;
    match split.await.unwrap() {
        Err(CommandError::OutcomeUnknown {
            aggregate_type,
            aggregate_id,
            message,
        }) => {
            assert_eq!(
                (aggregate_type, aggregate_id),
                ("Sample", parent.to_string())
            );
            assert!(message.contains("its split is stored"), "{message}");
        }
        other => panic!("a split stored part-way must not look like nothing: {other:?}"),
    }
    closed.rollback().await.unwrap();
    let split_stored = ledger.sample(parent).await.unwrap();
    assert_eq!(split_stored.facts().unwrap().children, children);
    let outcomes = ledger
        .aliquot(parent, children.clone(), &tech)
        .await
        .unwrap();
    assert_eq!(outcomes[1].aggregate_id, children[0].sample_id.to_string());
    db.drop().await;
}

/// A critical-value call stated more than five minutes before its value replaced an
/// earlier one (by the store's clock) was about the earlier value: refused at
/// `notified_at`. A first value may have been phoned before it was entered.
#[tokio::test]
async fn a_critical_call_stated_before_its_value_replaced_an_earlier_one_is_refused() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let tech = actor("tech.1", Role::Technologist);
    let order = place(&ledger, "MRN-CALL", &["K"]).await.order_id;
    let sample = received_serum(&ledger, order, "ACC-CALL", &["K"]).await;
    let (k, record) = record_k(sample, 7.1);
    ledger.execute_result(k, record, &tech).await.unwrap();
    // Collected 20 minutes ago; each call after that.
    let call = |minutes_ago: i64, value: &str| ResultCommand::RecordCriticalNotification {
        by: ActorId::parse("tech.1").unwrap(),
        notification: CriticalNotification {
            notified_person: PersonName::parse("Dr Rao").unwrap(),
            method: NotificationMethod::Phone,
            value_conveyed: value.into(),
            read_back_confirmed: true,
            notified_at: chrono::Utc::now() - chrono::Duration::minutes(minutes_ago),
        },
    };
    ledger
        .execute_result(k, call(10, "K 7.1"), &tech)
        .await
        .expect("a first value phoned before it was entered");
    let correct = ResultCommand::Correct {
        value: lis_domain::value::ResultValue::Numeric {
            value: 7.4,
            unit: "mmol/L".into(),
        },
        reason: Reason::parse("transcription error").unwrap(),
    };
    ledger.execute_result(k, correct, &tech).await.unwrap();
    match ledger.execute_result(k, call(10, "K 7.4"), &tech).await {
        Err(CommandError::Invalid { errors, .. }) => {
            assert_eq!(errors.0.len(), 1, "{errors:?}");
            assert_eq!(errors.0[0].field, "notified_at");
            assert!(
                errors.0[0].message.contains("about the earlier value"),
                "{errors:?}"
            );
        }
        other => panic!("a call before the correction must be refused: {other:?}"),
    }
    ledger
        .execute_result(k, call(1, "K 7.4"), &tech)
        .await
        .unwrap();
    db.drop().await;
}
