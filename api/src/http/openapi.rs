//! The OpenAPI 3.1 description served at `GET /openapi.json`.
//!
//! Paths are listed in [`ENDPOINTS`]; a test walks them against the running server, so a
//! documented endpoint that does not exist (or the reverse, for the commands) fails CI.

use axum::Json;
use serde_json::{json, Map, Value};

/// (method, path, summary, tag)
pub const ENDPOINTS: &[(&str, &str, &str, &str)] = &[
    (
        "post",
        "/auth/login",
        "Log in; returns a short-lived bearer token",
        "auth",
    ),
    ("post", "/orders", "Place an order", "orders"),
    (
        "get",
        "/orders/{id}",
        "An order and the stage of each test",
        "orders",
    ),
    (
        "post",
        "/orders/{id}/tests",
        "Add tests to an order",
        "orders",
    ),
    (
        "post",
        "/orders/{id}/tests/{code}/cancel",
        "Cancel one test (reason)",
        "orders",
    ),
    (
        "post",
        "/orders/{id}/cancel",
        "Cancel the order (reason)",
        "orders",
    ),
    (
        "get",
        "/patients/{id}",
        "A patient's identity as the caller's role may see it (masked for auditors unless a Break-Glass-Reason header is given, which is logged; hidden from analysts) and whether they are erased",
        "patients",
    ),
    (
        "post",
        "/patients/{id}/erase",
        "Erase a patient (admin): destroy their data key, record PatientErased with the reason; read models and analytics drop their rows",
        "patients",
    ),
    (
        "get",
        "/patients/{id}/orders",
        "A patient's orders",
        "orders",
    ),
    (
        "get",
        "/patients/{id}/results",
        "A patient's cumulative released results (test, from, to)",
        "results",
    ),
    ("post", "/samples", "Collect a specimen", "samples"),
    (
        "get",
        "/samples/{id}",
        "A specimen with its custody chain",
        "samples",
    ),
    (
        "get",
        "/samples/by-accession/{accession}",
        "A specimen by accession number",
        "samples",
    ),
    (
        "post",
        "/samples/{id}/handover",
        "Hand a specimen over (chain of custody)",
        "samples",
    ),
    (
        "post",
        "/samples/{id}/receive",
        "Receive a specimen in the lab",
        "samples",
    ),
    (
        "post",
        "/samples/{id}/reject",
        "Reject a specimen (reason code)",
        "samples",
    ),
    (
        "post",
        "/samples/{id}/aliquots",
        "Split aliquots off a specimen",
        "samples",
    ),
    ("post", "/samples/{id}/store", "Store a specimen", "samples"),
    (
        "post",
        "/samples/{id}/dispose",
        "Dispose of a specimen",
        "samples",
    ),
    ("post", "/results", "Record a result", "results"),
    (
        "get",
        "/results/{id}",
        "One result (clinicians: released only)",
        "results",
    ),
    (
        "post",
        "/results/{id}/correct",
        "Correct before release (reason)",
        "results",
    ),
    (
        "post",
        "/results/{id}/verify",
        "Verify (technical validation)",
        "results",
    ),
    (
        "post",
        "/results/{id}/authorise",
        "Authorise (medical release)",
        "results",
    ),
    (
        "post",
        "/results/{id}/amend",
        "Amend after release (reason)",
        "results",
    ),
    (
        "post",
        "/results/{id}/retract",
        "Retract as entered in error (reason)",
        "results",
    ),
    (
        "post",
        "/results/{id}/rerun",
        "Request a rerun (reason)",
        "results",
    ),
    (
        "post",
        "/results/{id}/critical-notifications",
        "Record a critical-value notification",
        "results",
    ),
    (
        "post",
        "/results/{id}/acknowledge",
        "Acknowledge a released result",
        "results",
    ),
    (
        "get",
        "/worklists",
        "Worklist by department and stage, with age and overdue flag",
        "lab",
    ),
    (
        "get",
        "/critical-results",
        "Critical results awaiting notification or acknowledgement",
        "results",
    ),
    (
        "get",
        "/turnaround",
        "Turnaround per test, priority and stage",
        "lab",
    ),
    (
        "get",
        "/audit/{kind}/{id}",
        "Full history with actors, reasons and field diffs; as_of for the state at an instant; format=csv",
        "audit",
    ),
    ("get", "/audit/verification", "Recompute every hash chain and check the audit seals now", "audit"),
    ("get", "/audit/actors/{user}", "Everything one user did between from and to", "audit"),
    ("get", "/events/stream", "Server-Sent Events from a cursor (Last-Event-ID), filterable by aggregate_type and event_type", "streams"),
    ("get", "/analytics/{report}", "Dashboard rollups over from..to: volumes, turnaround, rejections, rates", "analytics"),
    ("get", "/metrics", "Prometheus metrics (latency, commands, relay and projection lag)", "operations"),
    ("get", "/healthz", "Liveness", "operations"),
    ("get", "/readyz", "Readiness (PostgreSQL)", "operations"),
];

fn operation(method: &str, path: &str, summary: &str, tag: &str) -> Value {
    let mut op = json!({
        "summary": summary,
        "tags": [tag],
        "responses": {
            "200": { "description": "OK", "content": { "application/json": { "schema": { "type": ["object", "array", "string"] } } } },
            "default": { "description": "Error", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } }
        }
    });
    let params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    let mut params = params;
    if method == "post" && path != "/auth/login" {
        params.push(json!({ "name": "Idempotency-Key", "in": "header", "required": false, "schema": { "type": "string", "maxLength": 200 } }));
        op["requestBody"] = json!({ "required": false, "content": { "application/json": { "schema": { "type": "object" } } } });
        op["responses"]["201"] = json!({ "description": "Created", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CommandOutcome" } } } });
    }
    if method == "get"
        && !matches!(
            path,
            "/healthz" | "/readyz" | "/events/stream" | "/analytics/{report}"
        )
    {
        params.push(json!({ "name": "min_position", "in": "query", "required": false, "schema": { "type": "integer" } }));
    }
    if path == "/auth/login" {
        op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": {
            "type": "object", "required": ["username", "password"],
            "properties": { "username": { "type": "string" }, "password": { "type": "string" } } } } } });
    } else if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        op["security"] = json!([{ "bearer": [] }]);
    }
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    op
}

pub fn spec() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, tag) in ENDPOINTS {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = operation(method, path, summary, tag);
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "LIS Ledger API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Commands, clinicians' queries and auditors' history of the laboratory ledger. Errors are RFC 9457 problem details." },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": {
                "Problem": { "type": "object", "required": ["type", "title", "status"], "properties": {
                    "type": { "type": "string", "format": "uri" }, "title": { "type": "string" },
                    "status": { "type": "integer" }, "detail": { "type": "string" }, "rule": { "type": "string" },
                    "errors": { "type": "array", "items": { "type": "object", "properties": {
                        "pointer": { "type": "string" }, "detail": { "type": "string" } } } } } },
                "CommandOutcome": { "type": "object", "required": ["id", "version", "position"], "properties": {
                    "id": { "type": "string" }, "version": { "type": "integer" }, "position": { "type": "integer" } } }
            }
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
