//! The `lisledger` binary against a real database: audit verify's exit codes and report,
//! a refused catalogue import, the demo day, KEK checks at start-up and `keys rotate`,
//! and plain-text logs when standard error is not a terminal.

use lis_domain::actor::Role;
use lis_eventstore_migrations::{APP_ROLE, OWNER_ROLE};
use lis_tests::{actor, code, place, TestDb};
use std::process::{Command, Output};

fn lisledger(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lisledger"))
        .args(args)
        .env("LIS_DATABASE_URL", db.url_as(APP_ROLE))
        .env("LIS_KEK", lis_tests::TEST_KEK)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run lisledger")
}

/// Whether `c` succeeded, and all it printed.
fn outcome(c: &mut Command) -> (bool, String) {
    let out = c.output().expect("run lisledger");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn audit_verify_passes_then_fails_naming_the_tampered_event() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let order = place(&ledger, "MRN-500", &["K"]).await;
    ledger
        .execute_order(
            order.order_id,
            lis_domain::order::OrderCommand::AddTests {
                tests: vec![code("NA")],
            },
            &actor("reception.1", Role::Reception),
        )
        .await
        .unwrap();

    let ok = lisledger(&db, &["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(
        stdout.contains("checked 2 events in 1 aggregates"),
        "{stdout}"
    );
    assert!(stdout.contains("events/s"), "{stdout}");
    assert!(
        stdout.contains("snapshot(s) are the state of their events"),
        "{stdout}"
    );

    db.tamper(&[
        "UPDATE events SET metadata = replace(metadata::text, 'reception.1', 'someone.else')::json WHERE sequence = 2",
    ])
    .await;

    let bad = lisledger(&db, &["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("Order {} broken at sequence 2", order.order_id)),
        "{stdout}"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_bad_catalogue_file_is_refused_whole_with_line_and_column() {
    let db = TestDb::empty().await;
    let dir = std::env::temp_dir().join(format!("lis-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.csv");
    std::fs::write(
        &file,
        lis_tests::SEED_CATALOGUE.replacen(",numeric,13.5,", ",numeric,x13.5,", 1),
    )
    .unwrap();
    let out = lisledger(&db, &["catalogue", "import", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing imported"), "{stderr}");
    assert!(
        stderr.contains("line 2, column `ref_low_male`: `x13.5` is not a finite number"),
        "{stderr}"
    );
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM catalogue_versions")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(versions, 0);

    std::fs::write(&file, lis_tests::SEED_CATALOGUE).unwrap();
    let out = lisledger(
        &db,
        &[
            "catalogue",
            "import",
            file.to_str().unwrap(),
            "--imported-by",
            "qm.1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 48 tests as catalogue v1"));
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}

#[tokio::test]
async fn the_demo_loads_a_lab_day_that_verifies() {
    let db = TestDb::new().await;
    let out = lisledger(&db, &["demo", "--orders", "30", "--seed", "7"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo lab day: 30 orders"), "{stdout}");
    assert!(stdout.contains("user auditor.demo"), "{stdout}");
    let (orders, released): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type = 'OrderPlaced'), count(*) FILTER (WHERE event_type = 'ResultAuthorised') FROM events",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(orders, 30);
    assert!(
        released >= 30,
        "every order's results are released: {released}"
    );
    let verify = lisledger(&db, &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // Loaded once: a second run with --if-empty does nothing.
    let again = lisledger(&db, &["demo", "--if-empty"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("no demo loaded"));
    db.drop().await;
}

#[tokio::test]
async fn a_demo_day_sized_in_tests_orders_exactly_that_many() {
    let db = TestDb::new().await;
    let out = lisledger(
        &db,
        &["demo", "--tests", "41", "--seed", "3", "--concurrency", "2"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" orders, 41 tests, "), "{stdout}");
    let (ordered, recorded): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT sum(json_array_length(payload->'OrderPlaced'->'tests')) FROM events WHERE event_type = 'OrderPlaced')::bigint,
                (SELECT count(*) FROM events WHERE event_type = 'ResultRecorded')",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!((ordered, recorded), (41, 41));
    let both = lisledger(&db, &["demo", "--tests", "5", "--orders", "5"]);
    assert!(!both.status.success(), "--tests and --orders together");
    db.drop().await;
}

/// `--mix FILE` is the day's order mix: each order is one of its profiles (here the only
/// one); a mix naming a test the catalogue lacks is refused before anything is written.
#[tokio::test]
async fn a_demo_day_orders_from_the_mix_it_is_given_and_refuses_a_bad_one() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("lis-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad-mix.csv");
    std::fs::write(
        &bad,
        "profile,weight,tests\nThyroid,1,TSH FT4\nKidney,2,CREA UREA\n",
    )
    .unwrap();
    let out = lisledger(
        &db,
        &["demo", "--orders", "3", "--mix", bad.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("line 3: profile `Kidney`: test `UREA` is not in the catalogue"),
        "{stderr}"
    );
    let (events, users): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM users)")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!((events, users), (0, 0), "a refused mix writes nothing");

    let good = dir.join("mix.csv");
    std::fs::write(
        &good,
        "# thyroid clinic\nprofile,weight,tests\nThyroid,1,TSH FT4\n",
    )
    .unwrap();
    let out = lisledger(
        &db,
        &["demo", "--orders", "4", "--mix", good.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("order mix: 1 profile, 2.0 tests an order"),
        "{stdout}"
    );
    let ordered: Vec<String> = sqlx::query_scalar(
        "SELECT string_agg(t->>'code', ' ' ORDER BY n)
         FROM events, json_array_elements(payload->'OrderPlaced'->'tests') WITH ORDINALITY e(t, n)
         WHERE event_type = 'OrderPlaced' GROUP BY sequence, aggregate_id",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(ordered.len(), 4);
    for tests in ordered {
        assert_eq!(tests, "TSH FT4");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_missing_malformed_or_different_kek_stops_start_up_naming_the_problem() {
    let db = TestDb::new().await;
    // The ledger's keys are created, wrapped by the test KEK.
    drop(db.vault().await);
    let patient = uuid::Uuid::new_v4().to_string();
    let erase = |kek: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lisledger"));
        c.args([
            "patients", "erase", &patient, "--reason", "test", "--actor", "dpo.1",
        ])
        .env("LIS_DATABASE_URL", db.url_as(APP_ROLE))
        .env("LIS_KEK_FILE", "/nonexistent/lisledger-kek")
        .env("RUST_LOG", "warn")
        .env_remove("LIS_KEK");
        if let Some(k) = kek {
            c.env("LIS_KEK", k);
        }
        outcome(&mut c)
    };
    let (ok, text) = erase(None);
    assert!(
        !ok && text.contains("no key-encryption key is configured"),
        "{text}"
    );
    let (ok, text) = erase(Some("AAAA"));
    assert!(!ok && text.contains("32 bytes"), "{text}");
    let other = lis_commands::keys::LocalKek::generate();
    let (ok, text) = erase(Some(&other));
    assert!(
        !ok && text.contains("is not the one this ledger's keys are wrapped with"),
        "{text}"
    );
    // The right key starts; the unknown patient is refused, and nothing is written.
    let (ok, text) = erase(Some(lis_tests::TEST_KEK));
    assert!(!ok && text.contains("no patient"), "{text}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(events, 0);
    db.drop().await;
}

#[tokio::test]
async fn keys_rotate_rewraps_under_the_new_kek_which_alone_then_opens_the_ledger() {
    let db = TestDb::new().await;
    let ledger = db.ledger().await;
    let placed = place(&ledger, "MRN-CLI-ROT", &["K"]).await;
    let patient = ledger
        .order(placed.order_id)
        .await
        .unwrap()
        .facts()
        .unwrap()
        .patient_id
        .to_string();
    let new = lis_commands::keys::LocalKek::generate();
    let run = |args: &[&str], kek: &str, previous: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lisledger"));
        c.args(args)
            .env("LIS_DATABASE_URL", db.url_as(APP_ROLE))
            .env("LIS_MIGRATION_DATABASE_URL", db.url_as(OWNER_ROLE))
            .env("LIS_KEK", kek)
            .env("RUST_LOG", "warn")
            .env_remove("LIS_KEK_PREVIOUS")
            .env_remove("LIS_KEK_PREVIOUS_FILE");
        if let Some(p) = previous {
            c.env("LIS_KEK_PREVIOUS", p);
        }
        outcome(&mut c)
    };
    let rotate = [
        "keys",
        "rotate",
        "--reason",
        "scheduled rotation",
        "--actor",
        "sec.officer",
    ];
    // Without the retired KEK there is nothing to rotate from: said, and nothing changes.
    let kek_ids = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT kek_id FROM ledger_keys UNION ALL SELECT kek_id FROM patient_keys ORDER BY 1",
        )
        .fetch_all(&db.owner)
        .await
        .unwrap()
    };
    let before = kek_ids().await;
    let (ok, text) = run(&rotate, &new, None);
    assert!(!ok && text.contains("LIS_KEK_PREVIOUS"), "{text}");
    assert_eq!(kek_ids().await, before);
    let (ok, text) = run(&rotate, &new, Some(lis_tests::TEST_KEK));
    assert!(
        ok && text.contains("re-wrapped 2 ledger keys and 1 patient keys"),
        "{text}"
    );
    let who: Vec<(String, String, String)> =
        sqlx::query_as("SELECT step, actor_id, reason FROM kek_rotations ORDER BY id")
            .fetch_all(&db.app)
            .await
            .unwrap();
    let step = |s: &str| (s.into(), "sec.officer".into(), "scheduled rotation".into());
    assert_eq!(
        who,
        [step("ledger-keys"), step("patient-keys"), step("finished")]
    );
    // The retired KEK alone is refused; the new one alone opens the vault and erases.
    let erase = [
        "patients",
        "erase",
        patient.as_str(),
        "--reason",
        "asked",
        "--actor",
        "dpo.1",
    ];
    let (ok, text) = run(&erase, lis_tests::TEST_KEK, None);
    assert!(
        !ok && text.contains("is not the one this ledger's keys are wrapped with"),
        "{text}"
    );
    let (ok, text) = run(&erase, &new, None);
    assert!(ok && text.contains("erased"), "{text}");
    db.drop().await;
}

#[tokio::test]
async fn logs_written_to_a_file_or_pipe_are_plain_text() {
    let db = TestDb::new().await;
    let out = Command::new(env!("CARGO_BIN_EXE_lisledger"))
        .args(["projections", "rebuild", "results"])
        .env("LIS_DATABASE_URL", db.url_as(APP_ROLE))
        .env("LIS_KEK", lis_tests::TEST_KEK)
        .env("RUST_LOG", "info")
        // Judged on the pipe alone, not on a NO_COLOR the test's caller may have set.
        .env_remove("NO_COLOR")
        .output()
        .expect("run lisledger");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("rebuilt read model is live"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "terminal escape codes in a log that is not a terminal: {stderr:?}"
    );
    db.drop().await;
}
