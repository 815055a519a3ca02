//! Read models built from the ordered feed: a lab day reaches every model; redelivery is
//! a no-op; a gap is refused; a rebuild equals the incrementally built model.

use chrono::{DateTime, Utc};
use lis_domain::actor::{ActorId, Role};
use lis_domain::ids::ResultId;
use lis_domain::result::ResultCommand;
use lis_domain::text::Reason;
use lis_domain::value::ResultValue;
use lis_projections::envelope::Envelope;
use lis_projections::feed::read_after;
use lis_projections::models;
use lis_projections::projection::{
    apply_batch, ensure_schema, ensure_schema_exists, schema_of, ProjectionError, SCHEMA_LOCK,
};
use lis_projections::worker::{rebuild, rebuild_all_in_batches, run_from_feed, Batching};
use lis_tests::{
    assert_models_equal_rebuilds, dump_schema, lab_day, lab_day_numbered, place, received_serum,
    released_k, TestDb,
};
use sqlx::PgPool;

async fn project_all(pool: &PgPool) {
    for p in models::all() {
        ensure_schema(
            &mut pool.acquire().await.unwrap(),
            p.as_ref(),
            &schema_of(p.name()),
        )
        .await
        .unwrap();
        lis_tests::catch_up(pool, p.as_ref()).await;
    }
}

/// The API and every projection worker create the read models' schemas as they start;
/// started together, none of them may fail (they once hit unique violations and
/// deadlocks in PostgreSQL's catalogue).
#[tokio::test]
async fn processes_starting_together_all_create_the_schemas() {
    let db = TestDb::new().await;
    let starts = (0..4).map(|_| {
        let pool = db.app.clone();
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            for p in models::all() {
                ensure_schema(&mut conn, p.as_ref(), &schema_of(p.name())).await?;
            }
            Ok::<_, ProjectionError>(())
        })
    });
    for started in futures::future::join_all(starts).await {
        started.unwrap().unwrap();
    }
    db.drop().await;
}

/// A rebuild makes the live schema only if it is missing: over an existing one it runs no
/// DDL, which would lock each table and wait for (or deadlock with) a live worker's batch
/// in flight. The same DDL, as a worker's start runs it, does wait: the test can fail.
/// A newer release's column reaches a model built by an older one when a process starts,
/// and once it is there, starting does not lock the table against its readers.
#[tokio::test]
async fn a_new_column_is_added_once_without_locking_out_readers() {
    let db = TestDb::new().await;
    let results = models::all()
        .into_iter()
        .find(|p| p.name() == "results")
        .unwrap();
    let schema = schema_of("results");
    let ensure = || async {
        ensure_schema(
            &mut db.app.acquire().await.unwrap(),
            results.as_ref(),
            &schema,
        )
        .await
    };
    ensure().await.unwrap();
    // As an older release left it.
    sqlx::query(
        "ALTER TABLE proj_results.results DROP COLUMN amended_at, DROP COLUMN previous_value",
    )
    .execute(&db.app)
    .await
    .unwrap();
    ensure().await.unwrap();
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_schema = 'proj_results' AND table_name = 'results'
            AND column_name IN ('amended_at', 'previous_value') ORDER BY 1",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(columns, ["amended_at", "previous_value"]);
    // A reader's open transaction holds ACCESS SHARE on the table; a start must not wait
    // for it (an ALTER TABLE would, and every later reader behind that).
    let mut reader = db.app.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM proj_results.results")
        .execute(&mut *reader)
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), ensure())
        .await
        .expect("a start waited for a reader of the results")
        .unwrap();
    reader.rollback().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_rebuild_leaves_an_existing_live_schema_and_its_locks_alone() {
    let db = TestDb::new().await;
    let orders = models::by_name("orders").unwrap();
    let live = schema_of(orders.name());
    let mut conn = db.app.acquire().await.unwrap();
    ensure_schema_exists(&mut conn, orders.as_ref(), &live)
        .await
        .unwrap();
    let made: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'offsets'",
    )
    .bind(&live)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(made, 1, "a missing schema is made");
    // A live batch in flight: it holds its tables' row-exclusive locks until it commits.
    let mut batch = db.app.begin().await.unwrap();
    for table in ["offsets", "orders"] {
        sqlx::query(&format!("LOCK TABLE {live}.{table} IN ROW EXCLUSIVE MODE"))
            .execute(&mut *batch)
            .await
            .unwrap();
    }
    let left = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        ensure_schema_exists(&mut conn, orders.as_ref(), &live),
    )
    .await;
    assert!(matches!(left, Ok(Ok(()))), "{left:?}");
    sqlx::query("SET lock_timeout = '300ms'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let waited = ensure_schema(&mut conn, orders.as_ref(), &live).await;
    assert!(
        matches!(&waited, Err(ProjectionError::Database(sqlx::Error::Database(e))) if e.code().as_deref() == Some("55P03")),
        "{waited:?}"
    );
    batch.rollback().await.unwrap();
    drop(conn);
    db.drop().await;
}

/// The rebuild asks whether the live schema exists under the schema lock, so a schema
/// another process is creating at that moment is waited for and then left as that
/// process made it (the DDL run over it deadlocked that process's first batch). Here the
/// other creator makes only the offsets table: a rebuild that had looked before taking
/// the lock would run the whole DDL once it got it, and add the model's tables.
#[tokio::test]
async fn a_rebuild_waits_for_a_live_schema_being_created_and_leaves_it_as_made() {
    let db = TestDb::new().await;
    let live = schema_of("orders");
    let mut creator = db.app.begin().await.unwrap();
    for statement in [
        "SELECT pg_advisory_xact_lock($1)".to_string(),
        format!("CREATE SCHEMA {live}"),
        format!(
            "CREATE TABLE {live}.offsets (aggregate_type text, aggregate_id text,
               last_sequence bigint NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id))"
        ),
    ] {
        let query = sqlx::query(&statement);
        let query = if statement.contains("$1") {
            query.bind(SCHEMA_LOCK)
        } else {
            query
        };
        query.execute(&mut *creator).await.unwrap();
    }
    let (pool, schema) = (db.app.clone(), live.clone());
    let rebuild = tokio::spawn(async move {
        let orders = models::by_name("orders").unwrap();
        let mut conn = pool.acquire().await.unwrap();
        ensure_schema_exists(&mut conn, orders.as_ref(), &schema).await
    });
    // Until the rebuild waits for the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'advisory'",
        )
        .fetch_one(&db.app)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild never waited for the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    creator.commit().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), rebuild)
        .await
        .expect("the rebuild ends once the creator commits")
        .unwrap()
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(&live)
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(tables, ["offsets"], "the schema as its creator made it");
    db.drop().await;
}

#[tokio::test]
async fn a_lab_day_reaches_every_read_model() {
    let db = TestDb::new().await;
    let (order, serum) = lab_day(&db).await;
    project_all(&db.app).await;

    let stages: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT test_code, stage, recollection FROM proj_orders.order_test_status WHERE order_id = $1 ORDER BY test_code",
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
        "SELECT status, rejection_reason, recollection_requested FROM proj_specimens.specimens WHERE accession_number = 'ACC-600-R'",
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

    // The haematology worklist: HB waits for its recollected tube, not overdue yet.
    let worklist: Vec<(String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT department, stage, test_code, recollection, overdue FROM proj_orders.worklist WHERE order_id = $1",
    )
    .bind(order)
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(
        worklist,
        [(
            "HAEMATOLOGY".into(),
            "to_receive".into(),
            "HB".into(),
            true,
            false
        )]
    );
    let tat: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT test_code, released, order_to_release_p50_min FROM proj_orders.turnaround ORDER BY test_code",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(
        tat.iter().map(|t| (t.0.as_str(), t.1)).collect::<Vec<_>>(),
        [("K", 1), ("NA", 1)]
    );
    assert!(tat.iter().all(|t| t.2 >= 0.0 && t.2 < 5.0), "{tat:?}");

    // The clinician's cumulative view: released results, the amendment marked.
    let amended: Vec<(String, bool)> = sqlx::query_as(
        "SELECT test_code, amended FROM proj_results.cumulative_results ORDER BY test_code",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(amended, [("K".into(), false), ("NA".into(), true)]);
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
    let pending: Vec<(String, bool, String)> =
        sqlx::query_as("SELECT test_code, notified, awaiting FROM proj_results.critical_pending")
            .fetch_all(&db.app)
            .await
            .unwrap();
    assert_eq!(pending, [("K".into(), true, "acknowledgement".into())]);
    db.drop().await;
}

#[tokio::test]
async fn redelivered_events_change_nothing_and_a_gap_is_refused() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    project_all(&db.app).await;
    let before = dump_schema(&db.app, "proj_results").await;

    // Everything again, as a consumer restarted from an old offset would see it.
    let events = lis_tests::whole_feed(&db.app).await;
    let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
    let results = models::by_name("results").unwrap();
    let outcome = apply_batch(&db.app, results.as_ref(), &envelopes, None)
        .await
        .unwrap();
    assert_eq!(outcome.applied, 0);
    assert_eq!(outcome.skipped, envelopes.len());
    assert_eq!(dump_schema(&db.app, "proj_results").await, before);

    // A new result whose second event arrives without its first: refused, nothing applied.
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-601", &["K"]).await;
    let sample = received_serum(&ledger, order.order_id, "ACC-610", &["K"]).await;
    let id = released_k(&ledger, sample, 4.0).await;
    // The new events may be held back a moment while another test's transaction is open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let second: Vec<Envelope> = loop {
        let fresh = read_after(&db.app, events.last().unwrap().feed_position(), 100)
            .await
            .unwrap();
        let found: Vec<Envelope> = fresh
            .iter()
            .filter(|e| e.aggregate_id == id.to_string() && e.sequence == 2)
            .map(Envelope::from)
            .collect();
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the result's events never reached the feed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
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

/// Every index of a schema: its name, its definition, and whether it is valid and ready
/// (an index built `CONCURRENTLY` that failed is left behind invalid).
async fn indexes(pool: &sqlx::PgPool, schema: &str) -> Vec<(String, String, bool)> {
    sqlx::query_as(
        "SELECT i.relname::text, pg_get_indexdef(i.oid), x.indisvalid AND x.indisready
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_namespace n ON n.oid = i.relnamespace
          WHERE n.nspname = $1 ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rebuilding_every_model_from_one_read_equals_the_incrementally_built_ones() {
    let db = TestDb::new().await;
    // Seven patients, their reports rebuilt two at a time: four parts.
    let ledger = db.ledger().await;
    for n in 0..7 {
        lab_day_numbered(&ledger, 610 + n).await;
    }
    project_all(&db.app).await;
    let all: Vec<std::sync::Arc<dyn lis_projections::projection::Projection>> = models::all()
        .into_iter()
        .map(|p| match p.name() {
            "results" => std::sync::Arc::new(models::results::Results::with_reports_per_part(2)),
            _ => p,
        })
        .collect();
    let mut incremental = Vec::new();
    for p in &all {
        let schema = schema_of(p.name());
        incremental.push((
            dump_schema(&db.app, &schema).await,
            indexes(&db.app, &schema).await,
        ));
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    let projections: Vec<&dyn lis_projections::projection::Projection> =
        all.iter().map(|p| p.as_ref()).collect();
    // Seven events a batch: many batches, each read ahead while the last is written.
    let mut seen = 0;
    let reports = rebuild_all_in_batches(&db.app, &projections, 7, &mut |n| seen = n)
        .await
        .unwrap();
    // Each event read once, and every model was given all of them.
    assert_eq!(seen, events as u64);
    assert_eq!(reports.len(), all.len());
    for ((p, report), (rows, indexes_before)) in all.iter().zip(&reports).zip(incremental) {
        let schema = schema_of(p.name());
        assert_eq!(report.events, events as u64, "projection {}", p.name());
        assert_eq!(
            dump_schema(&db.app, &schema).await,
            rows,
            "projection {}",
            p.name()
        );
        // The secondary indexes the bulk phase went without are all back, and valid.
        let indexes_after = indexes(&db.app, &schema).await;
        assert_eq!(indexes_after, indexes_before, "projection {}", p.name());
        assert!(
            indexes_after.iter().all(|(_, _, valid)| *valid),
            "{indexes_after:?}"
        );
    }
    db.drop().await;
}

/// Rebuilds while lab days are written and the live workers run: every event stored
/// during a rebuild's bulk phase, preparation and catch-up reaches the swapped-in model
/// once, the live workers carry on from its offsets, and in the end each model equals
/// one rebuilt at rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_under_live_writes_and_live_workers_lose_and_double_nothing() {
    let db = TestDb::new().await;
    let ledger = std::sync::Arc::new(db.ledger().await);
    for n in 0..3 {
        lab_day_numbered(&ledger, 630 + n).await;
    }
    // The live models exist before the rebuilds start (a rebuild and a worker making a
    // model's schema at the same moment is `processes_starting_together…`'s case).
    project_all(&db.app).await;
    let all = models::all();
    let mut workers: Vec<_> = all
        .iter()
        .map(|p| {
            tokio::spawn(run_from_feed(
                db.app.clone(),
                p.clone(),
                Batching::default(),
            ))
        })
        .collect();
    // Lab days are written until the rebuilds are done.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (ledger, writing) = (ledger.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 640;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                lab_day_numbered(&ledger, n).await;
                n += 1;
            }
        })
    };
    let projections: Vec<&dyn lis_projections::projection::Projection> =
        all.iter().map(|p| p.as_ref()).collect();
    // Small batches, so that each phase runs for several. Rebuilds go on until one has
    // caught up with events stored during its bulk phase (at least two, at most 20).
    let (mut rebuilds, mut caught_up) = (0, 0);
    while rebuilds < 2 || (caught_up == 0 && rebuilds < 20) {
        for report in rebuild_all_in_batches(&db.app, &projections, 7, &mut |_| {})
            .await
            .unwrap()
        {
            caught_up += report.caught_up;
        }
        rebuilds += 1;
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        caught_up > 0,
        "no event was stored during a bulk phase in {rebuilds} rebuilds"
    );

    // The live workers account for every event, each once.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for p in &all {
        let schema = schema_of(p.name());
        loop {
            let applied: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT sum(last_sequence)::bigint FROM {schema}.offsets"
            ))
            .fetch_one(&db.app)
            .await
            .unwrap();
            if applied == Some(stored) {
                break;
            }
            if let Some(stopped) = workers.iter_mut().find(|w| w.is_finished()) {
                panic!("a live worker stopped: {:?}", stopped.await);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{schema}: {applied:?} of {stored} events applied after {rebuilds} rebuilds"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    for worker in workers {
        if worker.is_finished() {
            panic!("a live worker stopped: {:?}", worker.await);
        }
        worker.abort();
    }
    assert_models_equal_rebuilds(&db.app).await;
    db.drop().await;
}

#[tokio::test]
async fn a_rebuilt_model_equals_the_incrementally_built_one() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    project_all(&db.app).await;
    // What a rebuild that stopped after its swap, before dropping the old schema,
    // leaves behind: the next one clears it (its swap renames the live schema to it).
    sqlx::raw_sql("CREATE SCHEMA proj_orders_old; CREATE TABLE proj_orders_old.orders (x int)")
        .execute(&db.app)
        .await
        .unwrap();
    for p in models::all() {
        let schema = schema_of(p.name());
        let incremental = dump_schema(&db.app, &schema).await;
        let mut seen = 0;
        let report = rebuild(&db.app, p.as_ref(), &mut |n| seen = n)
            .await
            .unwrap();
        assert!(report.events > 0);
        assert_eq!(seen, report.events);
        assert_eq!(
            dump_schema(&db.app, &schema).await,
            incremental,
            "projection {}",
            p.name()
        );
    }
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'proj\\_%\\_old' OR nspname LIKE 'proj\\_%\\_rebuild'",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // The rebuilt schema is live: the worker carries on from where the rebuild stopped.
    let ledger = db.ledger().await;
    place(&ledger, "MRN-602", &["K"]).await;
    let orders = models::by_name("orders").unwrap();
    lis_tests::catch_up(&db.app, orders.as_ref()).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM proj_orders.orders")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(count, 2);
    db.drop().await;
}

#[tokio::test]
async fn read_models_do_not_depend_on_how_aggregates_interleave() {
    // On Kafka each aggregate type has its own topic: a specimen's events may be
    // projected before its order's. Apply the day's events results-first, then
    // samples, then orders (each aggregate still in its own order) and compare.
    let db = TestDb::new().await;
    lab_day(&db).await;
    project_all(&db.app).await;
    let events = lis_tests::whole_feed(&db.app).await;
    let mut shuffled: Vec<Envelope> = events.iter().map(Envelope::from).collect();
    let rank = |t: &str| match t {
        "Result" => 0,
        "Sample" => 1,
        _ => 2,
    };
    shuffled.sort_by_key(|e| rank(&e.aggregate_type));
    lis_tests::assert_models_equal_applied(&db.app, &shuffled, "shuffled").await;
    db.drop().await;
}

/// A model applied strictly one event at a time (the trait's default `apply_run`): what
/// the folded, multi-row writes of the real models must match.
struct OneByOne(std::sync::Arc<dyn lis_projections::projection::Projection>);

#[async_trait::async_trait]
impl lis_projections::projection::Projection for OneByOne {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn ddl(&self) -> &'static str {
        self.0.ddl()
    }
    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        env: &Envelope,
        event: &lis_projections::projection::LabEvent,
    ) -> Result<(), ProjectionError> {
        self.0.apply(conn, env, event).await
    }
    fn purge_sql(&self) -> &'static str {
        self.0.purge_sql()
    }
    async fn refresh_derived(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[(&Envelope, &lis_projections::projection::LabEvent)],
    ) -> Result<(), ProjectionError> {
        self.0.refresh_derived(conn, events).await
    }
}

#[tokio::test]
async fn folded_batches_equal_one_event_at_a_time() {
    // Two lab days (rejection and recollection, critical call, amendment, correction…)
    // in one batch, so that every row's events fold together.
    let db = TestDb::new().await;
    lab_day(&db).await;
    let ledger = db.ledger().await;
    lis_tests::lab_day_numbered(&ledger, 601).await;
    // A clinician acknowledges every released result (some already seen earlier in the
    // batch, some acknowledged after an amendment).
    let released: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM events WHERE event_type = 'ResultAuthorised'",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    let clinician = lis_tests::actor("dr.1", Role::Clinician);
    let mut acknowledged = 0;
    for id in released {
        let id = ResultId::from_uuid(uuid::Uuid::parse_str(&id).unwrap());
        let by = ActorId::parse("dr.1").unwrap();
        if ledger
            .execute_result(id, ResultCommand::Acknowledge { by }, &clinician)
            .await
            .is_ok()
        {
            acknowledged += 1;
        }
    }
    assert!(acknowledged >= 2, "acknowledged {acknowledged}");
    // One acknowledged potassium is then amended to a critical value, in the same batch:
    // its row must show the new value as critical and not yet notified or acknowledged.
    let k: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'ResultAcknowledged'
            AND aggregate_id IN (SELECT aggregate_id FROM events WHERE event_type = 'ResultAuthorised'
                                    AND payload -> 'ResultAuthorised' ->> 'test_code' = 'K')
          LIMIT 1",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    let k = ResultId::from_uuid(uuid::Uuid::parse_str(&k).unwrap());
    ledger
        .execute_result(
            k,
            ResultCommand::Amend {
                value: ResultValue::Numeric {
                    value: 7.4,
                    unit: "mmol/L".into(),
                },
                reason: Reason::parse("haemolysis ruled out, value confirmed on rerun").unwrap(),
            },
            &lis_tests::actor("path.1", Role::Pathologist),
        )
        .await
        .unwrap();
    acknowledged -= 1;
    // A result recorded, verified and then corrected before release, in the same batch:
    // back to `recorded` with the corrected value, and nobody's verification.
    let order = place(&ledger, "MRN-603", &["K"]).await;
    let serum = received_serum(&ledger, order.order_id, "ACC-603", &["K"]).await;
    let (corrected, record) = lis_tests::record_k(serum, 4.0);
    let tech = lis_tests::actor("tech.1", Role::Technologist);
    ledger
        .execute_result(corrected, record, &tech)
        .await
        .unwrap();
    let by = ActorId::parse("tech.1").unwrap();
    ledger
        .execute_result(corrected, ResultCommand::Verify { by }, &tech)
        .await
        .unwrap();
    ledger
        .execute_result(
            corrected,
            ResultCommand::Correct {
                value: ResultValue::Numeric {
                    value: 4.4,
                    unit: "mmol/L".into(),
                },
                reason: Reason::parse("transcription error").unwrap(),
            },
            &tech,
        )
        .await
        .unwrap();
    // A result sent for a rerun, recorded again and verified, in the same batch: the
    // second recording writes over the first row, with its verification on it.
    let order = place(&ledger, "MRN-604", &["K"]).await;
    let serum = received_serum(&ledger, order.order_id, "ACC-604", &["K"]).await;
    let (rerun, record) = lis_tests::record_k(serum, 6.9);
    let (_, again) = lis_tests::record_k(serum, 4.6);
    ledger.execute_result(rerun, record, &tech).await.unwrap();
    let by = ActorId::parse("tech.1").unwrap();
    ledger
        .execute_result(rerun, ResultCommand::Verify { by }, &tech)
        .await
        .unwrap();
    ledger
        .execute_result(
            rerun,
            ResultCommand::RequestRerun {
                reason: Reason::parse("delta check failed").unwrap(),
            },
            &tech,
        )
        .await
        .unwrap();
    ledger.execute_result(rerun, again, &tech).await.unwrap();
    let by = ActorId::parse("tech2.1").unwrap();
    let tech2 = lis_tests::actor("tech2.1", Role::Technologist);
    ledger
        .execute_result(rerun, ResultCommand::Verify { by }, &tech2)
        .await
        .unwrap();
    let events = lis_tests::whole_feed(&db.app).await;
    let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
    for p in models::all() {
        let reference = OneByOne(p.clone());
        let (folded, single) = (
            format!("{}_folded", schema_of(p.name())),
            format!("{}_single", schema_of(p.name())),
        );
        for (model, schema) in [
            (p.as_ref(), &folded),
            (
                &reference as &dyn lis_projections::projection::Projection,
                &single,
            ),
        ] {
            let mut conn = db.app.acquire().await.unwrap();
            ensure_schema(&mut conn, model, schema).await.unwrap();
            let mut tx = db.app.begin().await.unwrap();
            lis_projections::projection::apply_in(&mut tx, model, schema, &envelopes, None)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        assert_eq!(
            dump_schema(&db.app, &folded).await,
            dump_schema(&db.app, &single).await,
            "projection {}",
            p.name()
        );
        if p.name() == "results" {
            // Independent of the shared write path: every acknowledgement shows.
            let shown: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {folded}.results WHERE acknowledged"
            ))
            .fetch_one(&db.app)
            .await
            .unwrap();
            assert_eq!(shown, acknowledged);
            // Every amendment counted, and the latest amended value and flags shown.
            let (amended, wrong): (i64, i64) = sqlx::query_as(&format!(
                "SELECT count(*) FILTER (WHERE r.amendments > 0),
                        count(*) FILTER (WHERE r.amendments <> a.n
                            OR (a.n > 0 AND (r.value <> a.value::jsonb
                                OR r.flags <> ARRAY(SELECT json_array_elements_text(a.flags)))))
                   FROM {folded}.results r
                   CROSS JOIN LATERAL (
                       SELECT count(*) AS n,
                              (array_agg(payload -> 'ResultAmended' -> 'value' ORDER BY sequence DESC))[1]::text AS value,
                              (array_agg(payload -> 'ResultAmended' -> 'flags' ORDER BY sequence DESC))[1] AS flags
                         FROM events
                        WHERE aggregate_id = r.result_id::text AND event_type = 'ResultAmended') a"
            ))
            .fetch_one(&db.app)
            .await
            .unwrap();
            assert!(amended >= 2, "the batch holds amendments");
            assert_eq!(wrong, 0, "amended rows that disagree with their events");
            // The amended critical potassium: its numeric value and criticality from the
            // amendment, its earlier call and acknowledgement cleared.
            let row: (Option<f64>, bool, bool, bool) = sqlx::query_as(&format!(
                "SELECT numeric_value, critical, notified, acknowledged FROM {folded}.results
                  WHERE result_id = $1"
            ))
            .bind(k.as_uuid())
            .fetch_one(&db.app)
            .await
            .unwrap();
            assert_eq!(row, (Some(7.4), true, false, false));
            let row: (String, Option<f64>, Option<String>) = sqlx::query_as(&format!(
                "SELECT status, numeric_value, verified_by FROM {folded}.results WHERE result_id = $1"
            ))
            .bind(corrected.as_uuid())
            .fetch_one(&db.app)
            .await
            .unwrap();
            assert_eq!(row, ("recorded".to_string(), Some(4.4), None));
            let row: (String, Option<f64>, Option<String>) = sqlx::query_as(&format!(
                "SELECT status, numeric_value, verified_by FROM {folded}.results WHERE result_id = $1"
            ))
            .bind(rerun.as_uuid())
            .fetch_one(&db.app)
            .await
            .unwrap();
            // The second verifier, not the first.
            assert_eq!(
                row,
                ("verified".to_string(), Some(4.6), Some("tech2.1".into()))
            );
        }
        if p.name() == "orders" {
            // The rerun's second recording, verified: one row, at `to_authorise`, with
            // the second verification's time, after the second recording (the first
            // cycle's verification, before it, made the turnaround's stage negative).
            let stage: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(&format!(
                "SELECT stage, resulted_at, verified_at FROM {folded}.order_test_status WHERE order_id = $1"
            ))
            .bind(order.order_id.as_uuid())
            .fetch_all(&db.app)
            .await
            .unwrap();
            let (recorded, verified): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) = sqlx::query_as(
                "SELECT array_agg(recorded_at ORDER BY sequence) FILTER (WHERE event_type = 'ResultRecorded'),
                        array_agg(recorded_at ORDER BY sequence) FILTER (WHERE event_type = 'ResultVerified')
                   FROM events WHERE aggregate_id = $1",
            )
            .bind(rerun.as_uuid().to_string())
            .fetch_one(&db.app)
            .await
            .unwrap();
            assert_eq!((recorded.len(), verified.len()), (2, 2), "two cycles");
            assert_eq!(
                stage,
                [("to_authorise".to_string(), recorded[1], verified[1])]
            );
            assert!(stage[0].2 >= stage[0].1, "verified after it was recorded");
            // The result corrected after its verification: the correction voided it.
            let verified: (String, Option<DateTime<Utc>>) = sqlx::query_as(&format!(
                "SELECT status, verified_at FROM {folded}.result_tests WHERE result_id = $1"
            ))
            .bind(corrected.as_uuid())
            .fetch_one(&db.app)
            .await
            .unwrap();
            assert_eq!(verified, ("recorded".to_string(), None));
        }
    }
    db.drop().await;
}

#[tokio::test]
async fn a_result_recorded_again_under_a_new_catalogue_shows_what_the_second_recording_applied() {
    // A rerun recorded after a new catalogue version: the row shows the second
    // recording's version, interval and time, not a mix of the two recordings.
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-605", &["K"]).await;
    let serum = received_serum(&ledger, order.order_id, "ACC-605", &["K"]).await;
    let tech = lis_tests::actor("tech.1", Role::Technologist);
    let (id, first) = lis_tests::record_k(serum, 6.9);
    let (_, second) = lis_tests::record_k(serum, 4.6);
    ledger.execute_result(id, first, &tech).await.unwrap();
    project_all(&db.app).await;
    ledger
        .execute_result(
            id,
            ResultCommand::RequestRerun {
                reason: Reason::parse("delta check failed").unwrap(),
            },
            &tech,
        )
        .await
        .unwrap();
    let narrower = lis_tests::SEED_CATALOGUE.replace(
        "K,2823-3,Potassium,BIOCHEMISTRY,serum,red/SST,mmol/L,numeric,3.5,5.2,3.5,5.2,",
        "K,2823-3,Potassium,BIOCHEMISTRY,serum,red/SST,mmol/L,numeric,3.6,5.0,3.6,5.0,",
    );
    assert_ne!(
        narrower,
        lis_tests::SEED_CATALOGUE,
        "the seed's K line changed"
    );
    lis_commands::catalogue::import(&db.app, &narrower, "v2", "test")
        .await
        .unwrap();
    ledger.execute_result(id, second, &tech).await.unwrap();
    project_all(&db.app).await;
    let row: (i32, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT catalogue_version, reference_low, reference_high, numeric_value
           FROM proj_results.results WHERE result_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(row, (2, Some(3.6), Some(5.0), Some(4.6)));
    let recorded: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT max(recorded_at) FROM events WHERE aggregate_id = $1 AND event_type = 'ResultRecorded'",
    )
    .bind(id.as_uuid().to_string())
    .fetch_one(&db.app)
    .await
    .unwrap();
    let resulted: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT resulted_at FROM proj_orders.result_tests WHERE result_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(
        resulted, recorded,
        "the result's time is its latest recording"
    );
    db.drop().await;
}

/// Every stored cumulative report, and the report aggregated now from the rows, per
/// patient.
async fn reports(pool: &PgPool) -> (Vec<(uuid::Uuid, String)>, Vec<(uuid::Uuid, String)>) {
    let stored = sqlx::query_as(
        "SELECT patient_id, report FROM proj_results.cumulative_reports ORDER BY patient_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let rows = sqlx::query_as(&format!(
        "SELECT patient_id, {} FROM proj_results.cumulative_results r
          GROUP BY patient_id ORDER BY patient_id",
        lis_projections::models::results::REPORT
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    (stored, rows)
}

#[tokio::test]
async fn a_patients_stored_report_follows_release_amendment_and_retraction() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let path = lis_tests::actor("path.1", Role::Pathologist);
    // One patient with K released and NA released then amended; another with one K.
    lab_day(&db).await;
    let other = place(&ledger, "MRN-606", &["K"]).await;
    let serum = received_serum(&ledger, other.order_id, "ACC-606", &["K"]).await;
    let k = released_k(&ledger, serum, 4.4).await;
    project_all(&db.app).await;
    let (stored, rows) = reports(&db.app).await;
    assert_eq!(
        stored.len(),
        2,
        "a report for each patient with a released result"
    );
    assert_eq!(stored, rows);
    assert!(stored.iter().any(|(_, r)| r.contains("\"amended\":true")));
    let other_patient: uuid::Uuid =
        sqlx::query_scalar("SELECT patient_id FROM proj_results.results WHERE result_id = $1")
            .bind(k.as_uuid())
            .fetch_one(&db.app)
            .await
            .unwrap();

    // Amended: the report shows the new value.
    ledger
        .execute_result(
            k,
            ResultCommand::Amend {
                value: ResultValue::Numeric {
                    value: 4.9,
                    unit: "mmol/L".into(),
                },
                reason: Reason::parse("calibration drift found on review").unwrap(),
            },
            &path,
        )
        .await
        .unwrap();
    project_all(&db.app).await;
    let (amended, rows) = reports(&db.app).await;
    assert_eq!(amended, rows);
    assert_ne!(amended, stored, "the amendment reached the stored report");

    // Retracted, the patient's only released result: the report goes.
    ledger
        .execute_result(
            k,
            ResultCommand::Retract {
                reason: Reason::parse("wrong patient's sample").unwrap(),
            },
            &path,
        )
        .await
        .unwrap();
    project_all(&db.app).await;
    let (retracted, rows) = reports(&db.app).await;
    assert_eq!(retracted.len(), 1);
    assert_eq!(retracted, rows);
    assert!(retracted.iter().all(|(p, _)| *p != other_patient));
    db.drop().await;
}

#[tokio::test]
async fn two_workers_releasing_results_of_one_patient_at_once_both_reach_the_report() {
    // Two consumers of the results model (different Kafka partitions) each apply the
    // release of one of a patient's two results, in overlapping transactions.
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let mut released = Vec::new();
    for accession in ["ACC-607", "ACC-608"] {
        let order = place(&ledger, "MRN-607", &["K"]).await;
        let serum = received_serum(&ledger, order.order_id, accession, &["K"]).await;
        released.push(released_k(&ledger, serum, 4.2).await.as_uuid().to_string());
    }
    let results = models::by_name("results").unwrap();
    let all: Vec<Envelope> = lis_tests::whole_feed(&db.app)
        .await
        .iter()
        .map(Envelope::from)
        .collect();
    let (releases, before): (Vec<Envelope>, Vec<Envelope>) = all
        .into_iter()
        .partition(|e| e.event_type == "ResultAuthorised");
    assert_eq!(releases.len(), 2);
    ensure_schema(
        &mut db.app.acquire().await.unwrap(),
        results.as_ref(),
        "proj_results",
    )
    .await
    .unwrap();
    apply_batch(&db.app, results.as_ref(), &before, None)
        .await
        .unwrap();

    let mut first = db.app.begin().await.unwrap();
    lis_projections::projection::apply_in(
        &mut first,
        results.as_ref(),
        "proj_results",
        &releases[..1],
        None,
    )
    .await
    .unwrap();
    let second = {
        let (pool, results, release) = (db.app.clone(), results.clone(), releases[1].clone());
        tokio::spawn(async move { apply_batch(&pool, results.as_ref(), &[release], None).await })
    };
    // The second has computed its report, or is waiting to: the first commits now.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    first.commit().await.unwrap();
    second.await.unwrap().unwrap();

    let (stored, rows) = reports(&db.app).await;
    assert_eq!(stored, rows, "the stored report lost a release");
    let report: serde_json::Value = serde_json::from_str(&stored[0].1).unwrap();
    let mut ids: Vec<String> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    released.sort();
    assert_eq!(ids, released);
    db.drop().await;
}
