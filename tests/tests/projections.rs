//! Read models built from the ordered feed: a lab day reaches every model; redelivery is
//! a no-op; a gap is refused; a rebuild equals the incrementally built model.

use chrono::Utc;
use lis_domain::actor::{ActorId, Role};
use lis_domain::result::{CriticalNotification, NotificationMethod, ResultCommand};
use lis_domain::sample::{HandOver, RejectionReason, SampleCommand, StorageLocation};
use lis_domain::text::{PersonName, Place, Reason};
use lis_domain::value::ResultValue;
use lis_projections::envelope::Envelope;
use lis_projections::feed::{read_after, FeedPosition};
use lis_projections::models;
use lis_projections::projection::{apply_batch, ensure_schema, schema_of, ProjectionError};
use lis_projections::worker::{feed_step, rebuild};
use lis_tests::{actor, code, collect, place, received_serum, record_k, released_k, TestDb};
use sqlx::PgPool;

fn by(id: &str) -> ActorId {
    ActorId::parse(id).unwrap()
}

/// A small lab day touching every kind of event the models read.
async fn lab_day(db: &TestDb) -> (uuid::Uuid, uuid::Uuid) {
    let ledger = db.ledger();
    let tech = actor("tech.1", Role::Technologist);
    let path = actor("path.1", Role::Pathologist);
    let order = place(&ledger, "MRN-600", &["K", "NA", "HB"]).await;
    let serum = received_serum(&ledger, order.order_id, "ACC-600", &["K", "NA"]).await;

    // HB: the first tube is haemolysed and rejected; a second one is collected.
    let edta = collect(
        &ledger,
        order.order_id,
        "ACC-601",
        "whole_blood_edta",
        "lavender EDTA",
        &["HB"],
    )
    .await;
    ledger
        .execute_sample(
            edta,
            SampleCommand::Reject {
                reason: RejectionReason::Haemolysed,
                detail: None,
            },
            &tech,
        )
        .await
        .unwrap();
    collect(
        &ledger,
        order.order_id,
        "ACC-602",
        "whole_blood_edta",
        "lavender EDTA",
        &["HB"],
    )
    .await;

    // K is critical: notified with read-back, then verified and released.
    let (k, record) = record_k(serum, 7.1);
    ledger.execute_result(k, record, &tech).await.unwrap();
    ledger
        .execute_result(
            k,
            ResultCommand::RecordCriticalNotification {
                by: by("tech.1"),
                notification: CriticalNotification {
                    notified_person: PersonName::parse("Dr Rao").unwrap(),
                    method: NotificationMethod::Phone,
                    value_conveyed: "K 7.1".into(),
                    read_back_confirmed: true,
                    notified_at: Utc::now(),
                },
            },
            &tech,
        )
        .await
        .unwrap();
    ledger
        .execute_result(k, ResultCommand::Verify { by: by("tech.1") }, &tech)
        .await
        .unwrap();
    ledger
        .execute_result(k, ResultCommand::Authorise { by: by("path.1") }, &path)
        .await
        .unwrap();

    // NA is released, then amended.
    let na = lis_domain::ids::ResultId::for_test(serum, &code("NA"));
    ledger
        .execute_result(
            na,
            ResultCommand::Record(lis_domain::result::RecordResult {
                result_id: na,
                sample_id: serum,
                test_code: code("NA"),
                value: ResultValue::Numeric {
                    value: 140.0,
                    unit: "mmol/L".into(),
                },
                method: None,
                instrument: None,
                raw_message: None,
            }),
            &tech,
        )
        .await
        .unwrap();
    ledger
        .execute_result(na, ResultCommand::Verify { by: by("tech.1") }, &tech)
        .await
        .unwrap();
    ledger
        .execute_result(na, ResultCommand::Authorise { by: by("path.1") }, &path)
        .await
        .unwrap();
    ledger
        .execute_result(
            na,
            ResultCommand::Amend {
                value: ResultValue::Numeric {
                    value: 134.0,
                    unit: "mmol/L".into(),
                },
                reason: Reason::parse("dilution error corrected").unwrap(),
            },
            &path,
        )
        .await
        .unwrap();

    // The serum tube goes to the cold room.
    ledger
        .execute_sample(
            serum,
            SampleCommand::HandOver(HandOver {
                from: PersonName::parse("Bench 2").unwrap(),
                to: PersonName::parse("Cold room").unwrap(),
                location: Place::parse("Lab basement").unwrap(),
                at: Utc::now(),
                temperature_celsius: Some(4.0),
            }),
            &tech,
        )
        .await
        .unwrap();
    ledger
        .execute_sample(
            serum,
            SampleCommand::Store {
                location: StorageLocation {
                    room: Place::parse("Cold room").unwrap(),
                    device: None,
                    rack: Some(lis_domain::text::Label::parse("R7").unwrap()),
                    position: Some(lis_domain::text::Label::parse("C3").unwrap()),
                },
            },
            &tech,
        )
        .await
        .unwrap();
    (order.order_id.as_uuid(), serum.as_uuid())
}

/// Runs a projection from the feed until it has read every event in the store. (The
/// feed may hold events back while any transaction of the cluster — another test's —
/// is open, so "nothing read this time" is not "caught up".)
async fn catch_up(pool: &PgPool, p: &dyn lis_projections::projection::Projection) {
    let schema = schema_of(p.name());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        feed_step(pool, p, 7).await.unwrap();
        let at =
            lis_projections::projection::feed_position(&mut pool.acquire().await.unwrap(), &schema)
                .await
                .unwrap();
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE (tx_id, position) > ($1::text::xid8, $2)",
        )
        .bind(at.tx_id.to_string())
        .bind(at.position)
        .fetch_one(pool)
        .await
        .unwrap();
        if behind == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not catch up",
            p.name()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn project_all(pool: &PgPool) {
    for p in models::all() {
        ensure_schema(
            &mut pool.acquire().await.unwrap(),
            p.as_ref(),
            &schema_of(p.name()),
        )
        .await
        .unwrap();
        catch_up(pool, p.as_ref()).await;
    }
}

/// Every table of a projection, as JSON, in primary-key order.
async fn dump(pool: &PgPool, schema: &str) -> serde_json::Value {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_name <> 'progress' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = serde_json::Map::new();
    for t in tables {
        let rows: serde_json::Value = sqlx::query_scalar(&format!(
            "SELECT coalesce(json_agg(x ORDER BY x::text), '[]'::json) FROM {schema}.{t} x"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(t, rows);
    }
    serde_json::Value::Object(out)
}

#[tokio::test]
async fn a_lab_day_reaches_every_read_model() {
    let db = TestDb::new().await;
    let (order, serum) = lab_day(&db).await;
    project_all(&db.app).await;

    let stages: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT test_code, stage, recollection FROM proj_orders.order_tests WHERE order_id = $1 ORDER BY test_code",
    )
    .bind(order)
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(
        stages,
        [
            ("HB".into(), "to_receive".into(), true),
            ("K".into(), "released".into(), false),
            ("NA".into(), "released".into(), false)
        ]
    );
    let dept: Option<String> = sqlx::query_scalar(
        "SELECT department FROM proj_orders.order_tests WHERE order_id = $1 AND test_code = 'HB'",
    )
    .bind(order)
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(dept.as_deref(), Some("HAEMATOLOGY"));

    let (status, holder, location): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT status, holder, location FROM proj_specimens.specimens WHERE accession_number = 'ACC-600'")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), holder.as_deref(), location.as_deref()),
        ("received", Some("storage"), Some("Cold room"))
    );
    let rejected: (String, String, bool) = sqlx::query_as(
        "SELECT status, rejection_reason, recollection_requested FROM proj_specimens.specimens WHERE accession_number = 'ACC-601'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(rejected, ("rejected".into(), "haemolysed".into(), true));
    let custody: i64 =
        sqlx::query_scalar("SELECT count(*) FROM proj_specimens.custody WHERE sample_id = $1")
            .bind(serum)
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(custody, 1);

    // The clinician's cumulative view: released results, the amendment marked.
    let cumulative: Vec<(String, f64, Vec<String>, i32)> = sqlx::query_as(
        "SELECT test_code, numeric_value, flags, amendments FROM proj_results.results
          WHERE status = 'released' ORDER BY test_code",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(
        cumulative,
        [
            ("K".into(), 7.1, vec!["HH".to_string()], 0),
            ("NA".into(), 134.0, vec!["L".to_string()], 1)
        ]
    );
    // The critical K is notified but not yet acknowledged by the clinician.
    let pending: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT test_code, notified, acknowledged FROM proj_results.results WHERE critical AND status <> 'retracted'",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(pending, [("K".into(), true, false)]);
    db.drop().await;
}

#[tokio::test]
async fn redelivered_events_change_nothing_and_a_gap_is_refused() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    project_all(&db.app).await;
    let before = dump(&db.app, "proj_results").await;

    // Everything again, as a consumer restarted from an old offset would see it.
    let events = read_after(&db.app, FeedPosition::default(), 10_000)
        .await
        .unwrap();
    let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
    let results = models::by_name("results").unwrap();
    let outcome = apply_batch(&db.app, results.as_ref(), &envelopes, None)
        .await
        .unwrap();
    assert_eq!(outcome.applied, 0);
    assert_eq!(outcome.skipped, envelopes.len());
    assert_eq!(dump(&db.app, "proj_results").await, before);

    // A new result whose second event arrives without its first: refused, nothing applied.
    let ledger = db.ledger();
    let order = place(&ledger, "MRN-601", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-610", &["K"]).await;
    let id = released_k(&ledger, sample, 4.0).await;
    let fresh = read_after(&db.app, events.last().unwrap().feed_position(), 100)
        .await
        .unwrap();
    let second: Vec<Envelope> = fresh
        .iter()
        .filter(|e| e.aggregate_id == id.to_string() && e.sequence == 2)
        .map(Envelope::from)
        .collect();
    let err = apply_batch(&db.app, results.as_ref(), &second, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProjectionError::Gap {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM proj_results.results WHERE result_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(rows, 0);
    db.drop().await;
}

#[tokio::test]
async fn a_rebuilt_model_equals_the_incrementally_built_one() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    project_all(&db.app).await;
    for p in models::all() {
        let schema = schema_of(p.name());
        let incremental = dump(&db.app, &schema).await;
        let mut seen = 0;
        let report = rebuild(&db.app, p.as_ref(), &mut |n| seen = n)
            .await
            .unwrap();
        assert!(report.events > 0);
        assert_eq!(seen, report.events);
        assert_eq!(
            dump(&db.app, &schema).await,
            incremental,
            "projection {}",
            p.name()
        );
    }
    // The rebuilt schema is live: the worker carries on from where the rebuild stopped.
    let ledger = db.ledger();
    place(&ledger, "MRN-602", &["K"]).await;
    let orders = models::by_name("orders").unwrap();
    catch_up(&db.app, orders.as_ref()).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM proj_orders.orders")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(count, 2);
    db.drop().await;
}
