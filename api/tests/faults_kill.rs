//! SIGKILL at random moments under load: concurrent HTTP clients work through lab days
//! (each command with an Idempotency-Key and its own correlation id, retried with the
//! same key on connection errors, 503 and "still running", as a real client does) while
//! a seeded random schedule SIGKILLs and restarts the API, the relay and each projection
//! worker. Afterwards: every acknowledged command is in the event store exactly once, no
//! command was applied twice, every read model equals a fresh rebuild, the analytics
//! equal a fresh replay, and `audit verify` passes (chains and seals).
//!
//! CI runs a few cycles; `LIS_FAULTS_LONG=1` runs many (`LIS_FAULTS_CYCLES=N` to choose,
//! `LIS_FAULTS_SEED=S` to replay a schedule). See docs/reliability.md.

mod support;

use lis_domain::actor::Role as LabRole;
use lis_tests::{assert_models_equal_rebuilds, TestDb};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{assert_analytics_equal_replay, token, wait_healthy, wait_projected, Role, Stack};

/// A command the API acknowledged with a 2xx.
#[derive(Debug)]
struct Acked {
    path: String,
    correlation_id: String,
    id: String,
    position: i64,
    attempts: u32,
}

struct Client {
    http: reqwest::Client,
    base: String,
    acked: Vec<Acked>,
}

impl Client {
    /// Sends one command until it gets a final answer, like a careful client: the same
    /// Idempotency-Key and correlation id on every attempt; connection errors, 503 and
    /// "the first request is still running" are retried.
    async fn command(&mut self, token: &str, path: &str, body: Value) -> Result<Value, String> {
        let key = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        let mut attempts = 0;
        while Instant::now() < deadline {
            attempts += 1;
            let sent = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .header("Idempotency-Key", &key)
                .header("X-Correlation-Id", &correlation_id)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Err(e) => last = format!("transport: {e}"),
                Ok(r) => {
                    let status = r.status();
                    let answer: Value = r.json().await.unwrap_or(Value::Null);
                    let in_progress = answer["type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("idempotency-in-progress"));
                    if status.is_success() {
                        let id = answer["id"].as_str().unwrap_or_default().to_string();
                        let position = answer["position"].as_i64().unwrap_or(-1);
                        self.acked.push(Acked {
                            path: path.to_string(),
                            correlation_id,
                            id,
                            position,
                            attempts,
                        });
                        return Ok(answer);
                    }
                    if status != StatusCode::SERVICE_UNAVAILABLE && !in_progress {
                        return Err(format!("{path}: {status} {answer} (attempt {attempts})"));
                    }
                    last = format!("{status} {answer}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{path}: no final answer in 60 s after {attempts} attempts; last: {last}"
        ))
    }
}

struct Tokens {
    reception: String,
    phleb: String,
    tech: String,
    path: String,
}

/// One patient's day through the API: order, collect, receive, record K and NA, verify
/// and authorise K.
async fn lab_day(c: &mut Client, t: &Tokens, n: &str) -> Result<(), String> {
    let order = c
        .command(
            &t.reception,
            "/orders",
            json!({
                "patient": {"mrn": format!("MRN-{n}"), "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
                "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": ["K", "NA"]
            }),
        )
        .await?;
    let sample = c
        .command(
            &t.phleb,
            "/samples",
            json!({"order_id": order["id"], "accession_number": format!("ACC-{n}"), "specimen_type": "serum",
                   "container": "red/SST", "tests": ["K", "NA"]}),
        )
        .await?;
    let sample = sample["id"].as_str().unwrap_or_default().to_string();
    c.command(&t.tech, &format!("/samples/{sample}/receive"), json!({}))
        .await?;
    let mut results = vec![];
    for (code, value) in [("K", 4.1), ("NA", 139.0)] {
        let r = c
            .command(
                &t.tech,
                "/results",
                json!({"sample_id": sample, "test_code": code,
                       "value": {"kind": "numeric", "value": value, "unit": "mmol/L"}}),
            )
            .await?;
        results.push(r["id"].as_str().unwrap_or_default().to_string());
    }
    c.command(
        &t.tech,
        &format!("/results/{}/verify", results[0]),
        json!({}),
    )
    .await?;
    c.command(
        &t.path,
        &format!("/results/{}/authorise", results[0]),
        json!({}),
    )
    .await?;
    Ok(())
}

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
    let clients = 4;

    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, true);
    let base = stack.with_api();
    let mut roles: Vec<Role> = ROLES
        .iter()
        .map(|(name, args)| stack.spawn(name, args))
        .collect();
    wait_healthy(&base, &roles[0], Duration::from_secs(30)).await;

    let tokens = Arc::new(Tokens {
        reception: token("reception.1", LabRole::Reception),
        phleb: token("phleb.1", LabRole::Phlebotomist),
        tech: token("tech.1", LabRole::Technologist),
        path: token("path.1", LabRole::Pathologist),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..clients)
        .map(|c| {
            let (tokens, stop, base) = (tokens.clone(), stop.clone(), base.clone());
            tokio::spawn(async move {
                let mut client = Client {
                    http: reqwest::Client::new(),
                    base,
                    acked: vec![],
                };
                let mut errors = vec![];
                let mut day = 0;
                while !stop.load(Ordering::Relaxed) {
                    day += 1;
                    if let Err(e) = lab_day(&mut client, &tokens, &format!("F{c}-{day}")).await {
                        errors.push(e);
                    }
                }
                (client.acked, errors)
            })
        })
        .collect();

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
    stop.store(true, Ordering::Relaxed);
    let mut acked = vec![];
    let mut errors = vec![];
    for client in load {
        let (a, e) = client.await.unwrap();
        acked.extend(a);
        errors.extend(e);
    }
    let tails = |roles: &[Role]| {
        roles
            .iter()
            .map(|r| format!("{}:\n{}", r.log.display(), r.log_tail()))
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    assert!(
        errors.is_empty(),
        "commands without a final 2xx answer:\n{}\n\n{}",
        errors.join("\n"),
        tails(&roles)
    );
    let retried = acked.iter().filter(|a| a.attempts > 1).count();
    println!(
        "{} commands acknowledged ({retried} after retries) in {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(acked.len() >= 20, "too little load: {}", acked.len());

    // Every command in the store, by its correlation id: how many distinct commands
    // wrote under it, on which aggregate, up to which position.
    let rows: Vec<(Option<String>, i64, Vec<String>, i64)> = sqlx::query_as(
        "SELECT metadata ->> 'correlation_id', count(DISTINCT metadata ->> 'command_id'),
                array_agg(DISTINCT aggregate_id), max(position)
           FROM events GROUP BY 1",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    let stored: HashMap<Option<String>, (i64, Vec<String>, i64)> = rows
        .into_iter()
        .map(|(c, n, ids, pos)| (c, (n, ids, pos)))
        .collect();
    for a in &acked {
        let Some((commands, ids, position)) = stored.get(&Some(a.correlation_id.clone())) else {
            panic!("{} acknowledged but not in the event store: {a:?}", a.path);
        };
        assert_eq!(*commands, 1, "applied {commands} times: {a:?}");
        assert_eq!(ids, &vec![a.id.clone()], "{a:?}");
        assert_eq!(*position, a.position, "{a:?}");
    }
    // …and nothing in the store that no client was told about (every command got its
    // final answer), nor any command applied twice.
    assert_eq!(
        stored.len(),
        acked.len(),
        "events of unacknowledged commands"
    );

    // The fan-out catches up; every model equals a rebuild; the trail verifies.
    let names = ["orders", "specimens", "results", "analytics"];
    let refs: Vec<&Role> = roles.iter().collect();
    wait_projected(&db, &names, Duration::from_secs(120), &refs).await;
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
    let mut holder = db.app.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM idempotency_keys WHERE key = 'died-before-commit' FOR UPDATE")
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
