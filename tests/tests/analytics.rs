//! MongoDB analytics from a lab day: volumes, turnaround, rejections and abnormal rates;
//! replaying every event (as after a crash between the MongoDB write and the offset
//! commit) changes nothing; tests ordered under two catalogue versions keep their own
//! version's department.

use lis_projections::analytics_queries::{abnormal_rates, rejections, turnaround, volumes};
use lis_projections::envelope::Envelope;
use lis_projections::models::analytics::Analytics;
use lis_projections::projection::{decode, Projection};
use lis_tests::{catch_up, lab_day, TestDb};

/// Every report from yesterday to tomorrow (UTC): a lab day's stated times (a
/// collection an hour ago, say) may fall on the day before a run just after midnight.
async fn summary(a: &Analytics) -> serde_json::Value {
    let day = |offset: i64| {
        (chrono::Utc::now() + chrono::Duration::days(offset))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (from, to) = (day(-1), day(1));
    serde_json::json!({
        "volumes": volumes(a, &from, &to).await.unwrap(),
        "turnaround": turnaround(a, &from, &to).await.unwrap(),
        "rejections": rejections(a, &from, &to).await.unwrap(),
        "rates": abnormal_rates(a, &from, &to).await.unwrap(),
    })
}

#[tokio::test]
async fn a_lab_day_reaches_the_analytics_and_replays_change_nothing() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    let analytics = lis_tests::test_analytics(&db).await;
    let mongo = analytics.database().clone();
    catch_up(&db.app, &analytics).await;

    let first = summary(&analytics).await;
    let v = &first["volumes"];
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["collection_site"] == "OPD 2" && r["tests"] == 1));
    assert_eq!(v[0]["test_code"], "HB");
    assert_eq!(v[0]["department"], "HAEMATOLOGY");
    assert_eq!(
        first["rejections"],
        serde_json::json!([{"reason": "haemolysed", "collection_site": "OPD 2", "specimens": 1}])
    );
    let rates = &first["rates"];
    assert_eq!(rates[0]["test_code"], "K");
    assert_eq!(
        (rates[0]["abnormal"].as_i64(), rates[0]["critical"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(rates[1]["test_code"], "NA");
    assert_eq!(
        (rates[1]["abnormal"].as_i64(), rates[1]["critical"].as_i64()),
        (Some(1), Some(0))
    );
    let tat = first["turnaround"].as_array().unwrap();
    assert_eq!(tat.len(), 2);
    assert!(tat.iter().all(|t| t["priority"] == "routine"
        && t["results"] == 1
        && t["p50_minutes"].as_f64().unwrap() >= 0.0));

    // Replay every event straight into the analytics, past the offsets: the MongoDB
    // writes themselves must be idempotent.
    let events = lis_tests::whole_feed(&db.app).await;
    let mut conn = db.app.acquire().await.unwrap();
    for e in &events {
        let env = Envelope::from(e);
        analytics
            .apply(&mut conn, &env, &decode(&env).unwrap())
            .await
            .unwrap();
    }
    // And an older value event again after the newer ones: the current flags stay.
    for e in events.iter().filter(|e| e.event_type == "ResultRecorded") {
        let env = Envelope::from(e);
        analytics
            .apply(&mut conn, &env, &decode(&env).unwrap())
            .await
            .unwrap();
    }
    drop(conn);
    assert_eq!(summary(&analytics).await, first);
    mongo.drop().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn tests_ordered_under_two_catalogue_versions_in_one_batch_keep_each_versions_department() {
    // Potassium moves department in catalogue v2; an order placed before the import and
    // one after are projected in one batch (one department look-up for both).
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    lis_tests::place(&ledger, "MRN-701", &["K"]).await;
    let moved = lis_tests::SEED_CATALOGUE.replace(
        "K,2823-3,Potassium,BIOCHEMISTRY,",
        "K,2823-3,Potassium,EMERGENCY LAB,",
    );
    assert_ne!(
        moved,
        lis_tests::SEED_CATALOGUE,
        "the seed's K line changed"
    );
    lis_commands::catalogue::import(&db.app, &moved, "v2", "test")
        .await
        .unwrap();
    lis_tests::place(&ledger, "MRN-702", &["K"]).await;

    let analytics = lis_tests::test_analytics(&db).await;
    let mongo = analytics.database().clone();
    let envelopes: Vec<Envelope> = lis_tests::whole_feed(&db.app)
        .await
        .iter()
        .map(Envelope::from)
        .collect();
    lis_projections::projection::apply_batch(&db.app, &analytics, &envelopes, None)
        .await
        .unwrap();
    // Yesterday to tomorrow: the two orders may fall either side of midnight (UTC).
    let day = |offset: i64| {
        (chrono::Utc::now() + chrono::Duration::days(offset))
            .format("%Y-%m-%d")
            .to_string()
    };
    let mut departments: Vec<(String, String, i64)> = volumes(&analytics, &day(-1), &day(1))
        .await
        .unwrap()
        .iter()
        .map(|v| {
            let v = serde_json::to_value(v).unwrap();
            (
                v["test_code"].as_str().unwrap().to_string(),
                v["department"].as_str().unwrap().to_string(),
                v["tests"].as_i64().unwrap(),
            )
        })
        .collect();
    departments.sort();
    assert_eq!(
        departments,
        [
            ("K".to_string(), "BIOCHEMISTRY".to_string(), 1),
            ("K".to_string(), "EMERGENCY LAB".to_string(), 1)
        ]
    );
    mongo.drop().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_fact_s_day_is_the_lab_s_calendar_day() {
    for (zone, expected) in [
        (chrono_tz::Asia::Kolkata, "2026-03-04"),
        (chrono_tz::UTC, "2026-03-03"),
    ] {
        assert_eq!(day_of_a_collection(zone).await, expected, "{zone}");
    }
}

/// The analytics' day, counted in `zone`, of a tube collected at 02:00 on 4 March in
/// India (20:30 on 3 March in UTC).
async fn day_of_a_collection(zone: chrono_tz::Tz) -> String {
    use lis_domain::actor::{ActorId, Role};
    use lis_domain::ids::{AccessionNumber, SampleId};
    use lis_domain::sample::{CollectSample, SampleCommand};
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = lis_tests::place(&ledger, "MRN-DAY", &["K"]).await;
    let sample = SampleId::new();
    ledger
        .execute_sample(
            sample,
            SampleCommand::Collect(CollectSample {
                sample_id: sample,
                order_id: order.order_id,
                accession_number: AccessionNumber::parse("ACC-DAY").unwrap(),
                specimen_type: "serum".into(),
                container: "red/SST".into(),
                tests: vec![lis_tests::code("K")],
                collected_by: ActorId::parse("phleb.1").unwrap(),
                collected_at: chrono::DateTime::parse_from_rfc3339("2026-03-03T20:30:00Z")
                    .unwrap()
                    .to_utc(),
            }),
            &lis_tests::actor("phleb.1", Role::Phlebotomist),
        )
        .await
        .unwrap();
    let analytics = lis_tests::test_analytics(&db).await.in_time_zone(zone);
    catch_up(&db.app, &analytics).await;
    let fact = analytics
        .database()
        .collection::<mongodb::bson::Document>("sample_facts")
        .find_one(mongodb::bson::doc! { "_id": sample.to_string() })
        .await
        .unwrap()
        .expect("the sample's facts");
    let day = fact.get_str("day").unwrap().to_string();
    analytics.database().drop().await.unwrap();
    db.drop().await;
    day
}

#[tokio::test]
async fn volumes_count_tests_ordered_and_not_cancelled() {
    use lis_domain::actor::Role;
    use lis_domain::order::OrderCommand;
    use lis_domain::text::Reason;
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let analytics = lis_tests::test_analytics(&db).await;
    let order = lis_tests::place(&ledger, "MRN-VOL", &["K", "NA"]).await;
    let reception = lis_tests::actor("reception.1", Role::Reception);
    let counted = || async {
        catch_up(&db.app, &analytics).await;
        let mut tests: Vec<(String, i64)> = summary(&analytics).await["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["test_code"].as_str().unwrap().to_string(),
                    v["tests"].as_i64().unwrap(),
                )
            })
            .collect();
        tests.sort();
        tests
    };
    let both = vec![("K".to_string(), 1), ("NA".to_string(), 1)];
    assert_eq!(counted().await, both);
    // NA cancelled: no longer counted.
    ledger
        .execute_order(
            order.order_id,
            OrderCommand::CancelTest {
                test: lis_tests::code("NA"),
                reason: Reason::parse("ordered twice").unwrap(),
            },
            &reception,
        )
        .await
        .unwrap();
    assert_eq!(counted().await, vec![("K".to_string(), 1)]);
    // Ordered again: counted again, once.
    ledger
        .execute_order(
            order.order_id,
            OrderCommand::AddTests {
                tests: vec![lis_tests::code("NA")],
            },
            &reception,
        )
        .await
        .unwrap();
    assert_eq!(counted().await, both);
    analytics.database().drop().await.unwrap();
    db.drop().await;
}
