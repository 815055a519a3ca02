//! SIGKILL at random moments under load: concurrent HTTP clients work through lab days
//! (each command with an Idempotency-Key and its own correlation id, retried with the
//! same key on connection errors, 503 and "still running", as a real client does) while
//! a seeded random schedule SIGKILLs and restarts the API, the relay and each projection
//! worker. Afterwards: every acknowledged command is in the event store exactly once, no
//! command was applied twice, every read model equals a fresh rebuild, the analytics
//! equal a fresh replay, and `audit verify` passes (chains and seals).
//!
//! CI runs a few cycles; `LIS_FAULTS_LONG=1` runs many (`LIS_FAULTS_CYCLES=N` to choose,
//! `LIS_FAULTS_SEED=S` to replay a schedule, `LIS_FAULTS_KAFKA=0` for single-node mode).
//! See docs/reliability.md.

mod support;

use lis_domain::actor::Role as LabRole;
use lis_tests::{assert_models_equal_rebuilds, TestDb};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::load::{assert_exactly_once, Load};
use support::{
    assert_analytics_equal_replay, tails, token, wait_healthy, wait_projected, Role, Stack,
};

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The roles of the stack, each its own process so each can be killed alone.
const ROLES: [(&str, &[&str]); 6] = [
    ("serve", &["serve"]),
    ("relay", &["relay"]),
    ("project-orders", &["project", "orders"]),
    ("project-specimens", &["project", "specimens"]),
    ("project-results", &["project", "results"]),
    ("project-analytics", &["project", "analytics"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_any_role_under_load_loses_and_doubles_nothing() {
    let long = std::env::var("LIS_FAULTS_LONG").is_ok_and(|v| v == "1");
    let cycles = env_number("LIS_FAULTS_CYCLES").unwrap_or(if long { 200 } else { 10 });
    let seed = env_number("LIS_FAULTS_SEED").unwrap_or_else(rand::random);
    println!("kill schedule: LIS_FAULTS_SEED={seed} LIS_FAULTS_CYCLES={cycles}");
    let clients = 3;

    let db = TestDb::new().await;
    // Over Kafka by default; LIS_FAULTS_KAFKA=0: single-node mode (the workers read the
    // event store's ordered feed).
    let kafka = std::env::var("LIS_FAULTS_KAFKA").as_deref() != Ok("0");
    let mut stack = Stack::new(&db, kafka);
    let base = stack.with_api();
    let mut roles: Vec<Role> = ROLES
        .iter()
        .map(|(name, args)| stack.spawn(name, args))
        .collect();
    wait_healthy(&base, &roles[0], Duration::from_secs(30)).await;

    let load = Load::start(&base, clients);

    // The schedule: at a random moment, SIGKILL a role and start it again — every role
    // once in a random order, then the API one time in three and any role otherwise.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..ROLES.len()).collect();
    order.shuffle(&mut rng);
    let started = Instant::now();
    for cycle in 1..=cycles as usize {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
        let which = match order.get(cycle - 1) {
            Some(&w) => w,
            None if rng.gen_bool(1.0 / 3.0) => 0,
            None => rng.gen_range(0..ROLES.len()),
        };
        let (name, args) = ROLES[which];
        println!(
            "cycle {cycle}: SIGKILL {name} at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        roles[which].kill9();
        roles[which] = stack.spawn(name, args);
    }
    // Let the last restarts serve some load, then stop the clients.
    wait_healthy(&base, &roles[0], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let outcome = load.stop().await;
    assert!(
        outcome.errors.is_empty(),
        "commands without a final 2xx answer:\n{}\n\n{}",
        outcome.errors.join("\n"),
        tails(&roles.iter().collect::<Vec<_>>())
    );
    let acked = outcome.acked;
    let retried = acked.iter().filter(|a| a.attempts > 1).count();
    println!(
        "{} commands acknowledged ({retried} after retries) in {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(acked.len() >= 20, "too little load: {}", acked.len());
    assert_exactly_once(&db.app, &acked).await;

    // The fan-out catches up; every model equals a rebuild; the trail verifies.
    let names = ["orders", "specimens", "results", "analytics"];
    let refs: Vec<&Role> = roles.iter().collect();
    // (Kafka consumer groups rebalance after each worker kill: longer runs wait longer.)
    let catch_up = Duration::from_secs(120 + 2 * cycles);
    wait_projected(&db, &names, catch_up, &refs).await;
    for r in &mut roles {
        r.kill9();
    }
    assert_models_equal_rebuilds(&db.app).await;
    assert_analytics_equal_replay(&db, &stack).await;
    stack.assert_audit_verifies();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_attempt_died_is_answered_once() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    let api = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;
    let reception = token("reception.1", LabRole::Reception);
    let http = reqwest::Client::new();
    let send = |key: &'static str, mrn: &'static str| {
        http.post(format!("{base}/orders"))
            .bearer_auth(&reception)
            .header("Idempotency-Key", key)
            .json(&json!({
                "patient": {"mrn": mrn, "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
                "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": ["K"]
            }))
            .send()
    };
    let commands = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(DISTINCT metadata ->> 'command_id') FROM events")
            .fetch_one(&db.app)
            .await
            .unwrap()
    };
    // Died after its command committed, before its response was stored: the retry is
    // answered from the events, exactly as the first attempt would have been.
    let first = send("died-after-commit", "MRN-D1").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    sqlx::query("UPDATE idempotency_keys SET response_status = NULL, response_body = NULL")
        .execute(&db.app)
        .await
        .unwrap();
    let again = send("died-after-commit", "MRN-D1").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(commands().await, 1);
    // …and from then on from the stored response.
    let third = send("died-after-commit", "MRN-D1").await.unwrap();
    assert_eq!(third.json::<Value>().await.unwrap(), first);

    // Died before its command committed: the retry runs it, once.
    sqlx::query(
        "INSERT INTO idempotency_keys (actor_id, key, request_sha256)
         SELECT actor_id, 'died-before-commit', request_sha256 FROM idempotency_keys",
    )
    .execute(&db.app)
    .await
    .unwrap();
    // (the same body as the first request: MRN-D1 again, a second order for the patient)
    let retry = send("died-before-commit", "MRN-D1").await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED, "{}", api.log_tail());
    assert_eq!(commands().await, 2);

    // Still running (its lock held): the retry is told so and nothing runs.
    sqlx::query("UPDATE idempotency_keys SET response_status = NULL, response_body = NULL WHERE key = 'died-before-commit'")
        .execute(&db.app)
        .await
        .unwrap();
    // (An attempt holds its key's advisory lock while it runs: take it as one would.)
    let mut holder = db.app.begin().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1, hashtext(actor_id || '/' || key))
           FROM idempotency_keys WHERE key = 'died-before-commit'",
    )
    .bind(lis_api::http::idempotency::CLAIM_LOCK)
    .execute(&mut *holder)
    .await
    .unwrap();
    let busy = send("died-before-commit", "MRN-D1").await.unwrap();
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    holder.rollback().await.unwrap();
    assert_eq!(commands().await, 2);
    drop(api);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_keyed_commands_than_connections_do_not_starve() {
    // Each keyed command holds its claim's lock while it runs; with the locks on the
    // commands' own pool, two claims would take both connections and wait for ever (a
    // 503 after the acquire timeout).
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    stack.set("LIS_DB_MAX_CONNECTIONS", "2".into());
    let api = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;
    let reception = token("reception.1", LabRole::Reception);
    let http = reqwest::Client::new();
    let sends = (0..12).map(|n| {
        http.post(format!("{base}/orders"))
            .bearer_auth(&reception)
            .header("Idempotency-Key", format!("burst-{n}"))
            .json(&json!({
                "patient": {"mrn": format!("MRN-B{n}"), "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
                "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": ["K"]
            }))
            .send()
    });
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", api.log_tail());
    }
    drop(api);
    db.drop().await;
}
