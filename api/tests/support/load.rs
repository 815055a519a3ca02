//! A load of careful HTTP clients for the fault tests: each works through lab days, every
//! command with an Idempotency-Key and its own correlation id, retried with the same key
//! on connection errors, 503 and "the first request is still running" until it gets a
//! final answer — and the check that afterwards each acknowledged command is in the
//! event store exactly once.

use lis_domain::actor::Role as LabRole;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A command the API acknowledged with a 2xx.
#[derive(Debug)]
pub struct Acked {
    pub path: String,
    pub correlation_id: String,
    pub id: String,
    pub position: i64,
    /// How many requests it took (1: no retry).
    pub attempts: u32,
}

struct Client {
    http: reqwest::Client,
    base: String,
    acked: Vec<Acked>,
    /// 503 answers seen (the API said "the database is unavailable, retry").
    unavailable: u32,
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
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        self.unavailable += 1;
                    } else if !in_progress {
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

pub struct Tokens {
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

/// What the clients of a [`Load`] got.
pub struct Outcome {
    pub acked: Vec<Acked>,
    /// Commands that got no final 2xx: a 4xx/5xx other than 503, or nothing in time.
    pub errors: Vec<String>,
    /// 503 answers seen along the way.
    pub unavailable: u32,
}

/// `clients` concurrent clients working through lab days against `base` until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Outcome>>,
}

impl Load {
    pub fn start(base: &str, clients: usize) -> Self {
        let tokens = Arc::new(Tokens {
            reception: super::token("reception.1", LabRole::Reception),
            phleb: super::token("phleb.1", LabRole::Phlebotomist),
            tech: super::token("tech.1", LabRole::Technologist),
            path: super::token("path.1", LabRole::Pathologist),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let (tokens, stop, base) = (tokens.clone(), stop.clone(), base.to_string());
                tokio::spawn(async move {
                    let mut client = Client {
                        http: reqwest::Client::new(),
                        base,
                        acked: vec![],
                        unavailable: 0,
                    };
                    let mut errors = vec![];
                    let mut day = 0;
                    while !stop.load(Ordering::Relaxed) {
                        day += 1;
                        if let Err(e) = lab_day(&mut client, &tokens, &format!("F{c}-{day}")).await
                        {
                            errors.push(e);
                        }
                        // A breath between patients keeps the event count (and the
                        // fan-out's catch-up) proportionate on a small machine.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Outcome {
                        acked: client.acked,
                        errors,
                        unavailable: client.unavailable,
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients after the lab day each is in, and gathers what they got.
    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Outcome {
            acked: vec![],
            errors: vec![],
            unavailable: 0,
        };
        for task in self.tasks {
            let one = task.await.unwrap();
            out.acked.extend(one.acked);
            out.errors.extend(one.errors);
            out.unavailable += one.unavailable;
        }
        out
    }
}

/// Asserts that every command of the store belongs to exactly one acknowledged command
/// (by the correlation id each client sent), written once, on the aggregate and at the
/// position the API answered with.
pub async fn assert_exactly_once(pool: &sqlx::PgPool, acked: &[Acked]) {
    // Every command in the store, by its correlation id: how many distinct commands
    // wrote under it, on which aggregate, up to which position.
    let rows: Vec<(Option<String>, i64, Vec<String>, i64)> = sqlx::query_as(
        "SELECT metadata ->> 'correlation_id', count(DISTINCT metadata ->> 'command_id'),
                array_agg(DISTINCT aggregate_id), max(position)
           FROM events GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let stored: HashMap<Option<String>, (i64, Vec<String>, i64)> = rows
        .into_iter()
        .map(|(c, n, ids, pos)| (c, (n, ids, pos)))
        .collect();
    for a in acked {
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
}
