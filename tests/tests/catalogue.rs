//! Catalogue import: versions accumulate, old ones stay, a bad file imports nothing.

use lis_commands::catalogue::{self, CatalogueError};
use lis_domain::actor::Role;
use lis_domain::catalogue::CatalogueVersion;
use lis_domain::ids::ResultId;
use lis_domain::result::{RecordResult, ResultCommand};
use lis_domain::value::ResultValue;
use lis_tests::{actor, code, place, received_serum, record_k, released_k, TestDb, SEED_CATALOGUE};

#[tokio::test]
async fn each_import_is_a_new_version_and_old_versions_are_kept() {
    let db = TestDb::empty().await;
    let v1 = catalogue::import(&db.app, SEED_CATALOGUE, "seed.csv", "qm.1")
        .await
        .unwrap();
    assert_eq!((v1.version, v1.tests), (CatalogueVersion(1), 48));
    // The lab narrows the potassium interval.
    let changed = SEED_CATALOGUE.replace(
        "mmol/L,numeric,3.5,5.2,3.5,5.2",
        "mmol/L,numeric,3.6,5.0,3.6,5.0",
    );
    let v2 = catalogue::import(&db.app, &changed, "lab-2026.csv", "qm.1")
        .await
        .unwrap();
    assert_eq!(v2.version, CatalogueVersion(2));
    let old = catalogue::load(&db.app, CatalogueVersion(1)).await.unwrap();
    let new = catalogue::load(&db.app, CatalogueVersion(2)).await.unwrap();
    assert_eq!(old.get(&code("K")).unwrap().reference_male.low, Some(3.5));
    assert_eq!(new.get(&code("K")).unwrap().reference_male.low, Some(3.6));
    let who: String =
        sqlx::query_scalar("SELECT imported_by FROM catalogue_versions WHERE version = 2")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(who, "qm.1");
    db.drop().await;
}

#[tokio::test]
async fn a_bad_file_names_line_and_column_and_imports_nothing() {
    let db = TestDb::empty().await;
    let bad = SEED_CATALOGUE.replacen("2823-3", "2823", 1).replacen(
        "mg/dL,numeric,70,99",
        "mg/dL,numeric,70,abc",
        1,
    );
    let err = catalogue::import(&db.app, &bad, "bad.csv", "qm.1")
        .await
        .unwrap_err();
    let CatalogueError::File(file) = err else {
        panic!("expected a file error")
    };
    let described: Vec<String> = file.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        described,
        [
            "line 10, column `ref_high_male`: `abc` is not a finite number",
            "line 17, column `loinc`: `2823` is not a LOINC code (digits-check digit)",
        ]
    );
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM catalogue_versions")
        .fetch_one(&db.app)
        .await
        .unwrap();
    let tests: i64 = sqlx::query_scalar("SELECT count(*) FROM catalogue_tests")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!((versions, tests), (0, 0));
    db.drop().await;
}

#[tokio::test]
async fn a_result_is_flagged_with_the_version_in_force_and_says_which() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-300", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-300", &["K"]).await;
    // A new version narrows K after the order was placed: recording uses the version in force.
    let changed = SEED_CATALOGUE.replace(
        "mmol/L,numeric,3.5,5.2,3.5,5.2",
        "mmol/L,numeric,3.6,5.0,3.6,5.0",
    );
    catalogue::import(&db.app, &changed, "v2.csv", "qm.1")
        .await
        .unwrap();
    let (id, record) = record_k(sample, 5.1);
    ledger
        .execute_result(id, record, &actor("tech.1", Role::Technologist))
        .await
        .unwrap();
    let (version, flags, low): (i32, serde_json::Value, f64) = sqlx::query_as(
        "SELECT (payload -> 'ResultRecorded' ->> 'catalogue_version')::int,
                payload -> 'ResultRecorded' -> 'flags',
                (payload -> 'ResultRecorded' -> 'reference' -> 'interval' ->> 'low')::float8
           FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(id.to_string())
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(version, 2);
    assert_eq!(flags, serde_json::json!(["H"]));
    assert_eq!(low, 3.6);
    db.drop().await;
}

#[tokio::test]
async fn a_delta_check_compares_only_with_a_previous_value_in_the_same_unit() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let tech = actor("tech.1", Role::Technologist);
    let order = place(&ledger, "MRN-301", &["K"]).await;
    let first = received_serum(&ledger, order.order_id, "ACC-301A", &["K"]).await;
    released_k(&ledger, first, 4.0).await;
    let delta = |id: ResultId| {
        let pool = db.app.clone();
        async move {
            sqlx::query_as::<_, (serde_json::Value, serde_json::Value)>(
                "SELECT payload -> 'ResultRecorded' -> 'delta', payload -> 'ResultRecorded' -> 'flags'
                   FROM events WHERE aggregate_id = $1 AND sequence = 1",
            )
            .bind(id.to_string())
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // In the same unit the change is compared: 4.0 to 6.0 is 50 %, flagged at the rule.
    let second = received_serum(&ledger, order.order_id, "ACC-301B", &["K"]).await;
    let (id, record) = record_k(second, 6.1);
    ledger.execute_result(id, record, &tech).await.unwrap();
    let (compared, flags) = delta(id).await;
    assert_eq!(compared["previous"]["value"], 4.0, "{compared}");
    assert!(
        flags.as_array().unwrap().contains(&serde_json::json!("D")),
        "{flags}"
    );
    // The catalogue then gives K another unit: a value in it is not compared with 4.0
    // mmol/L (the same figure would be another amount).
    let changed = SEED_CATALOGUE.replace("mmol/L,numeric,3.5,5.2", "meq/L,numeric,3.5,5.2");
    assert_ne!(changed, SEED_CATALOGUE);
    catalogue::import(&db.app, &changed, "v2.csv", "qm.1")
        .await
        .unwrap();
    let third = received_serum(&ledger, order.order_id, "ACC-301C", &["K"]).await;
    let id = ResultId::for_test(third, &code("K"));
    let record = ResultCommand::Record(RecordResult {
        result_id: id,
        sample_id: third,
        test_code: code("K"),
        value: ResultValue::Numeric {
            value: 6.1,
            unit: "meq/L".into(),
        },
        method: None,
        instrument: None,
        raw_message: None,
    });
    ledger.execute_result(id, record, &tech).await.unwrap();
    let (compared, flags) = delta(id).await;
    assert_eq!(compared, serde_json::Value::Null);
    assert!(
        !flags.as_array().unwrap().contains(&serde_json::json!("D")),
        "{flags}"
    );
    db.drop().await;
}

#[tokio::test]
async fn without_a_catalogue_commands_are_unavailable_not_wrong() {
    let db = TestDb::empty().await;
    let ledger = db.ledger().await;
    let err = ledger
        .place_order(
            lis_commands::ledger::NewOrder {
                patient: lis_tests::patient("MRN-301", "male"),
                ordering_clinician: lis_domain::text::PersonName::parse("Dr Rao").unwrap(),
                priority: lis_domain::order::Priority::Stat,
                collection_site: lis_domain::text::Place::parse("ER").unwrap(),
                clinical_notes: None,
                tests: vec![code("K")],
            },
            &actor("reception.1", Role::Reception),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, lis_commands::CommandError::Unavailable(ref m) if m.contains("no catalogue")),
        "{err}"
    );
    db.drop().await;
}
