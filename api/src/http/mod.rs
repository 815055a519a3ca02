//! The HTTP API (axum): commands, clinicians' queries, auditors' history, health.
//!
//! - [`commands`]: POST endpoints, one per lab action, with `Idempotency-Key`;
//! - [`queries`]: GET endpoints over the read models, with `min_position`;
//! - [`params`]: query strings read with each bad parameter named (422);
//! - [`audit`]: history, field-level diffs and state as of an instant; [`settled`]: the
//!   time before which the audit records are final, where their pages stop;
//! - [`fhir`], [`fhir_orders`]: FHIR R4 reads; [`hl7`]: an order's results as HL7 v2.5.1;
//! - [`stream`]: the event store as Server-Sent Events; [`analytics`]: dashboard rollups;
//! - [`privacy`]: who sees patient identity (masking, break-glass) and erasure;
//! - [`auth`]: log-in, tokens and the permission matrix; [`problem`]: RFC 9457 errors;
//!   [`lockout`]: accounts locked after failed log-ins;
//! - [`users`]: user administration, recorded; [`revocation`]: tokens no longer valid.
//!
//! Every error leaves as `application/problem+json`, including the framework's own
//! (unknown route, wrong method, body too large): [`problem_for_plain_errors`] rewrites
//! any error response that is not one already.

pub mod analytics;
pub mod audit;
pub mod auth;
pub mod body;
#[cfg(test)]
mod body_properties;
pub mod commands;
mod cursor;
pub mod deadline;
#[macro_use]
pub mod fhir;
pub mod fhir_orders;
mod fhir_search;
pub mod hl7;
pub mod idempotency;
pub mod limits;
pub mod lockout;
pub mod metrics;
pub mod openapi;
pub mod overload;
pub mod params;
pub mod privacy;
pub mod problem;
pub mod queries;
pub mod revocation;
pub mod settled;
pub mod stream;
pub mod users;

use auth::AuthConfig;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lis_commands::connection::{connection, within};
use lis_commands::Ledger;
use problem::Problem;
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub ledger: Arc<Ledger>,
    pub auth: Arc<AuthConfig>,
    /// Probes the Kafka cluster for `/readyz`, when configured.
    pub kafka: Option<Arc<lis_projections::kafka_health::KafkaProbe>>,
    /// The MongoDB analytics, when configured.
    pub analytics: Option<Arc<lis_projections::models::analytics::Analytics>>,
    pub metrics: Arc<metrics::Metrics>,
    /// Requests per minute per client address, and per user.
    pub per_address: Arc<limits::RateLimiter>,
    pub per_user: Arc<limits::RateLimiter>,
    /// Requests served at once at most; beyond, 503 at once.
    pub in_flight: overload::InFlight,
    /// Verifies audit seals for `GET /audit/verification`, when the key is configured.
    pub seal_verifier: Option<lis_projections::seal::NoteVerifier>,
    /// Browser origins allowed to call the API (CORS); empty = none.
    pub cors_origins: Vec<HeaderValue>,
    /// Tokens revoked by changes to their users since they were issued.
    pub revocations: Arc<revocation::Revocations>,
    /// When failed log-ins lock an account (`LIS_LOGIN_LOCK_AFTER`, `LIS_LOGIN_LOCK_SECS`).
    pub lockout: lockout::Lockout,
    /// The address clients reach the API at, for absolute links (`LIS_PUBLIC_URL`).
    pub public_url: Option<String>,
    /// How long a request may run before it is answered 503 (`LIS_REQUEST_TIMEOUT_SECS`).
    pub request_timeout: std::time::Duration,
}

fn cors(origins: &[HeaderValue]) -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins.to_vec())
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            axum::http::HeaderName::from_static("idempotency-key"),
            axum::http::HeaderName::from_static("last-event-id"),
            axum::http::HeaderName::from_static("x-correlation-id"),
            axum::http::HeaderName::from_static(privacy::BREAK_GLASS),
        ])
        // Browsers may read the worklist's whole count.
        .expose_headers([axum::http::HeaderName::from_static("x-total-count")])
}

/// Creates the read models' schemas if no worker has yet, so that queries answer "not
/// found" rather than fail before the first event is projected.
pub async fn prepare_read_models(
    pool: &PgPool,
) -> Result<(), lis_projections::projection::ProjectionError> {
    let mut conn = pool.acquire().await?;
    for p in lis_projections::models::all() {
        let schema = lis_projections::projection::schema_of(p.name());
        lis_projections::projection::ensure_schema(&mut conn, p.as_ref(), &schema).await?;
    }
    Ok(())
}

pub fn router(state: AppState) -> Router {
    use commands as c;
    use queries as q;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::scrape))
        .route("/auth/login", post(login))
        .route("/auth/password", post(users::change_own_password))
        .route("/orders", post(c::place_order))
        .route("/orders/{id}", get(q::order))
        .route("/orders/{id}/tests", post(c::add_tests))
        .route("/orders/{id}/tests/{code}/cancel", post(c::cancel_test))
        .route("/orders/{id}/cancel", post(c::cancel_order))
        .route("/patients/{id}", get(privacy::patient))
        .route("/patients/{id}/erase", post(privacy::erase))
        .route("/patients/{id}/orders", get(q::patient_orders))
        .route("/patients/{id}/results", get(q::cumulative))
        .route("/samples", post(c::collect))
        .route("/samples/{id}", get(q::sample))
        .route(
            "/samples/by-accession/{accession}",
            get(q::sample_by_accession),
        )
        .route("/samples/{id}/handover", post(c::hand_over))
        .route("/samples/{id}/receive", post(c::receive))
        .route("/samples/{id}/reject", post(c::reject))
        .route("/samples/{id}/aliquots", post(c::aliquots))
        .route("/samples/{id}/store", post(c::store))
        .route("/samples/{id}/dispose", post(c::dispose))
        .route("/results", post(c::record))
        .route("/results/{id}", get(q::result))
        .route("/results/{id}/correct", post(c::correct))
        .route("/results/{id}/verify", post(c::verify))
        .route("/results/{id}/authorise", post(c::authorise))
        .route("/results/{id}/amend", post(c::amend))
        .route("/results/{id}/retract", post(c::retract))
        .route("/results/{id}/rerun", post(c::rerun))
        .route(
            "/results/{id}/critical-notifications",
            post(c::critical_notification),
        )
        .route("/results/{id}/acknowledge", post(c::acknowledge))
        .route("/worklists", get(q::worklist))
        .route("/critical-results", get(q::critical))
        .route("/turnaround", get(q::turnaround))
        .route("/fhir/metadata", get(fhir::metadata))
        .route("/fhir/Observation", get(fhir::search_observations))
        .route("/fhir/Observation/{id}", get(fhir::observation))
        .route("/fhir/DiagnosticReport", get(fhir::search_reports))
        .route("/fhir/DiagnosticReport/{id}", get(fhir::report))
        .route("/fhir/Patient", get(fhir::search_patients))
        .route("/fhir/Patient/{id}", get(fhir::patient))
        .route(
            "/fhir/ServiceRequest",
            get(fhir_orders::search_service_requests),
        )
        .route(
            "/fhir/ServiceRequest/{id}",
            get(fhir_orders::service_request),
        )
        .route("/fhir/Specimen", get(fhir_orders::search_specimens))
        .route("/fhir/Specimen/{id}", get(fhir_orders::specimen))
        .route("/hl7/orders/{id}/oru", get(hl7::oru))
        .route("/audit/actors/{user}", get(audit::activity))
        .route("/audit/verification", get(audit::verification))
        .route("/audit/break-glass", get(audit::break_glass))
        .route("/audit/key-rotations", get(audit::key_rotations))
        .route("/audit/users", get(audit::user_changes))
        .route("/audit/logins", get(audit::logins))
        .route("/audit/{kind}/{id}", get(audit::history))
        .route("/events/stream", get(stream::events))
        .route("/analytics/{report}", get(analytics::report))
        .route("/users", get(users::accounts).post(users::add_account))
        .route("/users/{user}/{change}", post(users::change_account))
        .fallback(|| async {
            Problem::not_found("no such endpoint (GET /openapi.json lists them)")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            deadline::bound,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            overload::shed,
        ))
        .layer(middleware::from_fn(refuse_nul))
        .layer(middleware::from_fn(problem_for_plain_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .layer(cors(&state.cors_origins))
        .with_state(state)
}

/// Gives every request an id (`x-request-id`, kept if the client sent a UUID), a tracing
/// span, security headers, and a log line with its outcome.
async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::new_v4);
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = request.method().to_string();
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    if let Some(a) = &address {
        if let Err(p) = state.per_address.check(a) {
            return p.into_response();
        }
    }
    let correlation = request
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        correlation_id = tracing::field::Empty,
        method = %request.method(),
        path = %request.uri().path()
    );
    if let Some(c) = correlation {
        span.record("correlation_id", tracing::field::display(c));
    }
    let _guard = span.enter();
    let started = std::time::Instant::now();
    drop(_guard);
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let h = response.headers_mut();
    h.insert(
        "x-request-id",
        HeaderValue::from_str(&id.to_string()).expect("a UUID is a header value"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let elapsed = started.elapsed();
    state.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        elapsed.as_secs_f64(),
    );
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = elapsed.as_millis() as u64,
            "request"
        );
    });
    response
}

/// Refuses a path holding an encoded NUL (`%00`): no id, code or name can hold one, and
/// PostgreSQL cannot compare text with it. (A query parameter holding one is refused by
/// [`params`], which names it.)
async fn refuse_nul(request: Request, next: Next) -> Response {
    if request.uri().path().contains("%00") {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-uri",
            "The request URI is not valid",
        )
        .detail("the path holds a NUL character (%00)")
        .into_response();
    }
    next.run(request).await
}

/// Rewrites the framework's plain-text errors (404, 405, 413, 415…) as problem JSON.
async fn problem_for_plain_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let problem = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            Problem::new(status, "method-not-allowed", "Method not allowed")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(status, "too-large", "Request body too large")
                .detail(format!("the limit is {MAX_BODY} bytes"))
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Problem::new(status, "unsupported-media-type", "Send application/json")
        }
        StatusCode::NOT_FOUND => Problem::not_found("no such resource"),
        s if s.is_server_error() => Problem::internal(),
        s => Problem::new(
            s,
            "client-error",
            s.canonical_reason().unwrap_or("Client error"),
        ),
    };
    problem.into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when PostgreSQL answers, and MongoDB too when analytics are configured.
async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let ping = async {
        sqlx::query("SELECT 1")
            .execute(&mut *connection(&s.pool).await?)
            .await
    };
    match within(&s.pool, std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => {}
        _ => return Err(Problem::unavailable("PostgreSQL is not answering")),
    }
    if !s.revocations.current() {
        return Err(Problem::unavailable(
            "the user records have not been read lately: tokens cannot be confirmed",
        ));
    }
    let mut status = serde_json::json!({ "postgresql": "ok" });
    if let Some(k) = &s.kafka {
        match k.brokers(std::time::Duration::from_secs(2)).await {
            Ok(n) if n > 0 => status["kafka"] = format!("ok ({n} brokers)").into(),
            Ok(_) => return Err(Problem::unavailable("Kafka reports no brokers")),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka is not answering");
                return Err(Problem::unavailable("Kafka is not answering"));
            }
        }
    }
    if let Some(a) = &s.analytics {
        let ping = a.database().run_command(mongodb::bson::doc! { "ping": 1 });
        match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => status["mongodb"] = "ok".into(),
            _ => return Err(Problem::unavailable("MongoDB is not answering")),
        }
    }
    Ok(Json(status))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

/// A bearer token for the `Authorization` header.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Token {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
    role: lis_domain::actor::Role,
    /// The password was set by someone else: this token may only change it
    /// (`POST /auth/password`); log in again afterwards.
    password_change_required: bool,
}

async fn login(
    State(s): State<AppState>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Problem> {
    let login: Login = body::parse(&body)?;
    let typed = login.username.trim();
    // The account as stored (`Dr.Rao` typed for `dr.rao`), before anything is counted
    // under it: every spelling of a name shares one lock-out.
    let stored = auth::account_named(&s.pool, typed).await?;
    let name = stored.as_deref().unwrap_or(typed);
    let client_addr = connect.map(|c| c.0 .0.ip().to_string());
    // Every attempt is recorded before it is answered; one naming no account keeps no
    // name (what was typed may be a password). Only accounts have failed log-ins
    // recorded under their name, so a name that is none is never locked.
    let (log_in, from) = (lockout::Attempt::LogIn, client_addr.as_deref());
    // The name's turn, from the look at its lock to the record of this attempt.
    let _turn = s.lockout.gate.turn(name).await;
    if let Some(until) = s.lockout.locked_until(&s.pool, name).await? {
        lockout::record(&s.pool, log_in, Some(name), false, true, from).await?;
        let wait = lockout::seconds_until(until);
        tracing::warn!(account = name, %until, "log-in refused: account locked");
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "login-locked",
            "Account locked after failed log-ins",
        )
        .detail(format!(
            "{} failed log-ins within {}: this account is locked until {} (retry in {wait} s), \
             unless an administrator resets its password; the password was not checked",
            s.lockout.after,
            s.lockout.window_text(),
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
        p.retry_after = Some(wait);
        return Err(p);
    }
    let check = auth::check_password(&s.pool, name, &login.password).await?;
    let (account, granted) = (check.account.as_deref(), check.granted.is_some());
    lockout::record(&s.pool, log_in, account, granted, false, from).await?;
    let account = check.account.unwrap_or_else(|| "(no such account)".into());
    match check.granted {
        Some(grant) => {
            let (token, ttl) = auth::issue(&s.auth, &grant)?;
            let must_change = grant.password_change_required;
            tracing::info!(user = %grant.user, role = %grant.role, must_change, "login");
            Ok(Json(serde_json::json!(Token {
                access_token: token,
                token_type: "Bearer",
                expires_in: ttl,
                role: grant.role,
                password_change_required: must_change,
            })))
        }
        None => {
            tracing::warn!(account, "failed login");
            Err(Problem::unauthorized("wrong user name or password"))
        }
    }
}
