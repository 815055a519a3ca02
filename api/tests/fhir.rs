//! The FHIR R4 interface end to end: results in every state of their life, read through
//! `serve` as Observations, orders as DiagnosticReports, the patient found by MRN, and
//! searchset Bundles of them; each status as a clinician's system must read it, what
//! each role may see, the refusals, and every answer checked against the FHIR
//! specification by HAPI FHIR's validator (`deploy/fhir-check.sh`).

mod support;

use lis_domain::actor::Role;
use lis_tests::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use support::{token, wait_healthy, wait_projected, ApiClient, Stack};

/// GET `path` with `bearer`: the status, the content type and the JSON answer.
async fn get(api: &ApiClient, bearer: Option<&str>, path: &str) -> (StatusCode, String, Value) {
    let mut r = api.http.get(format!("{}{path}", api.base));
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    (status, kind, r.json().await.unwrap_or(Value::Null))
}

/// Runs `deploy/fhir-check.sh` over `files`: whether it passed, and what it printed.
fn fhir_check(files: &[PathBuf]) -> (bool, String) {
    support::external_check("fhir-check.sh", files)
}

/// The address the test's server says clients reach it at (`LIS_PUBLIC_URL`).
const PUBLIC: &str = "https://lis.example.test";

/// The bundles of a search from `first`, following each `next` link (absolute, at
/// [`PUBLIC`]); each says `total`.
async fn follow(api: &ApiClient, bearer: &str, first: &str, total: i64) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut at = Some(first.to_string());
    while let Some(path) = at {
        let (s, _, bundle) = get(api, Some(bearer), &path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {bundle}");
        assert_eq!(bundle["total"], total, "{path}: {bundle}");
        assert_eq!(
            bundle["link"][0]["url"],
            format!("{PUBLIC}{path}"),
            "the self link: {bundle}"
        );
        at = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| {
                let url = l["url"].as_str().unwrap();
                url.strip_prefix(PUBLIC)
                    .expect("an absolute link")
                    .to_string()
            });
        pages.push(bundle);
        assert!(pages.len() <= 10, "the next links go round: {pages:?}");
    }
    pages
}

/// Asserts that the search at `path` sends no entry and counts `total` matches.
async fn empty_page(api: &ApiClient, bearer: &str, path: &str, total: i64) {
    let (s, _, bundle) = get(api, Some(bearer), path).await;
    assert_eq!(s, StatusCode::OK, "{path}: {bundle}");
    assert_eq!(
        (bundle["total"].as_i64(), bundle.get("entry")),
        (Some(total), None),
        "{path}: {bundle}"
    );
}

fn numeric(value: f64) -> Value {
    json!({"kind": "numeric", "value": value, "unit": "mmol/L"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reports_and_patients_are_served_as_valid_fhir() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    stack.set("LIS_PUBLIC_URL", PUBLIC.to_string());
    let serve = stack.spawn("serve", &["serve"]);
    let project = stack.spawn("project", &["project", "orders", "results"]);
    wait_healthy(&base, &serve, Duration::from_secs(30)).await;
    let api = ApiClient::new(&base);
    let reception = token("reception.1", Role::Reception);
    let phleb = token("phleb.1", Role::Phlebotomist);
    let tech = token("tech.1", Role::Technologist);
    let path = token("path.1", Role::Pathologist);
    let clinician = token("dr.rao", Role::Clinician);
    let analyst = token("analyst.1", Role::Analyst);

    // One serum tube, six tests, each taken to another point of a result's life.
    let tests = ["K", "NA", "CL", "CO2", "DENGUE_NS1", "HBSAG", "HIV"];
    let order = api
        .ok(&reception, "/orders", json!({
            "patient": {"mrn": "MRN-FHIR-1", "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
            "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": tests}))
        .await;
    let sample = api
        .ok(
            &phleb,
            "/samples",
            json!({"order_id": order, "accession_number": "ACC-FHIR-1",
            "specimen_type": "serum", "container": "red/SST", "tests": tests}),
        )
        .await;
    api.ok(&tech, &format!("/samples/{sample}/receive"), json!({}))
        .await;
    let mut ids = std::collections::BTreeMap::new();
    for (test, value) in [
        ("K", numeric(5.5)),
        (
            "NA",
            json!({"kind": "numeric", "value": 140, "unit": "mmol/L"}),
        ),
        (
            "CL",
            json!({"kind": "numeric", "value": 100, "unit": "mmol/L"}),
        ),
        (
            "CO2",
            json!({"kind": "numeric", "value": 24, "unit": "mmol/L"}),
        ),
        ("DENGUE_NS1", json!({"kind": "coded", "answer": "Positive"})),
        ("HBSAG", json!({"kind": "coded", "answer": "Nonreactive"})),
        ("HIV", json!({"kind": "coded", "answer": "Nonreactive"})),
    ] {
        let id = api
            .ok(
                &tech,
                "/results",
                json!({"sample_id": sample, "test_code": test, "value": value}),
            )
            .await;
        ids.insert(test, id);
    }
    let reason = json!({"reason": "checking the FHIR interface"});
    for test in ["K", "NA", "DENGUE_NS1"] {
        api.ok(&tech, &format!("/results/{}/verify", ids[test]), json!({}))
            .await;
        api.ok(
            &path,
            &format!("/results/{}/authorise", ids[test]),
            json!({}),
        )
        .await;
    }
    // Chloride verified, carbon dioxide only recorded: neither released.
    api.ok(&tech, &format!("/results/{}/verify", ids["CL"]), json!({}))
        .await;
    api.ok(
        &path,
        &format!("/results/{}/amend", ids["K"]),
        json!({"value": numeric(5.9), "reason": "instrument recalibrated"}),
    )
    .await;
    api.ok(
        &path,
        &format!("/results/{}/retract", ids["NA"]),
        reason.clone(),
    )
    .await;
    api.ok(
        &path,
        &format!("/results/{}/retract", ids["HBSAG"]),
        reason.clone(),
    )
    .await;
    api.ok(&tech, &format!("/results/{}/rerun", ids["HIV"]), reason)
        .await;
    wait_projected(
        &db,
        &["orders", "results"],
        Duration::from_secs(60),
        &[&serve, &project],
    )
    .await;
    let (_, _, placed) = get(&api, Some(&reception), &format!("/orders/{order}")).await;
    let patient = placed["patient_id"].as_str().unwrap().to_string();

    // What the lab sees: all six, in the status each has.
    let search = format!("/fhir/Observation?patient=Patient/{patient}");
    let (s, kind, lab) = get(&api, Some(&tech), &search).await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::OK, "application/fhir+json"),
        "{lab}"
    );
    assert_eq!(
        (lab["resourceType"].as_str(), lab["type"].as_str()),
        (Some("Bundle"), Some("searchset"))
    );
    let status_of = |bundle: &Value| -> std::collections::BTreeMap<String, String> {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let o = &e["resource"];
                let test = ids.iter().find(|(_, id)| o["id"] == id.as_str()).unwrap().0;
                (test.to_string(), o["status"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let expected = [
        ("CL", "preliminary"),
        ("CO2", "preliminary"),
        ("DENGUE_NS1", "final"),
        ("HBSAG", "cancelled"),
        ("HIV", "registered"),
        ("K", "amended"),
        ("NA", "entered-in-error"),
    ];
    let as_map = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(status_of(&lab), as_map(&expected));
    for entry in lab["entry"].as_array().unwrap() {
        let id = entry["resource"]["id"].as_str().unwrap();
        assert_eq!(entry["fullUrl"], format!("{PUBLIC}/fhir/Observation/{id}"));
    }
    // Searched by status, each finds what the mapping gives it (the database computes
    // the status to filter on; the mapping computes what is sent). All six are here.
    let statuses: std::collections::BTreeSet<&str> = expected.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses.len(), 6);
    for status in statuses {
        let (s, _, only) = get(&api, Some(&tech), &format!("{search}&status={status}")).await;
        assert_eq!(s, StatusCode::OK, "{only}");
        let want: Vec<(&str, &str)> = expected
            .iter()
            .copied()
            .filter(|(_, st)| *st == status)
            .collect();
        assert_eq!(status_of(&only), as_map(&want), "status={status}");
        assert_eq!(only["total"], want.len(), "status={status}");
    }
    let (_, _, standing) = get(&api, Some(&tech), &format!("{search}&status=final,amended")).await;
    assert_eq!(
        status_of(&standing),
        as_map(&[("DENGUE_NS1", "final"), ("K", "amended")])
    );
    assert_eq!(lab["total"], 7);

    // A clinician: what was released, and what was withdrawn after they could see it.
    let (s, _, seen) = get(&api, Some(&clinician), &search).await;
    assert_eq!(s, StatusCode::OK, "{seen}");
    assert_eq!(
        status_of(&seen),
        as_map(&[
            ("DENGUE_NS1", "final"),
            ("K", "amended"),
            ("NA", "entered-in-error")
        ])
    );
    assert_eq!(seen["total"], 3);
    for hidden in ["CL", "CO2", "HBSAG", "HIV"] {
        let (s, kind, problem) = get(
            &api,
            Some(&clinician),
            &format!("/fhir/Observation/{}", ids[hidden]),
        )
        .await;
        assert_eq!(
            (s, kind.as_str()),
            (StatusCode::NOT_FOUND, "application/problem+json"),
            "{problem}"
        );
    }

    // One result, read alone: the amended potassium, with what a report must show.
    let (s, kind, k) = get(
        &api,
        Some(&clinician),
        &format!("/fhir/Observation/{}", ids["K"]),
    )
    .await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::OK, "application/fhir+json"),
        "{k}"
    );
    assert_eq!(k["status"], "amended");
    assert_eq!(
        k["code"]["coding"][0],
        json!({"system": "http://loinc.org", "code": "2823-3"})
    );
    assert_eq!(k["code"]["text"], "Potassium");
    assert_eq!(k["valueQuantity"]["value"], 5.9);
    assert_eq!(k["valueQuantity"]["system"], "http://unitsofmeasure.org");
    assert_eq!(k["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(k["referenceRange"][0]["low"]["value"], 3.5);
    assert_eq!(k["referenceRange"][0]["high"]["value"], 5.2);
    assert_eq!(
        k["referenceRange"][0]["text"], "3.5–5.2 mmol/L",
        "{}",
        k["referenceRange"]
    );
    assert_eq!(
        k["performer"],
        json!([{"display": "path.1"}, {"display": "tech.1"}])
    );
    assert!(
        k["note"].as_array().unwrap().iter().any(|n| n["text"]
            == "Amended after release (1 time); the value before the latest amendment: 5.5 mmol/L"),
        "{}",
        k["note"]
    );
    assert_eq!(
        k["subject"]["identifier"]["value"],
        format!("urn:uuid:{patient}")
    );
    assert_eq!(k["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(
        k["specimen"]["identifier"]["value"],
        format!("urn:uuid:{sample}")
    );
    let (_, _, na) = get(
        &api,
        Some(&clinician),
        &format!("/fhir/Observation/{}", ids["NA"]),
    )
    .await;
    assert_eq!(
        na["note"][0]["text"],
        "Retracted: checking the FHIR interface"
    );
    let (_, _, dengue) = get(
        &api,
        Some(&tech),
        &format!("/fhir/Observation/{}", ids["DENGUE_NS1"]),
    )
    .await;
    assert_eq!(dengue["valueCodeableConcept"]["text"], "Positive");
    // The amended potassium is issued when it was amended, after the dengue result that
    // was released with it (RFC 3339 in UTC compares as text).
    let issued = |o: &Value| o["issued"].as_str().unwrap().to_string();
    assert!(
        issued(&k) > issued(&dengue),
        "{} {}",
        issued(&k),
        issued(&dengue)
    );

    // Narrowed by code and cut by _count; the total still counts every match.
    let (_, _, only_k) = get(
        &api,
        Some(&tech),
        &format!("{search}&code=http://loinc.org%7C2823-3"),
    )
    .await;
    assert_eq!(status_of(&only_k), as_map(&[("K", "amended")]));
    let (_, _, bare) = get(
        &api,
        Some(&tech),
        &format!("/fhir/Observation?patient={patient}&code=2823-3"),
    )
    .await;
    assert_eq!(bare["entry"], only_k["entry"]);
    // Two at a time: the next links lead through all seven, in the one page's order.
    let paged = follow(&api, &tech, &format!("{search}&_count=2"), 7).await;
    assert_eq!(paged.len(), 4, "pages of 2, 2, 2 and 1");
    let ids_of = |bundles: &[Value]| -> Vec<Value> {
        bundles
            .iter()
            .flat_map(|b| {
                b["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["resource"]["id"].clone())
            })
            .collect()
    };
    assert_eq!(ids_of(&paged), ids_of(std::slice::from_ref(&lab)));
    // A page past the last still counts every match.
    let past = format!("{search}&_page=0.{}", uuid::Uuid::nil());
    empty_page(&api, &tech, &past, 7).await;
    empty_page(
        &api,
        &tech,
        &format!("/fhir/Observation?patient={}", uuid::Uuid::new_v4()),
        0,
    )
    .await;

    // Refused, each naming its parameter; an unsupported filter is not ignored.
    for (query, pointer) in [
        ("patient=x", "/patient"),
        (&format!("patient={patient}&_count=0") as &str, "/_count"),
        (&format!("patient={patient}&_count=1001"), "/_count"),
        (
            &format!("patient={patient}&code=http://snomed.info/sct%7C1234"),
            "/code",
        ),
        (&format!("patient={patient}&date=ge2026-03-03"), "/date"),
        (&format!("patient={patient}&_page=1.x"), "/_page"),
        (
            &format!("patient={patient}&status=final,released"),
            "/status",
        ),
    ] {
        let (s, kind, problem) =
            get(&api, Some(&tech), &format!("/fhir/Observation?{query}")).await;
        assert_eq!(
            (s, kind.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "application/problem+json"),
            "{query}: {problem}"
        );
        assert_eq!(
            problem["errors"][0]["pointer"], pointer,
            "{query}: {problem}"
        );
    }
    let (s, _, _) = get(&api, None, &search).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = get(&api, Some(&analyst), &search).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The capability statement, without a token.
    let (s, kind, capabilities) = get(&api, None, "/fhir/metadata").await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::OK, "application/fhir+json")
    );
    assert_eq!(capabilities["fhirVersion"], "4.0.1");

    // The order as a report: partial (a chloride and an HIV test are still to come),
    // holding what was released of it, the withdrawn sodium included.
    let (s, kind, report) = get(
        &api,
        Some(&clinician),
        &format!("/fhir/DiagnosticReport/{order}"),
    )
    .await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::OK, "application/fhir+json"),
        "{report}"
    );
    assert_eq!(report["status"], "partial");
    let referenced: std::collections::BTreeSet<String> = report["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reference"].as_str().unwrap().to_string())
        .collect();
    let released: std::collections::BTreeSet<String> = ["K", "NA", "DENGUE_NS1"]
        .iter()
        .map(|t| format!("Observation/{}", ids[t]))
        .collect();
    assert_eq!(referenced, released);
    assert_eq!(report["performer"], json!([{"display": "path.1"}]));
    assert_eq!(report["identifier"][1]["value"], placed["order_number"]);
    // A second order for the same patient, released whole: final, and listed first.
    let second = api
        .ok(&reception, "/orders", json!({
            "patient": {"mrn": "MRN-FHIR-1", "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
            "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": ["NA"]}))
        .await;
    let tube = api
        .ok(
            &phleb,
            "/samples",
            json!({"order_id": second, "accession_number": "ACC-FHIR-2",
            "specimen_type": "serum", "container": "red/SST", "tests": ["NA"]}),
        )
        .await;
    api.ok(&tech, &format!("/samples/{tube}/receive"), json!({}))
        .await;
    let sodium = api
        .ok(
            &tech,
            "/results",
            json!({"sample_id": tube, "test_code": "NA",
            "value": {"kind": "numeric", "value": 141, "unit": "mmol/L"}}),
        )
        .await;
    api.ok(&tech, &format!("/results/{sodium}/verify"), json!({}))
        .await;
    api.ok(&path, &format!("/results/{sodium}/authorise"), json!({}))
        .await;
    wait_projected(
        &db,
        &["orders", "results"],
        Duration::from_secs(60),
        &[&serve, &project],
    )
    .await;
    // Its sodium, collected last, leads the patient's results.
    let (_, _, latest) = get(&api, Some(&clinician), &format!("{search}&_count=1")).await;
    assert_eq!(
        latest["entry"][0]["resource"]["id"],
        sodium.as_str(),
        "{latest}"
    );
    assert_eq!(latest["total"], 4);
    let reports = format!("/fhir/DiagnosticReport?patient=Patient/{patient}");
    let (s, kind, both) = get(&api, Some(&clinician), &reports).await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::OK, "application/fhir+json"),
        "{both}"
    );
    let listed: Vec<(&str, &str)> = both["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap(),
                e["resource"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(second.as_str(), "final"), (order.as_str(), "partial")],
        "{both}"
    );
    assert_eq!(both["total"], 2);
    // With the Observations they refer to, in one Bundle; the total counts the reports.
    let (s, _, with_results) = get(
        &api,
        Some(&clinician),
        &format!("{reports}&_include=DiagnosticReport:result"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{with_results}");
    assert_eq!(with_results["total"], 2);
    let entries = with_results["entry"].as_array().unwrap();
    let in_mode = |mode: &str| -> std::collections::BTreeSet<String> {
        entries
            .iter()
            .filter(|e| e["search"]["mode"] == mode)
            .map(|e| {
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                )
            })
            .collect()
    };
    let referred: std::collections::BTreeSet<String> = both["entry"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["resource"]["result"].as_array().unwrap().iter())
        .map(|r| r["reference"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(referred.len(), 4, "{both}");
    assert_eq!(in_mode("include"), referred);
    assert_eq!(in_mode("match").len(), 2);
    let one_by_one = follow(&api, &clinician, &format!("{reports}&_count=1"), 2).await;
    assert_eq!(ids_of(&one_by_one), [json!(second), json!(order)]);
    empty_page(
        &api,
        &clinician,
        &format!("{reports}&_page=0.{}", uuid::Uuid::nil()),
        2,
    )
    .await;
    let (s, _, _) = get(
        &api,
        Some(&clinician),
        &format!("/fhir/DiagnosticReport/{}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for (query, pointer) in [
        ("patient=Patient/x", "/patient"),
        (&format!("patient={patient}&code=11502-2") as &str, "/code"),
        (
            &format!("patient={patient}&_include=DiagnosticReport:subject"),
            "/_include",
        ),
    ] {
        let (s, _, problem) = get(
            &api,
            Some(&tech),
            &format!("/fhir/DiagnosticReport?{query}"),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {problem}");
        assert_eq!(
            problem["errors"][0]["pointer"], pointer,
            "{query}: {problem}"
        );
    }
    let (s, _, _) = get(&api, Some(&analyst), &reports).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A clinician's system finds its patient by MRN (any case), then reads them.
    let pseudonyms = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM patient_pseudonyms")
            .fetch_one(&db.app)
            .await
            .unwrap()
    };
    let known = pseudonyms().await;
    let (s, kind, by_mrn) = get(
        &api,
        Some(&clinician),
        "/fhir/Patient?identifier=mrn-fhir-1",
    )
    .await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::OK, "application/fhir+json"),
        "{by_mrn}"
    );
    assert_eq!(by_mrn["total"], 1);
    let asha = &by_mrn["entry"][0]["resource"];
    assert_eq!(asha["id"], patient.as_str());
    assert_eq!(asha["name"], json!([{"text": "Asha Verma"}]));
    assert_eq!(
        (asha["gender"].as_str(), asha["birthDate"].as_str()),
        (Some("female"), Some("1980-05-17"))
    );
    assert!(
        asha["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["value"] == "MRN-FHIR-1" && i["type"]["coding"][0]["code"] == "MR"),
        "{asha}"
    );
    assert!(asha.get("meta").is_none(), "{asha}");
    let (_, _, read) = get(&api, Some(&clinician), &format!("/fhir/Patient/{patient}")).await;
    assert_eq!(&read, asha);
    let (s, _, nobody) = get(
        &api,
        Some(&clinician),
        "/fhir/Patient?identifier=MRN-NOT-HERE",
    )
    .await;
    assert_eq!(
        (s, nobody["total"].as_i64(), nobody.get("entry")),
        (StatusCode::OK, Some(0), None)
    );
    assert_eq!(
        pseudonyms().await,
        known,
        "asking for an MRN made a patient"
    );
    // An auditor sees them masked, and whole only by breaking glass, which is logged.
    let auditor = token("audit.1", Role::Auditor);
    let (_, _, masked) = get(&api, Some(&auditor), &format!("/fhir/Patient/{patient}")).await;
    assert_eq!(masked["meta"]["security"][0]["code"], "MASKED", "{masked}");
    assert_eq!(
        (
            masked["name"][0]["text"].as_str(),
            masked["birthDate"].as_str()
        ),
        (Some("A*** V****"), Some("1980"))
    );
    let shown = masked.to_string();
    for secret in ["MRN-FHIR-1", "Verma", "1980-05-17"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // An admin sees them masked too, and may not break glass.
    let admin = token("admin.1", Role::Admin);
    let (_, _, as_admin) = get(&api, Some(&admin), &format!("/fhir/Patient/{patient}")).await;
    assert_eq!(as_admin, masked);
    let glass = api
        .http
        .get(format!("{base}/fhir/Patient/{patient}"))
        .bearer_auth(&auditor)
        .header(
            "Break-Glass-Reason",
            "NABL assessment of the FHIR interface",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(glass.status(), StatusCode::OK);
    assert_eq!(glass.json::<Value>().await.unwrap(), *asha);
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM break_glass_log WHERE resource = $1")
            .bind(format!("fhir/Patient/{patient}"))
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(logged, 1);
    // Finding a patient by MRN ties a person to their record: refused to whoever sees
    // identity masked, allowed to an auditor breaking glass, which is logged.
    let by_mrn_path = format!("{base}/fhir/Patient?identifier=MRN-FHIR-1");
    for (who, glass_reason) in [(&auditor, None), (&admin, None), (&admin, Some("curious"))] {
        let mut request = api.http.get(&by_mrn_path).bearer_auth(who);
        if let Some(reason) = glass_reason {
            request = request.header("Break-Glass-Reason", reason);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }
    let glass = api
        .http
        .get(&by_mrn_path)
        .bearer_auth(&auditor)
        .header(
            "Break-Glass-Reason",
            "tracing a complaint about this patient's report",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(glass.status(), StatusCode::OK);
    assert_eq!(
        glass.json::<Value>().await.unwrap()["entry"][0]["resource"],
        *asha
    );
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM break_glass_log WHERE resource = $1")
            .bind(format!("fhir/Patient/{patient}"))
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(logged, 2);
    let (s, _, _) = get(&api, Some(&analyst), "/fhir/Patient?identifier=MRN-FHIR-1").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for bad in ["MRN%20FHIR", "%20MRN-FHIR-1"] {
        let path = format!("/fhir/Patient?identifier={bad}");
        let (s, _, problem) = get(&api, Some(&clinician), &path).await;
        assert_eq!(
            (s, problem["errors"][0]["pointer"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("/identifier")),
            "{path}: {problem}"
        );
    }

    // Every answer is valid FHIR R4 to HAPI FHIR's validator…
    let dir = stack.logs.join("fhir");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    let mut write = |name: &str, v: &Value| {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        files.push(file);
    };
    write("lab-bundle", &lab);
    write("clinician-bundle", &seen);
    write("empty-bundle", &nobody);
    write("capabilities", &capabilities);
    write("report-partial", &report);
    write("report-bundle", &both);
    write("report-bundle-with-results", &with_results);
    write("paged-bundle", &paged[0]);
    write("patient-bundle", &by_mrn);
    write("patient-masked", &masked);
    for entry in lab["entry"].as_array().unwrap() {
        let o = &entry["resource"];
        let test = ids.iter().find(|(_, id)| o["id"] == id.as_str()).unwrap().0;
        write(&format!("observation-{test}"), o);
    }
    let (valid, report) = fhir_check(&files);
    assert!(valid, "HAPI FHIR's validator found errors:\n{report}");
    assert!(
        report.contains(&format!("files: {}, errors: 0", files.len())),
        "{report}"
    );

    // …which does refuse what is not: a status FHIR does not have, a value with no number.
    for (name, pointer, wrong, said) in [
        ("status", "/status", json!("released"), "released"),
        (
            "value",
            "/valueQuantity/value",
            json!("5.9 mmol/L"),
            "5.9 mmol/L",
        ),
    ] {
        let mut bad = k.clone();
        *bad.pointer_mut(pointer).unwrap() = wrong;
        let file = dir.join(format!("wrong-{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&bad).unwrap()).unwrap();
        let (valid, report) = fhir_check(&[file]);
        assert!(
            !valid,
            "the validator passed an Observation with a wrong {name}:\n{report}"
        );
        assert!(report.contains(said), "{report}");
    }

    // Erased: the patient is gone, and their MRN finds no one.
    let admin = token("admin.1", Role::Admin);
    api.ok(
        &admin,
        &format!("/patients/{patient}/erase"),
        json!({"reason": "the patient asked to be forgotten"}),
    )
    .await;
    let (s, kind, gone) = get(&api, Some(&clinician), &format!("/fhir/Patient/{patient}")).await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::GONE, "application/problem+json"),
        "{gone}"
    );
    let (_, _, none) = get(
        &api,
        Some(&clinician),
        "/fhir/Patient?identifier=MRN-FHIR-1",
    )
    .await;
    assert_eq!(none["total"], 0, "{none}");

    drop((serve, project));
    db.drop().await;
}

/// The entries' resources of a Bundle.
fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_specimens_are_served_as_valid_fhir() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    stack.set("LIS_PUBLIC_URL", PUBLIC.to_string());
    let serve = stack.spawn("serve", &["serve"]);
    let project = stack.spawn("project", &["project", "orders", "specimens", "results"]);
    wait_healthy(&base, &serve, Duration::from_secs(30)).await;
    let api = ApiClient::new(&base);
    let reception = token("reception.1", Role::Reception);
    let phleb = token("phleb.1", Role::Phlebotomist);
    let tech = token("tech.1", Role::Technologist);
    let path = token("path.1", Role::Pathologist);
    let clinician = token("dr.rao", Role::Clinician);

    // A STAT order of three tests, one cancelled; its first tube rejected, a second one
    // drawn and received, an aliquot split from it; potassium released.
    let patient_body = json!({"mrn": "MRN-FHIR-SR", "name": "Ravi Kumar", "sex": "male", "date_of_birth": "1971-02-03"});
    let order = api
        .ok(
            &reception,
            "/orders",
            json!({
            "patient": patient_body, "ordering_clinician": "Dr Rao", "priority": "stat",
            "collection_site": "Emergency", "tests": ["K", "NA", "CL"]}),
        )
        .await;
    api.ok(
        &reception,
        &format!("/orders/{order}/tests/CL/cancel"),
        json!({"reason": "ordered twice"}),
    )
    .await;
    let tube = |accession: &str| {
        json!({"order_id": order, "accession_number": accession, "specimen_type": "serum",
               "container": "red/SST", "tests": ["K", "NA"]})
    };
    let first = api.ok(&phleb, "/samples", tube("ACC-FHIR-SR1")).await;
    api.ok(
        &tech,
        &format!("/samples/{first}/reject"),
        json!({"reason": "haemolysed", "detail": "grossly pink"}),
    )
    .await;
    let second = api.ok(&phleb, "/samples", tube("ACC-FHIR-SR2")).await;
    api.ok(&tech, &format!("/samples/{second}/receive"), json!({}))
        .await;
    let (s, split) = api
        .post(
            &tech,
            &format!("/samples/{second}/aliquots"),
            &json!({"children": [{"accession_number": "ACC-FHIR-SR2-A1", "tests": ["K"]}]}),
        )
        .await;
    assert!(s.is_success(), "{split}");
    let aliquot = split["children"][0]["id"].as_str().unwrap().to_string();
    let k = api
        .ok(
            &tech,
            "/results",
            json!({"sample_id": second, "test_code": "K", "value": numeric(4.2)}),
        )
        .await;
    api.ok(&tech, &format!("/results/{k}/verify"), json!({}))
        .await;
    api.ok(&path, &format!("/results/{k}/authorise"), json!({}))
        .await;
    // A later order of one test, cancelled whole.
    let later = api
        .ok(
            &reception,
            "/orders",
            json!({
            "patient": patient_body, "ordering_clinician": "Dr Rao", "priority": "routine",
            "collection_site": "OPD 2", "tests": ["GLU_F"]}),
        )
        .await;
    api.ok(
        &reception,
        &format!("/orders/{later}/cancel"),
        json!({"reason": "the patient had eaten"}),
    )
    .await;
    let projected = |names: &'static [&'static str]| {
        let (db, serve, project) = (&db, &serve, &project);
        async move { wait_projected(db, names, Duration::from_secs(60), &[serve, project]).await }
    };
    projected(&["orders", "specimens", "results"]).await;
    let (_, _, placed) = get(&api, Some(&reception), &format!("/orders/{order}")).await;
    let patient = placed["patient_id"].as_str().unwrap().to_string();
    let order_number = placed["order_number"].as_str().unwrap().to_string();

    // The order: active (sodium still to come), STAT, its two open tests listed and
    // coded, the cancelled one noted, its three tubes referred to.
    let (s, kind, request) = get(
        &api,
        Some(&clinician),
        &format!("/fhir/ServiceRequest/{order}"),
    )
    .await;
    assert_eq!(
        (s, kind.as_str()),
        (StatusCode::OK, "application/fhir+json"),
        "{request}"
    );
    assert_eq!(
        (&request["status"], &request["intent"], &request["priority"]),
        (&json!("active"), &json!("order"), &json!("stat")),
        "{request}"
    );
    assert_eq!(request["requisition"]["value"], order_number.as_str());
    assert_eq!(request["code"]["text"], "Potassium, Sodium", "{request}");
    let coded: Vec<&str> = request["orderDetail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(coded, ["2823-3", "2951-2"], "{request}");
    assert_eq!(
        request["note"][0]["text"], "Chloride cancelled: ordered twice",
        "{request}"
    );
    let tubes: Vec<&str> = request["specimen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        tubes,
        [
            format!("Specimen/{first}"),
            format!("Specimen/{second}"),
            format!("Specimen/{aliquot}")
        ],
        "{request}"
    );
    // The patient's orders, newest first: the cancelled one is revoked.
    let search = format!("/fhir/ServiceRequest?patient={patient}");
    let (s, _, requests) = get(&api, Some(&clinician), &search).await;
    assert_eq!(s, StatusCode::OK, "{requests}");
    let found = resources(&requests);
    assert_eq!(requests["total"], 2, "{requests}");
    assert_eq!(
        (found[0]["id"].as_str(), found[0]["status"].as_str()),
        (Some(later.as_str()), Some("revoked")),
        "{requests}"
    );
    assert_eq!(
        found[0]["code"]["coding"][0]["code"], "1558-6",
        "{requests}"
    );
    assert_eq!(found[1], request, "the search and the read agree");
    let by_number = format!(
        "/fhir/ServiceRequest?patient={patient}&requisition={}",
        order_number.to_lowercase()
    );
    let (_, _, one) = get(&api, Some(&clinician), &by_number).await;
    assert_eq!(
        (
            one["total"].as_i64(),
            resources(&one).first().map(|r| r["id"].clone())
        ),
        (Some(1), Some(json!(order))),
        "{one}"
    );

    // The tubes: the rejected one unsatisfactory, with its reason coded and a
    // recollection asked for; the aliquot names its parent.
    let (s, _, rejected) = get(&api, Some(&clinician), &format!("/fhir/Specimen/{first}")).await;
    assert_eq!(s, StatusCode::OK, "{rejected}");
    assert_eq!(rejected["status"], "unsatisfactory", "{rejected}");
    assert_eq!(rejected["condition"][0]["coding"][0]["code"], "HEM");
    assert_eq!(
        rejected["note"][0]["text"],
        "Rejected on receipt, not tested: haemolysed (grossly pink); a recollection was requested",
        "{rejected}"
    );
    assert_eq!(
        rejected["request"][0]["reference"],
        format!("ServiceRequest/{order}")
    );
    let (_, _, child) = get(&api, Some(&clinician), &format!("/fhir/Specimen/{aliquot}")).await;
    assert_eq!(
        (&child["status"], &child["parent"][0]["reference"]),
        (&json!("available"), &json!(format!("Specimen/{second}"))),
        "{child}"
    );
    let pages = follow(
        &api,
        &clinician,
        &format!("/fhir/Specimen?_count=2&patient=Patient/{patient}"),
        3,
    )
    .await;
    assert_eq!(pages.len(), 2, "{pages:?}");
    let drawn: Vec<String> = pages
        .iter()
        .flat_map(resources)
        .map(|r| {
            r["accessionIdentifier"]["value"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Newest first (an aliquot is as old as its parent).
    assert_eq!(drawn.len(), 3, "{pages:?}");
    assert_eq!(drawn[2], "ACC-FHIR-SR1", "{pages:?}");
    assert!(
        drawn.contains(&"ACC-FHIR-SR2".to_string())
            && drawn.contains(&"ACC-FHIR-SR2-A1".to_string()),
        "{pages:?}"
    );
    let (_, _, scanned) = get(&api, Some(&phleb), "/fhir/Specimen?accession=acc-fhir-sr2").await;
    assert_eq!(
        (
            scanned["total"].as_i64(),
            resources(&scanned).first().map(|r| r["id"].clone())
        ),
        (Some(1), Some(json!(second))),
        "{scanned}"
    );
    // The released Observation's references lead to its order and its tube.
    let (_, _, observation) = get(&api, Some(&clinician), &format!("/fhir/Observation/{k}")).await;
    for pointer in ["/basedOn/0/reference", "/specimen/reference"] {
        let to = observation
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap();
        let (s, _, there) = get(&api, Some(&clinician), &format!("/fhir/{to}")).await;
        assert_eq!(s, StatusCode::OK, "{to}: {there}");
    }
    // Refused, by name: no patient and no accession, a bad one, an unsupported parameter.
    for (path, pointer) in [
        ("/fhir/Specimen".to_string(), "/patient"),
        (
            "/fhir/Specimen?accession=no%20such".to_string(),
            "/accession",
        ),
        (
            format!("/fhir/Specimen?patient={patient}&type=serum"),
            "/type",
        ),
        (
            format!("/fhir/ServiceRequest?patient={patient}&requisition=x"),
            "/requisition",
        ),
        (
            "/fhir/ServiceRequest?requisition=ORD-1".to_string(),
            "/patient",
        ),
    ] {
        let (s, _, problem) = get(&api, Some(&clinician), &path).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {problem}");
        if !pointer.is_empty() {
            assert_eq!(
                problem["errors"][0]["pointer"], pointer,
                "{path}: {problem}"
            );
        }
    }
    for path in [
        "/fhir/Specimen/0b4a9a5e-1111-4c3a-9d7e-2d2c4c9a0002",
        "/fhir/ServiceRequest/nope",
    ] {
        let (s, _, _) = get(&api, Some(&clinician), path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }

    // Sodium released: the order is completed.
    let na = api
        .ok(
            &tech,
            "/results",
            json!({"sample_id": second, "test_code": "NA", "value": {"kind": "numeric", "value": 139, "unit": "mmol/L"}}),
        )
        .await;
    api.ok(&tech, &format!("/results/{na}/verify"), json!({}))
        .await;
    api.ok(&path, &format!("/results/{na}/authorise"), json!({}))
        .await;
    projected(&["orders"]).await;
    let (_, _, done) = get(
        &api,
        Some(&clinician),
        &format!("/fhir/ServiceRequest/{order}"),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");

    // Every answer is valid FHIR R4 to HAPI FHIR's validator.
    let dir = stack.logs.join("fhir-orders");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (name, v) in [
        ("request", &request),
        ("request-completed", &done),
        ("requests-bundle", &requests),
        ("specimen-rejected", &rejected),
        ("specimen-aliquot", &child),
        ("specimens-page", &pages[0]),
        ("specimen-scanned", &scanned),
        ("observation-with-references", &observation),
    ] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        files.push(file);
    }
    let (valid, report) = fhir_check(&files);
    assert!(valid, "HAPI FHIR's validator found errors:\n{report}");
    assert!(
        report.contains(&format!("files: {}, errors: 0", files.len())),
        "{report}"
    );
    drop((serve, project));
    db.drop().await;
}
