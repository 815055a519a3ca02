//! `GET /metrics` in the Prometheus text format: request latency by route, commands by
//! route and outcome, commands decided again (contention on an order's records), and —
//! read at scrape time from the database — how far the relay and each projection are
//! behind the event store, and how many committed events the ordered feed holds back for
//! a transaction still open somewhere in the cluster.

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use lis_commands::connection::connection;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: HistogramVec,
    commands: IntCounterVec,
    lag: IntGaugeVec,
    held_back: IntGauge,
    held_back_secs: Gauge,
    /// Brought up to the ledger's own count at each scrape, one scrape at a time.
    decided_again: std::sync::Mutex<IntCounter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = HistogramVec::new(
            HistogramOpts::new("lis_http_request_seconds", "HTTP request latency").buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            &["method", "route", "status"],
        )
        .expect("static metric");
        let commands = IntCounterVec::new(
            Opts::new("lis_commands_total", "Commands by endpoint and outcome"),
            &["route", "outcome"],
        )
        .expect("static metric");
        let lag = IntGaugeVec::new(
            Opts::new(
                "lis_lag_events",
                "Events in the store not yet handled, by consumer",
            ),
            &["consumer"],
        )
        .expect("static metric");
        let held_back = IntGauge::new(
            "lis_feed_held_back_events",
            "Committed events the ordered feed cannot hand on yet: an older transaction is still open in the cluster",
        )
        .expect("static metric");
        let held_back_secs = Gauge::new(
            "lis_feed_held_back_seconds",
            "How long the oldest of those events has waited",
        )
        .expect("static metric");
        let decided_again = IntCounter::new(
            "lis_commands_decided_again_total",
            "Commands decided again because a record their rules read (an order, a tube, its releases) changed before their append",
        )
        .expect("static metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(commands.clone()),
            Box::new(lag.clone()),
            Box::new(held_back.clone()),
            Box::new(held_back_secs.clone()),
            Box::new(decided_again.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            commands,
            lag,
            held_back,
            held_back_secs,
            decided_again: std::sync::Mutex::new(decided_again),
        }
    }
}

impl Metrics {
    /// Records one request (commands are the POSTs other than log-in).
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .observe(seconds);
        if method == "POST" && route != "/auth/login" {
            let outcome = match status {
                200..=299 => "ok",
                422 => "invalid",
                409 => "rejected",
                401 | 403 => "denied",
                400..=499 => "bad_request",
                503 => "unavailable",
                _ => "error",
            };
            self.commands.with_label_values(&[route, outcome]).inc();
        }
    }
}

/// Sets the lag gauges from the database; a failed read leaves its gauge as it was.
async fn read_lags(s: &AppState, conn: &mut lis_commands::connection::Conn) {
    if let Ok(head) = sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
        .fetch_one(&mut **conn)
        .await
    {
        let head = head.unwrap_or(0);
        if let Ok(Some(relay)) = sqlx::query_scalar::<_, i64>(
            "SELECT position FROM feed_checkpoints WHERE consumer = 'relay'",
        )
        .fetch_optional(&mut **conn)
        .await
        {
            s.metrics
                .lag
                .with_label_values(&["relay"])
                .set(head - relay);
        }
        for p in lis_projections::models::all() {
            let sql = format!("SELECT max_position FROM proj_{}.progress", p.name());
            if let Ok(at) = sqlx::query_scalar::<_, i64>(&sql)
                .fetch_optional(&mut **conn)
                .await
            {
                s.metrics
                    .lag
                    .with_label_values(&[p.name()])
                    .set(head - at.unwrap_or(0));
            }
        }
    }
    // The feed reads only events of transactions older than the oldest one still open
    // (`projections::feed`): committed events at or above that horizon wait, and with
    // them every read model and the relay.
    if let Ok((events, secs)) = sqlx::query_as::<_, (i64, f64)>(
        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(recorded_at)), 0)::float8
           FROM events WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())",
    )
    .fetch_one(&mut **conn)
    .await
    {
        s.metrics.held_back.set(events);
        s.metrics.held_back_secs.set(secs);
    }
}

pub async fn scrape(State(s): State<AppState>) -> impl IntoResponse {
    // Best effort: without a connection the gauges keep their last values.
    if let Ok(mut conn) = connection(&s.pool).await {
        read_lags(&s, &mut conn).await;
    }
    {
        let counter = s
            .metrics
            .decided_again
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counter.inc_by(s.ledger.decided_again().saturating_sub(counter.get()));
    }
    let mut body = Vec::new();
    let _ = TextEncoder::new().encode(&s.metrics.registry.gather(), &mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
