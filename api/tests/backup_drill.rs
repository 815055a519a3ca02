//! The backup drill of docs/reliability.md, end to end: a lab day (with audit seals and
//! read models) is dumped with `pg_dump --format=custom`, restored with `pg_restore` into
//! a fresh database on a fresh PostgreSQL cluster (roles from `lisledger db init`), and
//! then: every table of the trail is identical row for row (no trigger fired or rewrote
//! a row on restore), `audit verify` passes on the copy (chains and seals), every
//! projection rebuilt on the copy equals the original's read model, and the MongoDB
//! analytics, which a dump does not hold, rebuilt from the copy by `lisledger projections
//! rebuild analytics`, equal the original's.

mod support;

use lis_eventstore_migrations::APP_ROLE;
use lis_projections::projection::schema_of;
use lis_tests::{admin_url, dump_schema, lab_day_numbered, TestDb};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;
use support::{
    analytics_today, drop_analytics, pg_bin, pg_server_tool, wait_projected, wait_sealed,
    PrivatePg, Stack,
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
    lis_api::http::auth::add_user(
        &db.app,
        &lis_domain::actor::ActorId::parse("audit.1").unwrap(),
        lis_domain::actor::Role::Auditor,
        "correct horse battery",
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
