//! The FHIR R4 read interface for what was asked for and what was drawn: orders as
//! `ServiceRequest`s (read, and searched by patient and order number) with the
//! permission of `GET /orders/{id}`, and specimens as `Specimen`s (read, and searched by
//! patient or accession number) with that of `GET /samples/{id}`; read from the orders
//! and specimens models and mapped by [`crate::fhir_orders`]. Parameters and paging as
//! the results' ([`super::fhir`]): an unsupported parameter is refused, not ignored.

use super::auth::{Action, Caller};
use super::cursor::{self, Cursor};
use super::fhir::{bundle, fhir_json, total};
use super::fhir_search::{count_param, page_param, patient_param, PAGE_PATTERN, PATIENT_PATTERN};
use super::params::Params;
use super::problem::{FieldProblem, Problem};
use super::AppState;
use crate::fhir_orders::{self as map, RequestRow, RequestedTest, SpecimenRow};
use axum::extract::{Path, State};
use axum::response::Response;
use lis_commands::connection::connection;
use lis_domain::ids::{AccessionNumber, OrderId, OrderNumber, SampleId};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

/// A parameter as its parser took it, else a problem at `pointer` in `errors`.
fn parsed<T>(
    result: Result<T, lis_domain::validation::FieldError>,
    pointer: &str,
    errors: &mut Vec<FieldProblem>,
) -> Option<T> {
    result
        .map_err(|e| {
            errors.push(FieldProblem {
                pointer: pointer.into(),
                detail: e.message,
            })
        })
        .ok()
}

#[derive(sqlx::FromRow)]
struct RequestFound {
    #[sqlx(flatten)]
    order: RequestRow,
    total: i64,
}

/// The tests of the orders `ids`, each at its stage (the orders model's
/// `order_test_status`), with the catalogue's LOINC code and name.
pub(super) async fn requested_tests(
    s: &AppState,
    ids: &[Uuid],
) -> Result<Vec<RequestedTest>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.order_id, s.test_code, c.loinc, c.name, s.stage, s.stage_since, s.cancelled_reason
           FROM proj_orders.order_test_status s
           LEFT JOIN catalogue_tests c ON c.version = s.catalogue_version AND c.code = s.test_code
          WHERE s.order_id = ANY ($1)
          ORDER BY s.ordered_at, s.test_code",
    )
    .bind(ids)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await
}

/// `orders` as `ServiceRequest`s, in their order, with their tests at their stages and
/// the tubes drawn for them, read in two statements for them all.
async fn requests(s: &AppState, orders: &[RequestFound]) -> Result<Vec<Value>, Problem> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order.order_id).collect();
    let tests = requested_tests(s, &ids).await?;
    let tubes: Vec<(Uuid, Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT order_id, sample_id, updated_at FROM proj_specimens.specimens WHERE order_id = ANY ($1)
          ORDER BY collected_at, parent_id IS NOT NULL, accession_number",
    )
    .bind(&ids)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    Ok(orders
        .iter()
        .map(|o| {
            let id = o.order.order_id;
            let tests: Vec<&RequestedTest> = tests.iter().filter(|t| t.order_id == id).collect();
            let tubes: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> = tubes
                .iter()
                .filter(|(order, _, _)| *order == id)
                .map(|(_, tube, at)| (*tube, *at))
                .collect();
            map::service_request(&o.order, &tests, &tubes)
        })
        .collect())
}

/// One order as a `ServiceRequest`.
pub async fn service_request(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadOrders)?;
    let id = super::commands::id(&raw, OrderId::parse, "ServiceRequest")?;
    let order: Option<RequestFound> = sqlx::query_as(order_rows!("order_id = $1", "true", ""))
        .bind(id.as_uuid())
        .fetch_optional(&mut *connection(&s.pool).await?)
        .await?;
    let order = order.ok_or_else(|| Problem::not_found(format!("no ServiceRequest {raw}")))?;
    let mut one = requests(&s, std::slice::from_ref(&order)).await?;
    Ok(fhir_json(&one.remove(0)))
}

/// The search parameters of `GET /fhir/ServiceRequest` ([`map::REQUEST_SEARCH_PARAMS`]).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSearch {
    /// The patient, by the ledger's id: a UUID, or `Patient/<uuid>`.
    #[schemars(extend("pattern" = PATIENT_PATTERN))]
    pub patient: String,
    /// The order number the lab gave the order (any case).
    #[schemars(with = "Option<OrderNumber>")]
    pub requisition: Option<String>,
    /// How many to send, the most recently placed first: 1 to 1000 (default 100).
    /// `Bundle.total` says how many match in all; a `next` link leads on.
    #[serde(rename = "_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,
    /// Where the page starts, as a Bundle's `next` link gives it.
    #[serde(rename = "_page")]
    #[schemars(extend("pattern" = PAGE_PATTERN))]
    pub page: Option<String>,
}

/// A patient's orders as `ServiceRequest`s, the most recently placed first.
pub async fn search_service_requests(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<RequestSearch>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadOrders)?;
    let mut errors = Vec::new();
    let patient = patient_param(&q.patient, &mut errors);
    let count = count_param(q.count, &mut errors);
    let page = page_param(q.page.as_deref(), &mut errors);
    let requisition = q
        .requisition
        .as_deref()
        .and_then(|r| parsed(OrderNumber::parse(r), "/requisition", &mut errors))
        .map(|n| n.as_str().to_string());
    let patient = match patient {
        Some(p) if errors.is_empty() => p,
        _ => return Err(Problem::invalid(errors)),
    };
    let orders: Vec<RequestFound> = sqlx::query_as(order_rows!(
        "patient_id = $1 AND ($5::text IS NULL OR order_number = $5)",
        "($3::timestamptz IS NULL OR (placed_at, order_id) < ($3, $4::uuid))",
        " ORDER BY placed_at DESC, order_id DESC LIMIT $2"
    ))
    .bind(patient.as_uuid())
    .bind(i64::from(count) + 1)
    .bind(page.map(|c| c.at))
    .bind(page.map(|c| c.key))
    .bind(&requisition)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    let count_all = sqlx::query_scalar(
        "SELECT count(*) FROM proj_orders.orders
          WHERE patient_id = $1 AND ($2::text IS NULL OR order_number = $2)",
    )
    .bind(patient.as_uuid())
    .bind(&requisition);
    let count_all = async { count_all.fetch_one(&mut *connection(&s.pool).await?).await };
    let total = total(orders.first().map(|o| o.total), page.is_some(), count_all).await?;
    let (orders, next) = cursor::page(orders, count as usize, |o| Cursor {
        at: o.order.placed_at,
        key: o.order.order_id,
    });
    let mut base = format!(
        "/fhir/ServiceRequest?patient=Patient/{}&_count={count}",
        patient.as_uuid()
    );
    if let Some(r) = &requisition {
        base.push_str(&format!("&requisition={r}"));
    }
    let resources = requests(&s, &orders).await?;
    Ok(bundle(
        &s,
        &base,
        (page, next),
        total,
        resources,
        Vec::new(),
    ))
}

#[derive(sqlx::FromRow)]
struct SpecimenFound {
    #[sqlx(flatten)]
    specimen: SpecimenRow,
    total: i64,
}

/// The specimens matching `$where` (over `s`, the specimens model, and `o`, their
/// orders) as [`SpecimenRow`]s: those on the page (`$page`, then `$tail`), each with the
/// count of every match.
macro_rules! specimen_rows {
    ($where:literal, $page:literal, $tail:literal) => {
        concat!(
            "WITH m AS (SELECT s.*, o.patient_id FROM proj_specimens.specimens s
                          JOIN proj_orders.orders o ON o.order_id = s.order_id WHERE ",
            $where,
            ")
             SELECT sample_id, accession_number, order_id, patient_id, specimen_type, container,
                    status, collected_by, collected_at, received_at, condition, rejection_reason,
                    rejection_detail, recollection_requested, parent_id, disposed_at, updated_at,
                    (SELECT count(*) FROM m) AS total
               FROM m WHERE ",
            $page,
            $tail
        )
    };
}

/// One tube or aliquot as a `Specimen`.
pub async fn specimen(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadSamples)?;
    let id = super::commands::id(&raw, SampleId::parse, "Specimen")?;
    let found: Option<SpecimenFound> =
        sqlx::query_as(specimen_rows!("s.sample_id = $1", "true", ""))
            .bind(id.as_uuid())
            .fetch_optional(&mut *connection(&s.pool).await?)
            .await?;
    match found {
        Some(f) => Ok(fhir_json(&map::specimen(&f.specimen))),
        None => Err(Problem::not_found(format!("no Specimen {raw}"))),
    }
}

/// The search parameters of `GET /fhir/Specimen` ([`map::SPECIMEN_SEARCH_PARAMS`]).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecimenSearch {
    /// The patient, by the ledger's id: a UUID, or `Patient/<uuid>`; this or
    /// `accession` is required.
    #[schemars(extend("pattern" = PATIENT_PATTERN))]
    pub patient: Option<String>,
    /// The tube's accession number (its barcode).
    #[schemars(with = "Option<AccessionNumber>")]
    pub accession: Option<String>,
    /// How many to send, the most recently collected first: 1 to 1000 (default 100).
    /// `Bundle.total` says how many match in all; a `next` link leads on.
    #[serde(rename = "_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,
    /// Where the page starts, as a Bundle's `next` link gives it.
    #[serde(rename = "_page")]
    #[schemars(extend("pattern" = PAGE_PATTERN))]
    pub page: Option<String>,
}

/// A patient's specimens, or the one with an accession number, as `Specimen`s, the most
/// recently collected first.
pub async fn search_specimens(
    State(s): State<AppState>,
    caller: Caller,
    Params(q): Params<SpecimenSearch>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadSamples)?;
    let mut errors = Vec::new();
    let patient = q
        .patient
        .as_deref()
        .and_then(|p| patient_param(p, &mut errors));
    let accession = q
        .accession
        .as_deref()
        .and_then(|a| parsed(AccessionNumber::parse(a), "/accession", &mut errors));
    if q.patient.is_none() && q.accession.is_none() {
        errors.push(FieldProblem {
            pointer: "/patient".into(),
            detail: "give the patient, or the accession number of a tube".into(),
        });
    }
    let count = count_param(q.count, &mut errors);
    let page = page_param(q.page.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let patient = patient.map(|p| p.as_uuid());
    let accession = accession.map(|a| a.as_str().to_string());
    let found: Vec<SpecimenFound> = sqlx::query_as(specimen_rows!(
        "($1::uuid IS NULL OR o.patient_id = $1) AND ($5::text IS NULL OR s.accession_number = $5)",
        "($3::timestamptz IS NULL OR (collected_at, sample_id) < ($3, $4::uuid))",
        " ORDER BY collected_at DESC, sample_id DESC LIMIT $2"
    ))
    .bind(patient)
    .bind(i64::from(count) + 1)
    .bind(page.map(|c| c.at))
    .bind(page.map(|c| c.key))
    .bind(&accession)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    let count_all = sqlx::query_scalar(
        "SELECT count(*) FROM proj_specimens.specimens s
           JOIN proj_orders.orders o ON o.order_id = s.order_id
          WHERE ($1::uuid IS NULL OR o.patient_id = $1)
            AND ($2::text IS NULL OR s.accession_number = $2)",
    )
    .bind(patient)
    .bind(&accession);
    let count_all = async { count_all.fetch_one(&mut *connection(&s.pool).await?).await };
    let total = total(found.first().map(|f| f.total), page.is_some(), count_all).await?;
    let (found, next) = cursor::page(found, count as usize, |f| Cursor {
        at: f.specimen.collected_at,
        key: f.specimen.sample_id,
    });
    let mut base = format!("/fhir/Specimen?_count={count}");
    if let Some(p) = patient {
        base.push_str(&format!("&patient=Patient/{p}"));
    }
    if let Some(a) = &accession {
        base.push_str(&format!("&accession={a}"));
    }
    let resources = found.iter().map(|f| map::specimen(&f.specimen)).collect();
    Ok(bundle(
        &s,
        &base,
        (page, next),
        total,
        resources,
        Vec::new(),
    ))
}
