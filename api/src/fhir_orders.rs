//! The ledger's orders and specimens as HL7 FHIR R4 resources (4.0.1): a `ServiceRequest`
//! per order (the lab's requisition, its tests listed in it) and a `Specimen` per tube or
//! aliquot, so that a clinician's system can follow what it asked for: which tests are
//! still to come, and which tube was rejected and why (a recollection is asked for).
//!
//! Pure mapping, no I/O, beside [`crate::fhir`]'s results: the HTTP handlers
//! (`http::fhir_orders`) read the orders and specimens models and hand each row here.

use crate::fhir::{by_user, subject, LOINC, URI};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

/// An order as a `ServiceRequest` reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestRow {
    pub order_id: Uuid,
    pub order_number: String,
    pub patient_id: Uuid,
    pub priority: String,
    pub ordering_clinician: String,
    pub collection_site: String,
    /// `active` or `cancelled`.
    pub status: String,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One test of an order, at its stage (the orders model's `order_test_status`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestedTest {
    pub order_id: Uuid,
    pub test_code: String,
    pub loinc: Option<String>,
    pub name: Option<String>,
    /// `to_collect`, `to_receive`, `to_result`, `to_verify`, `to_authorise`, `released`,
    /// `retracted` or `cancelled`.
    pub stage: String,
    /// Since when it has been at that stage.
    pub stage_since: DateTime<Utc>,
    pub cancelled_reason: Option<String>,
}

/// `ServiceRequest.status` of an order: `revoked` once it, or every test of it, was
/// cancelled; `completed` once every test not cancelled has a released result (or one
/// withdrawn with nothing left to do); else `active`.
pub fn request_status(order_status: &str, tests: &[&RequestedTest]) -> &'static str {
    let open: Vec<&&RequestedTest> = tests.iter().filter(|t| t.stage != "cancelled").collect();
    match () {
        _ if order_status == "cancelled" || open.is_empty() => "revoked",
        _ if open
            .iter()
            .all(|t| matches!(t.stage.as_str(), "released" | "retracted")) =>
        {
            "completed"
        }
        _ => "active",
    }
}

/// FHIR's request priority for the ledger's (`routine`, `urgent`, `stat`: the same codes).
fn priority(p: &str) -> &'static str {
    match p {
        "stat" => "stat",
        "urgent" => "urgent",
        _ => "routine",
    }
}

/// A test as a coding: its LOINC code, with its name as the catalogue gives it.
fn test_concept(t: &RequestedTest) -> Value {
    let name = t.name.as_deref().unwrap_or(&t.test_code);
    match &t.loinc {
        Some(loinc) => {
            json!({ "coding": [{ "system": LOINC, "code": loinc, "display": name }], "text": name })
        }
        None => json!({ "text": name }),
    }
}

/// SNOMED CT's "laboratory procedure", the category of every request here.
const LAB_PROCEDURE: (&str, &str, &str) = (
    "http://snomed.info/sct",
    "108252007",
    "Laboratory procedure",
);

/// The order as an R4 `ServiceRequest`: one per requisition. A single test is its
/// `code`; several are named together in `code.text` and each coded in `orderDetail`.
/// Cancelled tests are left out of both (unless every test was: then what was asked
/// for is still said) and named, with the reason, in a note. `specimens` are the tubes
/// collected for it, each with when it last changed: the request was last updated when
/// the order, a test's stage or a tube last changed.
pub fn service_request(
    o: &RequestRow,
    tests: &[&RequestedTest],
    specimens: &[(Uuid, DateTime<Utc>)],
) -> Value {
    let last_updated = tests
        .iter()
        .map(|t| t.stage_since)
        .chain(specimens.iter().map(|(_, at)| *at))
        .chain([o.updated_at])
        .max()
        .unwrap_or(o.updated_at);
    let mut asked: Vec<&&RequestedTest> = tests.iter().filter(|t| t.stage != "cancelled").collect();
    if asked.is_empty() {
        asked = tests.iter().collect();
    }
    let mut r = json!({
        "resourceType": "ServiceRequest",
        "id": o.order_id,
        "meta": { "lastUpdated": last_updated.to_rfc3339() },
        "identifier": [{ "system": URI, "value": format!("urn:uuid:{}", o.order_id) }],
        "requisition": { "type": { "text": "Order number" }, "value": o.order_number },
        "status": request_status(&o.status, tests),
        "intent": "order",
        "category": [{ "coding": [{ "system": LAB_PROCEDURE.0, "code": LAB_PROCEDURE.1,
                                    "display": LAB_PROCEDURE.2 }] }],
        "priority": priority(&o.priority),
        "subject": subject(o.patient_id),
        "authoredOn": o.placed_at.to_rfc3339(),
        "requester": by_user(&o.ordering_clinician),
        "locationCode": [{ "text": o.collection_site }],
    });
    match asked.as_slice() {
        [] => {}
        [one] => r["code"] = test_concept(one),
        many => {
            let names: Vec<&str> = many
                .iter()
                .map(|t| t.name.as_deref().unwrap_or(&t.test_code))
                .collect();
            r["code"] = json!({ "text": names.join(", ") });
            r["orderDetail"] = many.iter().map(|t| test_concept(t)).collect();
        }
    }
    if !specimens.is_empty() {
        r["specimen"] = specimens
            .iter()
            .map(|(s, _)| json!({ "reference": format!("Specimen/{s}") }))
            .collect();
    }
    let cancelled: Vec<Value> = tests
        .iter()
        .filter(|t| t.stage == "cancelled")
        .map(|t| {
            let name = t.name.as_deref().unwrap_or(&t.test_code);
            let reason = t
                .cancelled_reason
                .as_deref()
                .unwrap_or("no reason recorded");
            json!({ "text": format!("{name} cancelled: {reason}") })
        })
        .collect();
    if !cancelled.is_empty() {
        r["note"] = Value::Array(cancelled);
    }
    r
}

/// A tube or aliquot as a `Specimen` reads it (the specimens model, with its order's
/// patient).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SpecimenRow {
    pub sample_id: Uuid,
    pub accession_number: String,
    pub order_id: Uuid,
    pub patient_id: Uuid,
    pub specimen_type: String,
    pub container: String,
    /// `collected`, `received`, `rejected` or `disposed`.
    pub status: String,
    pub collected_by: Option<String>,
    pub collected_at: DateTime<Utc>,
    pub received_at: Option<DateTime<Utc>>,
    /// `satisfactory`, or `compromised: <note>`.
    pub condition: Option<String>,
    pub rejection_reason: Option<String>,
    pub rejection_detail: Option<String>,
    pub recollection_requested: bool,
    pub parent_id: Option<Uuid>,
    pub disposed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// `Specimen.status`: a rejected tube is `unsatisfactory` (never tested), a disposed one
/// `unavailable`; one collected or received is `available`.
pub fn specimen_status(status: &str) -> &'static str {
    match status {
        "rejected" => "unsatisfactory",
        "disposed" => "unavailable",
        _ => "available",
    }
}

/// HL7 v2 table 0493 (specimen condition), for the rejection reasons it has a code for.
const CONDITION: &str = "http://terminology.hl7.org/CodeSystem/v2-0493";

/// The rejection reason (`RejectionReason::code`) as a person reads it, and its code in
/// table 0493 where it has one.
fn rejection(reason: &str) -> (String, Option<(&'static str, &'static str)>) {
    let coded = match reason {
        "haemolysed" => Some(("HEM", "Hemolyzed")),
        "clotted" => Some(("CLOT", "Clotted")),
        _ => None,
    };
    (reason.replace('_', " "), coded)
}

/// The tube or aliquot as an R4 `Specimen`.
pub fn specimen(s: &SpecimenRow) -> Value {
    let mut collection = json!({ "collectedDateTime": s.collected_at.to_rfc3339() });
    if let Some(by) = &s.collected_by {
        collection["collector"] = by_user(by);
    }
    let mut x = json!({
        "resourceType": "Specimen",
        "id": s.sample_id,
        "meta": { "lastUpdated": s.updated_at.to_rfc3339() },
        "identifier": [{ "system": URI, "value": format!("urn:uuid:{}", s.sample_id) }],
        "accessionIdentifier": { "value": s.accession_number },
        "status": specimen_status(&s.status),
        "type": { "text": s.specimen_type },
        "subject": subject(s.patient_id),
        "request": [{ "reference": format!("ServiceRequest/{}", s.order_id) }],
        "collection": collection,
        "container": [{ "type": { "text": s.container } }],
    });
    if let Some(at) = s.received_at {
        x["receivedTime"] = json!(at.to_rfc3339());
    }
    if let Some(parent) = s.parent_id {
        x["parent"] = json!([{ "reference": format!("Specimen/{parent}") }]);
    }
    let mut notes = Vec::new();
    if let Some(reason) = &s.rejection_reason {
        let (text, coded) = rejection(reason);
        let mut condition = json!({ "text": format!("Rejected: {text}") });
        if let Some((code, display)) = coded {
            condition["coding"] =
                json!([{ "system": CONDITION, "code": code, "display": display }]);
        }
        x["condition"] = json!([condition]);
        let detail = s
            .rejection_detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let recollect = if s.recollection_requested {
            "; a recollection was requested"
        } else {
            ""
        };
        notes.push(json!({ "text": format!("Rejected on receipt, not tested: {text}{detail}{recollect}") }));
    } else if let Some(note) = s
        .condition
        .as_deref()
        .and_then(|c| c.strip_prefix("compromised: "))
    {
        x["condition"] = json!([{ "text": "Compromised" }]);
        notes.push(json!({ "text": format!("Received compromised and tested: {note}") }));
    }
    if let Some(at) = s.disposed_at {
        notes.push(json!({ "text": format!("Disposed of at {}", at.to_rfc3339()) }));
    }
    if !notes.is_empty() {
        x["note"] = Value::Array(notes);
    }
    x
}

/// The search parameters of `GET /fhir/ServiceRequest`.
pub const REQUEST_SEARCH_PARAMS: [(&str, &str, &str); 3] = [
    ("patient", "reference", "The patient, by the ledger's id (a UUID, or Patient/<uuid>); required"),
    ("requisition", "token", "The order number the lab gave the order"),
    ("_count", "number", "How many to send, the most recently placed first: 1 to 1000 (default 100); Bundle.total says how many match, and a next link leads to the rest"),
];

/// The search parameters of `GET /fhir/Specimen`.
pub const SPECIMEN_SEARCH_PARAMS: [(&str, &str, &str); 3] = [
    ("patient", "reference", "The patient, by the ledger's id (a UUID, or Patient/<uuid>); this or accession required"),
    ("accession", "token", "The tube's accession number (its barcode)"),
    ("_count", "number", "How many to send, the most recently collected first: 1 to 1000 (default 100); Bundle.total says how many match, and a next link leads to the rest"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn test(code: &str, stage: &str) -> RequestedTest {
        RequestedTest {
            order_id: Uuid::from_u128(1),
            test_code: code.into(),
            loinc: Some("2823-3".into()),
            name: Some(code.into()),
            stage: stage.into(),
            stage_since: "2026-03-03T10:00:00Z".parse().unwrap(),
            cancelled_reason: (stage == "cancelled").then(|| "duplicate request".into()),
        }
    }

    #[test]
    fn a_request_is_active_until_every_test_is_done_and_revoked_if_nothing_is_left() {
        let cases: [(&str, &[&str], &str); 7] = [
            ("active", &["to_collect", "released"], "active"),
            ("active", &["to_verify"], "active"),
            ("active", &["released", "released"], "completed"),
            ("active", &["released", "cancelled"], "completed"),
            ("active", &["retracted", "released"], "completed"),
            ("active", &["cancelled", "cancelled"], "revoked"),
            ("cancelled", &["to_collect"], "revoked"),
        ];
        for (order, stages, expected) in cases {
            let tests: Vec<RequestedTest> = stages.iter().map(|s| test("K", s)).collect();
            let refs: Vec<&RequestedTest> = tests.iter().collect();
            assert_eq!(request_status(order, &refs), expected, "{order} {stages:?}");
        }
    }

    #[test]
    fn one_test_is_the_code_several_are_listed_and_cancelled_ones_are_noted() {
        let at = "2026-03-03T09:30:00Z".parse().unwrap();
        let order = RequestRow {
            order_id: Uuid::from_u128(1),
            order_number: "ORD-1".into(),
            patient_id: Uuid::from_u128(2),
            priority: "stat".into(),
            ordering_clinician: "Dr Rao".into(),
            collection_site: "OPD 2".into(),
            status: "active".into(),
            placed_at: at,
            updated_at: at,
        };
        let (k, na, cl) = (
            test("K", "to_result"),
            test("NA", "released"),
            test("CL", "cancelled"),
        );
        let one = service_request(&order, &[&k, &cl], &[]);
        assert_eq!(one["code"]["coding"][0]["code"], "2823-3");
        assert_eq!(one.get("orderDetail"), None);
        assert_eq!(one["note"][0]["text"], "CL cancelled: duplicate request");
        assert_eq!(one["priority"], "stat");
        let drawn: DateTime<Utc> = "2026-03-03T11:00:00Z".parse().unwrap();
        let two = service_request(&order, &[&k, &na, &cl], &[(Uuid::from_u128(3), drawn)]);
        assert_eq!(
            two["meta"]["lastUpdated"],
            drawn.to_rfc3339(),
            "the latest change"
        );
        assert_eq!(
            one["meta"]["lastUpdated"], "2026-03-03T10:00:00+00:00",
            "a test's stage"
        );
        assert_eq!(two["code"], json!({ "text": "K, NA" }));
        assert_eq!(two["orderDetail"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            two["specimen"][0]["reference"],
            format!("Specimen/{}", Uuid::from_u128(3))
        );
        let none = service_request(&order, &[&cl], &[]);
        assert_eq!(none["status"], "revoked");
        assert_eq!(
            none["code"]["text"], "CL",
            "what was asked for is still said"
        );
    }

    #[test]
    fn a_rejected_tube_is_unsatisfactory_with_its_reason_coded_where_table_0493_has_one() {
        let at = "2026-03-03T09:30:00Z".parse().unwrap();
        let mut tube = SpecimenRow {
            sample_id: Uuid::from_u128(5),
            accession_number: "ACC-1".into(),
            order_id: Uuid::from_u128(1),
            patient_id: Uuid::from_u128(2),
            specimen_type: "serum".into(),
            container: "SST".into(),
            status: "rejected".into(),
            collected_by: Some("phleb.1".into()),
            collected_at: at,
            received_at: None,
            condition: None,
            rejection_reason: Some("haemolysed".into()),
            rejection_detail: Some("grossly pink".into()),
            recollection_requested: true,
            parent_id: None,
            disposed_at: None,
            updated_at: at,
        };
        let x = specimen(&tube);
        assert_eq!(x["status"], "unsatisfactory");
        assert_eq!(x["condition"][0]["coding"][0]["code"], "HEM");
        assert_eq!(
            x["note"][0]["text"],
            "Rejected on receipt, not tested: haemolysed (grossly pink); a recollection was requested"
        );
        tube.rejection_reason = Some("insufficient_volume".into());
        let x = specimen(&tube);
        assert_eq!(
            x["condition"][0],
            json!({ "text": "Rejected: insufficient volume" })
        );
        tube.rejection_reason = None;
        tube.status = "received".into();
        tube.condition = Some("compromised: lipaemic, tested anyway".into());
        let x = specimen(&tube);
        assert_eq!(x["status"], "available");
        assert_eq!(x["condition"][0]["text"], "Compromised");
        for (status, fhir) in [
            ("collected", "available"),
            ("received", "available"),
            ("rejected", "unsatisfactory"),
            ("disposed", "unavailable"),
        ] {
            assert_eq!(specimen_status(status), fhir);
        }
    }
}
