//! The OpenAPI 3.1 description served at `GET /openapi.json`.
//!
//! Paths are listed in [`ENDPOINTS`]; a test walks them against the running server, so a
//! documented endpoint that does not exist (or the reverse, for the commands) fails CI.
//! Each POST names the Rust type its handler reads the body into and the type it answers
//! with, and their schemas are generated from those types (schemars, JSON Schema 2020-12
//! as OpenAPI 3.1 has it), so a body's fields, formats and bounds cannot drift from the
//! code that parses it.

use super::commands as c;
use super::queries as q;
use super::users as u;
use super::{analytics, audit, fhir, fhir_orders, privacy, stream, Login, Token};
use axum::http::StatusCode;
use axum::Json;
use lis_domain::result::CriticalNotification;
use lis_domain::sample::HandOver;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{json, Map, Value};

/// Makes (or refers to) the schema of one type.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// The schema of `T` with every subschema inlined (no references).
fn inline_schema_of<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
        .into_root_schema_for::<T>()
}

/// One query parameter per property of an object schema. A parameter left out is
/// `None` to the handler, so an optional one is documented without its `null`.
fn query_parameters(schema: &Schema) -> Vec<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            let mut description = None;
            if let Some(p) = property.as_object_mut() {
                description = p.remove("description");
                if let Some(Value::Array(types)) = p.get_mut("type") {
                    types.retain(|t| t != "null");
                    if let [only] = types.as_slice() {
                        let only = only.clone();
                        p.insert("type".into(), only);
                    }
                }
            }
            let mut parameter = json!({ "name": name, "in": "query",
                "required": required.contains(&name.as_str()), "schema": property });
            if let Some(d) = description {
                parameter["description"] = d;
            }
            parameter
        })
        .collect()
}

/// One operation of the API.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    /// A POST's body: its schema, and whether it may be left out.
    body: Option<(SchemaOf, bool)>,
    /// The success status and its body's schema, where the answer has one fixed shape.
    answer: Option<(StatusCode, SchemaOf)>,
    /// The query string's parameters: the properties of the type the handler reads.
    query: Option<fn() -> Schema>,
}

impl Endpoint {
    /// The handler reads its query string into a `Q`.
    const fn query<Q: JsonSchema>(mut self) -> Self {
        self.query = Some(inline_schema_of::<Q>);
        self
    }

    /// The body may be left out (a command that takes no input).
    const fn body_optional(mut self) -> Self {
        if let Some((schema, _)) = self.body {
            self.body = Some((schema, true));
        }
        self
    }

    /// Whether this operation needs a bearer token.
    fn secured(&self) -> bool {
        !matches!(
            self.path,
            "/auth/login" | "/healthz" | "/readyz" | "/metrics" | "/fhir/metadata"
        )
    }
}

const OK: StatusCode = StatusCode::OK;
const CREATED: StatusCode = StatusCode::CREATED;

const fn get(path: &'static str, summary: &'static str, tag: &'static str) -> Endpoint {
    Endpoint {
        method: "get",
        path,
        summary,
        tag,
        body: None,
        answer: None,
        query: None,
    }
}

/// A POST reading a `B` and answering `status` with an `A`.
const fn post<B: JsonSchema, A: JsonSchema>(
    status: StatusCode,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
) -> Endpoint {
    Endpoint {
        method: "post",
        path,
        summary,
        tag,
        body: Some((schema_of::<B>, false)),
        answer: Some((status, schema_of::<A>)),
        query: None,
    }
}

/// Every endpoint, in the order the document lists them.
pub const ENDPOINTS: &[Endpoint] = &[
    post::<Login, Token>(OK, "/auth/login", "Log in; returns a short-lived bearer token. An account with too many failed log-ins in a window is locked for a while (429, Retry-After; an administrator's password reset unlocks it)", "auth"),
    post::<u::OwnPasswordBody, u::Account>(OK, "/auth/password", "Change your own password, giving the current one; your tokens are then refused: log in again", "auth"),
    post::<c::PlaceOrderBody, c::Placed>(CREATED, "/orders", "Place an order", "orders"),
    get("/orders/{id}", "An order and the stage of each test", "orders").query::<q::Consistency>(),
    post::<c::TestsBody, c::Outcome>(OK, "/orders/{id}/tests", "Add tests to an order", "orders"),
    post::<c::ReasonBody, c::Outcome>(OK, "/orders/{id}/tests/{code}/cancel", "Cancel one test (reason)", "orders"),
    post::<c::ReasonBody, c::Outcome>(OK, "/orders/{id}/cancel", "Cancel the order (reason)", "orders"),
    get("/patients/{id}", "A patient's identity as the caller's role may see it (masked for auditors unless a Break-Glass-Reason header is given, which is logged; hidden from analysts) and whether they are erased", "patients"),
    post::<privacy::EraseBody, c::Outcome>(OK, "/patients/{id}/erase", "Erase a patient (admin): destroy their data key, record PatientErased with the reason; read models and analytics drop their rows", "patients"),
    get("/patients/{id}/orders", "A patient's orders", "orders").query::<q::Consistency>(),
    get("/patients/{id}/results", "A patient's cumulative released results (test, from, to)", "results").query::<q::CumulativeQuery>(),
    post::<c::CollectBody, c::Outcome>(CREATED, "/samples", "Collect a specimen", "samples"),
    get("/samples/{id}", "A specimen with its custody chain", "samples").query::<q::Consistency>(),
    get("/samples/by-accession/{accession}", "A specimen by accession number", "samples").query::<q::Consistency>(),
    post::<HandOver, c::Outcome>(OK, "/samples/{id}/handover", "Hand a specimen over (chain of custody)", "samples"),
    post::<c::ReceiveBody, c::Outcome>(OK, "/samples/{id}/receive", "Receive a specimen in the lab", "samples"),
    post::<c::RejectBody, c::Outcome>(OK, "/samples/{id}/reject", "Reject a specimen (reason code)", "samples"),
    post::<c::AliquotsBody, c::Aliquoted>(CREATED, "/samples/{id}/aliquots", "Split aliquots off a specimen", "samples"),
    post::<c::StoreBody, c::Outcome>(OK, "/samples/{id}/store", "Store a specimen", "samples"),
    post::<c::DisposeBody, c::Outcome>(OK, "/samples/{id}/dispose", "Dispose of a specimen", "samples"),
    post::<c::RecordBody, c::Outcome>(CREATED, "/results", "Record a result", "results"),
    get("/results/{id}", "One result (clinicians: released only)", "results").query::<q::Consistency>(),
    post::<c::ValueBody, c::Outcome>(OK, "/results/{id}/correct", "Correct before release (reason)", "results"),
    post::<c::Empty, c::Outcome>(OK, "/results/{id}/verify", "Verify (technical validation)", "results").body_optional(),
    post::<c::Empty, c::Outcome>(OK, "/results/{id}/authorise", "Authorise (medical release)", "results").body_optional(),
    post::<c::ValueBody, c::Outcome>(OK, "/results/{id}/amend", "Amend after release (reason)", "results"),
    post::<c::ReasonBody, c::Outcome>(OK, "/results/{id}/retract", "Retract as entered in error (reason)", "results"),
    post::<c::ReasonBody, c::Outcome>(OK, "/results/{id}/rerun", "Request a rerun (reason)", "results"),
    post::<CriticalNotification, c::Outcome>(OK, "/results/{id}/critical-notifications", "Record a critical-value notification", "results"),
    post::<c::Empty, c::Outcome>(OK, "/results/{id}/acknowledge", "Acknowledge a released result", "results").body_optional(),
    get("/worklists", "Worklist by department and stage, the earliest due first, with age, due time and overdue flag; at most limit rows, the whole count in X-Total-Count", "lab").query::<q::WorklistQuery>(),
    get("/critical-results", "Critical results awaiting notification (lab roles: not yet released) or acknowledgement, the longest waiting first; clinicians see only those released to them; at most limit rows, the whole count in X-Total-Count", "results").query::<q::CriticalQuery>(),
    get("/turnaround", "Turnaround per test, priority and stage", "lab"),
    get("/fhir/metadata", "FHIR R4: the CapabilityStatement (no token needed)", "fhir"),
    get("/fhir/Observation", "FHIR R4: a patient's results as a searchset Bundle of Observations, the most recently collected first (patient, code, status, _count; an unsupported parameter is refused, not ignored)", "fhir").query::<fhir::ObservationSearch>(),
    get("/fhir/DiagnosticReport", "FHIR R4: a patient's reports, one per order (what was released of it, with the status of the whole: registered, partial, final, amended, cancelled or entered-in-error), the most recently placed first (patient, _count; _include=DiagnosticReport:result adds their Observations)", "fhir").query::<fhir::ReportSearch>(),
    get("/fhir/DiagnosticReport/{id}", "FHIR R4: one order's report (id: the order's id)", "fhir"),
    get("/fhir/Patient", "FHIR R4: the patient with a medical record number (identifier), for a clinician's system to find the ledger's id of its patient; identity as GET /patients/{id} shows it to the caller's role (masked for auditors and admins unless an auditor gives a Break-Glass-Reason, which is logged)", "fhir").query::<fhir::PatientSearch>(),
    get("/fhir/Patient/{id}", "FHIR R4: one patient, by the ledger's id (410 once erased)", "fhir"),
    get("/fhir/ServiceRequest", "FHIR R4: a patient's orders as ServiceRequests, one per requisition (its tests listed; active, completed or revoked), the most recently placed first (patient, requisition = the order number, _count)", "fhir").query::<fhir_orders::RequestSearch>(),
    get("/fhir/ServiceRequest/{id}", "FHIR R4: one order as a ServiceRequest (id: the order's id)", "fhir"),
    get("/fhir/Specimen", "FHIR R4: a patient's tubes and aliquots as Specimens (a rejected one unsatisfactory, with the reason and whether a recollection was asked for), the most recently collected first (patient or accession, _count)", "fhir").query::<fhir_orders::SpecimenSearch>(),
    get("/fhir/Specimen/{id}", "FHIR R4: one tube or aliquot as a Specimen", "fhir"),
    get("/hl7/orders/{id}/oru", "HL7 v2.5.1: an order's released results as an ORU^R01 message (ER7), for an interface engine to pass on to a hospital information system: OBX-11 F final, C corrected (amended; the value replaced in a note), D deleted (withdrawn after release); 404 until something of it is released. It names the patient: for roles that read results and see identity in clear (an auditor with a logged Break-Glass-Reason)", "hl7"),
    get("/fhir/Observation/{id}", "FHIR R4: one result as an Observation (preliminary, registered, final, amended, cancelled or entered-in-error; clinicians: released results and those withdrawn after release)", "fhir"),
    get("/audit/{kind}/{id}", "Full history with actors, reasons and field diffs; as_of for the state at an instant (as_of_settled: whether every event up to it is committed, so that asking again gives the same); format=csv", "audit").query::<audit::HistoryQuery>(),
    get("/audit/verification", "Recompute every hash chain and check the audit seals now", "audit"),
    get("/audit/actors/{user}", "Everything one user did between from and to, a page at a time (limit, after = the previous page's next_after; only what is final, before settled_until, and resume_after to read on from later): events written; with each page, the break-glass reads, changes to user accounts made by or to the user, and log-in attempts since the previous page's, up to settled_until (up to 10,000 each a page; more go on with the next page)", "audit").query::<audit::PagedRange>(),
    get("/audit/break-glass", "Break-glass reads of patient identity between from and to, a page at a time (limit, after = the previous page's next_after; only what is final, before settled_until, and resume_after to read on from later): who, role, reason, what, request id", "audit").query::<audit::PagedRange>(),
    get("/audit/key-rotations", "Rotations of the key-encryption key: when, by whom, why, from which KEK id to which, how many keys", "audit"),
    get("/audit/users", "Every change to a user account between from and to, a page at a time (limit, after = the previous page's next_after; only what is final, before settled_until, and resume_after to read on from later): added, disabled, enabled, role changed, password reset (by another) or changed (by its user); by whom, in what role, why, in which request", "audit").query::<audit::PagedRange>(),
    get("/audit/logins", "Every log-in attempt between from and to, a page at a time (limit, after = the previous page's next_after; only what is final, before settled_until, and resume_after to read on from later): when, its kind (log-in, or password-change: a wrong current password given to change it), which account (none when the name is no account), whether it succeeded, whether it was refused unchecked while locked, from which address", "audit").query::<audit::PagedRange>(),
    get("/users", "Every user account: name, role, whether disabled, when added, when last logged in (admins and auditors)", "users"),
    post::<u::NewUserBody, u::Account>(CREATED, "/users", "Add a user (admin), with the reason they are given access", "users"),
    post::<u::ReasonBody, u::Account>(OK, "/users/{user}/disable", "Disable a user (admin; not your own account): no log-in, their tokens refused", "users"),
    post::<u::ReasonBody, u::Account>(OK, "/users/{user}/enable", "Enable a disabled user again (admin; not your own account)", "users"),
    post::<u::RoleBody, u::Account>(OK, "/users/{user}/role", "Give a user another role (admin; not your own account); their tokens in the old role are refused", "users"),
    post::<u::PasswordBody, u::Account>(OK, "/users/{user}/password", "Reset a user's password (admin); their tokens are refused", "users"),
    get("/events/stream", "Server-Sent Events from a cursor (Last-Event-ID), filterable by aggregate_type and event_type", "streams").query::<stream::StreamQuery>(),
    get("/analytics/{report}", "Dashboard rollups over from..to: volumes, turnaround, rejections, rates", "analytics").query::<analytics::Range>(),
    get("/metrics", "Prometheus metrics (latency, commands, relay and projection lag)", "operations"),
    get("/healthz", "Liveness", "operations"),
    get("/readyz", "Readiness (PostgreSQL)", "operations"),
];

/// The schema of a path parameter, by name (and, for `id`, what it names).
fn path_parameter(name: &str) -> Value {
    match name {
        "id" => json!({ "type": "string", "format": "uuid" }),
        "code" => json!({ "$ref": "#/components/schemas/TestCode" }),
        "accession" => json!({ "$ref": "#/components/schemas/AccessionNumber" }),
        "user" => json!({ "$ref": "#/components/schemas/ActorId" }),
        "kind" => json!({ "type": "string", "enum": audit::kind_names() }),
        "report" => json!({ "type": "string", "enum": analytics::report_names() }),
        _ => json!({ "type": "string" }),
    }
}

/// `post /orders/{id}/tests` → `postOrdersByIdTests`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for segment in path.split(['/', '-']).filter(|s| !s.is_empty()) {
        let (prefix, word) = match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => ("By", name),
            None => ("", segment),
        };
        id.push_str(prefix);
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.extend(first.to_uppercase());
            id.push_str(chars.as_str());
        }
    }
    id
}

/// What may follow a command that succeeded (OpenAPI links): the operations on what it
/// made or changed, and where their parameters come from — the lab's workflow, from order
/// to collection, receipt, result, verification and release.
fn links(path: &str) -> Option<Value> {
    let on_id = |targets: &[(&str, &str)]| -> Map<String, Value> {
        targets
            .iter()
            .map(|(name, target)| {
                let (method, path) = target.split_once(' ').unwrap_or(("get", target));
                let mut parameters = json!({ "id": "$response.body#/id" });
                if method == "get" {
                    // Read your write: the query waits for the command's event.
                    parameters["min_position"] = json!("$response.body#/position");
                }
                (
                    name.to_string(),
                    json!({ "operationId": operation_id(method, path), "parameters": parameters }),
                )
            })
            .collect()
    };
    let mut links = match path {
        "/orders" => on_id(&[
            ("Order", "get /orders/{id}"),
            ("AddTests", "post /orders/{id}/tests"),
            ("CancelOrder", "post /orders/{id}/cancel"),
        ]),
        "/samples" => on_id(&[
            ("Sample", "get /samples/{id}"),
            ("HandOver", "post /samples/{id}/handover"),
            ("Receive", "post /samples/{id}/receive"),
            ("Reject", "post /samples/{id}/reject"),
            ("Aliquots", "post /samples/{id}/aliquots"),
            ("Store", "post /samples/{id}/store"),
            ("Dispose", "post /samples/{id}/dispose"),
        ]),
        "/samples/{id}/receive" => on_id(&[("Sample", "get /samples/{id}")]),
        "/results" => on_id(&[
            ("Result", "get /results/{id}"),
            ("Correct", "post /results/{id}/correct"),
            ("Verify", "post /results/{id}/verify"),
            ("RequestRerun", "post /results/{id}/rerun"),
            (
                "NotifyCritical",
                "post /results/{id}/critical-notifications",
            ),
        ]),
        "/results/{id}/verify" => on_id(&[("Authorise", "post /results/{id}/authorise")]),
        "/results/{id}/authorise" => on_id(&[
            ("Result", "get /results/{id}"),
            ("Acknowledge", "post /results/{id}/acknowledge"),
            ("Amend", "post /results/{id}/amend"),
            ("Retract", "post /results/{id}/retract"),
            (
                "NotifyCritical",
                "post /results/{id}/critical-notifications",
            ),
        ]),
        _ => return None,
    };
    match path {
        "/orders" => {
            links.insert(
                "CancelTest".into(),
                json!({
                "operationId": operation_id("post", "/orders/{id}/tests/{code}/cancel"),
                "parameters": { "id": "$response.body#/id", "code": "$request.body#/tests/0" } }),
            );
            links.insert("Collect".into(), json!({
                "operationId": operation_id("post", "/samples"),
                "requestBody": { "order_id": "$response.body#/id", "tests": "$request.body#/tests" } }));
        }
        "/samples" => {
            links.insert(
                "ByAccession".into(),
                json!({
                "operationId": operation_id("get", "/samples/by-accession/{accession}"),
                "parameters": { "accession": "$request.body#/accession_number" } }),
            );
        }
        "/samples/{id}/receive" => {
            links.insert(
                "Record".into(),
                json!({
                "operationId": operation_id("post", "/results"),
                "requestBody": { "sample_id": "$response.body#/id" } }),
            );
        }
        _ => {}
    }
    Some(Value::Object(links))
}

fn operation(e: &Endpoint, generator: &mut SchemaGenerator) -> Value {
    let mut responses = Map::new();
    match e.answer {
        Some((status, answer)) => {
            let mut response = json!({ "description": status.canonical_reason().unwrap_or("OK"),
                "content": { "application/json": { "schema": answer(generator) } } });
            if let Some(links) = links(e.path) {
                response["links"] = links;
            }
            responses.insert(status.as_str().to_string(), response);
        }
        None => {
            let json = json!({ "schema": { "type": ["object", "array", "string", "null"] } });
            let text = json!({ "schema": { "type": "string" } });
            let content = match e.path {
                "/healthz" | "/metrics" => json!({ "text/plain": text }),
                "/events/stream" => json!({ "text/event-stream": text }),
                "/audit/{kind}/{id}" => json!({ "application/json": json, "text/csv": text }),
                p if p.starts_with("/hl7/") => {
                    json!({ "x-application/hl7-v2+er7": text })
                }
                p if p.starts_with("/fhir/") => {
                    json!({ crate::fhir::FHIR_JSON: { "schema": { "type": "object" } } })
                }
                _ => json!({ "application/json": json }),
            };
            responses.insert(
                "200".into(),
                json!({ "description": "OK", "content": content }),
            );
        }
    }
    responses.insert(
        "default".into(),
        json!({ "description": "Error", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } }),
    );
    let mut op = json!({ "operationId": operation_id(e.method, e.path), "summary": e.summary,
                         "tags": [e.tag], "responses": responses });
    let mut params: Vec<Value> = e
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_parameter(name) }))
        .collect();
    if let Some((body, optional)) = e.body {
        op["requestBody"] = json!({ "required": !optional,
            "content": { "application/json": { "schema": body(generator) } } });
        if e.secured() {
            params.push(json!({ "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Retries of the same request (method, path and body) with the same key get the first answer; the same key with another request is refused (422)",
                "schema": { "type": "string", "minLength": 1, "maxLength": super::idempotency::KEY_MAX, "pattern": "^[!-~]([ -~]*[!-~])?$" } }));
            // Commands on a record read with its version: not one that creates its
            // record, a patient's (read without one) or a user's.
            let creates = matches!(e.path, "/orders" | "/samples" | "/results");
            if !creates && !matches!(e.tag, "users" | "patients") && e.path != "/auth/password" {
                params.push(json!({ "name": "If-Match", "in": "header", "required": false,
                    "description": "The record's version the command is for, in quotes, as its `version` reads: a command on a record changed since is refused (412 precondition-failed) rather than applied to a value the caller has not seen",
                    "schema": { "type": "string", "pattern": "^(\\*|\"[0-9]{1,18}\")$" } }));
            }
        }
    }
    if let Some(query) = e.query {
        params.extend(query_parameters(&query()));
    }
    if e.secured() {
        op["security"] = json!([{ "bearer": [] }]);
    }
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    op
}

pub fn spec() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    // The path parameters refer to these.
    generator.subschema_for::<lis_domain::ids::TestCode>();
    generator.subschema_for::<lis_domain::ids::AccessionNumber>();
    generator.subschema_for::<lis_domain::actor::ActorId>();
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method] = operation(e, &mut generator);
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert("Problem".into(), json!({ "type": "object", "required": ["type", "title", "status"], "properties": {
        "type": { "type": "string", "format": "uri" }, "title": { "type": "string" },
        "status": { "type": "integer" }, "detail": { "type": "string" }, "rule": { "type": "string" },
        "record": { "type": "object", "description": "outcome-unknown, precondition-failed and contended: the record the command was for, to read before sending it again",
            "properties": { "type": { "type": "string" }, "id": { "type": "string" },
                "position": { "type": "integer", "description": "precondition-failed: where the record's latest event landed; read it with this min_position" } } },
        "errors": { "type": "array", "items": { "type": "object", "properties": {
            "pointer": { "type": "string" }, "detail": { "type": "string" } } } } } }));
    json!({
        "openapi": "3.1.0",
        "info": { "title": "LIS Ledger API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Commands, clinicians' queries and auditors' history of the laboratory ledger. Errors are RFC 9457 problem details." },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": schemas
        }
    })
}

/// The document, built once: it cannot change while the server runs.
static DOCUMENT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(spec);

pub async fn document() -> Json<&'static Value> {
    Json(&DOCUMENT)
}
