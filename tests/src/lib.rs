//! Test support: a fresh PostgreSQL database per test, migrated and seeded, plus the
//! small builders the integration tests share.
//!
//! The cluster comes from `LIS_ADMIN_DATABASE_URL` (default: the local cluster started by
//! `deploy/postgres.sh`). Each [`TestDb`] creates `lis_test_<uuid>` owned by the owner
//! role, runs the migrations as the owner, imports the seed catalogue and connects as the
//! application role — the same privileges as production.

use chrono::{Duration, Utc};
use lis_commands::keys::{LocalKek, PatientVault};
use lis_commands::ledger::{NewOrder, PlacedOrder};
use lis_commands::{CommandContext, Ledger, LedgerConfig};
use lis_domain::actor::{Actor, ActorId, Role};
use lis_domain::ids::{AccessionNumber, OrderId, ResultId, SampleId, TestCode};
use lis_domain::order::Priority;
use lis_domain::patient::{NewPatient, RawPatient};
use lis_domain::result::{CriticalNotification, NotificationMethod, RecordResult, ResultCommand};
use lis_domain::sample::{
    CollectSample, HandOver, RejectionReason, SampleCommand, SpecimenCondition, StorageLocation,
};
use lis_domain::text::{Label, PersonName, Place, Reason};
use lis_domain::value::ResultValue;
use lis_eventstore_migrations::{APP_ROLE, OWNER_ROLE};
use lis_projections::projection::schema_of;
use lis_projections::worker::feed_step;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::sync::Arc;

/// The seed catalogue shipped with the product.
pub const SEED_CATALOGUE: &str = include_str!("../../deploy/seed/test-catalogue.csv");

pub fn admin_url() -> String {
    std::env::var("LIS_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".to_string())
}

/// A database of one test.
pub struct TestDb {
    pub name: String,
    /// Connected as the application role (INSERT and SELECT on events).
    pub app: PgPool,
    /// Connected as the owner role (owns the tables; triggers still apply).
    pub owner: PgPool,
}

impl TestDb {
    /// A migrated database with the seed catalogue imported as version 1.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        lis_commands::catalogue::import(&db.app, SEED_CATALOGUE, "seed", "test")
            .await
            .expect("seed catalogue imports");
        db
    }

    /// A migrated database with no catalogue.
    pub async fn empty() -> Self {
        let name = format!("lis_test_{}", uuid::Uuid::new_v4().simple());
        lis_eventstore_migrations::bootstrap(&admin_url(), &name)
            .await
            .expect("bootstrap test database (is PostgreSQL running? deploy/postgres.sh)");
        let owner = Self::pool_as(OWNER_ROLE, &name).await;
        lis_eventstore_migrations::migrate(&owner)
            .await
            .expect("migrations apply");
        let app = Self::pool_as(APP_ROLE, &name).await;
        Self { name, app, owner }
    }

    pub fn options_as(user: &str, database: &str) -> PgConnectOptions {
        PgConnectOptions::from_str(&admin_url())
            .expect("admin URL")
            .username(user)
            .database(database)
    }

    pub async fn pool_as(user: &str, database: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(8)
            .connect_with(Self::options_as(user, database))
            .await
            .expect("connect to test database")
    }

    /// A superuser connection pool to this database (to play the attacker who can
    /// switch triggers off).
    pub async fn superuser(&self) -> PgPool {
        let admin = PgConnectOptions::from_str(&admin_url()).expect("admin URL");
        let user = admin.get_username().to_string();
        Self::pool_as(&user, &self.name).await
    }

    /// Plays the superuser who switches the triggers off and edits history: runs each
    /// statement with `session_replication_role = replica`.
    pub async fn tamper(&self, statements: &[&str]) {
        let su = self.superuser().await;
        let mut conn = su.acquire().await.expect("superuser connection");
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut *conn)
            .await
            .expect("triggers off");
        for statement in statements {
            sqlx::query(statement)
                .execute(&mut *conn)
                .await
                .expect("tampering statement");
        }
        drop(conn);
        su.close().await;
    }

    /// The ledger over this database, with the test key-encryption key.
    pub async fn ledger(&self) -> Ledger {
        self.ledger_with(LedgerConfig::default()).await
    }

    /// [`TestDb::ledger`], configured as `config` says.
    pub async fn ledger_with(&self, config: LedgerConfig) -> Ledger {
        Ledger::new(self.app.clone(), config, self.vault().await)
    }

    /// The patient key vault of this database, under [`TEST_KEK`].
    pub async fn vault(&self) -> Arc<PatientVault> {
        vault_on(&self.app).await
    }

    pub fn url_as(&self, user: &str) -> String {
        let admin = PgConnectOptions::from_str(&admin_url()).expect("admin URL");
        format!(
            "postgres://{user}@{}:{}/{}",
            admin.get_host(),
            admin.get_port(),
            self.name
        )
    }

    /// Drops the database (call at the end of a passing test).
    pub async fn drop(self) {
        self.app.close().await;
        self.owner.close().await;
        lis_eventstore_migrations::drop_database(&admin_url(), &self.name)
            .await
            .expect("drop test database");
    }
}

pub fn actor(id: &str, role: Role) -> CommandContext {
    let mut ctx = CommandContext::new(Actor::new(ActorId::parse(id).unwrap(), role));
    ctx.client_addr = Some("127.0.0.1".into());
    ctx
}

pub fn code(c: &str) -> TestCode {
    TestCode::parse(c).unwrap()
}

/// The patient key vault of the database behind `pool`, under [`TEST_KEK`].
pub async fn vault_on(pool: &PgPool) -> Arc<PatientVault> {
    let kek = LocalKek::from_base64(TEST_KEK).expect("test KEK");
    Arc::new(
        PatientVault::connect(pool.clone(), Arc::new(kek))
            .await
            .expect("patient key vault"),
    )
}

/// The key-encryption key of test databases (test data only: never a real key).
pub const TEST_KEK: &str = "dGVzdC1vbmx5IGtleS1lbmNyeXB0aW9uIGtleSAzMiE=";

pub fn patient(mrn: &str, sex: &str) -> NewPatient {
    NewPatient::parse(
        RawPatient {
            mrn,
            abha_number: Some("91-2345-6789-0123"),
            name: "Asha Verma",
            sex,
            date_of_birth: "1980-05-17",
            phone: Some("+91 98450 12345"),
            address: Some("14 Lake View Road, Bengaluru"),
        },
        Utc::now().date_naive(),
    )
    .unwrap()
}

/// A routine order from OPD 2 for a female patient `mrn`.
pub fn new_order(mrn: &str, tests: &[&str]) -> NewOrder {
    NewOrder {
        patient: patient(mrn, "female"),
        ordering_clinician: PersonName::parse("Dr Rao").unwrap(),
        priority: Priority::Routine,
        collection_site: Place::parse("OPD 2").unwrap(),
        clinical_notes: None,
        tests: tests.iter().map(|t| code(t)).collect(),
    }
}

pub async fn place(ledger: &Ledger, mrn: &str, tests: &[&str]) -> PlacedOrder {
    ledger
        .place_order(
            new_order(mrn, tests),
            &actor("reception.1", Role::Reception),
        )
        .await
        .expect("order placed")
}

/// Collects and receives a serum sample for `tests` of `order`.
pub async fn received_serum(
    ledger: &Ledger,
    order: OrderId,
    accession: &str,
    tests: &[&str],
) -> SampleId {
    let sample_id = collect(ledger, order, accession, "serum", "red/SST", tests).await;
    ledger
        .execute_sample(
            sample_id,
            SampleCommand::Receive {
                received_by: ActorId::parse("tech.1").unwrap(),
                received_at: Utc::now() - Duration::minutes(5),
                condition: SpecimenCondition::Satisfactory {},
            },
            &actor("tech.1", Role::Technologist),
        )
        .await
        .expect("received");
    sample_id
}

pub fn record_k(sample: SampleId, value: f64) -> (ResultId, ResultCommand) {
    record_mmol(sample, "K", value, Some("R|1|^^^K|4.1|mmol/L||N||F\r"))
}

pub fn record_na(sample: SampleId, value: f64) -> (ResultId, ResultCommand) {
    record_mmol(sample, "NA", value, None)
}

/// The recording of `test` on `sample` as `value` mmol/L, and the result's id.
fn record_mmol(
    sample: SampleId,
    test: &str,
    value: f64,
    raw_message: Option<&str>,
) -> (ResultId, ResultCommand) {
    let id = ResultId::for_test(sample, &code(test));
    (
        id,
        ResultCommand::Record(RecordResult {
            result_id: id,
            sample_id: sample,
            test_code: code(test),
            value: ResultValue::Numeric {
                value,
                unit: "mmol/L".into(),
            },
            method: None,
            instrument: None,
            raw_message: raw_message.map(Into::into),
        }),
    )
}

/// Records (as `record_k` or `record_na` make it) and verifies a result.
pub async fn verified(ledger: &Ledger, (id, record): (ResultId, ResultCommand)) -> ResultId {
    let tech = actor("tech.1", Role::Technologist);
    ledger
        .execute_result(id, record, &tech)
        .await
        .expect("recorded");
    let by = ActorId::parse("tech.1").unwrap();
    ledger
        .execute_result(id, ResultCommand::Verify { by }, &tech)
        .await
        .expect("verified");
    id
}

/// Records, verifies and authorises a potassium result.
pub async fn released_k(ledger: &Ledger, sample: SampleId, value: f64) -> ResultId {
    let id = verified(ledger, record_k(sample, value)).await;
    let by = ActorId::parse("path.1").unwrap();
    ledger
        .execute_result(
            id,
            ResultCommand::Authorise { by },
            &actor("path.1", Role::Pathologist),
        )
        .await
        .expect("authorised");
    id
}

/// Collects a sample of `tests` in the given specimen type and container.
pub async fn collect(
    ledger: &Ledger,
    order: OrderId,
    accession: &str,
    specimen: &str,
    container: &str,
    tests: &[&str],
) -> SampleId {
    let (sample_id, command) = collection(order, accession, specimen, container, tests);
    ledger
        .execute_sample(sample_id, command, &actor("phleb.1", Role::Phlebotomist))
        .await
        .expect("collected");
    sample_id
}

/// The collection of a new tube of `tests` (20 minutes ago), and the tube's id.
pub fn collection(
    order: OrderId,
    accession: &str,
    specimen: &str,
    container: &str,
    tests: &[&str],
) -> (SampleId, SampleCommand) {
    let sample_id = SampleId::new();
    let command = SampleCommand::Collect(CollectSample {
        sample_id,
        order_id: order,
        accession_number: AccessionNumber::parse(accession).unwrap(),
        specimen_type: specimen.into(),
        container: container.into(),
        tests: tests.iter().map(|t| code(t)).collect(),
        collected_by: ActorId::parse("phleb.1").unwrap(),
        collected_at: Utc::now() - Duration::minutes(20),
    });
    (sample_id, command)
}

fn by(id: &str) -> ActorId {
    ActorId::parse(id).unwrap()
}

/// A small lab day touching every kind of event the read models use: an order of K, NA
/// and HB; a serum tube received; an EDTA tube rejected (haemolysed) and recollected; a
/// critical K notified, verified and released; NA released then amended; the serum tube
/// handed over and stored. Returns the order id and the serum sample id.
pub async fn lab_day(db: &TestDb) -> (uuid::Uuid, uuid::Uuid) {
    lab_day_numbered(&db.ledger().await, 600).await
}

/// [`lab_day`] for patient `MRN-<n>` with accession numbers `ACC-<n>`, `-R` and `-E`, so
/// that many lab days can run against one database.
pub async fn lab_day_numbered(ledger: &Ledger, n: u32) -> (uuid::Uuid, uuid::Uuid) {
    let tech = actor("tech.1", Role::Technologist);
    let path = actor("path.1", Role::Pathologist);
    let order = place(ledger, &format!("MRN-{n}"), &["K", "NA", "HB"]).await;
    let serum = received_serum(ledger, order.order_id, &format!("ACC-{n}"), &["K", "NA"]).await;

    // HB: the first tube is haemolysed and rejected; a second one is collected.
    let edta = collect(
        ledger,
        order.order_id,
        &format!("ACC-{n}-R"),
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
        ledger,
        order.order_id,
        &format!("ACC-{n}-E"),
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
    let (na, record) = record_na(serum, 140.0);
    ledger.execute_result(na, record, &tech).await.unwrap();
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
                    rack: Some(Label::parse("R7").unwrap()),
                    position: Some(Label::parse("C3").unwrap()),
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
pub async fn catch_up(pool: &PgPool, p: &dyn lis_projections::projection::Projection) {
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

/// Every event in the store, read through the feed from its start in one batch, once the
/// feed hands all of them on: it holds events back while any older transaction in the
/// cluster (another test's) is still open.
pub async fn whole_feed(pool: &PgPool) -> Vec<lis_projections::feed::StoredEvent> {
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let events = lis_projections::feed::read_after(
            pool,
            lis_projections::feed::FeedPosition::default(),
            stored + 1,
        )
        .await
        .unwrap();
        if events.len() as i64 >= stored {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed handed on {} of {stored} events",
            events.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every base table of a schema as JSON, rows in a stable order — to compare read models.
/// `progress` (timing counters) and `feed_position` (absent in Kafka mode) are left out.
pub async fn dump_schema(pool: &PgPool, schema: &str) -> serde_json::Value {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = $1 AND table_type = 'BASE TABLE'
            AND table_name NOT IN ('progress', 'feed_position') ORDER BY 1",
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

/// Asserts that every PostgreSQL read model equals one rebuilt from the event store (and
/// leaves the rebuilt one live).
pub async fn assert_models_equal_rebuilds(pool: &PgPool) {
    for p in lis_projections::models::all() {
        let schema = schema_of(p.name());
        let incremental = dump_schema(pool, &schema).await;
        let report = lis_projections::worker::rebuild(pool, p.as_ref(), &mut |_| {})
            .await
            .unwrap();
        assert!(report.events > 0);
        assert_eq!(
            dump_schema(pool, &schema).await,
            incremental,
            "projection {}",
            p.name()
        );
    }
}

/// Asserts that every PostgreSQL read model, applied from `events` in this order into a
/// fresh schema (`<schema>_<suffix>`) in one batch, equals the live one.
pub async fn assert_models_equal_applied(
    pool: &PgPool,
    events: &[lis_projections::envelope::Envelope],
    suffix: &str,
) {
    for p in lis_projections::models::all() {
        let live = schema_of(p.name());
        let other = format!("{live}_{suffix}");
        lis_projections::projection::ensure_schema(
            &mut pool.acquire().await.unwrap(),
            p.as_ref(),
            &other,
        )
        .await
        .unwrap();
        let mut tx = pool.begin().await.unwrap();
        lis_projections::projection::apply_in(&mut tx, p.as_ref(), &other, events, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            dump_schema(pool, &live).await,
            dump_schema(pool, &other).await,
            "projection {}",
            p.name()
        );
    }
}

/// The MongoDB analytics projection over a database of its own (dropped by the caller),
/// with its offsets schema made in `db`.
pub async fn test_analytics(db: &TestDb) -> lis_projections::models::analytics::Analytics {
    use lis_projections::projection::Projection;
    let url = std::env::var("LIS_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into());
    let client = mongodb::Client::with_uri_str(url)
        .await
        .expect("MongoDB-wire server (deploy/mongo.sh)");
    let analytics = lis_projections::models::analytics::Analytics::new(client.database(&format!(
        "lis_analytics_test_{}",
        uuid::Uuid::new_v4().simple()
    )));
    lis_projections::projection::ensure_schema(
        &mut db.app.acquire().await.unwrap(),
        &analytics,
        &schema_of(analytics.name()),
    )
    .await
    .unwrap();
    analytics
}

/// The order's turn to append (`lis_commands::reads`), held by the test on a connection
/// of its own; commands of the order queue behind it in the order they reach it.
pub struct OrderTurn {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    order: String,
}

impl OrderTurn {
    pub async fn hold(db: &TestDb, order: OrderId) -> Self {
        let mut conn = db.app.acquire().await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
            .bind(lis_commands::reads::ORDER_TURN_LOCK)
            .bind(order.to_string())
            .execute(&mut *conn)
            .await
            .unwrap();
        Self {
            conn,
            order: order.to_string(),
        }
    }

    /// Waits until `n` commands wait for the turn (each decided, at its append).
    pub async fn queued(&self, db: &TestDb, n: i64) {
        for _ in 0..1000 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                  WHERE locktype = 'advisory' AND NOT granted
                    AND classid::bigint = $1 AND objid::bigint = hashtext($2)::oid::bigint
                    AND objsubid = 2",
            )
            .bind(i64::from(lis_commands::reads::ORDER_TURN_LOCK))
            .bind(&self.order)
            .fetch_one(&db.app)
            .await
            .unwrap();
            if waiting >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{n} commands never waited for the order's turn");
    }

    /// Lets the first command queued go, and takes the turn back after it, ahead of
    /// any command that queues meanwhile: that one command's append alone runs.
    pub async fn let_one_through(&mut self) {
        sqlx::query(
            "SELECT pg_advisory_unlock($1, hashtext($2)), pg_advisory_lock($1, hashtext($2))",
        )
        .bind(lis_commands::reads::ORDER_TURN_LOCK)
        .bind(&self.order)
        .execute(&mut *self.conn)
        .await
        .unwrap();
    }

    pub async fn release(mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(lis_commands::reads::ORDER_TURN_LOCK)
            .bind(&self.order)
            .execute(&mut *self.conn)
            .await
            .unwrap();
    }
}
