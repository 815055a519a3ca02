//! The backup drill of docs/reliability.md, end to end: a lab day (with audit seals and
//! read models) is dumped with `pg_dump --format=custom`, restored with `pg_restore` into
//! a fresh database on a fresh PostgreSQL cluster (roles from `lisledger db init`), and
//! then: every table of the trail is identical row for row (no trigger fired or rewrote
//! a row on restore), `audit verify` passes on the copy (chains and seals), every
//! projection rebuilt on the copy equals the original's read model, and the MongoDB
//! analytics, which a dump does not hold, rebuilt from the copy by `lisledger projections
//! rebuild analytics`, equal the original's; and when that analytics rebuild loses
//! MongoDB half-way, it fails and leaves a model that replays from the start.

mod support;

use lis_domain::actor::Role as LabRole;
use lis_domain::ids::{ResultId, SampleId};
use lis_domain::result::ResultCommand;
use lis_domain::text::Reason;
use lis_domain::value::ResultValue;
use lis_eventstore_migrations::APP_ROLE;
use lis_projections::projection::schema_of;
use lis_tests::{actor, admin_url, code, dump_schema, lab_day_numbered, TestDb};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::mongo_proxy::MongoProxy;
use support::{
    analytics_today, assert_analytics_equal_replay, drop_analytics, mongo_url, pg_bin,
    pg_server_tool, wait_projected, wait_sealed, PrivatePg, Role, Stack,
};

/// The tables whose rows must survive a backup byte for byte.
const TRAIL: [&str; 9] = [
    "events",
    "audit_log_leaves",
    "audit_checkpoints",
    "catalogue_versions",
    "catalogue_tests",
    "patient_pseudonyms",
    "patient_keys",
    "ledger_keys",
    "users",
];

/// A digest of every row of `table`, in a stable order, independent of session settings.
async fn digest(url: &str, table: &str) -> (i64, String) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query("SET TimeZone = 'UTC'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query_as(&format!(
        "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

fn run(program: &std::path::Path, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_verifies_and_rebuilds_every_projection_identically() {
    // A lab day, sealed and projected.
    let db = TestDb::new().await;
    let stack = Stack::new(&db, false);
    let mut relay = stack.spawn("relay", &["relay"]);
    let mut workers = stack.spawn(
        "project",
        &["project", "orders", "specimens", "results", "analytics"],
    );
    let ledger = db.ledger().await;
    lis_api::http::users::add_user(
        &db.app,
        &lis_domain::actor::ActorId::parse("audit.1").unwrap(),
        lis_domain::actor::Role::Auditor,
        "correct horse battery",
        &lis_api::http::users::ChangedBy::tool("backup drill", "the drill's auditor"),
    )
    .await
    .unwrap();
    for n in 1..=3 {
        lab_day_numbered(&ledger, 700 + n).await;
    }
    let names = ["orders", "specimens", "results"];
    let all = ["orders", "specimens", "results", "analytics"];
    wait_projected(&db, &all, Duration::from_secs(60), &[&relay, &workers]).await;
    wait_sealed(&db, &relay, Duration::from_secs(30)).await;
    relay.kill9();
    workers.kill9();

    // Backup: the whole database, as the superuser (the read models belong to the
    // application role, the trail to the owner).
    let superuser = PgConnectOptions::from_str(&admin_url())
        .unwrap()
        .get_username()
        .to_string();
    let source = db.url_as(&superuser);
    let dump = stack.logs.join("lisledger.dump");
    let dump = dump.to_str().unwrap();
    run(
        &pg_bin("pg_dump"),
        &["--format=custom", "--file", dump, &source],
    );

    // Restore onto a fresh cluster: roles and an empty database first, then the dump.
    let pg = PrivatePg::init();
    pg.start();
    let restored_db = "lisledger";
    let mut copy = Stack::on(pg.url(APP_ROLE, restored_db), false);
    copy.set("LIS_ADMIN_DATABASE_URL", pg.admin_url());
    let init = copy.run(&["db", "init"]);
    assert!(init.status.success(), "{init:?}");
    let target = pg.url("postgres", restored_db);
    run(
        &pg_bin("pg_restore"),
        &["--exit-on-error", "--dbname", &target, dump],
    );

    // The fresh cluster's transaction counter is behind the restored events' tx_id: the
    // ordered feed would hold every event back. Move it past them (pg_resetwal -x on the
    // stopped cluster, at a pg_xact segment boundary), as the procedure says.
    let mut conn = PgConnection::connect(&target).await.unwrap();
    let (max_tx, current): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT max(tx_id)::text::bigint FROM events), pg_current_xact_id()::text::bigint",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    println!("restored events up to tx {max_tx}; the new cluster is at {current}");
    if current <= max_tx {
        // The relay and the workers refuse such a database rather than stall.
        let relay = copy.run(&["relay"]);
        let stderr = String::from_utf8_lossy(&relay.stderr);
        assert!(
            !relay.status.success() && stderr.contains("pg_resetwal"),
            "{relay:?}"
        );
        let next = (max_tx as u64 + 1).div_ceil(0x10_0000) * 0x10_0000;
        pg_server_tool("pg_ctl", &["-D", &pg.data(), "-m", "fast", "-w", "stop"]);
        pg_server_tool(
            "pg_resetwal",
            &[
                "-x",
                &(next & 0xffff_ffff).to_string(),
                "-e",
                &(next >> 32).to_string(),
                &pg.data(),
            ],
        );
        pg.start();
    }
    let mut conn = PgConnection::connect(&target).await.unwrap();
    let now: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(now > max_tx, "{now} <= {max_tx}\n{}", pg.log_tail());
    conn.close().await.unwrap();

    // Every row of the trail as it was: no trigger fired, nothing rehashed or re-stamped.
    for table in TRAIL {
        let original = digest(&source, table).await;
        assert!(original.0 > 0, "{table} is empty in the original");
        assert_eq!(digest(&target, table).await, original, "{table}");
    }
    // The copy verifies: every chain, every leaf and signed checkpoint.
    copy.assert_audit_verifies();
    // Every projection rebuilt from the copy's events equals the original's read model.
    let restored = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&pg.url(APP_ROLE, restored_db))
        .await
        .unwrap();
    for p in lis_projections::models::all() {
        let schema = schema_of(p.name());
        let report = lis_projections::worker::rebuild(&restored, p.as_ref(), &mut |_| {})
            .await
            .unwrap();
        assert!(report.events > 0, "{}", p.name());
        assert_eq!(
            dump_schema(&restored, &schema).await,
            dump_schema(&db.app, &schema).await,
            "projection {}",
            p.name()
        );
    }
    // The analytics: rebuilt from the copy into its own (empty) MongoDB database, they
    // equal what the original's workers built; rebuilt in place on the original, over
    // the facts already there, they come out the same again.
    let original = analytics_today(&stack).await;
    assert!(
        original["volumes"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "{original}"
    );
    assert_ne!(
        analytics_today(&copy).await,
        original,
        "the copy's MongoDB database starts empty"
    );
    for (which, on, pool) in [("copy", &copy, &restored), ("original", &stack, &db.app)] {
        let rebuilt = on.run(&["projections", "rebuild", "analytics"]);
        assert!(
            rebuilt.status.success(),
            "{which}: {}",
            String::from_utf8_lossy(&rebuilt.stderr)
        );
        assert_eq!(analytics_today(on).await, original, "{which}");
        // The offsets swapped in account for every event, once.
        let (applied, stored): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT sum(last_sequence)::bigint FROM proj_analytics.offsets),
                    (SELECT count(*) FROM events)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(applied, Some(stored), "{which}");
    }
    drop_analytics(&copy).await;
    drop_analytics(&stack).await;
    // …and the copy takes new commands that the feed delivers after the old ones.
    // The copy's patient keys came with it: the same KEK opens them.
    let copy_ledger = lis_commands::Ledger::new(
        restored.clone(),
        Default::default(),
        lis_tests::vault_on(&restored).await,
    );
    lab_day_numbered(&copy_ledger, 799).await;
    let copy_db = TestDb {
        name: restored_db.into(),
        app: restored.clone(),
        owner: restored.clone(),
    };
    let workers = copy.spawn(
        "project-copy",
        &["project", "orders", "specimens", "results"],
    );
    wait_projected(&copy_db, &names, Duration::from_secs(60), &[&workers]).await;
    drop(workers);
    restored.close().await;
    db.drop().await;
}

/// Waits until the analytics' offsets account for every event.
async fn analytics_caught_up(db: &TestDb, roles: &[&Role]) {
    wait_projected(db, &["analytics"], Duration::from_secs(60), roles).await;
}

/// Every document of every collection of `stack`'s analytics database.
async fn analytics_documents(stack: &Stack) -> u64 {
    let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
    let db = client.database(&stack.get("LIS_MONGO_DATABASE"));
    let mut total = 0;
    for name in db.list_collection_names().await.unwrap() {
        total += db
            .collection::<mongodb::bson::Document>(&name)
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap();
    }
    total
}

/// Runs `projections rebuild analytics` through a proxy that passes the emptying of the
/// database and the rebuild's first `update` command, and then breaks every connection.
/// Asserts that the rebuild failed half-way (some of the `documents` written, not all)
/// and left no offset saying an event is in MongoDB.
async fn fail_an_analytics_rebuild_half_way(db: &TestDb, stack: &mut Stack, documents: u64) {
    let direct = stack.get("LIS_MONGO_URL");
    let upstream = direct
        .trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_string();
    let proxy = MongoProxy::start(upstream, "update", 2).await;
    stack.set(
        "LIS_MONGO_URL",
        format!(
            "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=2000",
            proxy.addr
        ),
    );
    let failed = stack.run(&["projections", "rebuild", "analytics"]);
    stack.set("LIS_MONGO_URL", direct);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success(),
        "the rebuild should fail:\n{stderr}"
    );
    assert!(proxy.cut.load(Ordering::SeqCst), "{stderr}");
    assert_eq!(proxy.forwarded.load(Ordering::SeqCst), 1, "{stderr}");
    let partial = analytics_documents(stack).await;
    assert!(
        partial > 0 && partial < documents,
        "half-way: {partial} of {documents} documents"
    );
    let claimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM proj_analytics.offsets WHERE last_sequence > 0")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(claimed, 0, "no offset may say an event is in MongoDB");
}

/// The restore step's failure path, single-node: an analytics rebuild that loses
/// MongoDB half-way fails, and the worker then replays every event over the partial
/// facts and ends where a clean replay does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analytics_rebuild_that_fails_half_way_leaves_a_model_that_replays_from_the_start() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let workers = stack.spawn("project", &["project", "analytics"]);
    let ledger = db.ledger().await;
    for n in 1..=2 {
        lab_day_numbered(&ledger, 720 + n).await;
    }
    analytics_caught_up(&db, &[&workers]).await;
    drop(workers);
    let built = analytics_today(&stack).await;
    let documents = analytics_documents(&stack).await;

    fail_an_analytics_rebuild_half_way(&db, &mut stack, documents).await;

    let workers = stack.spawn("project-after", &["project", "analytics"]);
    analytics_caught_up(&db, &[&workers]).await;
    drop(workers);
    assert_eq!(analytics_documents(&stack).await, documents);
    assert_eq!(analytics_today(&stack).await, built);
    assert_eq!(assert_analytics_equal_replay(&db, &stack).await, built);
    db.drop().await;
}

/// The same failure in Kafka mode: the consumer group has already committed past every
/// event, so the worker cannot replay them. At the next event of an aggregate whose
/// facts it has no offset for, it stops with a gap and says so; a second rebuild that
/// runs to the end sets it going again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_kafka_a_failed_analytics_rebuild_stops_the_worker_at_a_gap_until_rebuilt() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, true);
    let relay = stack.spawn("relay", &["relay"]);
    let workers = stack.spawn("project", &["project", "analytics"]);
    let ledger = db.ledger().await;
    let (_, serum) = lab_day_numbered(&ledger, 731).await;
    lab_day_numbered(&ledger, 732).await;
    analytics_caught_up(&db, &[&relay, &workers]).await;
    drop(workers);
    let documents = analytics_documents(&stack).await;

    fail_an_analytics_rebuild_half_way(&db, &mut stack, documents).await;

    // A later event of a result whose facts the worker has no offset for.
    let ledger = &ledger;
    let amend = |value: f64| async move {
        let sodium = ResultId::for_test(SampleId::from_uuid(serum), &code("NA"));
        ledger
            .execute_result(
                sodium,
                ResultCommand::Amend {
                    value: ResultValue::Numeric {
                        value,
                        unit: "mmol/L".into(),
                    },
                    reason: Reason::parse("second dilution check").unwrap(),
                },
                &actor("path.1", LabRole::Pathologist),
            )
            .await
            .unwrap();
    };
    let mut stopped = stack.spawn("project-after", &["project", "analytics"]);
    amend(136.0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stopped.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker should stop at the gap\n{}",
            stopped.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&stopped.log).unwrap();
    assert!(log.contains("gap in Result"), "{log}");

    // Rebuilt to the end, the model takes new events again.
    let rebuilt = stack.run(&["projections", "rebuild", "analytics"]);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let workers = stack.spawn("project-again", &["project", "analytics"]);
    amend(137.0).await;
    analytics_caught_up(&db, &[&relay, &workers]).await;
    drop(workers);
    drop(relay);
    assert_analytics_equal_replay(&db, &stack).await;
    db.drop().await;
}
