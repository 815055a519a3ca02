//! HL7 v2.5.1 for hospital information systems: `GET /hl7/orders/{id}/oru`, an order's
//! results as an `ORU^R01` message (mapped by [`crate::hl7`]) for an interface engine
//! to fetch and pass on. Only what clinicians may see is sent: released results, and
//! those withdrawn after release as deleted.
//!
//! The message names the patient (PID), so it is for those who see identity in clear
//! and read results: technologists, pathologists, clinicians, and an auditor who gives a
//! `Break-Glass-Reason` (logged first).

use super::auth::{Action, Caller};
use super::privacy;
use super::problem::Problem;
use super::AppState;
use crate::fhir::ResultRow;
use crate::hl7;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use lis_commands::connection::connection;
use lis_commands::keys::vault::{KeyStatus, Opened};
use lis_domain::ids::{OrderId, PatientId};
use lis_domain::patient::PatientIdentity;
use lis_domain::sealed::Sealed;

/// The order's released results as an `ORU^R01` message.
pub async fn oru(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Action::ReadResults)?;
    privacy::require_clear(
        &caller,
        &headers,
        "fetch HL7 results, which name the patient",
    )?;
    let id = super::commands::id(&raw, OrderId::parse, "order")?;
    // The order as placed, from the store itself: its patient, and the identity as the
    // order gave it (an erased patient's orders are gone from the read models, not
    // from here).
    type Placed = (serde_json::Value, Option<String>, Option<String>);
    let placed: Option<Placed> = sqlx::query_as(
        "SELECT payload -> 'OrderPlaced' -> 'identity', payload -> 'OrderPlaced' ->> 'sex',
                payload -> 'OrderPlaced' ->> 'patient_id'
           FROM events WHERE aggregate_type = 'Order' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *connection(&s.pool).await?)
    .await?;
    let Some((sealed, sex, Some(patient))) = placed else {
        return Err(Problem::not_found(format!("no order {raw}")));
    };
    let patient = PatientId::parse(&patient).map_err(|_| {
        tracing::error!(order = %id, "an order's patient id is not a UUID");
        Problem::internal()
    })?;
    let vault = s.ledger.vault();
    if let Some(KeyStatus::Erased { at }) = vault
        .status(patient)
        .await
        .map_err(lis_commands::CommandError::from)?
    {
        return Err(privacy::erased(patient, at));
    }
    type OrderRow = (
        uuid::Uuid,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        String,
    );
    let order: Option<OrderRow> = sqlx::query_as(
        "SELECT order_id, order_number, ordering_clinician, placed_at, status
           FROM proj_orders.orders WHERE order_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut *connection(&s.pool).await?)
    .await?;
    let Some((order_id, order_number, clinician, placed_at, order_status)) = order else {
        return Err(Problem::not_found(format!(
            "order {raw} is not in the orders model yet"
        )));
    };
    let patient_id = patient.as_uuid();
    let rows: Vec<ResultRow> = sqlx::query_as(result_rows!(
        "r.patient_id = $1 AND r.order_id = $3",
        "true",
        " ORDER BY r.collected_at, r.test_code, r.result_id"
    ))
    .bind(patient_id)
    .bind(true)
    .bind(order_id)
    .fetch_all(&mut *connection(&s.pool).await?)
    .await?;
    let sent = hl7::sent(&rows);
    if sent.is_empty() {
        return Err(Problem::not_found(format!(
            "nothing of order {raw} has been released yet"
        )));
    }
    // Complete as its ServiceRequest is: nothing of it still to come.
    let tests = super::fhir_orders::requested_tests(&s, &[order_id]).await?;
    let tests: Vec<&crate::fhir_orders::RequestedTest> = tests.iter().collect();
    let complete = crate::fhir_orders::request_status(&order_status, &tests) != "active";
    // The identity, opened only once the caller may see it (an auditor's break-glass
    // read is logged here).
    privacy::view_for(&s, &caller, &headers, &format!("hl7/orders/{order_id}/oru")).await?;
    let sealed: Sealed = serde_json::from_value(sealed).map_err(|e| {
        tracing::error!(error = %e, order = %order_id, "a stored identity is not a sealed value");
        Problem::internal()
    })?;
    let identity = match vault.open::<PatientIdentity>(patient, &sealed).await {
        Ok(Opened::Clear(identity)) => identity,
        Ok(Opened::Erased) => return Err(privacy::erased(patient, chrono::Utc::now())),
        Err(e) => {
            tracing::error!(error = %e, patient = %patient, "identity cannot be opened");
            return Err(Problem::internal());
        }
    };
    let message = hl7::oru_r01(
        &hl7::Patient {
            id: patient_id,
            mrn: identity.mrn.as_str(),
            name: identity.name.as_str(),
            date_of_birth: identity.date_of_birth,
            sex: sex.as_deref().unwrap_or("unknown"),
        },
        &hl7::Order {
            order_id,
            order_number: &order_number,
            ordering_clinician: &clinician,
            placed_at,
        },
        &sent,
        complete,
        // MSH-10 is at most 20 characters: 16 hex digits of a random id.
        &uuid::Uuid::new_v4().simple().to_string()[..16],
        chrono::Utc::now(),
    );
    Ok(([(header::CONTENT_TYPE, hl7::MEDIA_TYPE)], message).into_response())
}
