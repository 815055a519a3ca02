//! Benchmark 2: fan-out lag. Clients send the lab flow at a steady command rate (one
//! event per command); a watcher polls every read model's offsets (one query over all
//! of them, and over the baselines: the `events` table, the ordered feed and, in Kafka
//! mode, the relay's saved place) and notes
//! when each command's event became visible there. The lag runs from
//! the command's answer (its commit happened just before) to the poll that saw it, so
//! it is rounded up by at most one polling interval. MongoDB: the analytics
//! projection writes its documents before it commits its offsets, so its offset time is
//! an upper bound of the time the facts were visible in MongoDB.

use super::client::{Answer, Api, Tokens};
use super::labflow::{Flow, Kind, Sink};
use super::stats::Latencies;
use crate::mix::OrderMix;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The baseline's name among the models: the events table itself, so the polling's own
/// delay is measured in the same run.
pub const BASELINE: &str = "events";

/// The ordered feed: the event row once the feed hands it on (every older transaction
/// has ended, [`lis_projections::feed`]). Between the baseline and it: how long appends
/// in flight hold the feed back; between it and a model: the model's polling, lingering
/// and batch.
pub const FEED: &str = "feed";

/// Kafka mode: the event row once the relay has published it and saved its place (its
/// `feed_checkpoints` row, committed after the broker acknowledged the batch and its
/// Merkle leaves were written). An upper bound of the relay's part: a consumer may apply
/// the event before the relay's commit.
pub const RELAYED: &str = "relayed";

/// The rows watched before the models: none of them is a read model.
pub const BASELINES: [&str; 3] = [BASELINE, FEED, RELAYED];

/// A committed event not yet seen in every model.
struct Watched {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    committed: Instant,
    /// Per model: seen yet?
    seen: Vec<bool>,
}

#[derive(Clone, Default)]
struct Committed(Arc<Mutex<Vec<Watched>>>);

struct Recorder {
    committed: Committed,
    models: usize,
    ok: u64,
}

impl Sink for Recorder {
    fn command(&mut self, kind: Kind, answer: &Answer) {
        if !answer.status.is_success() {
            return;
        }
        let (Some(id), Some(sequence)) =
            (answer.body["id"].as_str(), answer.body["version"].as_i64())
        else {
            return;
        };
        self.ok += 1;
        let aggregate_type = match kind {
            Kind::Order => "Order",
            Kind::Sample => "Sample",
            Kind::Result => "Result",
        };
        if let Ok(mut pending) = self.committed.0.lock() {
            pending.push(Watched {
                aggregate_type,
                aggregate_id: id.to_string(),
                sequence,
                committed: Instant::now(),
                seen: vec![false; self.models],
            });
        }
    }
}

pub struct Lags {
    pub models: Vec<String>,
    pub lags: Vec<Latencies>,
    pub commands: u64,
    pub unseen: usize,
}

/// The schemas of the read models `project` runs: analytics only with MongoDB (a schema
/// an earlier run with analytics left behind is not watched, or its events would never
/// be seen and the watcher's query would grow).
pub fn running(analytics: bool) -> Vec<String> {
    lis_projections::models::all()
        .iter()
        .map(|p| p.name())
        .chain(analytics.then_some("analytics"))
        .map(lis_projections::projection::schema_of)
        .collect()
}

/// The baseline, the feed, the relay (Kafka mode), then those of the [`running`] models
/// whose offsets exist yet (`proj_<name>.offsets`).
pub async fn models(pool: &PgPool, analytics: bool, kafka: bool) -> anyhow::Result<Vec<String>> {
    let models: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables
          WHERE table_name = 'offsets' AND table_schema = ANY($1) ORDER BY 1",
    )
    .bind(running(analytics))
    .fetch_all(pool)
    .await?;
    Ok([BASELINE, FEED]
        .into_iter()
        .chain(kafka.then_some(RELAYED))
        .map(str::to_string)
        .chain(models)
        .collect())
}

/// Runs `clients` paced clients at `rate` commands a second for `secs` seconds, then waits
/// up to 10 s for the models to catch up.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    pool: &PgPool,
    api: Arc<Api>,
    tokens: Arc<Tokens>,
    mix: Arc<OrderMix>,
    schemas: Vec<String>,
    clients: usize,
    rate: u32,
    secs: u64,
) -> anyhow::Result<Lags> {
    let committed = Committed::default();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pace = Arc::new(tokio::sync::Mutex::new(ticker));
    let run: u32 = rand::random();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (api, tokens, mix, pace) = (api.clone(), tokens.clone(), mix.clone(), pace.clone());
        let mut recorder = Recorder {
            committed: committed.clone(),
            models: schemas.len(),
            ok: 0,
        };
        tasks.spawn(async move {
            let flow = Flow {
                api: &api,
                tokens: &tokens,
                mix: &mix,
                run,
                client,
                patients: 50,
                pace: Some(pace),
            };
            let mut rng = StdRng::seed_from_u64(u64::from(run) ^ client as u64);
            let mut i = 0;
            while Instant::now() < end {
                flow.order(&mut rng, i, end, &mut recorder).await;
                i += 1;
            }
            recorder.ok
        });
    }
    let mut lags = vec![Latencies::default(); schemas.len()];
    let mut commands = 0;
    let watch_until = end + Duration::from_secs(10);
    loop {
        let done = tasks.is_empty();
        while let Some(joined) = tasks.try_join_next() {
            commands += joined?;
        }
        let pending: Vec<(String, String, i64, usize)> = {
            let guard = committed
                .0
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            guard
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    (
                        w.aggregate_type.to_string(),
                        w.aggregate_id.clone(),
                        w.sequence,
                        i,
                    )
                })
                .collect()
        };
        if pending.is_empty() && done {
            break;
        }
        if Instant::now() > watch_until {
            break;
        }
        if !pending.is_empty() {
            seen_now(pool, &schemas, &pending, &committed, &mut lags).await?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let unseen = committed.0.lock().map(|p| p.len()).unwrap_or(0);
    Ok(Lags {
        models: schemas,
        lags,
        commands,
        unseen,
    })
}

/// One poll: which pending events each model has applied; records their lag and drops
/// the events every model has seen.
async fn seen_now(
    pool: &PgPool,
    schemas: &[String],
    pending: &[(String, String, i64, usize)],
    committed: &Committed,
    lags: &mut [Latencies],
) -> anyhow::Result<()> {
    let union = schemas
        .iter()
        .enumerate()
        .map(|(m, s)| {
            // The baseline: the event row itself, seen by the same watcher.
            let (table, seen) = match s.as_str() {
                BASELINE => ("events".to_string(), "o.sequence = k.s"),
                FEED => (
                    "events".to_string(),
                    "o.sequence = k.s AND o.tx_id < pg_snapshot_xmin(pg_current_snapshot())",
                ),
                RELAYED => (
                    "events".to_string(),
                    "o.sequence = k.s AND (o.tx_id, o.position) <= (SELECT tx_id, position FROM feed_checkpoints WHERE consumer = 'relay')",
                ),
                _ => (format!("{s}.offsets"), "o.last_sequence >= k.s"),
            };
            format!(
                "SELECT {m} AS model, k.n FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS k(t, i, s, n)
                   JOIN {table} o ON o.aggregate_type = k.t AND o.aggregate_id = k.i AND {seen}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let rows: Vec<(i32, i64)> = sqlx::query_as(&union)
        .bind(pending.iter().map(|p| p.0.clone()).collect::<Vec<_>>())
        .bind(pending.iter().map(|p| p.1.clone()).collect::<Vec<_>>())
        .bind(pending.iter().map(|p| p.2).collect::<Vec<_>>())
        .bind(pending.iter().map(|p| p.3 as i64).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    let now = Instant::now();
    let mut guard = committed
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    for (model, n) in rows {
        let w = &mut guard[n as usize];
        if !w.seen[model as usize] {
            w.seen[model as usize] = true;
            lags[model as usize].record(now - w.committed);
        }
    }
    guard.retain(|w| !w.seen.iter().all(|s| *s));
    Ok(())
}
