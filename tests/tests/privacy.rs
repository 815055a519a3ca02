//! Crypto-shredding: identity is sealed in every event; erasing a patient destroys their
//! key, records the erasure, keeps every hash chain intact, and purges the patient from
//! the read models and analytics — after a rebuild too, and whatever order the events
//! are projected in. Then nothing of the patient's identity is found anywhere.

use lis_commands::keys::Opened;
use lis_commands::ledger::{NewOrder, PlacedOrder};
use lis_commands::{audit, CommandError, Ledger};
use lis_domain::actor::Role;
use lis_domain::ids::{PatientId, ResultId};
use lis_domain::order::{Order, Priority};
use lis_domain::patient::{NewPatient, PatientIdentity, RawPatient};
use lis_domain::result::ResultCommand;
use lis_domain::text::{Note, PersonName, Place, Reason};
use lis_projections::envelope::Envelope;
use lis_projections::feed::{read_after, FeedPosition};
use lis_projections::models;
use lis_projections::projection::{ensure_schema, schema_of};
use lis_tests::{
    actor, assert_models_equal_rebuilds, catch_up, code, lab_day_numbered, received_serum,
    released_k, TestDb,
};
use sqlx::PgPool;

const NAME: &str = "Zarina Quereshi";
const MRN: &str = "MRN-ERASE-77";
const ABHA: &str = "77-1234-5678-9012";
const PHONE: &str = "+919812398123";
const ADDRESS: &str = "22 Tamarind Lane, Pune";
const BORN: &str = "1975-02-03";
const NOTES: &str = "suspected thyroid storm";
/// Every identifying string of the erased patient.
const IDENTITY: [&str; 7] = [NAME, MRN, ABHA, PHONE, ADDRESS, BORN, NOTES];
/// The engine's erasure bookkeeping: pseudonymous ids only (like the event log).
const BOOKKEEPING: [&str; 5] = [
    "offsets",
    "erased_patients",
    "order_patients",
    "sample_orders",
    "result_orders",
];

async fn place_erasable(ledger: &Ledger) -> PlacedOrder {
    let patient = NewPatient::parse(
        RawPatient {
            mrn: MRN,
            abha_number: Some(ABHA),
            name: NAME,
            sex: "female",
            date_of_birth: BORN,
            phone: Some(PHONE),
            address: Some(ADDRESS),
        },
        chrono::Utc::now().date_naive(),
    )
    .unwrap();
    ledger
        .place_order(
            NewOrder {
                patient,
                ordering_clinician: PersonName::parse("Dr Rao").unwrap(),
                priority: Priority::Urgent,
                collection_site: Place::parse("Ward 3").unwrap(),
                clinical_notes: Some(Note::parse(NOTES).unwrap()),
                tests: vec![code("K"), code("NA")],
            },
            &actor("reception.1", Role::Reception),
        )
        .await
        .expect("order placed")
}

/// `table: row` for every row of every table of `schemas` whose text holds a needle.
async fn hits(pool: &PgPool, schemas: &str, needles: &[String], skip: &[&str]) -> Vec<String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
          WHERE table_schema LIKE $1 AND table_type = 'BASE TABLE' ORDER BY 1, 2",
    )
    .bind(schemas)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for (schema, table) in tables {
        if skip.contains(&table.as_str()) {
            continue;
        }
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT x::text FROM {schema}.{table} x WHERE x::text ILIKE ANY ($1)"
        ))
        .bind(needles.iter().map(|n| format!("%{n}%")).collect::<Vec<_>>())
        .fetch_all(pool)
        .await
        .unwrap();
        found.extend(rows.into_iter().map(|r| format!("{schema}.{table}: {r}")));
    }
    found
}

fn identity_needles() -> Vec<String> {
    IDENTITY.iter().map(|s| s.to_string()).collect()
}

/// MongoDB documents (any collection) whose JSON holds a needle.
async fn mongo_hits(db: &mongodb::Database, needles: &[String]) -> Vec<String> {
    use futures::TryStreamExt;
    let mut found = Vec::new();
    for name in db.list_collection_names().await.unwrap() {
        let docs: Vec<mongodb::bson::Document> = db
            .collection(&name)
            .find(mongodb::bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for d in docs {
            let text = serde_json::to_string(&d).unwrap();
            if needles.iter().any(|n| text.contains(n.as_str())) {
                found.push(format!("{name}: {text}"));
            }
        }
    }
    found
}

async fn envelopes(pool: &PgPool) -> Vec<String> {
    read_after(pool, FeedPosition::default(), 100_000)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::to_string(&Envelope::from(e)).unwrap())
        .collect()
}

#[tokio::test]
async fn an_erased_patient_is_gone_from_every_read_model_and_the_chain_still_verifies() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let analytics = lis_tests::test_analytics(&db).await;
    let mongo = analytics.database().clone();

    // Another patient's day, which must survive the erasure untouched.
    let (control_order, _) = lab_day_numbered(&ledger, 901).await;
    // The patient to erase: a released potassium, and a sodium tube still to be resulted.
    let order = place_erasable(&ledger).await;
    let serum = received_serum(&ledger, order.order_id, "ACC-ERASE-1", &["K"]).await;
    let result = released_k(&ledger, serum, 4.4).await;
    let second = received_serum(&ledger, order.order_id, "ACC-ERASE-2", &["NA"]).await;
    let placed: Order = ledger.order(order.order_id).await.unwrap();
    let facts = placed.facts().unwrap();
    let patient: PatientId = facts.patient_id;

    // Identity is sealed from the start: not in any event, snapshot or envelope.
    let needles = identity_needles();
    assert!(
        hits(&db.app, "public", &needles, &[]).await.is_empty(),
        "identity in clear in a public table"
    );
    assert!(envelopes(&db.app)
        .await
        .iter()
        .all(|e| needles.iter().all(|n| !e.contains(n.as_str()))));
    // ... yet the key opens it for those allowed to see it.
    match ledger
        .vault()
        .open::<PatientIdentity>(patient, &facts.identity)
        .await
        .unwrap()
    {
        Opened::Clear(identity) => assert_eq!(identity.name.as_str(), NAME),
        Opened::Erased => panic!("not erased yet"),
    }
    let pg_models = models::all();
    for p in &pg_models {
        ensure_schema(
            &mut db.app.acquire().await.unwrap(),
            p.as_ref(),
            &schema_of(p.name()),
        )
        .await
        .unwrap();
        catch_up(&db.app, p.as_ref()).await;
    }
    catch_up(&db.app, &analytics).await;
    let ids: Vec<String> = [
        patient.as_uuid(),
        order.order_id.as_uuid(),
        serum.as_uuid(),
        second.as_uuid(),
        result.as_uuid(),
    ]
    .iter()
    .map(|u| u.to_string())
    .collect();
    assert!(
        !hits(&db.app, "proj\\_%", &ids, &BOOKKEEPING)
            .await
            .is_empty(),
        "the patient was projected"
    );
    assert!(
        !mongo_hits(&mongo, &ids).await.is_empty(),
        "the patient reached the analytics"
    );

    // Erase.
    let admin = actor("admin.1", Role::Admin);
    let reason = Reason::parse("patient request under DPDP Act s.12, ticket 4411").unwrap();
    let erased = ledger
        .erase_patient(patient, reason.clone(), &admin)
        .await
        .unwrap();
    assert_eq!(erased.aggregate_type, "Patient");
    match ledger.erase_patient(patient, reason, &admin).await {
        Err(CommandError::Rejected { rule, .. }) => assert_eq!(rule, "patient.already-erased"),
        other => panic!("a second erasure must be refused: {other:?}"),
    }
    assert_eq!(
        ledger
            .vault()
            .open::<PatientIdentity>(patient, &facts.identity)
            .await
            .unwrap(),
        Opened::Erased
    );
    // Work on the erased patient stops: no age, no reference interval, no result.
    let na = ResultId::for_test(second, &code("NA"));
    let record = ResultCommand::Record(lis_domain::result::RecordResult {
        result_id: na,
        sample_id: second,
        test_code: code("NA"),
        value: lis_domain::value::ResultValue::Numeric {
            value: 140.0,
            unit: "mmol/L".into(),
        },
        method: None,
        instrument: None,
        raw_message: None,
    });
    match ledger
        .execute_result(na, record, &actor("tech.1", Role::Technologist))
        .await
    {
        Err(CommandError::Rejected { rule, .. }) => assert_eq!(rule, "result.patient-erased"),
        other => panic!("a result for an erased patient must be refused: {other:?}"),
    }
    // The same MRN later is a new pseudonym: nothing links it to the erased one.
    let again = lis_tests::place(&ledger, MRN, &["K"]).await;
    let again_patient = ledger
        .order(again.order_id)
        .await
        .unwrap()
        .facts()
        .unwrap()
        .patient_id;
    assert_ne!(again_patient, patient);

    // The trail is intact and the erasure is in it, with who, role and why.
    let report = audit::verify_chains(&db.app, &mut |_| {}).await.unwrap();
    assert!(report.broken.is_empty(), "{:?}", report.broken);
    let meta: serde_json::Value = sqlx::query_scalar(
        "SELECT metadata FROM events WHERE aggregate_type = 'Patient' AND aggregate_id = $1",
    )
    .bind(patient.to_string())
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(meta["actor_id"], "admin.1");
    assert_eq!(meta["actor_role"], "admin");
    assert!(meta["reason"].as_str().unwrap().contains("DPDP"));

    // The read models and analytics drop the patient; the other patient stays.
    for p in &pg_models {
        catch_up(&db.app, p.as_ref()).await;
    }
    catch_up(&db.app, &analytics).await;
    let left = hits(&db.app, "proj\\_%", &ids, &BOOKKEEPING).await;
    assert!(
        left.is_empty(),
        "rows of the erased patient remain: {left:#?}"
    );
    assert!(
        mongo_hits(&mongo, &ids).await.is_empty(),
        "analytics of the erased patient remain"
    );
    let control = vec![control_order.to_string()];
    assert!(!hits(&db.app, "proj\\_%", &control, &BOOKKEEPING)
        .await
        .is_empty());
    assert!(!mongo_hits(&mongo, &control).await.is_empty());
    // Identity is nowhere: read models, every public table, MongoDB, every envelope.
    assert!(hits(&db.app, "proj\\_%", &needles, &[]).await.is_empty());
    assert!(hits(&db.app, "public", &needles, &[]).await.is_empty());
    assert!(mongo_hits(&mongo, &needles).await.is_empty());
    assert!(envelopes(&db.app)
        .await
        .iter()
        .all(|e| needles.iter().all(|n| !e.contains(n.as_str()))));

    // A rebuild from the log reaches the same purged state...
    assert_models_equal_rebuilds(&db.app).await;
    assert!(hits(&db.app, "proj\\_%", &ids, &BOOKKEEPING)
        .await
        .is_empty());
    // ... and so does projecting the erasure first (Kafka may deliver it before the
    // patient's own events, each topic in its own order).
    let mut shuffled: Vec<Envelope> = read_after(&db.app, FeedPosition::default(), 100_000)
        .await
        .unwrap()
        .iter()
        .map(Envelope::from)
        .collect();
    shuffled.sort_by_key(|e| e.aggregate_type != "Patient");
    lis_tests::assert_models_equal_applied(&db.app, &shuffled, "erasure_first").await;
    mongo.drop().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn an_unknown_patient_cannot_be_erased() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let nobody = PatientId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
    let reason = Reason::parse("test").unwrap();
    match ledger
        .erase_patient(nobody, reason, &actor("admin.1", Role::Admin))
        .await
    {
        Err(CommandError::NotFound(_)) => {}
        other => panic!("expected not found: {other:?}"),
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(events, 0, "no event for a refused erasure");
    db.drop().await;
}

#[tokio::test]
async fn a_ledger_with_identity_in_clear_is_refused_by_the_privacy_migration() {
    let db = TestDb::new().await;
    // A pre-release OrderPlaced 1.0, identity in clear.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Order', $1, 1, 'OrderPlaced', '1.0.0',
                 '{\"OrderPlaced\":{\"patient\":{\"name\":\"Asha Verma\"}}}', '{\"actor_id\":\"a\",\"actor_role\":\"admin\"}')",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(&db.app)
    .await
    .unwrap();
    let err = sqlx::raw_sql(include_str!(
        "../../eventstore-migrations/migrations/0009_patient_privacy.sql"
    ))
    .execute(&db.owner)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("OrderPlaced 1.0"), "{err}");
    db.drop().await;
}
