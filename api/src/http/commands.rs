//! Command endpoints (POST): one per lab action. Each checks the caller's role, reads
//! the body (400 / 422 with field pointers), runs the command for the caller — the actor
//! in the event comes from the token — and answers with the aggregate id, its new
//! version and the event's global position. All honour `Idempotency-Key`.
//!
//! The body and answer types here derive `JsonSchema`: `openapi` documents each
//! endpoint with the schema of the very type its handler reads or writes.

use super::auth::{Action, Caller};
use super::body::parse;
use super::idempotency::{claim, finish, AfterDeath, Claim};
use super::problem::{FieldProblem, Problem};
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use lis_commands::ledger::NewOrder;
use lis_commands::CommandOutcome;
use lis_domain::ids::{AccessionNumber, OrderId, ResultId, SampleId, TestCode};
use lis_domain::order::{OrderCommand, Priority};
use lis_domain::patient::{NewPatient, RawPatient};
use lis_domain::result::{CriticalNotification, RecordResult, ResultCommand};
use lis_domain::sample::{
    AliquotSpec, CollectSample, HandOver, RejectionReason, SampleCommand, SpecimenCondition,
    StorageLocation,
};
use lis_domain::text::{Label, Note, PersonName, Place, Reason};
use lis_domain::value::ResultValue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::future::Future;

/// Runs `work` at most once per Idempotency-Key and answers with its JSON or problem.
pub(crate) async fn idempotent<F>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &Bytes,
    ok: StatusCode,
    work: F,
) -> Response
where
    F: Future<Output = Result<Value, Problem>>,
{
    idempotent_after(
        state,
        caller,
        headers,
        body,
        ok,
        AfterDeath::Answer(ok),
        work,
    )
    .await
}

/// [`idempotent`], a retry of an attempt that died being answered as `after_death` says.
pub(crate) async fn idempotent_after<F>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &Bytes,
    ok: StatusCode,
    after_death: AfterDeath,
    work: F,
) -> Response
where
    F: Future<Output = Result<Value, Problem>>,
{
    match if_match(headers) {
        Ok(Some(version)) => {
            let _ = caller.context.expected_version.set(version);
        }
        Ok(None) => {}
        Err(p) => return p.into_response(),
    }
    let actor = caller.actor.id.to_string();
    let secret = &state.auth.secret;
    let held = match claim(
        &state.pool,
        headers,
        &actor,
        &caller.request,
        body,
        secret,
        after_death,
    )
    .await
    {
        Ok(Claim::Replay(status, body)) => {
            let mut response = (status, Json(body)).into_response();
            if status.is_client_error() {
                response.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/problem+json"),
                );
            }
            return response;
        }
        Ok(Claim::Run(held)) => held,
        Err(p) => return p.into_response(),
    };
    if let Some(held) = &held {
        // The events of this attempt carry the claim's command id, so that a retry can
        // find them if this attempt dies before its response is stored.
        let _ = caller.context.command_id.set(held.command_id);
    }
    let (status, value, response) = match work.await {
        Ok(value) => (ok, value.clone(), (ok, Json(value)).into_response()),
        Err(problem) => {
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let value = serde_json::to_value(&problem).unwrap_or_default();
            (status, value, problem.into_response())
        }
    };
    if let Some(held) = held {
        // A failure to store only costs the retry a look at the events.
        if let Err(e) = finish(held, status, &value).await {
            tracing::warn!(error = %e, "could not store the idempotent response");
        }
    }
    response
}

/// The version of the record a command is conditional on: `If-Match: "5"`, the record's
/// `version` as read; `*` (any version) sets none. One strong tag
/// only: a weak one never matches (RFC 9110), so it is refused rather than ignored.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let mut values = headers.get_all(axum::http::header::IF_MATCH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" && values.next().is_none() {
        return Ok(None);
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|n| (1..=18).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|_| values.next().is_none())
        .map(Some)
        .ok_or_else(|| {
            Problem::bad_header(
                "If-Match must be one record version in quotes, the record's `version` as read (\"5\"), or *",
            )
        })
}

/// Refuses `If-Match` where there is no version a caller could have read: a command that
/// creates its record, a patient (whose record is read without one), a user account.
/// Refused rather than ignored, as a condition the server does not check would let the
/// command run on what the caller did not see.
pub(crate) fn no_if_match(headers: &HeaderMap) -> Result<(), Problem> {
    if headers.contains_key(axum::http::header::IF_MATCH) {
        return Err(Problem::bad_header(
            "If-Match applies to commands on an order, a sample or a result, with the version read from it",
        ));
    }
    Ok(())
}

/// What a command answers.
#[derive(Serialize, JsonSchema)]
pub(super) struct Outcome {
    /// The aggregate the command changed (or created).
    #[schemars(with = "uuid::Uuid")]
    id: String,
    /// The aggregate's version after the command: the sequence number of its last event.
    version: i64,
    /// The global position of that event: pass it as `min_position` to read your write.
    position: i64,
}

impl From<&CommandOutcome> for Outcome {
    fn from(o: &CommandOutcome) -> Self {
        Self {
            id: o.aggregate_id.clone(),
            version: o.version,
            position: o.position,
        }
    }
}

pub(crate) fn outcome(o: &CommandOutcome) -> Value {
    json!(Outcome::from(o))
}

/// What placing an order answers.
#[derive(Serialize, JsonSchema)]
pub(super) struct Placed {
    #[serde(flatten)]
    outcome: Outcome,
    /// The number printed on the requisition.
    order_number: lis_domain::ids::OrderNumber,
}

/// What splitting aliquots answers: the parent's outcome and each child's, in order.
#[derive(Serialize, JsonSchema)]
pub(super) struct Aliquoted {
    parent: Outcome,
    children: Vec<Outcome>,
}

/// Parses a path id, or answers 404 naming it (an id that cannot exist is not found).
pub(crate) fn id<T>(
    raw: &str,
    parse: fn(&str) -> Result<T, lis_domain::validation::FieldError>,
    what: &str,
) -> Result<T, Problem> {
    parse(raw).map_err(|_| Problem::not_found(format!("no {what} {raw}")))
}

// --- orders ---------------------------------------------------------------------------

/// The patient as the order form names them; every field is checked (422 naming it).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatientBody {
    #[schemars(with = "lis_domain::patient::Mrn")]
    mrn: String,
    /// Blank is the same as absent.
    #[schemars(with = "Option<lis_domain::patient::AbhaNumber>")]
    abha_number: Option<String>,
    #[schemars(with = "PersonName")]
    name: String,
    /// Also accepted: `m`, `f`, `o`, `u`, in any case.
    #[schemars(with = "lis_domain::patient::Sex")]
    sex: String,
    /// Not in the future, at most 130 years ago.
    #[schemars(with = "chrono::NaiveDate")]
    date_of_birth: String,
    /// Blank is the same as absent.
    #[schemars(with = "Option<lis_domain::patient::Phone>")]
    phone: Option<String>,
    /// Blank is the same as absent.
    #[schemars(with = "Option<lis_domain::text::Address>")]
    address: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({
    "patient": { "mrn": "MRN-0042", "name": "Asha Verma", "sex": "female",
                 "date_of_birth": "1980-05-17", "phone": "+91 98765 43210" },
    "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2",
    "tests": ["K", "NA"]
}))]
pub(super) struct PlaceOrderBody {
    patient: PatientBody,
    ordering_clinician: PersonName,
    priority: Priority,
    collection_site: Place,
    clinical_notes: Option<Note>,
    /// Codes of the catalogue, each once.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    tests: Vec<TestCode>,
}

pub async fn place_order(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    caller.require(Action::ManageOrders)?;
    no_if_match(&headers)?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::CREATED, async {
            let b: PlaceOrderBody = parse(&body)?;
            let p = b.patient;
            let raw = RawPatient {
                mrn: &p.mrn,
                abha_number: p.abha_number.as_deref(),
                name: &p.name,
                sex: &p.sex,
                date_of_birth: &p.date_of_birth,
                phone: p.phone.as_deref(),
                address: p.address.as_deref(),
            };
            let patient =
                NewPatient::parse(raw, s.ledger.policy().day_of(Utc::now())).map_err(|e| {
                    Problem::invalid(
                        e.0.iter()
                            .map(|f| FieldProblem::from(&f.clone().under("patient")))
                            .collect(),
                    )
                })?;
            let placed = s
                .ledger
                .place_order(
                    NewOrder {
                        patient,
                        ordering_clinician: b.ordering_clinician,
                        priority: b.priority,
                        collection_site: b.collection_site,
                        clinical_notes: b.clinical_notes,
                        tests: b.tests,
                    },
                    &caller.context,
                )
                .await?;
            Ok(json!(Placed {
                outcome: Outcome::from(&placed.outcome),
                order_number: placed.order_number,
            }))
        })
        .await,
    )
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "tests": ["HB"] }))]
pub(super) struct TestsBody {
    /// Codes of the catalogue not already active on the order, each once.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    tests: Vec<TestCode>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "reason": "ordered in error" }))]
pub(super) struct ReasonBody {
    reason: Reason,
}

async fn order_command(
    s: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
    raw: String,
    make: impl FnOnce(&Bytes) -> Result<OrderCommand, Problem>,
) -> Result<Response, Problem> {
    caller.require(Action::ManageOrders)?;
    let order = id(&raw, OrderId::parse, "order")?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::OK, async {
            let command = make(&body)?;
            Ok(outcome(
                &s.ledger
                    .execute_order(order, command, &caller.context)
                    .await?,
            ))
        })
        .await,
    )
}

pub async fn add_tests(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    order_command(s, caller, headers, body, raw, |b| {
        Ok(OrderCommand::AddTests {
            tests: parse::<TestsBody>(b)?.tests,
        })
    })
    .await
}

pub async fn cancel_test(
    State(s): State<AppState>,
    caller: Caller,
    Path((raw, code)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let test = TestCode::parse(&code)
        .map_err(|_| Problem::not_found(format!("no test {code} on this order")))?;
    order_command(s, caller, headers, body, raw, |b| {
        Ok(OrderCommand::CancelTest {
            test,
            reason: parse::<ReasonBody>(b)?.reason,
        })
    })
    .await
}

pub async fn cancel_order(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    order_command(s, caller, headers, body, raw, |b| {
        Ok(OrderCommand::Cancel {
            reason: parse::<ReasonBody>(b)?.reason,
        })
    })
    .await
}

// --- samples --------------------------------------------------------------------------

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({
    "order_id": "0b6f4c1e-2d4a-4c55-9a3e-7f1d2b8c9e10", "accession_number": "ACC-000123",
    "specimen_type": "serum", "container": "red/SST", "tests": ["K", "NA"]
}))]
pub(super) struct CollectBody {
    order_id: OrderId,
    /// Unique in the lab.
    accession_number: AccessionNumber,
    /// As the catalogue names it for every test listed (e.g. `serum`).
    specimen_type: String,
    /// As the catalogue names it for every test listed (e.g. `red/SST`).
    container: String,
    /// Active tests of the order, each once.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    tests: Vec<TestCode>,
    /// Not in the future; now when absent.
    collected_at: Option<DateTime<Utc>>,
}

pub async fn collect(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    caller.require(Action::Collect)?;
    no_if_match(&headers)?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::CREATED, async {
            let b: CollectBody = parse(&body)?;
            let sample_id = SampleId::new();
            let command = SampleCommand::Collect(CollectSample {
                sample_id,
                order_id: b.order_id,
                accession_number: b.accession_number,
                specimen_type: b.specimen_type,
                container: b.container,
                tests: b.tests,
                collected_by: caller.actor.id.clone(),
                collected_at: b.collected_at.unwrap_or_else(Utc::now),
            });
            Ok(outcome(
                &s.ledger
                    .execute_sample(sample_id, command, &caller.context)
                    .await?,
            ))
        })
        .await,
    )
}

async fn sample_command(
    s: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
    raw: String,
    action: Action,
    make: impl FnOnce(&Bytes, &Caller) -> Result<SampleCommand, Problem>,
) -> Result<Response, Problem> {
    caller.require(action)?;
    let sample = id(&raw, SampleId::parse, "sample")?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::OK, async {
            let command = make(&body, &caller)?;
            Ok(outcome(
                &s.ledger
                    .execute_sample(sample, command, &caller.context)
                    .await?,
            ))
        })
        .await,
    )
}

pub async fn hand_over(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    sample_command(s, caller, headers, body, raw, Action::HandOver, |b, _| {
        Ok(SampleCommand::HandOver(parse::<HandOver>(b)?))
    })
    .await
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "condition": { "status": "satisfactory" } }))]
pub(super) struct ReceiveBody {
    /// Not in the future nor before collection; now when absent.
    received_at: Option<DateTime<Utc>>,
    /// Satisfactory when absent.
    condition: Option<SpecimenCondition>,
}

pub async fn receive(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    sample_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::HandleSpecimens,
        |b, c| {
            let r: ReceiveBody = parse(b)?;
            Ok(SampleCommand::Receive {
                received_by: c.actor.id.clone(),
                received_at: r.received_at.unwrap_or_else(Utc::now),
                condition: r.condition.unwrap_or(SpecimenCondition::Satisfactory {}),
            })
        },
    )
    .await
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "reason": "haemolysed", "detail": "grossly haemolysed" }))]
pub(super) struct RejectBody {
    reason: RejectionReason,
    detail: Option<Note>,
}

pub async fn reject(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    sample_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::HandleSpecimens,
        |b, _| {
            let r: RejectBody = parse(b)?;
            Ok(SampleCommand::Reject {
                reason: r.reason,
                detail: r.detail,
            })
        },
    )
    .await
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AliquotBody {
    /// Unique in the lab.
    accession_number: AccessionNumber,
    /// Tests of the parent specimen, each once.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    tests: Vec<TestCode>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "children": [{ "accession_number": "ACC-000123-A1", "tests": ["K"] }] }))]
pub(super) struct AliquotsBody {
    #[schemars(length(min = 1))]
    children: Vec<AliquotBody>,
}

pub async fn aliquots(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    caller.require(Action::HandleSpecimens)?;
    let parent = id(&raw, SampleId::parse, "sample")?;
    // A retry finishes a split its first attempt left part-made (`Ledger::aliquot`).
    let ok = StatusCode::CREATED;
    Ok(idempotent_after(
        &s,
        &caller,
        &headers,
        &body,
        ok,
        AfterDeath::RunAgain,
        async {
            let b: AliquotsBody = parse(&body)?;
            let children: Vec<AliquotSpec> = b
                .children
                .into_iter()
                .map(|c| AliquotSpec {
                    sample_id: SampleId::aliquot_of(parent, &c.accession_number),
                    accession_number: c.accession_number,
                    tests: c.tests,
                })
                .collect();
            let outcomes = s.ledger.aliquot(parent, children, &caller.context).await?;
            let (parent, children) = outcomes.split_first().ok_or_else(Problem::internal)?;
            Ok(json!(Aliquoted {
                parent: parent.into(),
                children: children.iter().map(Outcome::from).collect()
            }))
        },
    )
    .await)
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "location": { "room": "Cold room 1", "device": "Fridge 2", "rack": "R4", "position": "B7" } }))]
pub(super) struct StoreBody {
    location: StorageLocation,
}

pub async fn store(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    sample_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::HandleSpecimens,
        |b, _| {
            Ok(SampleCommand::Store {
                location: parse::<StoreBody>(b)?.location,
            })
        },
    )
    .await
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "method": "autoclave" }))]
pub(super) struct DisposeBody {
    method: Option<Note>,
}

pub async fn dispose(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    sample_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::HandleSpecimens,
        |b, _| {
            Ok(SampleCommand::Dispose {
                method: parse::<DisposeBody>(b)?.method,
            })
        },
    )
    .await
}

// --- results --------------------------------------------------------------------------

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({
    "sample_id": "5a2e8c0d-6b1f-4e3a-8d7c-2f9b1e4a6c30", "test_code": "K",
    "value": { "kind": "numeric", "value": 4.2, "unit": "mmol/L" }, "instrument": "Cobas c311 #1"
}))]
pub(super) struct RecordBody {
    /// A received specimen.
    sample_id: SampleId,
    /// A test of that specimen.
    test_code: TestCode,
    /// In the test's unit (numeric) or one of its answers (coded).
    value: ResultValue,
    method: Option<Label>,
    instrument: Option<Label>,
    /// The instrument's message as received (ASTM / HL7): at most 64 KiB of UTF-8.
    raw_message: Option<String>,
}

pub async fn record(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    caller.require(Action::EnterResults)?;
    no_if_match(&headers)?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::CREATED, async {
            let b: RecordBody = parse(&body)?;
            let result_id = ResultId::for_test(b.sample_id, &b.test_code);
            let command = ResultCommand::Record(RecordResult {
                result_id,
                sample_id: b.sample_id,
                test_code: b.test_code,
                value: b.value,
                method: b.method,
                instrument: b.instrument,
                raw_message: b.raw_message,
            });
            Ok(outcome(
                &s.ledger
                    .execute_result(result_id, command, &caller.context)
                    .await?,
            ))
        })
        .await,
    )
}

async fn result_command(
    s: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
    raw: String,
    action: Action,
    make: impl FnOnce(&Bytes, &Caller) -> Result<ResultCommand, Problem>,
) -> Result<Response, Problem> {
    caller.require(action)?;
    let result = id(&raw, ResultId::parse, "result")?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::OK, async {
            let command = make(&body, &caller)?;
            Ok(outcome(
                &s.ledger
                    .execute_result(result, command, &caller.context)
                    .await?,
            ))
        })
        .await,
    )
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = json!({ "value": { "kind": "numeric", "value": 4.3, "unit": "mmol/L" }, "reason": "transcription error" }))]
pub(super) struct ValueBody {
    value: ResultValue,
    reason: Reason,
}

/// No input: an empty object, or no body at all.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

/// An empty body is allowed where the command takes no input.
fn empty(b: &Bytes) -> Result<(), Problem> {
    if b.iter().all(u8::is_ascii_whitespace) {
        Ok(())
    } else {
        parse::<Empty>(b).map(|_| ())
    }
}

pub async fn correct(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::EnterResults,
        |b, _| {
            let v: ValueBody = parse(b)?;
            Ok(ResultCommand::Correct {
                value: v.value,
                reason: v.reason,
            })
        },
    )
    .await
}

pub async fn verify(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(s, caller, headers, body, raw, Action::Verify, |b, c| {
        empty(b)?;
        Ok(ResultCommand::Verify {
            by: c.actor.id.clone(),
        })
    })
    .await
}

pub async fn authorise(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(s, caller, headers, body, raw, Action::Release, |b, c| {
        empty(b)?;
        Ok(ResultCommand::Authorise {
            by: c.actor.id.clone(),
        })
    })
    .await
}

pub async fn amend(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(s, caller, headers, body, raw, Action::Release, |b, _| {
        let v: ValueBody = parse(b)?;
        Ok(ResultCommand::Amend {
            value: v.value,
            reason: v.reason,
        })
    })
    .await
}

pub async fn retract(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(s, caller, headers, body, raw, Action::Release, |b, _| {
        Ok(ResultCommand::Retract {
            reason: parse::<ReasonBody>(b)?.reason,
        })
    })
    .await
}

pub async fn rerun(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::EnterResults,
        |b, _| {
            Ok(ResultCommand::RequestRerun {
                reason: parse::<ReasonBody>(b)?.reason,
            })
        },
    )
    .await
}

pub async fn critical_notification(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::NotifyCritical,
        |b, c| {
            Ok(ResultCommand::RecordCriticalNotification {
                by: c.actor.id.clone(),
                notification: parse::<CriticalNotification>(b)?,
            })
        },
    )
    .await
}

pub async fn acknowledge(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    result_command(
        s,
        caller,
        headers,
        body,
        raw,
        Action::Acknowledge,
        |b, c| {
            empty(b)?;
            Ok(ResultCommand::Acknowledge {
                by: c.actor.id.clone(),
            })
        },
    )
    .await
}
