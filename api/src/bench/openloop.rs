//! Benchmark 5: an open-loop (constant-rate) load generator. Request `i` is due at
//! `start + i / rate` whatever happened to earlier ones, and its latency is measured from
//! when it was due, not from when it was sent, so a stalled server is charged for every
//! request it held up (no coordinated omission).

use super::stats::{percent, Latencies};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Outcome {
    pub sent: usize,
    pub failed: usize,
    pub latencies: Latencies,
    /// How late the generator itself was at its worst (ms): a sign it could not keep up.
    pub worst_lag_ms: f64,
}

/// GETs `paths` in turn at `rate` requests a second for `secs` seconds.
pub async fn run(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    paths: &[String],
    rate: u32,
    secs: u64,
) -> Outcome {
    let total = rate as usize * secs as usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
    let urls: Arc<Vec<String>> = Arc::new(paths.iter().map(|p| format!("{base}{p}")).collect());
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let mut worst_lag = Duration::ZERO;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(due).await;
        worst_lag = worst_lag.max(tokio::time::Instant::now() - due);
        let (http, urls, tx, token) = (http.clone(), urls.clone(), tx.clone(), token.to_string());
        let due: Instant = due.into_std();
        tokio::spawn(async move {
            let url = &urls[i % urls.len()];
            let answer = http.get(url).bearer_auth(token).send().await;
            let ok = match answer {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            let _ = tx.send(ok.then(|| due.elapsed()));
        });
    }
    drop(tx);
    let mut outcome = Outcome {
        sent: total,
        failed: 0,
        latencies: Latencies::default(),
        worst_lag_ms: worst_lag.as_secs_f64() * 1000.0,
    };
    while let Some(r) = rx.recv().await {
        match r {
            Some(latency) => outcome.latencies.record(latency),
            None => outcome.failed += 1,
        }
    }
    outcome
}

/// Prints one rate's figures for the endpoint and for the trivial baseline.
pub fn report(rate: u32, ours: &mut Outcome, trivial: &mut Outcome) {
    say!(
        "  {rate:>5}/s  cumulative results: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} of {} failed)  |  /healthz: p50 {:.2} ms, p99 {:.2} ms ({} failed)  |  p99 ratio {:.1}×",
        ours.latencies.percentile_ms(50.0),
        ours.latencies.percentile_ms(99.0),
        ours.latencies.max_ms(),
        ours.failed,
        ours.sent,
        trivial.latencies.percentile_ms(50.0),
        trivial.latencies.percentile_ms(99.0),
        trivial.failed,
        percent(ours.latencies.percentile_ms(99.0), trivial.latencies.percentile_ms(99.0)) / 100.0
    );
    if ours.worst_lag_ms > 5.0 || trivial.worst_lag_ms > 5.0 {
        say!(
            "         the generator ran late by up to {:.1} / {:.1} ms (counted in the latencies)",
            ours.worst_lag_ms,
            trivial.worst_lag_ms
        );
    }
}
