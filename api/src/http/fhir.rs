//! The FHIR R4 read interface's handlers: `GET /fhir/metadata`, Observations and
//! DiagnosticReports (read, and searched by patient), and Patients (read, and found by
//! MRN), for clinicians' systems (EMR, ABDM gateways) that speak FHIR rather than this
//! API's own JSON.
//!
//! Observations and reports are read from the results and orders models with the
//! permission of `GET /results/{id}`; Patients as `GET /patients/{id}` shows identity;
//! all mapped by [`crate::fhir`]. A clinician sees what the lab released, and a result
//! withdrawn after release as `entered-in-error`. Search parameters and paging are
//! `http::fhir_search`'s; one the server does not support is refused (422), not
//! ignored: an ignored filter would send more results than the caller asked for, and a
//! clinical system could take them as filtered.

use super::auth::{Action, Caller};
use super::cursor::{self, Cursor};
use super::fhir_search::{
    count_param, links, loinc_form, page_param, patient_param, CODE_PATTERN, PAGE_PATTERN,
    PATIENT_PATTERN, STATUSES, STATUS_PATTERN,
};
use super::params::Params;
use super::privacy;
use super::problem::{FieldProblem, Problem};
use super::AppState;
use crate::fhir::{self, ResultRow};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use lis_commands::connection::connection;
use lis_commands::keys::vault::KeyStatus;
use lis_domain::ids::{OrderId, PatientId, ResultId};
use lis_domain::patient::Mrn;
use lis_domain::sealed::Sealed;
use serde::Deserialize;
use serde_json::Value;
use std::sync::LazyLock;

/// The rows of `proj_results.results` (as `r`) matching `$where` that the caller may
/// see, as [`ResultRow`]s: those on the page (`$page`, then `$tail`), each with the
/// count of every match.
macro_rules! result_rows {
    ($where:expr, $page:literal, $tail:literal) => {
        concat!(
            matching_results!($where),
            " SELECT r.result_id, r.sample_id, r.order_id, r.patient_id, r.test_code, r.loinc,
                    t.name AS test_name, r.collected_at, r.value, r.flags, r.reference_low,
                    r.reference_high, r.reference_basis, r.specimen_note,
                    to_jsonb(r.status) AS status, r.amendments, r.verified_by, r.released_by,
                    r.released_at, r.retraction_reason, r.updated_at, r.amended_at,
                    r.previous_value, (SELECT count(*) FROM m) AS total
               FROM m r
               LEFT JOIN catalogue_tests t ON t.version = r.catalogue_version AND t.code = r.test_code
              WHERE ",
            $page,
            $tail
        )
    };
}

/// `m`: the rows of `proj_results.results` matching `$where` that the caller may see
/// (`$2`: whether they see only what was released to clinicians).
macro_rules! matching_results {
    ($where:expr) => {
        concat!(
            "WITH m AS (SELECT r.* FROM proj_results.results r WHERE ",
            $where,
            // What a clinician may see: released, or withdrawn after release.
            " AND (NOT $2 OR r.status = 'released' OR (r.status = 'retracted' AND r.released_at IS NOT NULL)))"
        )
    };
}

#[derive(sqlx::FromRow)]
struct Found {
    #[sqlx(flatten)]
    row: ResultRow,
    total: i64,
}

pub(super) fn fhir_json(v: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, fhir::FHIR_JSON)],
        serde_json::to_string(v).unwrap_or_default(),
    )
        .into_response()
}

/// Built once: what the server can do does not change while it runs.
static CAPABILITIES: LazyLock<Value> =
    LazyLock::new(|| fhir::capability_statement(env!("CARGO_PKG_VERSION"), chrono::Utc::now()));

/// The `CapabilityStatement`, unauthenticated as FHIR clients expect it to be.
pub async fn metadata() -> Response {
    fhir_json(&CAPABILITIES)
}

/// One result as an `Observation`.
pub async fn observation(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadResults)?;
    let id = super::commands::id(&raw, ResultId::parse, "Observation")?;
    let found: Option<Found> = sqlx::query_as(result_rows!("r.result_id = $1", "true", ""))
        .bind(id.as_uuid())
        .bind(caller.released_only())
        .fetch_optional(&mut *connection(&s.pool).await?)
        .await?;
    match found {
        Some(f) => Ok(fhir_json(&fhir::observation(&f.row))),
        None => Err(Problem::not_found(format!("no Observation {raw}"))),
    }
}

/// The search parameters of `GET /fhir/Observation` ([`fhir::SEARCH_PARAMS`]).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservationSearch {
    /// The patient, by the ledger's id: a UUID, or `Patient/<uuid>`.
    #[schemars(extend("pattern" = PATIENT_PATTERN))]
    pub patient: String,
    /// A LOINC code, bare (`2823-3`) or with its system (`http://loinc.org|2823-3`).
    #[schemars(extend("pattern" = CODE_PATTERN))]
    pub code: Option<String>,
    /// How many to send, the most recently collected first: 1 to 1000 (default 100).
    /// `Bundle.total` says how many match in all; a `next` link leads on.
    #[serde(rename = "_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,
    /// Where the page starts, as a Bundle's `next` link gives it.
    #[serde(rename = "_page")]
    #[schemars(extend("pattern" = PAGE_PATTERN))]
    pub page: Option<String>,
    /// Only results in these statuses, comma-separated (`final,amended`).
    #[schemars(extend("pattern" = STATUS_PATTERN))]
    pub status: Option<String>,
}

/// What `GET /fhir/Observation` matches: the patient ($1), a LOINC code ($3, if given)
/// and `Observation.status` in a list ($4, if given), the status as
/// [`fhir::observation_status`] maps it (the end-to-end test searches for each status
/// and compares).
macro_rules! observation_filter {
    () => {
        "r.patient_id = $1 AND ($3::text IS NULL OR r.loinc = $3)
         AND ($4::text[] IS NULL OR
              CASE r.status WHEN 'recorded' THEN 'preliminary' WHEN 'verified' THEN 'preliminary'
                            WHEN 'rerun_requested' THEN 'registered'
                            WHEN 'released' THEN CASE WHEN r.amendments > 0 THEN 'amended' ELSE 'final' END
                            WHEN 'retracted' THEN CASE WHEN r.released_at IS NOT NULL
                                                       THEN 'entered-in-error' ELSE 'cancelled' END
              END = ANY ($4))"
    };
}

impl ObservationSearch {
    /// The patient, the LOINC code, the statuses, the count and the page, or a problem
    /// naming each bad one.
    fn check(&self) -> Result<ObservationQuery, Problem> {
        let mut errors = Vec::new();
        let patient = patient_param(&self.patient, &mut errors);
        let code = self
            .code
            .as_deref()
            .map(|c| c.strip_prefix("http://loinc.org|").unwrap_or(c).to_string());
        if code.as_deref().is_some_and(|c| !loinc_form(c)) {
            errors.push(FieldProblem {
                pointer: "/code".into(),
                detail:
                    "code must be a LOINC code (such as 2823-3), bare or as http://loinc.org|<code>"
                        .into(),
            });
        }
        let statuses: Option<Vec<String>> = self
            .status
            .as_deref()
            .map(|list| list.split(',').map(str::to_string).collect());
        if statuses
            .as_ref()
            .is_some_and(|l| l.iter().any(|s| !STATUSES.contains(&s.as_str())))
        {
            errors.push(FieldProblem {
                pointer: "/status".into(),
                detail: format!(
                    "status must be one or more of {}, comma-separated",
                    STATUSES.join(", ")
                ),
            });
        }
        let count = count_param(self.count, &mut errors);
        let page = page_param(self.page.as_deref(), &mut errors);
        match patient {
            Some(patient) if errors.is_empty() => Ok(ObservationQuery {
                patient,
                code,
                statuses,
                count,
                page,
            }),
            _ => Err(Problem::invalid(errors)),
        }
    }
}

/// A checked `GET /fhir/Observation` search.
struct ObservationQuery {
    patient: PatientId,
    code: Option<String>,
    statuses: Option<Vec<String>>,
    count: u32,
    page: Option<Cursor<uuid::Uuid>>,
}

/// A patient's results as a `searchset` `Bundle`, the most recently collected first.
pub async fn search_observations(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<ObservationSearch>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadResults)?;
    let ObservationQuery {
        patient,
        code,
        statuses,
        count,
        page,
    } = q.check()?;
    let found: Vec<Found> = sqlx::query_as(result_rows!(
        observation_filter!(),
        "($6::timestamptz IS NULL OR (r.collected_at, r.result_id) < ($6, $7::uuid))",
        " ORDER BY r.collected_at DESC, r.result_id DESC LIMIT $5"
    ))
    .bind(patient.as_uuid())
    .bind(caller.released_only())
    .bind(&code)
    .bind(&statuses)
    .bind(i64::from(count) + 1)
    .bind(page.map(|c| c.at))
    .bind(page.map(|c| c.key))
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    let count_all = sqlx::query_scalar(concat!(
        matching_results!(observation_filter!()),
        " SELECT count(*) FROM m"
    ))
    .bind(patient.as_uuid())
    .bind(caller.released_only())
    .bind(&code)
    .bind(&statuses);
    let count_all = async { count_all.fetch_one(&mut *connection(&s.pool).await?).await };
    let total = total(found.first().map(|f| f.total), page.is_some(), count_all).await?;
    let (found, next) = cursor::page(found, count as usize, |f| Cursor {
        at: f.row.collected_at,
        key: f.row.result_id,
    });
    let mut base = format!("/fhir/Observation?patient=Patient/{}", patient.as_uuid());
    if let Some(c) = &code {
        base.push_str(&format!("&code=http://loinc.org%7C{c}"));
    }
    if let Some(list) = &statuses {
        base.push_str(&format!("&status={}", list.join(",")));
    }
    base.push_str(&format!("&_count={count}"));
    let resources = found.iter().map(|f| fhir::observation(&f.row)).collect();
    Ok(bundle(
        &s,
        &base,
        (page, next),
        total,
        resources,
        Vec::new(),
    ))
}

/// How many match a search: as the page's first row counted them, or, on a page past
/// the last (no rows, but a cursor), by `count`, a statement of its own.
pub(super) async fn total(
    first: Option<i64>,
    paged: bool,
    count: impl std::future::Future<Output = Result<i64, sqlx::Error>>,
) -> Result<i64, Problem> {
    Ok(match first {
        Some(total) => total,
        None if paged => count.await?,
        None => 0,
    })
}

/// A search's answer: `resources`, then `included`, as a `searchset` Bundle of `total`
/// matches, found at `path` (its parameters but the page) from `pages.0` and going on
/// at `pages.1`.
pub(super) fn bundle(
    s: &AppState,
    path: &str,
    pages: (Option<Cursor<uuid::Uuid>>, Option<Cursor<uuid::Uuid>>),
    total: i64,
    resources: Vec<Value>,
    included: Vec<Value>,
) -> Response {
    let (this, next) = links(s, path, pages.0, pages.1);
    fhir_json(&fhir::searchset(
        resources,
        included,
        &fhir::Search {
            public: s.public_url.as_deref(),
            self_link: &this,
            next_link: next.as_deref(),
            total,
        },
        chrono::Utc::now(),
    ))
}

/// The search parameters of `GET /fhir/DiagnosticReport` ([`fhir::REPORT_SEARCH_PARAMS`]).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportSearch {
    /// The patient, by the ledger's id: a UUID, or `Patient/<uuid>`.
    #[schemars(extend("pattern" = PATIENT_PATTERN))]
    pub patient: String,
    /// How many to send, the most recently placed order first: 1 to 1000 (default 100).
    /// `Bundle.total` says how many match in all; a `next` link leads on.
    #[serde(rename = "_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,
    /// Where the page starts, as a Bundle's `next` link gives it.
    #[serde(rename = "_page")]
    #[schemars(extend("pattern" = PAGE_PATTERN))]
    pub page: Option<String>,
    /// `DiagnosticReport:result`: the reports' Observations in the same Bundle.
    #[serde(rename = "_include")]
    #[schemars(extend("enum" = [INCLUDE_RESULTS]))]
    pub include: Option<String>,
}

/// The one `_include` served.
const INCLUDE_RESULTS: &str = "DiagnosticReport:result";

/// `orders` as `DiagnosticReport`s, in their order: each with its tests and every one of
/// its results (a report's status needs those not yet released too), read in two
/// statements for them all; with them, if `include`, the Observations they refer to
/// (those released, withdrawn ones included).
async fn reports(
    s: &AppState,
    orders: &[OrderFound],
    include: bool,
) -> Result<(Vec<Value>, Vec<Value>), Problem> {
    let ids: Vec<uuid::Uuid> = orders.iter().map(|o| o.order.order_id).collect();
    let tests: Vec<fhir::OrderTest> = sqlx::query_as(
        "SELECT order_id, test_code, cancelled_at IS NOT NULL AS cancelled
           FROM proj_orders.order_tests WHERE order_id = ANY ($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    let patients: Vec<uuid::Uuid> = orders.iter().map(|o| o.order.patient_id).collect();
    // By patient as well as order: the results model's index is by patient.
    let results: Vec<Found> = sqlx::query_as(result_rows!(
        "r.patient_id = ANY ($1) AND r.order_id = ANY ($3)",
        "true",
        " ORDER BY r.collected_at, r.test_code, r.result_id"
    ))
    .bind(&patients)
    .bind(false)
    .bind(&ids)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    let reports = orders
        .iter()
        .map(|o| {
            let id = o.order.order_id;
            let tests: Vec<&fhir::OrderTest> = tests.iter().filter(|t| t.order_id == id).collect();
            let results: Vec<&ResultRow> = results
                .iter()
                .map(|f| &f.row)
                .filter(|r| r.order_id == id)
                .collect();
            fhir::diagnostic_report(&o.order, &tests, &results)
        })
        .collect();
    let referred = results
        .iter()
        .filter(|f| include && f.row.released_at.is_some())
        .map(|f| fhir::observation(&f.row))
        .collect();
    Ok((reports, referred))
}

#[derive(sqlx::FromRow)]
struct OrderFound {
    #[sqlx(flatten)]
    order: fhir::OrderRow,
    total: i64,
}

/// The orders matching `$where` as [`fhir::OrderRow`]s (for reports) or
/// [`crate::fhir_orders::RequestRow`]s (for requests): those on the page (`$page`, then
/// `$tail`), each with the count of every match.
macro_rules! order_rows {
    ($where:literal, $page:literal, $tail:literal) => {
        concat!(
            "WITH m AS (SELECT * FROM proj_orders.orders WHERE ",
            $where,
            ")
             SELECT order_id, order_number, patient_id, priority, ordering_clinician,
                    collection_site, status, placed_at, updated_at, (SELECT count(*) FROM m) AS total
               FROM m WHERE ",
            $page,
            $tail
        )
    };
}

/// One order's report, as released so far.
pub async fn report(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadResults)?;
    let id = super::commands::id(&raw, OrderId::parse, "DiagnosticReport")?;
    let order: Option<OrderFound> = sqlx::query_as(order_rows!("order_id = $1", "true", ""))
        .bind(id.as_uuid())
        .fetch_optional(&mut *connection(&s.pool).await?)
        .await?;
    let order = order.ok_or_else(|| Problem::not_found(format!("no DiagnosticReport {raw}")))?;
    let (mut one, _) = reports(&s, std::slice::from_ref(&order), false).await?;
    Ok(fhir_json(&one.remove(0)))
}

/// A patient's reports, one per order, the most recently placed first.
pub async fn search_reports(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<ReportSearch>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadResults)?;
    let mut errors = Vec::new();
    let patient = patient_param(&q.patient, &mut errors);
    let count = count_param(q.count, &mut errors);
    let page = page_param(q.page.as_deref(), &mut errors);
    let include = match q.include.as_deref() {
        None => false,
        Some(INCLUDE_RESULTS) => true,
        Some(_) => {
            errors.push(FieldProblem {
                pointer: "/_include".into(),
                detail: format!("_include may only be {INCLUDE_RESULTS}"),
            });
            false
        }
    };
    let patient = match patient {
        Some(p) if errors.is_empty() => p,
        _ => return Err(Problem::invalid(errors)),
    };
    let orders: Vec<OrderFound> = sqlx::query_as(order_rows!(
        "patient_id = $1",
        "($3::timestamptz IS NULL OR (placed_at, order_id) < ($3, $4::uuid))",
        " ORDER BY placed_at DESC, order_id DESC LIMIT $2"
    ))
    .bind(patient.as_uuid())
    .bind(i64::from(count) + 1)
    .bind(page.map(|c| c.at))
    .bind(page.map(|c| c.key))
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    let count_all =
        sqlx::query_scalar("SELECT count(*) FROM proj_orders.orders WHERE patient_id = $1")
            .bind(patient.as_uuid());
    let count_all = async { count_all.fetch_one(&mut *connection(&s.pool).await?).await };
    let total = total(orders.first().map(|o| o.total), page.is_some(), count_all).await?;
    let (orders, next) = cursor::page(orders, count as usize, |o| Cursor {
        at: o.order.placed_at,
        key: o.order.order_id,
    });
    let mut base = format!(
        "/fhir/DiagnosticReport?patient=Patient/{}&_count={count}",
        patient.as_uuid()
    );
    if include {
        base.push_str(&format!("&_include={INCLUDE_RESULTS}"));
    }
    let (resources, referred) = reports(&s, &orders, include).await?;
    Ok(bundle(&s, &base, (page, next), total, resources, referred))
}

/// What a look-up of one patient found.
enum Lookup {
    Found(Value),
    Missing,
    Erased(chrono::DateTime<chrono::Utc>),
}

/// The patient as a `Patient`, as the caller may see them (`privacy::view_for`: clear
/// for those who care for them, masked for auditors and admins, an auditor's
/// break-glass read logged first).
async fn patient_resource(
    s: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    id: PatientId,
) -> Result<Lookup, Problem> {
    let status = s
        .ledger
        .vault()
        .status(id)
        .await
        .map_err(lis_commands::CommandError::from)?;
    match status {
        None => return Ok(Lookup::Missing),
        Some(KeyStatus::Erased { at }) => return Ok(Lookup::Erased(at)),
        Some(KeyStatus::Active) => {}
    }
    let view = privacy::view_for(s, caller, headers, &format!("fhir/Patient/{id}")).await?;
    let latest: Option<(Value, Option<String>)> = sqlx::query_as(
        "SELECT payload -> 'OrderPlaced' -> 'identity', payload -> 'OrderPlaced' ->> 'sex' FROM events
          WHERE event_type = 'OrderPlaced' AND payload -> 'OrderPlaced' ->> 'patient_id' = $1
          ORDER BY position DESC LIMIT 1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *connection(&s.pool).await?)
    .await?;
    let Some((sealed, sex)) = latest else {
        return Ok(Lookup::Missing);
    };
    let sealed: Sealed = serde_json::from_value(sealed).map_err(|e| {
        tracing::error!(error = %e, patient = %id, "a stored identity is not a sealed value");
        Problem::internal()
    })?;
    let identity = privacy::render(s, id, &sealed, view).await?;
    Ok(Lookup::Found(fhir::patient(
        id.as_uuid(),
        sex.as_deref(),
        &identity,
    )))
}

/// One patient, by the ledger's id; an erased one is gone (410).
pub async fn patient(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadOrders)?;
    let id = super::commands::id(&raw, PatientId::parse, "Patient")?;
    match patient_resource(&s, &caller, &headers, id).await? {
        Lookup::Found(p) => Ok(fhir_json(&p)),
        Lookup::Missing => Err(Problem::not_found(format!("no Patient {raw}"))),
        Lookup::Erased(at) => Err(privacy::erased(id, at)),
    }
}

/// The search parameters of `GET /fhir/Patient` ([`fhir::PATIENT_SEARCH_PARAMS`]).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientSearch {
    /// The patient's medical record number, as the lab was given it (any case), alone:
    /// not `system|value`.
    #[schemars(with = "lis_domain::patient::Mrn")]
    pub identifier: String,
}

/// The patient with a medical record number: a clinician's system finds the ledger's id
/// of its own patient here, to ask for their results. No patient is made by asking.
///
/// Finding a patient by MRN ties a known person to their record, so it is for those who
/// see identity in clear: auditors only with a break-glass reason (logged with the
/// patient found), admins not at all.
pub async fn search_patients(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Params(q): Params<PatientSearch>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadOrders)?;
    privacy::require_clear(&caller, &headers, "find patients by MRN")?;
    let bad = |detail: String| {
        Problem::invalid(vec![FieldProblem {
            pointer: "/identifier".into(),
            detail,
        }])
    };
    // As the schema has it: no spaces around (the parser would trim them).
    if q.identifier.trim() != q.identifier {
        return Err(bad("identifier must not begin or end with a space".into()));
    }
    let mrn = Mrn::parse(&q.identifier).map_err(|e| bad(e.message))?;
    let id = s
        .ledger
        .vault()
        .find_pseudonym(&mrn)
        .await
        .map_err(lis_commands::CommandError::from)?;
    // Erased in between (erasure removes the MRN's pseudonym): no match.
    let found = match id {
        Some(id) => match patient_resource(&s, &caller, &headers, id).await? {
            Lookup::Found(p) => Some(p),
            Lookup::Missing | Lookup::Erased(_) => None,
        },
        None => None,
    };
    let found: Vec<Value> = found.into_iter().collect();
    let total = found.len() as i64;
    // The MRN is not repeated in the link: it is identity.
    Ok(bundle(
        &s,
        "/fhir/Patient",
        (None, None),
        total,
        found,
        Vec::new(),
    ))
}
