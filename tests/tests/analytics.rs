//! MongoDB analytics from a lab day: volumes, turnaround, rejections and abnormal rates;
//! replaying every event (as after a crash between the MongoDB write and the offset
//! commit) changes nothing.

use lis_projections::analytics_queries::{abnormal_rates, rejections, turnaround, volumes};
use lis_projections::envelope::Envelope;
use lis_projections::models::analytics::Analytics;
use lis_projections::projection::{decode, Projection};
use lis_tests::{catch_up, lab_day, TestDb};

async fn summary(a: &Analytics, day: &str) -> serde_json::Value {
    serde_json::json!({
        "volumes": volumes(a, day, day).await.unwrap(),
        "turnaround": turnaround(a, day, day).await.unwrap(),
        "rejections": rejections(a, day, day).await.unwrap(),
        "rates": abnormal_rates(a, day, day).await.unwrap(),
    })
}

#[tokio::test]
async fn a_lab_day_reaches_the_analytics_and_replays_change_nothing() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    let analytics = lis_tests::test_analytics(&db).await;
    let mongo = analytics.database().clone();
    catch_up(&db.app, &analytics).await;

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let first = summary(&analytics, &today).await;
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
    assert_eq!(summary(&analytics, &today).await, first);
    mongo.drop().await.unwrap();
    db.drop().await;
}
