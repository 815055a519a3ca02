//! SQL-injection strings in every free-text field the API takes, through a whole lab
//! flow against the running `lisledger serve`: free text (names, places, notes, reasons,
//! labels) is stored verbatim and read back as sent; text the catalogue must match (a
//! specimen type, a container, a unit, a coded answer) is refused with 422 and writes
//! nothing; a login naming such a user is a 401. Afterwards every table is there and
//! every hash chain is sound. The fields are read from the OpenAPI document, so a new
//! free-text field that this flow does not fill fails the test.

mod support;

use lis_domain::actor::Role;
use lis_tests::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use support::{token, wait_healthy, ApiClient, Stack};

/// What an attacker types, one per field in turn.
const PAYLOADS: [&str; 7] = [
    "Robert'); DROP TABLE events; --",
    "x' OR '1'='1",
    "'; TRUNCATE events CASCADE; --",
    "\\'; SELECT pg_sleep(10); --",
    "1; UPDATE users SET role = 'admin' --",
    "$$; DELETE FROM events; $$",
    "\" OR \"\"=\"",
];

/// The request-body fields that take free text: strings that are neither identifiers
/// (a pattern of allowed characters), nor dates, nor a fixed word. As `METHOD /path
/// /pointer`, with `*` for an array's items.
fn free_text_fields(spec: &Value) -> BTreeSet<String> {
    fn walk(spec: &Value, schema: &Value, pointer: String, out: &mut BTreeSet<String>) {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap();
            return walk(spec, &spec["components"]["schemas"][name], pointer, out);
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for s in schema[key].as_array().into_iter().flatten() {
                walk(spec, s, pointer.clone(), out);
            }
        }
        for (name, s) in schema["properties"].as_object().into_iter().flatten() {
            walk(spec, s, format!("{pointer}/{name}"), out);
        }
        if schema.get("items").is_some() {
            walk(spec, &schema["items"], format!("{pointer}/*"), out);
        }
        let is_string = schema["type"] == "string"
            || schema["type"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("string")));
        let fixed = ["const", "enum", "format"]
            .iter()
            .any(|k| schema.get(k).is_some());
        let text_pattern = schema["pattern"]
            .as_str()
            .is_none_or(|p| p == "\\S" || p.starts_with("^[^\\u0000"));
        if is_string && !fixed && text_pattern {
            out.insert(pointer);
        }
    }
    let mut out = BTreeSet::new();
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                continue;
            }
            let mut fields = BTreeSet::new();
            walk(spec, schema, String::new(), &mut fields);
            out.extend(
                fields
                    .into_iter()
                    .map(|f| format!("{} {path} {f}", method.to_uppercase())),
            );
        }
    }
    out
}

/// The flow's bookkeeping: which fields got a payload, and which payloads must come back.
#[derive(Default)]
struct Evil {
    next: usize,
    filled: BTreeSet<String>,
    stored: Vec<String>,
}

impl Evil {
    /// A payload for `field` (`METHOD /path /pointer`), numbered so that each is told
    /// apart from the others.
    fn text(&mut self, field: &str) -> String {
        self.filled.insert(field.to_string());
        let payload = PAYLOADS[self.next % PAYLOADS.len()];
        self.next += 1;
        format!("{payload} [{}]", self.next)
    }

    /// The same, and it must be stored verbatim.
    fn kept(&mut self, field: &str) -> String {
        let text = self.text(field);
        self.stored.push(text.clone());
        text
    }
}

#[tokio::test]
async fn injection_strings_in_every_free_text_field_are_stored_verbatim_or_refused() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    let api = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;
    let c = ApiClient::new(&base);
    let spec = c.spec().await;
    let fields = free_text_fields(&spec);
    assert!(fields.len() > 20, "{fields:?}");
    let [reception, phleb, tech, path, admin, auditor] = [
        ("reception.1", Role::Reception),
        ("phleb.1", Role::Phlebotomist),
        ("tech.1", Role::Technologist),
        ("path.1", Role::Pathologist),
        ("admin.1", Role::Admin),
        ("audit.1", Role::Auditor),
    ]
    .map(|(user, role)| token(user, role));
    let mut e = Evil::default();
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&db.app)
            .await
            .unwrap()
    };
    let now = chrono::Utc::now().to_rfc3339();

    // Orders: every free-text field of the order and of the patient's identity.
    let order = |mrn: &str, e: &mut Evil| {
        json!({
            "patient": {"mrn": mrn, "name": e.kept("POST /orders /patient/name"), "sex": "female",
                        "date_of_birth": "1980-05-17", "address": e.kept("POST /orders /patient/address")},
            "ordering_clinician": e.kept("POST /orders /ordering_clinician"),
            "priority": "routine",
            "collection_site": e.kept("POST /orders /collection_site"),
            "clinical_notes": e.kept("POST /orders /clinical_notes"),
            "tests": ["K", "NA"]
        })
    };
    let body = order("MRN-INJ-1", &mut e);
    let order_a = c.ok(&reception, "/orders", body).await;
    let body = order("MRN-INJ-2", &mut e);
    // Erased below: the second patient's identity and the order's sealed notes.
    let erased: Vec<String> = [
        &body["patient"]["name"],
        &body["patient"]["address"],
        &body["clinical_notes"],
    ]
    .map(|v| v.as_str().unwrap().to_string())
    .into();
    let order_b = c.ok(&reception, "/orders", body).await;
    let reason = json!({"reason": e.kept("POST /orders/{id}/tests/{code}/cancel /reason")});
    c.ok(
        &reception,
        &format!("/orders/{order_b}/tests/NA/cancel"),
        reason,
    )
    .await;
    let reason = json!({"reason": e.kept("POST /orders/{id}/cancel /reason")});
    c.ok(&reception, &format!("/orders/{order_b}/cancel"), reason)
        .await;

    // A specimen: what the catalogue must match is refused; the hand-over's text is kept.
    let before = events().await;
    let collect = |specimen: String, container: String| {
        json!({"order_id": order_a, "accession_number": "ACC-INJ-1", "specimen_type": specimen,
               "container": container, "tests": ["K", "NA"]})
    };
    let body = collect(e.text("POST /samples /specimen_type"), "red/SST".into());
    c.refused(&phleb, "/samples", body, "/tests/0").await;
    let body = collect("serum".into(), e.text("POST /samples /container"));
    c.refused(&phleb, "/samples", body, "/tests/0").await;
    assert_eq!(
        events().await,
        before,
        "a refused collection wrote an event"
    );
    let sample = c
        .ok(
            &phleb,
            "/samples",
            collect("serum".into(), "red/SST".into()),
        )
        .await;
    let handover = json!({"from": e.kept("POST /samples/{id}/handover /from"),
                          "to": e.kept("POST /samples/{id}/handover /to"),
                          "location": e.kept("POST /samples/{id}/handover /location"), "at": now});
    c.ok(&phleb, &format!("/samples/{sample}/handover"), handover)
        .await;
    let receive = json!({"condition": {"status": "compromised",
                                       "note": e.kept("POST /samples/{id}/receive /condition/note")}});
    c.ok(&tech, &format!("/samples/{sample}/receive"), receive)
        .await;

    // Results: a unit or coded answer the catalogue does not know is refused; a
    // critical potassium is phoned through, corrected, verified, released, amended and
    // retracted, each with its text; sodium is sent for a rerun.
    let before = events().await;
    let record = |test: &str, value: Value, e: &mut Evil| {
        json!({"sample_id": sample, "test_code": test, "value": value,
               "method": e.kept("POST /results /method"),
               "instrument": e.kept("POST /results /instrument"),
               "raw_message": e.kept("POST /results /raw_message")})
    };
    // Text for the requests refused whole (numbered apart, to be told from the kept).
    let mut scratch = Evil {
        next: 1000,
        ..Evil::default()
    };
    let numeric =
        json!({"kind": "numeric", "value": 7.0, "unit": e.text("POST /results /value/unit")});
    let body = record("K", numeric, &mut scratch);
    c.refused(&tech, "/results", body, "/value").await;
    let coded = json!({"kind": "coded", "answer": e.text("POST /results /value/answer")});
    let body = record("K", coded, &mut scratch);
    c.refused(&tech, "/results", body, "/value").await;
    assert_eq!(events().await, before, "a refused result wrote an event");
    let body = record(
        "K",
        json!({"kind": "numeric", "value": 7.0, "unit": "mmol/L"}),
        &mut e,
    );
    let k = c.ok(&tech, "/results", body).await;
    // A correction (and below, an amendment) in a unit or an answer the test does not
    // have: refused, nothing written.
    let bad_values = |action: &'static str, e: &mut Evil| {
        [
            json!({"value": {"kind": "numeric", "value": 7.1,
                             "unit": e.text(&format!("POST /results/{{id}}/{action} /value/unit"))},
                   "reason": "checked"}),
            json!({"value": {"kind": "coded",
                             "answer": e.text(&format!("POST /results/{{id}}/{action} /value/answer"))},
                   "reason": "checked"}),
        ]
    };
    let before = events().await;
    for body in bad_values("correct", &mut e) {
        c.refused(&tech, &format!("/results/{k}/correct"), body, "/value")
            .await;
    }
    assert_eq!(
        events().await,
        before,
        "a refused correction wrote an event"
    );
    let correct = json!({"value": {"kind": "numeric", "value": 7.1, "unit": "mmol/L"},
                         "reason": e.kept("POST /results/{id}/correct /reason")});
    c.ok(&tech, &format!("/results/{k}/correct"), correct).await;
    let notify = json!({"notified_person": e.kept("POST /results/{id}/critical-notifications /notified_person"),
                        "method": "phone",
                        "value_conveyed": e.kept("POST /results/{id}/critical-notifications /value_conveyed"),
                        "read_back_confirmed": true, "notified_at": now});
    c.ok(
        &tech,
        &format!("/results/{k}/critical-notifications"),
        notify,
    )
    .await;
    c.ok(&tech, &format!("/results/{k}/verify"), json!({}))
        .await;
    c.ok(&path, &format!("/results/{k}/authorise"), json!({}))
        .await;
    let before = events().await;
    for body in bad_values("amend", &mut e) {
        c.refused(&path, &format!("/results/{k}/amend"), body, "/value")
            .await;
    }
    assert_eq!(events().await, before, "a refused amendment wrote an event");
    let amend = json!({"value": {"kind": "numeric", "value": 4.2, "unit": "mmol/L"},
                       "reason": e.kept("POST /results/{id}/amend /reason")});
    c.ok(&path, &format!("/results/{k}/amend"), amend).await;
    let retract = json!({"reason": e.kept("POST /results/{id}/retract /reason")});
    c.ok(&path, &format!("/results/{k}/retract"), retract).await;
    let body = record(
        "NA",
        json!({"kind": "numeric", "value": 140.0, "unit": "mmol/L"}),
        &mut scratch,
    );
    let na = c.ok(&tech, "/results", body).await;
    let rerun = json!({"reason": e.kept("POST /results/{id}/rerun /reason")});
    c.ok(&tech, &format!("/results/{na}/rerun"), rerun).await;

    // The specimen stored, then disposed of; a second tube rejected.
    let store = json!({"location": {"room": e.kept("POST /samples/{id}/store /location/room"),
                                    "device": e.kept("POST /samples/{id}/store /location/device"),
                                    "rack": e.kept("POST /samples/{id}/store /location/rack"),
                                    "position": e.kept("POST /samples/{id}/store /location/position")}});
    c.ok(&tech, &format!("/samples/{sample}/store"), store)
        .await;
    let dispose = json!({"method": e.kept("POST /samples/{id}/dispose /method")});
    c.ok(&tech, &format!("/samples/{sample}/dispose"), dispose)
        .await;
    let body = json!({"order_id": order_a, "accession_number": "ACC-INJ-2", "specimen_type": "serum",
                      "container": "red/SST", "tests": ["K"]});
    let second = c.ok(&phleb, "/samples", body).await;
    let reject =
        json!({"reason": "haemolysed", "detail": e.kept("POST /samples/{id}/reject /detail")});
    c.ok(&tech, &format!("/samples/{second}/reject"), reject)
        .await;

    // The second patient erased, with the reason kept.
    let patient_b: String = sqlx::query_scalar(
        "SELECT payload->'OrderPlaced'->>'patient_id' FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(&order_b)
    .fetch_one(&db.app)
    .await
    .unwrap();
    let erase = json!({"reason": e.kept("POST /patients/{id}/erase /reason")});
    c.ok(&admin, &format!("/patients/{patient_b}/erase"), erase)
        .await;

    // A user added, changed and reset with such reasons and passwords: each reason is in
    // the record as sent, and each password works as sent.
    let before = events().await;
    let password = e.text("POST /users /password");
    let mut reasons = vec![e.text("POST /users /reason")];
    let add = json!({"username": "inj.1", "role": "technologist", "password": password,
                     "reason": reasons[0]});
    assert_eq!(c.post(&admin, "/users", &add).await.0, StatusCode::CREATED);
    let logged_in = json!({"username": "inj.1", "password": password});
    assert_eq!(
        c.post("", "/auth/login", &logged_in).await.0,
        StatusCode::OK
    );
    for (action, mut body) in [
        ("disable", json!({})),
        ("enable", json!({})),
        ("role", json!({"role": "pathologist"})),
        (
            "password",
            json!({"password": e.text("POST /users/{user}/password /password")}),
        ),
    ] {
        let reason = e.text(&format!("POST /users/{{user}}/{action} /reason"));
        body["reason"] = json!(reason);
        reasons.push(reason);
        let (status, answer) = c
            .post(&admin, &format!("/users/inj.1/{action}"), &body)
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {answer}");
        if action == "password" {
            // They log in with it, and change it themself: a wrong current password
            // is refused, the right one works.
            let login = json!({"username": "inj.1", "password": body["password"]});
            let (status, token) = c.post("", "/auth/login", &login).await;
            assert_eq!(status, StatusCode::OK);
            let own = token["access_token"].as_str().unwrap();
            let new = e.text("POST /auth/password /new_password");
            let wrong = json!({"current_password": e.text("POST /auth/password /current_password"),
                               "new_password": new});
            c.refused(own, "/auth/password", wrong, "/current_password")
                .await;
            let right = json!({"current_password": body["password"], "new_password": new});
            assert_eq!(
                c.post(own, "/auth/password", &right).await.0,
                StatusCode::OK
            );
            reasons.push("changed by the user".into());
            let login = json!({"username": "inj.1", "password": new});
            assert_eq!(c.post("", "/auth/login", &login).await.0, StatusCode::OK);
        }
    }
    let r = c
        .http
        .get(format!(
            "{base}/audit/users?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    let record: Value = r.json().await.unwrap();
    let recorded: Vec<&str> = record["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert_eq!(recorded, reasons, "{record}");
    assert_eq!(
        events().await,
        before,
        "user administration writes no event"
    );

    // A login as such a user, or with such a password, is an ordinary refusal.
    let before = events().await;
    for login in [
        json!({"username": e.text("POST /auth/login /username"), "password": "a long passphrase"}),
        json!({"username": "tech.1", "password": e.text("POST /auth/login /password")}),
    ] {
        let (status, problem) = c.post("", "/auth/login", &login).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{login}: {problem}");
    }
    assert_eq!(events().await, before);

    // Every free-text field of the document got a payload.
    let missed: Vec<_> = fields.difference(&e.filled).collect();
    assert!(
        missed.is_empty(),
        "fields this flow does not fill: {missed:?}"
    );

    // Each kept payload is in the history as sent, read under a logged break-glass
    // reason; what erasure destroyed is not, even so.
    let mut history = String::new();
    for (kind, id) in [
        ("orders", &order_a),
        ("orders", &order_b),
        ("samples", &sample),
        ("samples", &second),
        ("results", &k),
        ("results", &na),
        ("patients", &patient_b),
    ] {
        let r = c
            .http
            .get(format!("{base}/audit/{kind}/{id}"))
            .bearer_auth(&auditor)
            .header("break-glass-reason", "injection test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{kind}/{id}");
        let text = r.text().await.unwrap();
        if let Some(t) = erased
            .iter()
            .find(|t| text.contains(&serde_json::to_string(t).unwrap()))
        {
            panic!("{kind}/{id} shows erased {t}: {text}");
        }
        history.push_str(&text);
    }
    for text in &e.stored {
        let shown = history.contains(&serde_json::to_string(text).unwrap());
        if erased.contains(text) {
            assert!(!shown, "erased, yet shown: {text}");
        } else {
            assert!(shown, "not stored verbatim: {text}");
        }
    }

    // Every table is still there, nothing was truncated, and every chain is sound.
    for table in [
        "events",
        "snapshots",
        "users",
        "user_changes",
        "idempotency_keys",
        "patient_keys",
        "ledger_keys",
        "audit_checkpoints",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&db.app)
            .await
            .unwrap();
        assert!(exists, "{table} is gone");
    }
    assert!(events().await > 20);
    drop(api);
    let verify = stack.run(&["audit", "verify"]);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains("every hash chain is intact"), "{report}");
    db.drop().await;
}
