//! The ledger's results as HL7 FHIR R4 resources (4.0.1): an `Observation` per result,
//! a `DiagnosticReport` per order (what was released of it), the `Patient` they are of,
//! `searchset` `Bundle`s of them, and the server's `CapabilityStatement` (orders and
//! specimens: [`crate::fhir_orders`]).
//!
//! Pure mapping, no I/O: the HTTP handlers (`http::fhir`) read the results model and
//! hand each row here. What a clinician's system must not misread is the status: a
//! result the lab has not released is `preliminary`, a released one `final`, one changed
//! after release `amended`, and one withdrawn `entered-in-error`, which a clinician who
//! saw it released must still be shown.

use chrono::{DateTime, Utc};
use lis_domain::result::ResultStatus;
use lis_domain::value::ResultValue;
use serde_json::{json, Value};
use uuid::Uuid;

/// The FHIR version served.
pub const FHIR_VERSION: &str = "4.0.1";
/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json";

pub(crate) const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
/// Identifiers of the ledger's own objects (results, patients, specimens, orders) are
/// their UUIDs, written as URNs (RFC 4122), the form FHIR names for them.
pub(crate) const URI: &str = "urn:ietf:rfc:3986";

/// One row of the results model, as the handlers read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultRow {
    pub result_id: Uuid,
    pub sample_id: Uuid,
    pub order_id: Uuid,
    pub patient_id: Uuid,
    pub test_code: String,
    pub loinc: String,
    /// The test's name in the catalogue version the result was recorded under.
    pub test_name: Option<String>,
    pub collected_at: DateTime<Utc>,
    pub value: sqlx::types::Json<ResultValue>,
    pub flags: Vec<String>,
    pub reference_low: Option<f64>,
    pub reference_high: Option<f64>,
    pub reference_basis: String,
    pub specimen_note: Option<String>,
    pub status: sqlx::types::Json<ResultStatus>,
    pub amendments: i32,
    pub verified_by: Option<String>,
    pub released_by: Option<String>,
    pub released_at: Option<DateTime<Utc>>,
    pub retraction_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// The latest amendment's time, and the value it replaced.
    pub amended_at: Option<DateTime<Utc>>,
    pub previous_value: Option<sqlx::types::Json<ResultValue>>,
}

impl ResultRow {
    /// When this version of the result was made available to clinicians: its latest
    /// amendment, else its release.
    pub fn issued(&self) -> Option<DateTime<Utc>> {
        self.released_at.map(|r| self.amended_at.unwrap_or(r))
    }

    /// What a clinician's system shows beside the value, as FHIR and HL7 send it alike:
    /// the specimen's note, the delta flag, and how often the result was amended after
    /// release and the value it replaced.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(note) = &self.specimen_note {
            notes.push(format!("Specimen: {note}"));
        }
        if self.flags.iter().any(|f| f == "D") {
            notes.push("Delta check: changed more than the test's threshold since the previous released result".into());
        }
        if self.amendments > 0 {
            let before = self
                .previous_value
                .as_ref()
                .map(|v| format!("; the value before the latest amendment: {}", v.0))
                .unwrap_or_default();
            notes.push(format!(
                "Amended after release ({} time{}){before}",
                self.amendments,
                if self.amendments == 1 { "" } else { "s" }
            ));
        }
        notes
    }
}

/// `Observation.status` for a result in `status`, amended `amendments` times, released
/// or not. Retraction before release is `cancelled` (no one outside the lab saw it);
/// after release it is `entered-in-error`.
pub fn observation_status(status: ResultStatus, amendments: i32, released: bool) -> &'static str {
    match status {
        ResultStatus::Recorded | ResultStatus::Verified => "preliminary",
        ResultStatus::RerunRequested => "registered",
        ResultStatus::Released if amendments > 0 => "amended",
        ResultStatus::Released => "final",
        ResultStatus::Retracted if released => "entered-in-error",
        ResultStatus::Retracted => "cancelled",
    }
}

/// `Observation.interpretation`: the flags a lab prints (L, H, LL, HH) as the HL7 v3
/// codes of the same name; `N` for a numeric value inside its reference interval. The
/// delta flag says a change without its direction, which no v3 code does: it is left
/// to the note.
fn interpretation(flags: &[String], value: &ResultValue, has_range: bool) -> Option<Value> {
    let named = |code: &str| {
        let display = match code {
            "L" => "Low",
            "H" => "High",
            "LL" => "Critical low",
            "HH" => "Critical high",
            _ => "Normal",
        };
        json!({ "coding": [{ "system": INTERPRETATION, "code": code, "display": display }] })
    };
    let codes: Vec<Value> = flags
        .iter()
        .filter(|f| matches!(f.as_str(), "L" | "H" | "LL" | "HH"))
        .map(|f| named(f))
        .collect();
    if !codes.is_empty() {
        return Some(Value::Array(codes));
    }
    match value {
        ResultValue::Numeric { .. } if has_range => Some(json!([named("N")])),
        _ => None,
    }
}

fn quantity(value: f64, unit: &str) -> Value {
    json!({ "value": value, "unit": unit, "system": UCUM, "code": unit })
}

/// The patient a result or report is of: `Patient/{id}` (served here), and the ledger's
/// id as an identifier for a system that keeps references apart from ids.
pub(crate) fn subject(patient: Uuid) -> Value {
    json!({ "reference": format!("Patient/{patient}"), "type": "Patient",
            "identifier": { "system": URI, "value": format!("urn:uuid:{patient}") } })
}

pub(crate) fn by_user(user: &str) -> Value {
    json!({ "display": user })
}

/// The result as an R4 `Observation`.
pub fn observation(r: &ResultRow) -> Value {
    let status = observation_status(r.status.0, r.amendments, r.released_at.is_some());
    let mut code = json!({ "coding": [{ "system": LOINC, "code": r.loinc }] });
    code["text"] = json!(r.test_name.as_deref().unwrap_or(&r.test_code));
    let mut o = json!({
        "resourceType": "Observation",
        "id": r.result_id,
        "meta": { "lastUpdated": r.updated_at.to_rfc3339() },
        "identifier": [{ "system": URI, "value": format!("urn:uuid:{}", r.result_id) }],
        "basedOn": [{ "reference": format!("ServiceRequest/{}", r.order_id), "type": "ServiceRequest",
                      "identifier": { "system": URI, "value": format!("urn:uuid:{}", r.order_id) } }],
        "status": status,
        "category": [{ "coding": [{ "system": CATEGORY, "code": "laboratory", "display": "Laboratory" }] }],
        "code": code,
        "subject": subject(r.patient_id),
        "effectiveDateTime": r.collected_at.to_rfc3339(),
        "specimen": { "reference": format!("Specimen/{}", r.sample_id), "type": "Specimen",
                      "identifier": { "system": URI, "value": format!("urn:uuid:{}", r.sample_id) } },
    });
    if let Some(at) = r.issued() {
        o["issued"] = json!(at.to_rfc3339());
    }
    // Who released it (ISO 15189 7.4.1.2), then who verified it.
    let mut performers: Vec<&str> = [r.released_by.as_deref(), r.verified_by.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    performers.dedup();
    if !performers.is_empty() {
        o["performer"] = performers.into_iter().map(by_user).collect();
    }
    let mut notes = Vec::new();
    // A result awaiting a rerun, or withdrawn before release, has no value to read.
    if !matches!(status, "registered" | "cancelled") {
        value_and_range(&mut o, &mut notes, r);
    }
    notes.extend(r.notes().into_iter().map(|text| json!({ "text": text })));
    if let Some(reason) = &r.retraction_reason {
        notes.push(json!({ "text": format!("Retracted: {reason}") }));
    }
    if !notes.is_empty() {
        o["note"] = Value::Array(notes);
    }
    o
}

/// The value, its interpretation and the reference range it was judged against, onto
/// `o`; where no range applied, why not, into `notes`.
fn value_and_range(o: &mut Value, notes: &mut Vec<Value>, r: &ResultRow) {
    let unit = match &r.value.0 {
        ResultValue::Numeric { value, unit } => {
            o["valueQuantity"] = quantity(*value, unit);
            Some(unit.as_str())
        }
        ResultValue::Coded { answer } => {
            o["valueCodeableConcept"] = json!({ "text": answer });
            None
        }
    };
    let has_range = r.reference_low.is_some() || r.reference_high.is_some();
    if let Some(i) = interpretation(&r.flags, &r.value.0, has_range) {
        o["interpretation"] = i;
    }
    if !has_range {
        if matches!(r.value.0, ResultValue::Numeric { .. }) {
            notes.push(json!({ "text": format!("No reference range: {}", r.reference_basis) }));
        }
        return;
    }
    let unit_text = unit.map(|u| format!(" {u}")).unwrap_or_default();
    let text = match (r.reference_low, r.reference_high) {
        (Some(low), Some(high)) => format!("{low}–{high}{unit_text}"),
        (Some(low), None) => format!("≥ {low}{unit_text}"),
        (None, Some(high)) => format!("≤ {high}{unit_text}"),
        (None, None) => String::new(),
    };
    let mut range = json!({ "text": text, "appliesTo": [{ "text": r.reference_basis }] });
    for (key, bound) in [("low", r.reference_low), ("high", r.reference_high)] {
        if let Some(b) = bound {
            range[key] = match unit {
                Some(u) => quantity(b, u),
                None => json!({ "value": b }),
            };
        }
    }
    o["referenceRange"] = json!([range]);
}

/// An order as a report's header reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub order_number: String,
    pub patient_id: Uuid,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One test of an order, and whether it was cancelled.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderTest {
    pub order_id: Uuid,
    pub test_code: String,
    pub cancelled: bool,
}

/// `DiagnosticReport.status` of an order whose tests not cancelled are `tests`, and
/// whose results, in any status, are `results`. The report holds what was released:
/// - nothing left to report (every test cancelled, or retracted before release):
///   `cancelled`;
/// - nothing released yet: `registered`;
/// - some released, some tests still to come: `partial`;
/// - every test done: `final`; `amended` if a released result was amended or withdrawn
///   since; `entered-in-error` if every released result was withdrawn.
///
/// A test is still to come while it has no released result and a result not retracted,
/// or no result at all.
pub fn report_status(tests: &[&str], results: &[&ResultRow]) -> &'static str {
    let pending = tests.iter().any(|&t| {
        let statuses: Vec<ResultStatus> = results
            .iter()
            .filter(|r| r.test_code == t)
            .map(|r| r.status.0)
            .collect();
        !statuses.contains(&ResultStatus::Released)
            && (statuses.is_empty() || statuses.iter().any(|s| *s != ResultStatus::Retracted))
    });
    let issued: Vec<&&ResultRow> = results.iter().filter(|r| r.released_at.is_some()).collect();
    let standing = issued
        .iter()
        .filter(|r| r.status.0 == ResultStatus::Released)
        .count();
    let changed = issued
        .iter()
        .any(|r| r.status.0 == ResultStatus::Retracted || r.amendments > 0);
    match () {
        _ if issued.is_empty() && !pending => "cancelled",
        _ if issued.is_empty() => "registered",
        _ if pending => "partial",
        _ if standing == 0 => "entered-in-error",
        _ if changed => "amended",
        _ => "final",
    }
}

/// LOINC's code for a laboratory report.
const LAB_REPORT: (&str, &str) = ("11502-2", "Laboratory report");

/// The order as an R4 `DiagnosticReport`: what of it was released (each result as an
/// `Observation` reference, withdrawn ones included, marked `entered-in-error` there),
/// with the status of the whole. `tests` and `results` are the order's own.
pub fn diagnostic_report(order: &OrderRow, tests: &[&OrderTest], results: &[&ResultRow]) -> Value {
    let open: Vec<&str> = tests
        .iter()
        .filter(|t| !t.cancelled)
        .map(|t| t.test_code.as_str())
        .collect();
    let issued: Vec<&&ResultRow> = results.iter().filter(|r| r.released_at.is_some()).collect();
    let order_uri = format!("urn:uuid:{}", order.order_id);
    let mut report = json!({
        "resourceType": "DiagnosticReport",
        "id": order.order_id,
        "meta": { "lastUpdated": results.iter().map(|r| r.updated_at)
                      .chain([order.updated_at]).max().unwrap_or(order.updated_at).to_rfc3339() },
        "identifier": [
            { "system": URI, "value": order_uri },
            { "type": { "text": "Order number" }, "value": order.order_number },
        ],
        "basedOn": [{ "reference": format!("ServiceRequest/{}", order.order_id), "type": "ServiceRequest",
                      "identifier": { "system": URI, "value": order_uri } }],
        "status": report_status(&open, results),
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                    "code": "LAB", "display": "Laboratory" }] }],
        "code": { "coding": [{ "system": LOINC, "code": LAB_REPORT.0, "display": LAB_REPORT.1 }],
                  "text": LAB_REPORT.1 },
        "subject": subject(order.patient_id),
    });
    if let Some(first) = issued.iter().map(|r| r.collected_at).min() {
        report["effectiveDateTime"] = json!(first.to_rfc3339());
    }
    if let Some(last) = issued.iter().filter_map(|r| r.issued()).max() {
        report["issued"] = json!(last.to_rfc3339());
    }
    let mut releasers: Vec<&str> = issued
        .iter()
        .filter_map(|r| r.released_by.as_deref())
        .collect();
    releasers.sort_unstable();
    releasers.dedup();
    if !releasers.is_empty() {
        report["performer"] = Value::Array(releasers.into_iter().map(by_user).collect());
    }
    let mut specimens: Vec<Uuid> = issued.iter().map(|r| r.sample_id).collect();
    specimens.sort_unstable();
    specimens.dedup();
    if !specimens.is_empty() {
        report["specimen"] = specimens
            .iter()
            .map(|s| json!({ "reference": format!("Specimen/{s}") }))
            .collect();
    }
    if !issued.is_empty() {
        report["result"] = issued
            .iter()
            .map(|r| json!({ "reference": format!("Observation/{}", r.result_id) }))
            .collect();
    }
    report
}

/// The patient as an R4 `Patient`, from their identity as the caller may see it
/// (`identity`: `privacy::render_identity`'s rendering, clear or masked) and their sex
/// as the latest order gave it. A masked identity is labelled so (`meta.security`), and
/// its date of birth is the year alone, as FHIR has no masked date.
pub fn patient(id: Uuid, sex: Option<&str>, identity: &Value) -> Value {
    let masked = identity["masked"] == true;
    let text = |key: &str| identity[key].as_str().map(str::to_string);
    let mut p = json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{ "system": URI, "value": format!("urn:uuid:{id}") }],
        "gender": sex
            .filter(|s| matches!(*s, "male" | "female" | "other"))
            .unwrap_or("unknown"),
    });
    if masked {
        p["meta"] = json!({ "security": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "MASKED", "display": "masked" }] });
    }
    let identifiers = p["identifier"].as_array_mut().expect("an array");
    if let Some(mrn) = text("mrn") {
        identifiers.push(json!({
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                   "code": "MR", "display": "Medical record number" }] },
            "value": mrn }));
    }
    if let Some(abha) = text("abha_number") {
        identifiers.push(json!({ "type": { "text": "ABHA number" }, "value": abha }));
    }
    if let Some(name) = text("name") {
        p["name"] = json!([{ "text": name }]);
    }
    if let Some(born) = text("date_of_birth") {
        p["birthDate"] = json!(if masked {
            born[..4.min(born.len())].to_string()
        } else {
            born
        });
    }
    if let Some(phone) = text("phone") {
        p["telecom"] = json!([{ "system": "phone", "value": phone }]);
    }
    if let Some(address) = text("address") {
        p["address"] = json!([{ "text": address }]);
    }
    p
}

/// Where a `searchset` was found, and what it found.
pub struct Search<'a> {
    /// The address clients reach the server at, if configured: entries' `fullUrl`s are
    /// then `{public}/fhir/{type}/{id}`, else `urn:uuid:{id}`.
    pub public: Option<&'a str>,
    /// The search itself (its links are already absolute where `public` is set).
    pub self_link: &'a str,
    /// The next page, if there is one.
    pub next_link: Option<&'a str>,
    /// How many match in all (more than sent when the page size cut them).
    pub total: i64,
}

/// A `searchset` `Bundle` of `resources`, then `included`: the resources they refer to
/// that were asked for with them (`_include`), which `total` does not count.
pub fn searchset(
    resources: Vec<Value>,
    included: Vec<Value>,
    search: &Search<'_>,
    at: DateTime<Utc>,
) -> Value {
    let entry = |r: Value, mode: &str| {
        let id = r["id"].as_str().unwrap_or_default();
        let full_url = match search.public {
            Some(base) => format!(
                "{base}/fhir/{}/{id}",
                r["resourceType"].as_str().unwrap_or_default()
            ),
            None => format!("urn:uuid:{id}"),
        };
        json!({ "fullUrl": full_url, "resource": r, "search": { "mode": mode } })
    };
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| entry(r, "match"))
        .chain(included.into_iter().map(|r| entry(r, "include")))
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": at.to_rfc3339(),
        "total": search.total,
        "link": [{ "relation": "self", "url": search.self_link }],
    });
    if let Some(next) = search.next_link {
        bundle["link"]
            .as_array_mut()
            .expect("the links are an array")
            .push(json!({ "relation": "next", "url": next }));
    }
    // FHIR has no empty arrays: a search that found nothing has no `entry`.
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

/// The search parameters of `GET /fhir/Observation`.
pub const SEARCH_PARAMS: [(&str, &str, &str); 4] = [
    ("status", "token", "Only results in these statuses, comma-separated (final,amended)"),
    ("patient", "reference", "The patient, by the ledger's id (a UUID, or Patient/<uuid>); required"),
    ("code", "token", "A LOINC code, bare or as http://loinc.org|<code>"),
    ("_count", "number", "How many to send, the most recently collected first: 1 to 1000 (default 100); Bundle.total says how many match, and a next link leads to the rest"),
];

/// The search parameters of `GET /fhir/Patient`.
pub const PATIENT_SEARCH_PARAMS: [(&str, &str, &str); 1] = [(
    "identifier",
    "token",
    "The patient's medical record number (MRN), as the lab was given it; required",
)];

/// The search parameters of `GET /fhir/DiagnosticReport`.
pub const REPORT_SEARCH_PARAMS: [(&str, &str, &str); 3] = [
    ("_include", "special", "DiagnosticReport:result: the reports' Observations in the same Bundle (search mode include)"),
    ("patient", "reference", "The patient, by the ledger's id (a UUID, or Patient/<uuid>); required"),
    ("_count", "number", "How many to send, the most recently placed order first: 1 to 1000 (default 100); Bundle.total says how many match, and a next link leads to the rest"),
];

/// What this server does, for `GET /fhir/metadata`; `built` is when the server started.
pub fn capability_statement(software_version: &str, built: DateTime<Utc>) -> Value {
    let resource = |kind: &str, params: &[(&str, &str, &str)]| {
        let params: Vec<Value> = params
            .iter()
            .map(|(name, kind, doc)| json!({ "name": name, "type": kind, "documentation": doc }))
            .collect();
        json!({
            "type": kind,
            "interaction": [{ "code": "read" }, { "code": "search-type" }],
            "searchParam": params,
        })
    };
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": built.to_rfc3339(),
        "publisher": "LIS Ledger",
        "kind": "instance",
        "software": { "name": "LIS Ledger", "version": software_version },
        "implementation": { "description": "LIS Ledger: laboratory results, read-only" },
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read-only. A ServiceRequest per order (the requisition, its tests listed) and a DiagnosticReport per order holding what was released of it; a Specimen per tube, rejected ones unsatisfactory. Clinicians see released results and those withdrawn after release (entered-in-error); lab roles see every result. Errors are RFC 9457 problem details; an unsupported search parameter is refused.",
            "security": {
                "description": "A bearer token from POST /auth/login, in the Authorization header."
            },
            "resource": [
                resource("DiagnosticReport", &REPORT_SEARCH_PARAMS),
                resource("Observation", &SEARCH_PARAMS),
                resource("Patient", &PATIENT_SEARCH_PARAMS),
                resource("ServiceRequest", &crate::fhir_orders::REQUEST_SEARCH_PARAMS),
                resource("Specimen", &crate::fhir_orders::SPECIMEN_SEARCH_PARAMS),
            ],
        }],
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A potassium result of 6.8 mmol/L (critical high, delta-flagged), verified, in
    /// `status`: the rows other mappings' tests start from.
    pub(crate) fn row(status: ResultStatus) -> ResultRow {
        let at = "2026-03-03T09:30:00Z".parse().unwrap();
        ResultRow {
            result_id: Uuid::from_u128(1),
            sample_id: Uuid::from_u128(2),
            order_id: Uuid::from_u128(3),
            patient_id: Uuid::from_u128(4),
            test_code: "K".into(),
            loinc: "2823-3".into(),
            test_name: Some("Potassium".into()),
            collected_at: at,
            value: sqlx::types::Json(ResultValue::Numeric {
                value: 6.8,
                unit: "mmol/L".into(),
            }),
            flags: vec!["HH".into(), "D".into()],
            reference_low: Some(3.5),
            reference_high: Some(5.1),
            reference_basis: "adult".into(),
            specimen_note: None,
            status: sqlx::types::Json(status),
            amendments: 0,
            verified_by: Some("tech.1".into()),
            released_by: None,
            released_at: None,
            retraction_reason: None,
            updated_at: at,
            amended_at: None,
            previous_value: None,
        }
    }

    #[test]
    fn every_status_maps_and_withdrawal_after_release_is_entered_in_error() {
        use ResultStatus::*;
        let cases = [
            (Recorded, 0, false, "preliminary"),
            (Verified, 0, false, "preliminary"),
            (RerunRequested, 0, false, "registered"),
            (Released, 0, true, "final"),
            (Released, 2, true, "amended"),
            (Retracted, 0, false, "cancelled"),
            (Retracted, 1, true, "entered-in-error"),
        ];
        for (status, amendments, released, fhir) in cases {
            assert_eq!(
                observation_status(status, amendments, released),
                fhir,
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_critical_value_carries_its_code_unit_range_and_flags() {
        let mut r = row(ResultStatus::Released);
        r.released_by = Some("path.1".into());
        r.released_at = Some("2026-03-03T10:00:00Z".parse().unwrap());
        let o = observation(&r);
        assert_eq!(o["status"], "final");
        assert_eq!(o["code"]["coding"][0]["code"], "2823-3");
        assert_eq!(o["code"]["text"], "Potassium");
        assert_eq!(o["valueQuantity"]["value"], 6.8);
        assert_eq!(o["valueQuantity"]["code"], "mmol/L");
        assert_eq!(o["interpretation"][0]["coding"][0]["code"], "HH");
        assert_eq!(o["interpretation"].as_array().unwrap().len(), 1);
        assert_eq!(o["referenceRange"][0]["high"]["value"], 5.1);
        assert_eq!(o["performer"][0]["display"], "path.1");
        assert_eq!(o["issued"], "2026-03-03T10:00:00+00:00");
        assert!(o["note"][0]["text"].as_str().unwrap().starts_with("Delta"));
    }

    /// A result of `test` in `status`, released (or not) and amended `amendments` times.
    fn result(test: &str, status: ResultStatus, released: bool, amendments: i32) -> ResultRow {
        let mut r = row(status);
        r.result_id = Uuid::new_v4();
        r.test_code = test.into();
        r.amendments = amendments;
        if released {
            r.released_at = Some("2026-03-03T10:00:00Z".parse().unwrap());
            r.released_by = Some("path.1".into());
        }
        r
    }

    #[test]
    fn a_report_is_as_final_as_what_was_released_of_its_order() {
        use ResultStatus::*;
        let cases: [(&[&str], Vec<ResultRow>, &str); 11] = [
            (&["K", "NA"], vec![], "registered"),
            (
                &["K", "NA"],
                vec![result("K", Verified, false, 0)],
                "registered",
            ),
            (
                &["K", "NA"],
                vec![result("K", Released, true, 0)],
                "partial",
            ),
            (
                &["K", "NA"],
                vec![
                    result("K", Released, true, 0),
                    result("NA", Released, true, 0),
                ],
                "final",
            ),
            (&["K"], vec![result("K", Released, true, 1)], "amended"),
            (
                &["K", "NA"],
                vec![
                    result("K", Released, true, 0),
                    result("NA", Retracted, true, 0),
                ],
                "amended",
            ),
            (
                &["K"],
                vec![result("K", Retracted, true, 0)],
                "entered-in-error",
            ),
            (&["K"], vec![result("K", Retracted, false, 0)], "cancelled"),
            (&[], vec![], "cancelled"),
            // Withdrawn after release and recorded again: the new value is to come.
            (
                &["K"],
                vec![
                    result("K", Retracted, true, 0),
                    result("K", Recorded, false, 0),
                ],
                "partial",
            ),
            // Released again after a withdrawal.
            (
                &["K"],
                vec![
                    result("K", Retracted, true, 0),
                    result("K", Released, true, 0),
                ],
                "amended",
            ),
        ];
        for (tests, results, status) in cases {
            let refs: Vec<&ResultRow> = results.iter().collect();
            assert_eq!(
                report_status(tests, &refs),
                status,
                "{tests:?} {:?}",
                results
                    .iter()
                    .map(|r| (r.status.0, r.released_at.is_some()))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_report_refers_to_what_was_released_and_names_who_released_it() {
        let order = OrderRow {
            order_id: Uuid::from_u128(3),
            order_number: "ORD-260303-0001".into(),
            patient_id: Uuid::from_u128(4),
            placed_at: "2026-03-03T08:00:00Z".parse().unwrap(),
            updated_at: "2026-03-03T08:00:00Z".parse().unwrap(),
        };
        let tests =
            [("K", false), ("NA", false), ("CL", true)].map(|(code, cancelled)| OrderTest {
                order_id: order.order_id,
                test_code: code.into(),
                cancelled,
            });
        let k = result("K", ResultStatus::Released, true, 0);
        let na = result("NA", ResultStatus::Verified, false, 0);
        let report = diagnostic_report(&order, &tests.iter().collect::<Vec<_>>(), &[&k, &na]);
        assert_eq!(report["status"], "partial");
        assert_eq!(report["id"], order.order_id.to_string());
        assert_eq!(report["identifier"][1]["value"], "ORD-260303-0001");
        assert_eq!(
            report["result"],
            json!([{ "reference": format!("Observation/{}", k.result_id) }])
        );
        assert_eq!(report["performer"], json!([{ "display": "path.1" }]));
        assert_eq!(report["issued"], "2026-03-03T10:00:00+00:00");
        assert_eq!(report["effectiveDateTime"], "2026-03-03T09:30:00+00:00");
        let nothing = diagnostic_report(&order, &tests.iter().collect::<Vec<_>>(), &[&na]);
        assert_eq!(nothing["status"], "registered");
        for absent in ["result", "performer", "issued", "effectiveDateTime"] {
            assert!(nothing.get(absent).is_none(), "{absent}: {nothing}");
        }
    }

    #[test]
    fn an_amended_result_is_issued_when_amended_and_says_what_it_replaced() {
        let mut r = result("K", ResultStatus::Released, true, 1);
        r.amended_at = Some("2026-03-04T08:00:00Z".parse().unwrap());
        r.previous_value = Some(sqlx::types::Json(ResultValue::Numeric {
            value: 6.1,
            unit: "mmol/L".into(),
        }));
        let o = observation(&r);
        assert_eq!(o["status"], "amended");
        assert_eq!(o["issued"], "2026-03-04T08:00:00+00:00");
        let notes: Vec<&str> = o["note"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["text"].as_str().unwrap())
            .collect();
        assert!(
            notes.contains(&"Amended after release (1 time); the value before the latest amendment: 6.1 mmol/L"),
            "{notes:?}"
        );
        assert_eq!(
            o["performer"],
            json!([{ "display": "path.1" }, { "display": "tech.1" }])
        );
        assert_eq!(o["referenceRange"][0]["text"], "3.5–5.1 mmol/L");
        assert_eq!(o["referenceRange"][0]["appliesTo"][0]["text"], "adult");
    }

    #[test]
    fn a_result_awaiting_a_rerun_or_withdrawn_unreleased_shows_no_value() {
        for status in [ResultStatus::RerunRequested, ResultStatus::Retracted] {
            let o = observation(&row(status));
            for absent in ["valueQuantity", "interpretation", "referenceRange"] {
                assert!(o.get(absent).is_none(), "{status:?} {absent}: {o}");
            }
        }
        let mut child = row(ResultStatus::Verified);
        child.reference_low = None;
        child.reference_high = None;
        child.reference_basis = "no interval for age 7 y (catalogue holds adult intervals)".into();
        let o = observation(&child);
        assert!(o.get("referenceRange").is_none());
        assert!(o["note"].as_array().unwrap().iter().any(|n| n["text"]
            == "No reference range: no interval for age 7 y (catalogue holds adult intervals)"));
    }

    #[test]
    fn a_masked_patient_is_labelled_and_born_in_a_year() {
        let masked = json!({"mrn": "***-*****-77", "abha_number": null, "name": "A*** V****",
                            "date_of_birth": "1980-**-**", "phone": null, "address": "[masked]",
                            "masked": true});
        let p = patient(Uuid::from_u128(4), Some("female"), &masked);
        assert_eq!(p["meta"]["security"][0]["code"], "MASKED");
        assert_eq!(p["birthDate"], "1980");
        assert_eq!(p["name"][0]["text"], "A*** V****");
        assert_eq!(p["identifier"].as_array().unwrap().len(), 2, "{p}");
        assert!(p.get("telecom").is_none());
        let clear = json!({"mrn": "MRN-77", "name": "Asha Verma", "date_of_birth": "1980-05-17"});
        let p = patient(Uuid::from_u128(4), Some("intersex"), &clear);
        assert_eq!(
            (p["birthDate"].as_str(), p["gender"].as_str()),
            (Some("1980-05-17"), Some("unknown"))
        );
        assert!(p.get("meta").is_none());
    }

    #[test]
    fn entries_are_urn_uuids_without_a_public_address_and_urls_with_one() {
        let o = observation(&row(ResultStatus::Released));
        let at = "2026-03-03T10:00:00Z".parse().unwrap();
        let mut search = Search {
            public: None,
            self_link: "/fhir/Observation?patient=x",
            next_link: None,
            total: 1,
        };
        let bundle = searchset(vec![o.clone()], Vec::new(), &search, at);
        assert_eq!(
            bundle["entry"][0]["fullUrl"],
            format!("urn:uuid:{}", Uuid::from_u128(1))
        );
        search.public = Some("https://lis.example.org");
        let bundle = searchset(vec![o], Vec::new(), &search, at);
        assert_eq!(
            bundle["entry"][0]["fullUrl"],
            format!(
                "https://lis.example.org/fhir/Observation/{}",
                Uuid::from_u128(1)
            )
        );
        assert_eq!(bundle["link"].as_array().unwrap().len(), 1, "no next link");
    }

    #[test]
    fn an_unflagged_number_in_range_is_normal_and_a_coded_answer_is_text() {
        let mut r = row(ResultStatus::Verified);
        r.flags.clear();
        assert_eq!(
            observation(&r)["interpretation"][0]["coding"][0]["code"],
            "N"
        );
        assert!(observation(&r).get("issued").is_none());
        assert_eq!(observation(&r)["performer"][0]["display"], "tech.1");
        r.value = sqlx::types::Json(ResultValue::Coded {
            answer: "positive".into(),
        });
        r.reference_low = None;
        r.reference_high = None;
        let o = observation(&r);
        assert_eq!(o["valueCodeableConcept"]["text"], "positive");
        assert!(o.get("valueQuantity").is_none());
        assert!(o.get("interpretation").is_none());
        assert!(o.get("referenceRange").is_none());
    }
}
