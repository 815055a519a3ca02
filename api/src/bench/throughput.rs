//! Benchmark 1 (and 6): closed-loop clients sending the lab flow's commands through a
//! running API for a fixed window, against pgbench with the same client count; the
//! peak memory of each role (`serve`, `relay`, `project`) after each client count.

use super::client::{Answer, Api, Tokens};
use super::labflow::{Flow, Kind, Sink};
use super::pgbench;
use super::stats::{percent, Latencies};
use crate::mix::OrderMix;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The measured window of one client count: commands completed inside it count.
struct Window {
    from: Instant,
    to: Instant,
    ok: Latencies,
    refused: BTreeMap<u16, u64>,
}

impl Sink for Window {
    fn command(&mut self, _kind: Kind, answer: &Answer) {
        let done = Instant::now();
        if done < self.from || done > self.to {
            return;
        }
        if answer.status.is_success() {
            self.ok.record(answer.latency);
        } else {
            *self.refused.entry(answer.status.as_u16()).or_default() += 1;
        }
    }
}

pub struct Level {
    pub clients: usize,
    pub commands: usize,
    pub per_sec: f64,
    pub latencies: Latencies,
    pub refused: BTreeMap<u16, u64>,
}

pub struct Setup {
    pub api: Api,
    pub tokens: Tokens,
    pub mix: OrderMix,
    pub run: u32,
    pub seed: u64,
}

/// Runs `clients` closed-loop clients for `warmup + secs`, measuring the last `secs`.
pub async fn level(
    setup: &Arc<Setup>,
    clients: usize,
    warmup: Duration,
    secs: u64,
) -> anyhow::Result<Level> {
    let start = Instant::now();
    let from = start + warmup;
    let to = from + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let setup = setup.clone();
        tasks.spawn(async move {
            let flow = Flow {
                api: &setup.api,
                tokens: &setup.tokens,
                mix: &setup.mix,
                run: setup.run,
                client: clients * 1000 + client,
                patients: 50,
                pace: None,
            };
            let mut rng = StdRng::seed_from_u64(setup.seed ^ (clients * 1000 + client) as u64);
            let mut window = Window {
                from,
                to,
                ok: Latencies::default(),
                refused: BTreeMap::new(),
            };
            let mut i = 0;
            while Instant::now() < to {
                flow.order(&mut rng, i, to, &mut window).await;
                i += 1;
            }
            window
        });
    }
    let mut latencies = Latencies::default();
    let mut refused = BTreeMap::new();
    while let Some(w) = tasks.join_next().await {
        let w = w?;
        latencies.merge(w.ok);
        for (status, n) in w.refused {
            *refused.entry(status).or_default() += n;
        }
    }
    let commands = latencies.len();
    Ok(Level {
        clients,
        commands,
        per_sec: commands as f64 / secs as f64,
        latencies,
        refused,
    })
}

/// Prints one client count's result against its pgbench baseline (if pgbench could run).
pub fn report(level: &mut Level, baseline: Option<&mut pgbench::Baseline>) {
    let ours = format!(
        "{:>4} clients: ledger {:>7.0} commands/s ({})",
        level.clients,
        level.per_sec,
        level.latencies.summary()
    );
    match baseline {
        Some(b) => say!(
            "{ours}; pgbench {:>7.0} inserts/s ({}); ratio {:.1}%",
            b.per_sec,
            b.latencies.summary(),
            percent(level.per_sec, b.per_sec)
        ),
        None => say!("{ours}"),
    }
    if !level.refused.is_empty() {
        say!("      refused commands by status: {:?}", level.refused);
    }
}
