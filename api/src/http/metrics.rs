//! `GET /metrics` in the Prometheus text format: request latency by route, commands by
//! route and outcome, and — read at scrape time from the database — how far the relay
//! and each projection are behind the event store.

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: HistogramVec,
    commands: IntCounterVec,
    lag: IntGaugeVec,
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
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(commands.clone()),
            Box::new(lag.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            commands,
            lag,
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

pub async fn scrape(State(s): State<AppState>) -> impl IntoResponse {
    if let Ok(head) = sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
        .fetch_one(&s.pool)
        .await
    {
        let head = head.unwrap_or(0);
        if let Ok(Some(relay)) = sqlx::query_scalar::<_, i64>(
            "SELECT position FROM feed_checkpoints WHERE consumer = 'relay'",
        )
        .fetch_optional(&s.pool)
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
                .fetch_optional(&s.pool)
                .await
            {
                s.metrics
                    .lag
                    .with_label_values(&[p.name()])
                    .set(head - at.unwrap_or(0));
            }
        }
    }
    let mut body = Vec::new();
    let _ = TextEncoder::new().encode(&s.metrics.registry.gather(), &mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
