//! Patient identity over HTTP: who sees it, how much, and erasure.
//!
//! Identity is stored sealed (docs/privacy.md); a response opens it only as far as the
//! caller's role needs ([`view_for`]): the roles that care for the patient see it whole,
//! auditors and admins see it masked — an auditor may see it whole by giving a
//! break-glass reason in the `Break-Glass-Reason` header, which is logged (append-only
//! `break_glass_log`, and a warning in the service log) before anything is revealed —
//! and analysts never see it. An erased patient's identity reads `[erased]` for everyone.
//!
//! - `GET /patients/{id}`: the patient's identity as last given on an order, and whether
//!   they are erased;
//! - `POST /patients/{id}/erase` (admin): crypto-shredding erasure with a reason.

use super::auth::{Action, Caller};
use super::commands::{id, idempotent, outcome};
use super::problem::{pointer_token, FieldProblem, Problem};
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use lis_commands::connection::connection;
use lis_commands::keys::vault::KeyStatus;
use lis_commands::keys::Opened;
use lis_domain::actor::Role;
use lis_domain::ids::PatientId;
use lis_domain::patient::PatientIdentity;
use lis_domain::sealed::{Sealed, SealedKind};
use lis_domain::text::{Note, Reason};
use serde::Deserialize;
use serde_json::{json, Value};

/// The header an auditor sends, with a reason, to see identity unmasked.
pub const BREAK_GLASS: &str = "break-glass-reason";
/// What an erased patient's identity reads as.
pub const ERASED: &str = "[erased]";

/// How much of a patient's identity a response may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityView {
    Clear,
    Masked,
    Hidden,
}

/// The answer for a patient who was erased at `at` (410): nothing of them is left to read.
pub fn erased(patient: PatientId, at: chrono::DateTime<chrono::Utc>) -> Problem {
    Problem::new(StatusCode::GONE, "erased", "The patient was erased")
        .detail(format!("patient {patient} was erased at {at}"))
}

/// Refuses (403) a caller who would see identity masked or hidden what ties a known
/// person to their record, which is for those who see identity in clear: an auditor
/// only giving a break-glass reason (logged when the identity is read).
pub fn require_clear(caller: &Caller, headers: &HeaderMap, what: &str) -> Result<(), Problem> {
    let role = caller.actor.role;
    match planned_view(role, headers.contains_key(BREAK_GLASS))? {
        IdentityView::Clear => Ok(()),
        _ => Err(Problem::forbidden(format!(
            "role {role} may not {what}: it sees identity masked (an auditor may, giving a Break-Glass-Reason, which is logged)"
        ))),
    }
}

/// The view `role` gets, with or without a break-glass reason given (not yet checked or
/// logged): what [`view_for`] will grant.
pub fn planned_view(role: Role, glass: bool) -> Result<IdentityView, Problem> {
    match role {
        Role::Reception
        | Role::Phlebotomist
        | Role::Technologist
        | Role::Pathologist
        | Role::Clinician => Ok(IdentityView::Clear),
        Role::Auditor if glass => Ok(IdentityView::Clear),
        Role::Auditor => Ok(IdentityView::Masked),
        _ if glass => Err(Problem::forbidden(format!(
            "role {role} may not break glass; only auditors may, with a reason"
        ))),
        Role::Admin => Ok(IdentityView::Masked),
        _ => Ok(IdentityView::Hidden),
    }
}

/// The view of `caller` (logging a break-glass request before granting it).
pub async fn view_for(
    s: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    resource: &str,
) -> Result<IdentityView, Problem> {
    let glass = headers
        .get(BREAK_GLASS)
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let role = caller.actor.role;
    let view = planned_view(role, glass.is_some())?;
    match (role, glass) {
        (Role::Auditor, Some(raw)) => {
            let reason = Reason::parse(&raw).map_err(|e| {
                Problem::invalid(vec![FieldProblem {
                    pointer: "/headers/break-glass-reason".into(),
                    detail: e.message,
                }])
            })?;
            sqlx::query(
                "INSERT INTO break_glass_log (actor_id, actor_role, reason, resource, request_id)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(caller.actor.id.as_str())
            .bind(role.as_str())
            .bind(reason.as_str())
            .bind(resource)
            .bind(caller.context.correlation_id.to_string())
            .execute(&mut *connection(&s.pool).await?)
            .await?;
            tracing::warn!(actor = %caller.actor.id, resource, reason = reason.as_str(), "break-glass: identity shown unmasked");
            Ok(IdentityView::Clear)
        }
        _ => Ok(view),
    }
}

/// Keeps the first character of each word: `Asha Verma` → `A*** V****`.
fn mask_words(text: &str) -> String {
    text.split_whitespace()
        .map(|w| {
            let mut chars = w.chars();
            let first = chars.next().map(String::from).unwrap_or_default();
            first + &"*".repeat(chars.count())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Keeps the last `keep` characters: `MRN-1001` → `*****001`.
fn mask_tail(text: &str, keep: usize) -> String {
    let n = text.chars().count();
    text.chars()
        .enumerate()
        .map(|(i, c)| if i + keep >= n || c == '-' { c } else { '*' })
        .collect()
}

/// The identity as `view` shows it.
pub fn render_identity(identity: &PatientIdentity, view: IdentityView) -> Value {
    match view {
        IdentityView::Clear => serde_json::to_value(identity).unwrap_or(Value::Null),
        IdentityView::Masked => json!({
            "mrn": mask_tail(identity.mrn.as_str(), 3),
            "abha_number": identity.abha_number.as_ref().map(|a| mask_tail(a.as_str(), 4)),
            "name": mask_words(identity.name.as_str()),
            "date_of_birth": identity.date_of_birth.format("%Y-**-**").to_string(),
            "phone": identity.phone.as_ref().map(|p| mask_tail(p.as_str(), 2)),
            "address": identity.address.as_ref().map(|_| "[masked]"),
            "masked": true,
        }),
        IdentityView::Hidden => json!("[hidden]"),
    }
}

/// Opens one sealed value of `patient` for `view`.
pub(super) async fn render(
    s: &AppState,
    patient: PatientId,
    sealed: &Sealed,
    view: IdentityView,
) -> Result<Value, Problem> {
    if view == IdentityView::Hidden {
        return Ok(json!("[hidden]"));
    }
    let opened = match sealed.kind {
        SealedKind::PatientIdentity => s
            .ledger
            .vault()
            .open::<PatientIdentity>(patient, sealed)
            .await
            .map(|o| match o {
                Opened::Clear(identity) => render_identity(&identity, view),
                Opened::Erased => json!(ERASED),
            }),
        SealedKind::ClinicalNotes => {
            s.ledger
                .vault()
                .open::<Note>(patient, sealed)
                .await
                .map(|o| match (o, view) {
                    (Opened::Erased, _) => json!(ERASED),
                    (Opened::Clear(note), IdentityView::Clear) => json!(note.as_str()),
                    (Opened::Clear(_), _) => json!("[masked]"),
                })
        }
    };
    opened.map_err(|e| match e {
        // The key could not be read: the database being away is a 503, as elsewhere.
        lis_commands::keys::KeyError::Database(e) => {
            tracing::warn!(error = %e, patient = %patient, "patient key unreadable");
            Problem::from(e)
        }
        e => {
            tracing::error!(error = %e, patient = %patient, "sealed value cannot be opened");
            Problem::internal()
        }
    })
}

/// Replaces every sealed value in `value` — an object member beside a `patient_id` —
/// with what `view` may show of it.
pub async fn reveal(s: &AppState, value: &mut Value, view: IdentityView) -> Result<(), Problem> {
    let mut found = Vec::new();
    collect(value, String::new(), &mut found);
    for (pointer, patient, sealed) in found {
        let shown = render(s, patient, &sealed, view).await?;
        if let Some(slot) = value.pointer_mut(&pointer) {
            *slot = shown;
        }
    }
    Ok(())
}

fn collect(value: &Value, at: String, out: &mut Vec<(String, PatientId, Sealed)>) {
    match value {
        Value::Object(map) => {
            let patient = map
                .get("patient_id")
                .and_then(Value::as_str)
                .and_then(|p| PatientId::parse(p).ok());
            for (k, v) in map {
                let here = format!("{at}/{}", pointer_token(k));
                // Only a member beside a patient id that looks sealed is decoded (no copy of
                // every subtree on the way down).
                let sealed = patient
                    .filter(|_| v.get("ciphertext").is_some())
                    .and_then(|p| Some((p, serde_json::from_value::<Sealed>(v.clone()).ok()?)));
                match sealed {
                    Some((p, sealed)) => out.push((here, p, sealed)),
                    None => collect(v, here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A patient: their identity as last given on an order (as the caller may see it) and
/// whether they have been erased.
pub async fn patient(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadOrders)?;
    let id = id(&raw, PatientId::parse, "patient")?;
    let status = s
        .ledger
        .vault()
        .status(id)
        .await
        .map_err(lis_commands::CommandError::from)?
        .ok_or_else(|| Problem::not_found(format!("no patient {raw}")))?;
    let view = view_for(&s, &caller, &headers, &format!("patients/{id}")).await?;
    let identity: Option<Value> = sqlx::query_scalar(
        "SELECT payload -> 'OrderPlaced' -> 'identity' FROM events
          WHERE event_type = 'OrderPlaced' AND payload -> 'OrderPlaced' ->> 'patient_id' = $1
          ORDER BY position DESC LIMIT 1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *connection(&s.pool).await?)
    .await?;
    let mut body = json!({
        "patient_id": id,
        "erased": matches!(status, KeyStatus::Erased { .. }),
        "erased_at": match status { KeyStatus::Erased { at } => Some(at), KeyStatus::Active => None },
        "identity": identity,
    });
    reveal(&s, &mut body, view).await?;
    Ok(Json(body))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EraseBody {
    reason: Reason,
}

/// Erases a patient (admin only): destroys their key, records `PatientErased`.
pub async fn erase(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    caller.require(Action::ErasePatients)?;
    super::commands::no_if_match(&headers)?;
    let id = id(&raw, PatientId::parse, "patient")?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::OK, async {
            let b: EraseBody = super::body::parse(&body)?;
            let done = s
                .ledger
                .erase_patient(id, b.reason, &caller.context)
                .await?;
            Ok(outcome(&done))
        })
        .await,
    )
}
