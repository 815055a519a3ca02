//! HL7 v2.5.1 end to end: an order's results taken through release, amendment and
//! withdrawal, fetched from `serve` as an ORU^R01 message, read field by field, and
//! checked by HAPI HL7v2 (`deploy/hl7-check.sh`); who may fetch it, and the refusals.

mod support;

use lis_domain::actor::Role;
use lis_tests::TestDb;
use reqwest::StatusCode;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use support::{token, wait_healthy, wait_projected, ApiClient, Stack};

/// GET `path` with `bearer` (and a break-glass reason, if given): the status, the
/// content type and the text.
async fn get(
    api: &ApiClient,
    bearer: &str,
    path: &str,
    glass: Option<&str>,
) -> (StatusCode, String, String) {
    let mut r = api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(bearer);
    if let Some(reason) = glass {
        r = r.header("Break-Glass-Reason", reason);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    (status, kind, r.text().await.unwrap())
}

/// Runs `deploy/hl7-check.sh` over `files`: whether it passed, and what it printed.
fn hl7_check(files: &[PathBuf]) -> (bool, String) {
    support::external_check("hl7-check.sh", files)
}

/// Field `n` of the `nth` segment named `name` (of MSH, field `n + 1`: its field
/// separator is MSH-1).
fn field(message: &str, name: &str, nth: usize, n: usize) -> String {
    let segment = message
        .split('\r')
        .filter(|s| s.starts_with(&format!("{name}|")))
        .nth(nth)
        .unwrap_or_else(|| panic!("no {name} #{nth} in {message:?}"));
    segment.split('|').nth(n).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_results_are_sent_as_a_valid_oru_r01() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    let serve = stack.spawn("serve", &["serve"]);
    let project = stack.spawn("project", &["project", "orders", "results"]);
    wait_healthy(&base, &serve, Duration::from_secs(30)).await;
    let api = ApiClient::new(&base);
    let reception = token("reception.1", Role::Reception);
    let phleb = token("phleb.1", Role::Phlebotomist);
    let tech = token("tech.1", Role::Technologist);
    let path = token("path.1", Role::Pathologist);
    let clinician = token("dr.rao", Role::Clinician);

    // Potassium released then amended, sodium released then withdrawn, chloride released;
    // a name holding a delimiter, to be escaped.
    let order = api
        .ok(&reception, "/orders", json!({
            "patient": {"mrn": "MRN-HL7-1", "name": "Asha Verma-Rao", "sex": "female", "date_of_birth": "1980-05-17"},
            "ordering_clinician": "Dr Rao & Partners", "priority": "routine", "collection_site": "OPD 2",
            "tests": ["K", "NA", "CL"]}))
        .await;
    let sample = api
        .ok(
            &phleb,
            "/samples",
            json!({"order_id": order, "accession_number": "ACC-HL7-1", "specimen_type": "serum",
                   "container": "red/SST", "tests": ["K", "NA", "CL"]}),
        )
        .await;
    api.ok(&tech, &format!("/samples/{sample}/receive"), json!({}))
        .await;
    let numeric = |value: f64| json!({"kind": "numeric", "value": value, "unit": "mmol/L"});
    let mut ids = std::collections::BTreeMap::new();
    for (test, value) in [("K", 5.5), ("NA", 140.0), ("CL", 100.0)] {
        let id = api
            .ok(
                &tech,
                "/results",
                json!({"sample_id": sample, "test_code": test, "value": numeric(value)}),
            )
            .await;
        ids.insert(test, id);
    }
    // Nothing released yet: nothing to send.
    let hl7 = format!("/hl7/orders/{order}/oru");
    let projected = || {
        let (db, serve, project) = (&db, &serve, &project);
        async move {
            let models = ["orders", "results"];
            wait_projected(db, &models, Duration::from_secs(60), &[serve, project]).await
        }
    };
    projected().await;
    let (s, kind, body) = get(&api, &clinician, &hl7, None).await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::NOT_FOUND, "application/problem+json"),
        "{body}"
    );
    for id in ids.values() {
        api.ok(&tech, &format!("/results/{id}/verify"), json!({}))
            .await;
        api.ok(&path, &format!("/results/{id}/authorise"), json!({}))
            .await;
    }
    api.ok(
        &path,
        &format!("/results/{}/amend", ids["K"]),
        json!({"value": numeric(5.9), "reason": "instrument recalibrated"}),
    )
    .await;
    api.ok(
        &path,
        &format!("/results/{}/retract", ids["NA"]),
        json!({"reason": "sample from another patient"}),
    )
    .await;
    projected().await;

    let (s, kind, message) = get(&api, &clinician, &hl7, None).await;
    assert_eq!(s, StatusCode::OK, "{message}");
    assert_eq!(kind, "x-application/hl7-v2+er7; charset=utf-8");
    assert!(message.starts_with("MSH|^~\\&|LISLEDGER|"), "{message:?}");
    assert_eq!(field(&message, "MSH", 0, 8), "ORU^R01^ORU_R01");
    assert_eq!(field(&message, "MSH", 0, 11), "2.5.1");
    assert_eq!(
        field(&message, "PID", 0, 3).split('~').next(),
        Some("MRN-HL7-1^^^^MR")
    );
    assert_eq!(field(&message, "PID", 0, 5), "Asha Verma-Rao");
    assert_eq!(field(&message, "PID", 0, 7), "19800517");
    assert_eq!(field(&message, "ORC", 0, 12), r"^Dr Rao \T\ Partners");
    // One group per result, in test order: chloride final, potassium corrected (the
    // value replaced in a note), sodium deleted (no value, the reason in a note).
    let statuses: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            (
                field(&message, "OBX", i, 3),
                field(&message, "OBX", i, 5),
                field(&message, "OBX", i, 11),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("2075-0^Chloride^LN".into(), "100".into(), "F".into()),
            ("2823-3^Potassium^LN".into(), "5.9".into(), "C".into()),
            ("2951-2^Sodium^LN".into(), "".into(), "D".into()),
        ],
        "{message:?}"
    );
    assert!(
        message.contains("the value before the latest amendment"),
        "{message:?}"
    );
    assert!(
        message.contains("Withdrawn after release: sample from another patient"),
        "{message:?}"
    );
    // Each OBR's status is its own result's (final, or corrected: amended or
    // withdrawn), each its own filler number; every test is done, so the order is too.
    let requests: Vec<(String, String)> = (0..3)
        .map(|i| (field(&message, "OBR", i, 3), field(&message, "OBR", i, 25)))
        .collect();
    let number = field(&message, "ORC", 0, 4);
    let number = number.trim_end_matches("^LISLEDGER");
    assert_eq!(
        requests,
        [
            (format!("{number}-CL^LISLEDGER"), "F".to_string()),
            (format!("{number}-K^LISLEDGER"), "C".to_string()),
            (format!("{number}-NA^LISLEDGER"), "C".to_string()),
        ],
        "{message:?}"
    );
    assert!(number.starts_with("ORD-"), "{number}");
    assert_eq!(field(&message, "ORC", 0, 5), "CM");

    // Who may fetch it: those who read results and see identity in clear; an auditor
    // only breaking glass.
    let auditor = token("audit.1", Role::Auditor);
    for (who, bearer, glass, expected) in [
        ("technologist", tech.clone(), None, StatusCode::OK),
        ("pathologist", path.clone(), None, StatusCode::OK),
        ("auditor", auditor.clone(), None, StatusCode::FORBIDDEN),
        (
            "auditor breaking glass",
            auditor.clone(),
            Some("NABL assessment, request 7"),
            StatusCode::OK,
        ),
        ("reception", reception.clone(), None, StatusCode::FORBIDDEN),
        (
            "analyst",
            token("analyst.1", Role::Analyst),
            None,
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (s, _, body) = get(&api, &bearer, &hl7, glass).await;
        assert_eq!(s, expected, "{who}: {body}");
    }
    let (s, _, _) = get(&api, &clinician, "/hl7/orders/not-an-order/oru", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // HAPI HL7v2 reads it as a valid ORU^R01 of v2.5.1…
    let dir = stack.logs.join("hl7");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("oru.hl7");
    std::fs::write(&file, &message).unwrap();
    let (valid, report) = hl7_check(std::slice::from_ref(&file));
    assert!(valid, "HAPI HL7v2 found errors:\n{report}");
    assert!(
        report.contains("3 order groups, 3 observations"),
        "{report}"
    );
    // …and refuses what is not: a value that is no number in a numeric field.
    let bad = dir.join("wrong-value.hl7");
    std::fs::write(
        &bad,
        message.replacen(
            "|NM|2075-0^Chloride^LN||100|",
            "|NM|2075-0^Chloride^LN||100 mmol/L|",
            1,
        ),
    )
    .unwrap();
    let (valid, report) = hl7_check(&[bad]);
    assert!(
        !valid,
        "the checker passed a non-numeric NM value:\n{report}"
    );
    assert!(
        report.contains("'100 mmol/L' requires to be empty or a number"),
        "{report}"
    );

    // Erased: the patient is gone, and so is the message.
    let admin = token("admin.1", Role::Admin);
    let (_, _, placed) = get(&api, &reception, &format!("/orders/{order}"), None).await;
    let placed: serde_json::Value = serde_json::from_str(&placed).unwrap();
    api.ok(
        &admin,
        &format!("/patients/{}/erase", placed["patient_id"].as_str().unwrap()),
        json!({"reason": "the patient asked to be forgotten"}),
    )
    .await;
    let (s, _, gone) = get(&api, &clinician, &hl7, None).await;
    assert_eq!(s, StatusCode::GONE, "{gone}");
    // Still gone once the read models have dropped the patient's orders.
    projected().await;
    let (s, _, gone) = get(&api, &clinician, &hl7, None).await;
    assert_eq!(s, StatusCode::GONE, "{gone}");
    drop((serve, project));
    db.drop().await;
}
