//! The permission matrix, whole: every operation of the OpenAPI document called with a
//! token of every role. docs/security.md's table is the specification: a role whose cell
//! is empty gets 403 with a problem naming the role and the action; a role with a mark
//! gets past the check (whatever the lab's rules then say of an empty body). An operation
//! the table does not govern fails the test, so a new endpoint cannot slip in unlisted.
//! Nothing is written by any of it.

mod support;

use lis_domain::actor::Role;
use lis_tests::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{token, wait_healthy, ApiClient, Stack};

/// Every role a token can carry: a person's, and `system`, the ledger itself (imports,
/// jobs), never a person: the table has no column for it, and it may call nothing.
fn roles() -> Vec<Role> {
    Role::PEOPLE.into_iter().chain([Role::System]).collect()
}

/// The row of docs/security.md's matrix that governs each operation.
const GOVERNED_BY: &[(&str, &str)] = &[
    ("POST /orders", "place / change orders"),
    ("POST /orders/{id}/tests", "place / change orders"),
    (
        "POST /orders/{id}/tests/{code}/cancel",
        "place / change orders",
    ),
    ("POST /orders/{id}/cancel", "place / change orders"),
    ("POST /samples", "collect specimens"),
    ("POST /samples/{id}/handover", "hand over"),
    (
        "POST /samples/{id}/receive",
        "receive, reject, aliquot, store, dispose",
    ),
    (
        "POST /samples/{id}/reject",
        "receive, reject, aliquot, store, dispose",
    ),
    (
        "POST /samples/{id}/aliquots",
        "receive, reject, aliquot, store, dispose",
    ),
    (
        "POST /samples/{id}/store",
        "receive, reject, aliquot, store, dispose",
    ),
    (
        "POST /samples/{id}/dispose",
        "receive, reject, aliquot, store, dispose",
    ),
    ("POST /results", "record, correct, rerun results"),
    (
        "POST /results/{id}/correct",
        "record, correct, rerun results",
    ),
    ("POST /results/{id}/rerun", "record, correct, rerun results"),
    ("POST /results/{id}/verify", "verify"),
    ("POST /results/{id}/authorise", "authorise, amend, retract"),
    ("POST /results/{id}/amend", "authorise, amend, retract"),
    ("POST /results/{id}/retract", "authorise, amend, retract"),
    (
        "POST /results/{id}/critical-notifications",
        "critical-value notification",
    ),
    ("POST /results/{id}/acknowledge", "acknowledge a result"),
    ("GET /orders/{id}", "read orders and specimens"),
    ("GET /patients/{id}/orders", "read orders and specimens"),
    ("GET /samples/{id}", "read orders and specimens"),
    (
        "GET /samples/by-accession/{accession}",
        "read orders and specimens",
    ),
    ("GET /results/{id}", "read results"),
    ("GET /patients/{id}/results", "read results"),
    ("GET /critical-results", "read results"),
    ("GET /fhir/Observation", "read results"),
    ("GET /fhir/Observation/{id}", "read results"),
    ("GET /fhir/DiagnosticReport", "read results"),
    ("GET /fhir/DiagnosticReport/{id}", "read results"),
    ("GET /fhir/Patient", "find a patient by MRN"),
    ("GET /fhir/Patient/{id}", "patient identity"),
    ("GET /hl7/orders/{id}/oru", "HL7 v2 results"),
    ("GET /fhir/ServiceRequest", "read orders and specimens"),
    ("GET /fhir/ServiceRequest/{id}", "read orders and specimens"),
    ("GET /fhir/Specimen", "read orders and specimens"),
    ("GET /fhir/Specimen/{id}", "read orders and specimens"),
    ("GET /worklists", "worklists, turnaround"),
    ("GET /turnaround", "worklists, turnaround"),
    ("GET /audit/{kind}/{id}", "audit history"),
    ("GET /audit/actors/{user}", "audit history"),
    ("GET /audit/verification", "audit history"),
    ("GET /audit/break-glass", "audit history"),
    ("GET /audit/key-rotations", "audit history"),
    ("GET /audit/users", "audit history"),
    ("GET /audit/logins", "audit history"),
    ("GET /users", "list users"),
    ("POST /auth/password", "change one's own password"),
    ("POST /users", "manage users"),
    ("POST /users/{user}/disable", "manage users"),
    ("POST /users/{user}/enable", "manage users"),
    ("POST /users/{user}/role", "manage users"),
    ("POST /users/{user}/password", "manage users"),
    ("GET /events/stream", "event stream"),
    ("GET /analytics/{report}", "analytics"),
    ("GET /patients/{id}", "patient identity"),
    ("POST /patients/{id}/erase", "erase a patient"),
];

/// Operations anyone may call: probes, the documents themselves (OpenAPI, FHIR
/// capabilities), metrics and the login.
const PUBLIC: [&str; 6] = [
    "GET /healthz",
    "GET /fhir/metadata",
    "GET /readyz",
    "GET /openapi.json",
    "GET /metrics",
    "POST /auth/login",
];

/// docs/security.md's permission matrix: row label (the text before any parenthesis) →
/// role name → whether the role may act. A cell with any mark (✓, clear, masked) allows;
/// an empty cell or "—" refuses.
fn documented_matrix() -> BTreeMap<String, BTreeMap<String, bool>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
    let doc = std::fs::read_to_string(path).expect("read docs/security.md");
    let table: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("## Permission matrix"))
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_string()).collect()
    };
    let header = cells(table[0]);
    assert_eq!(header[0], "action (endpoints)", "{header:?}");
    let roles = &header[1..];
    let mut matrix = BTreeMap::new();
    for line in &table[2..] {
        let row = cells(line);
        assert_eq!(row.len(), header.len(), "a row of the matrix: {line}");
        let label = row[0].split(" (").next().unwrap().trim().to_string();
        let allowed = roles
            .iter()
            .zip(&row[1..])
            .map(|(role, cell)| (role.clone(), !cell.is_empty() && cell != "—"))
            .collect();
        matrix.insert(label, allowed);
    }
    matrix
}

/// A value for a required query parameter, from its schema's format.
fn sample_value(schema: &Value) -> &'static str {
    match schema["format"].as_str() {
        Some("date") => "2026-03-03",
        Some("date-time") => "2026-03-03T00:00:00Z",
        Some("uuid") => "00000000-0000-4000-8000-000000000000",
        _ => match schema["type"].as_str() {
            Some("integer") | Some("number") => "1",
            Some("boolean") => "true",
            _ => "x",
        },
    }
}

#[tokio::test]
async fn every_operation_as_every_role_is_allowed_or_refused_as_the_matrix_says() {
    let matrix = documented_matrix();
    let governed: BTreeMap<&str, &str> = GOVERNED_BY.iter().copied().collect();
    for row in governed.values() {
        assert!(
            matrix.contains_key(*row),
            "docs/security.md has no matrix row `{row}`"
        );
    }

    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    let api = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;
    let api_client = ApiClient::new(&base);
    let (http, spec) = (&api_client.http, api_client.spec().await);
    let tokens: Vec<(Role, String)> = roles()
        .into_iter()
        .map(|r| (r, token(&format!("{}.1", r.as_str()), r)))
        .collect();

    let mut checked = 0;
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            if PUBLIC.contains(&name.as_str()) {
                continue;
            }
            let row = governed
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{name} is governed by no row of the matrix"));
            let mut concrete = path
                .replace("{id}", &uuid::Uuid::new_v4().to_string())
                .replace("{code}", "K")
                .replace("{accession}", "ACC-260303-0001")
                .replace("{kind}", "orders")
                .replace("{user}", "tech.1")
                .replace("{report}", "volumes");
            let required: Vec<String> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query" && p["required"] == true)
                .map(|p| {
                    format!(
                        "{}={}",
                        p["name"].as_str().unwrap(),
                        sample_value(&p["schema"])
                    )
                })
                .collect();
            if !required.is_empty() {
                concrete = format!("{concrete}?{}", required.join("&"));
            }
            for (role, bearer) in &tokens {
                let url = format!("{base}{concrete}");
                let request = match method.as_str() {
                    "get" => http.get(url),
                    "post" => http.post(url).json(&json!({})),
                    other => panic!("{other} {path}: a method this test does not send"),
                };
                let r = request.bearer_auth(bearer).send().await.unwrap();
                let status = r.status();
                let documented = matrix[*row].get(role.as_str()).copied();
                let may = documented.unwrap_or(false);
                assert!(
                    documented.is_some() || *role == Role::System,
                    "docs/security.md's matrix has no column for {role}"
                );
                if may {
                    assert!(
                        !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                            && !status.is_server_error(),
                        "{role} may {name} ({row}) but got {status}"
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{role} may not {name} ({row})"
                    );
                    assert_eq!(r.headers()["content-type"], "application/problem+json");
                    let problem: Value = r.json().await.unwrap();
                    let detail = problem["detail"].as_str().unwrap_or_default();
                    assert!(
                        detail.contains(&format!("role {role} may not")),
                        "{name} as {role}: {problem}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, GOVERNED_BY.len() * roles().len());

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(events, 0, "a refused or empty command wrote an event");
    drop(api);
    db.drop().await;
}
