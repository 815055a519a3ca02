//! `lisledger bench` end to end at a tiny scale (a smoke test, not a measurement): the
//! replay rebuilds every model and reports against COPY; the audit check reports against
//! sha256sum; the log-in timing reports an unknown user against a wrong password; the
//! command benchmark starts
//! its roles, gets commands through the API and runs pgbench beside them.

use lis_eventstore_migrations::{APP_ROLE, OWNER_ROLE};
use lis_tests::{lab_day, TestDb};
use std::process::{Command, Output};

fn bench(db: &TestDb, args: &[&str]) -> Output {
    // A free loopback port for the API the bench starts.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    Command::new(env!("CARGO_BIN_EXE_lisledger"))
        .arg("bench")
        .args(args)
        .env("LIS_DATABASE_URL", db.url_as(APP_ROLE))
        .env("LIS_MIGRATION_DATABASE_URL", db.url_as(OWNER_ROLE))
        .env("LIS_HTTP_ADDR", addr.to_string())
        .env("LIS_KEK", lis_tests::TEST_KEK)
        .env_remove("LIS_KAFKA_BROKERS")
        .env_remove("LIS_MONGO_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run lisledger bench")
}

/// The standard output of a bench that succeeded (else both outputs, in the panic).
fn succeeded(run: Output) -> String {
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

#[tokio::test]
async fn bench_replay_and_commands_run_end_to_end() {
    let db = TestDb::new().await;
    lab_day(&db).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("lisledger-bench-{}", uuid::Uuid::new_v4()));

    let out = succeeded(bench(&db, &["replay"]));
    assert!(out.contains(&format!("replay of {events} events")), "{out}");
    for model in ["orders", "specimens", "results"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(model)
                && l.contains("of COPY")
                && l.contains("longest transaction id held")),
            "{out}"
        );
    }

    // Benchmark 4: the chain check over every event, against sha256sum in the same run.
    let out = succeeded(bench(&db, &["audit"]));
    assert!(out.contains(&format!("over {events} events")), "{out}");
    assert!(out.contains("audit verify / sha256sum"), "{out}");

    // Log-in timing: an unknown user against a wrong password, with the ratio.
    let login_dir = dir.join("login");
    let attempts = [
        "login",
        "--attempts",
        "2",
        "--dir",
        login_dir.to_str().unwrap(),
    ];
    let out = succeeded(bench(&db, &attempts));
    for line in [
        "baseline: wrong password",
        "unknown user ",
        "unknown user / wrong password: p50 ",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }

    let pgbench = ["pgbench", "/usr/lib/postgresql/15/bin/pgbench"]
        .iter()
        .any(|p| Command::new(p).arg("--version").output().is_ok());
    if pgbench {
        let dir = dir.to_string_lossy();
        let args = [
            "commands",
            "--clients",
            "2",
            "--secs",
            "2",
            "--warmup-secs",
            "0",
            "--dir",
            &dir,
        ];
        let run = bench(&db, &args);
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let line = out
            .lines()
            .find(|l| l.contains("2 clients: ledger"))
            .unwrap_or_else(|| panic!("no result line: {out}"));
        assert!(line.contains("pgbench") && line.contains("ratio"), "{out}");
        assert!(out.contains("peak memory (VmHWM)"), "{out}");
        // Each role's peak beside its own before the load, as a ratio.
        let memory = out
            .lines()
            .find(|l| l.starts_with("benchmark 6"))
            .unwrap_or_else(|| panic!("no benchmark 6 line: {out}"));
        for role in ["serve", "relay", "project"] {
            assert!(memory.contains(&format!("{role} ")), "{memory}");
        }
        assert_eq!(memory.matches("idle").count(), 3, "{memory}");
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&db.app)
            .await
            .unwrap();
        assert!(after > events, "the commands wrote no event");
    }
    let _ = std::fs::remove_dir_all(dir);
    db.drop().await;
}
