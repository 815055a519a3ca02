//! The HTTP API end to end against real PostgreSQL: a lab day through the API, each
//! role's allowed and forbidden calls, every error class, idempotent retries, the
//! auditor's history, break-glass reads and key rotations, and the OpenAPI document
//! matching the routes.

use lis_api::http::{self, auth, users, AppState};
use lis_domain::actor::{ActorId, Role};
use lis_projections::models;
use lis_projections::projection::{ensure_schema, schema_of};
use lis_tests::{catch_up, TestDb};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

const SECRET: &[u8] = b"a-test-only-token-key-of-32-bytes-or-more";

/// Serves the API on a free loopback port; returns its base URL.
async fn serve(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    base
}

struct Api {
    base: String,
    client: Client,
    db: TestDb,
}

impl Api {
    async fn start() -> Self {
        Self::start_with(0, None, None, 0).await
    }

    /// A server allowing `per_user` requests a minute per user (0 = unlimited).
    async fn start_limited(per_user: u32) -> Self {
        Self::start_with(per_user, None, None, 0).await
    }

    async fn start_with(
        per_user: u32,
        analytics: Option<Arc<lis_projections::models::analytics::Analytics>>,
        kafka: Option<Arc<lis_projections::kafka_health::KafkaProbe>>,
        in_flight: usize,
    ) -> Self {
        Self::start_full(
            per_user,
            analytics,
            kafka,
            in_flight,
            Default::default(),
            Default::default(),
        )
        .await
    }

    /// A server that locks accounts after failed log-ins as `lockout` says.
    async fn start_locking(lockout: http::lockout::Lockout) -> Self {
        Self::start_full(0, None, None, 0, lockout, Default::default()).await
    }

    /// A server of a lab whose calendar days are `zone`'s.
    async fn start_in(zone: chrono_tz::Tz) -> Self {
        let policy = lis_domain::services::LabPolicy {
            time_zone: zone,
            ..Default::default()
        };
        Self::start_full(0, None, None, 0, Default::default(), policy).await
    }

    async fn start_full(
        per_user: u32,
        analytics: Option<Arc<lis_projections::models::analytics::Analytics>>,
        kafka: Option<Arc<lis_projections::kafka_health::KafkaProbe>>,
        in_flight: usize,
        lockout: http::lockout::Lockout,
        policy: lis_domain::services::LabPolicy,
    ) -> Self {
        let db = TestDb::new().await;
        let config = lis_commands::LedgerConfig {
            policy,
            ..Default::default()
        };
        let ledger = lis_commands::Ledger::new(db.app.clone(), config, db.vault().await);
        for (user, role) in [
            ("reception.1", Role::Reception),
            ("phleb.1", Role::Phlebotomist),
            ("tech.1", Role::Technologist),
            ("path.1", Role::Pathologist),
            ("dr.rao", Role::Clinician),
            ("audit.1", Role::Auditor),
            ("analyst.1", Role::Analyst),
            ("admin.1", Role::Admin),
        ] {
            users::add_user(
                &db.app,
                &ActorId::parse(user).unwrap(),
                role,
                "correct horse battery",
                &users::ChangedBy::tool("api tests", "a user of the HTTP tests"),
            )
            .await
            .unwrap();
        }
        let state = AppState {
            pool: db.app.clone(),
            ledger: Arc::new(ledger),
            auth: Arc::new(auth::AuthConfig {
                secret: SECRET.to_vec(),
                issuer: "lisledger".into(),
                audience: "lisledger-api".into(),
                ttl_secs: 300,
            }),
            kafka,
            analytics,
            metrics: Default::default(),
            per_address: Arc::new(http::limits::RateLimiter::new(0)),
            per_user: Arc::new(http::limits::RateLimiter::new(per_user)),
            in_flight: http::overload::InFlight::new(in_flight),
            seal_verifier: None,
            cors_origins: vec!["https://ward.example".parse().unwrap()],
            revocations: http::revocation::Revocations::start(db.app.clone())
                .await
                .unwrap(),
            lockout,
            public_url: None,
            request_timeout: std::time::Duration::from_secs(35),
        };
        http::prepare_read_models(&db.app).await.unwrap();
        let base = serve(state).await;
        Self {
            base,
            client: Client::new(),
            db,
        }
    }

    async fn token(&self, user: &str) -> String {
        let r = self
            .client
            .post(format!("{}/auth/login", self.base))
            .json(&json!({"username": user, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Asserts that GET `path` is refused with a 422 whose first problem is at `pointer`.
    async fn refused_at(&self, token: &str, path: &str, pointer: &str) {
        let (s, problem) = self.get(token, path).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {problem}");
        assert_eq!(
            problem["errors"][0]["pointer"], pointer,
            "{path}: {problem}"
        );
    }

    /// Places an order of K and NA for `mrn`, collects a serum tube of `extra` (its
    /// `tests`, maybe `collected_at`) labelled `accession`, and receives it: the order and
    /// the tube's id.
    async fn received_tube(&self, mrn: &str, accession: &str, extra: Value) -> (Value, String) {
        let reception = self.token("reception.1").await;
        let phleb = self.token("phleb.1").await;
        let (_, order) = self.post(&reception, "/orders", order_body(mrn)).await;
        let mut body = json!({"order_id": order["id"], "accession_number": accession,
                              "specimen_type": "serum", "container": "red/SST"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, sample) = self.post(&phleb, "/samples", body).await;
        assert_eq!(s, StatusCode::CREATED, "{sample}");
        let sample_id = sample["id"].as_str().unwrap().to_string();
        let tech = self.token("tech.1").await;
        let (s, _) = self
            .post(&tech, &format!("/samples/{sample_id}/receive"), json!({}))
            .await;
        assert_eq!(s, StatusCode::OK);
        (order, sample_id)
    }

    async fn project(&self) {
        for p in models::all() {
            ensure_schema(
                &mut self.db.app.acquire().await.unwrap(),
                p.as_ref(),
                &schema_of(p.name()),
            )
            .await
            .unwrap();
            catch_up(&self.db.app, p.as_ref()).await;
        }
    }
}

#[tokio::test]
async fn a_patient_s_results_by_day_count_the_lab_s_days() {
    // 02:00 on 4 March in India is 20:30 on 3 March in UTC.
    let api = Api::start_in(chrono_tz::Asia::Kolkata).await;
    let reception = api.token("reception.1").await;
    let tech = api.token("tech.1").await;
    let path = api.token("path.1").await;
    let clinician = api.token("dr.rao").await;
    let (order, sample_id) = api
        .received_tube(
            "MRN-TZ",
            "ACC-TZ",
            json!({"tests": ["K"], "collected_at": "2026-03-03T20:30:00Z"}),
        )
        .await;
    let (_, result) = api
        .post(&tech, "/results", json!({"sample_id": sample_id, "test_code": "K",
                                       "value": {"kind": "numeric", "value": 4.1, "unit": "mmol/L"}}))
        .await;
    let result_id = result["id"].as_str().unwrap().to_string();
    api.post(&tech, &format!("/results/{result_id}/verify"), json!({}))
        .await;
    let (s, released) = api
        .post(&path, &format!("/results/{result_id}/authorise"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{released}");
    api.project().await;
    let patient = api
        .get(
            &reception,
            &format!("/orders/{}", order["id"].as_str().unwrap()),
        )
        .await
        .1["patient_id"]
        .as_str()
        .unwrap()
        .to_string();
    let count = |range: &'static str| {
        let (api, clinician, patient) = (&api, &clinician, &patient);
        async move {
            let (s, report) = api
                .get(clinician, &format!("/patients/{patient}/results?{range}"))
                .await;
            assert_eq!(s, StatusCode::OK, "{range}: {report}");
            report.as_array().unwrap().len()
        }
    };
    assert_eq!(count("from=2026-03-04&to=2026-03-04").await, 1);
    assert_eq!(count("to=2026-03-03").await, 0);
    assert_eq!(count("from=2026-03-05").await, 0);
}

#[tokio::test]
async fn a_keyed_split_whose_first_attempt_died_part_way_is_finished_by_its_retry() {
    use hmac::{Hmac, Mac};
    let api = Api::start().await;
    let tech = api.token("tech.1").await;
    let (_, parent) = api
        .received_tube("MRN-AQ", "ACC-AQ", json!({"tests": ["K", "NA"]}))
        .await;
    let body = r#"{"children":[{"accession_number":"ACC-AQ-1","tests":["K"]},{"accession_number":"ACC-AQ-2","tests":["NA"]}]}"#;
    let path = format!("/samples/{parent}/aliquots");
    // The first attempt claimed the key, recorded the split and the first child, and died.
    let command_id = uuid::Uuid::new_v4();
    let hash = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET)
        .unwrap()
        .chain_update(format!("POST {path}").as_bytes())
        .chain_update(b"\n")
        .chain_update(body.as_bytes())
        .finalize()
        .into_bytes()
        .to_vec();
    sqlx::query(
        "INSERT INTO idempotency_keys (actor_id, key, request_sha256, events_after, command_id)
         VALUES ('tech.1', 'split-1', $1, (SELECT max(position) FROM events), $2)",
    )
    .bind(hash)
    .bind(command_id)
    .execute(&api.db.app)
    .await
    .unwrap();
    let ledger = api.db.ledger().await;
    let ctx = lis_tests::actor("tech.1", Role::Technologist);
    ctx.command_id.set(command_id).unwrap();
    let parent_id = lis_domain::ids::SampleId::parse(&parent).unwrap();
    let children: Vec<lis_domain::sample::AliquotSpec> = [("ACC-AQ-1", "K"), ("ACC-AQ-2", "NA")]
        .iter()
        .map(|(accession, test)| {
            let accession = lis_domain::ids::AccessionNumber::parse(accession).unwrap();
            lis_domain::sample::AliquotSpec {
                sample_id: lis_domain::ids::SampleId::aliquot_of(parent_id, &accession),
                accession_number: accession,
                tests: vec![lis_tests::code(test)],
            }
        })
        .collect();
    ledger
        .execute_sample(
            parent_id,
            lis_domain::sample::SampleCommand::Aliquot {
                children: children.clone(),
            },
            &ctx,
        )
        .await
        .unwrap();
    let first = children[0].sample_id;
    ledger
        .execute_sample(
            first,
            lis_domain::sample::SampleCommand::CreateAliquot {
                sample_id: first,
                parent_id,
            },
            &ctx,
        )
        .await
        .unwrap();
    // The retry under the key makes the second child and answers with both, then keeps
    // that answer.
    let retry = || {
        api.client
            .post(format!("{}{path}", api.base))
            .bearer_auth(&tech)
            .header("idempotency-key", "split-1")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = retry().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let answer: Value = r.json().await.unwrap();
    let made: Vec<&str> = answer["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = children.iter().map(|c| c.sample_id.to_string()).collect();
    assert_eq!(made, expected, "{answer}");
    assert_eq!(answer["parent"]["version"], 3, "{answer}");
    let second = ledger.sample(children[1].sample_id).await.unwrap();
    assert_eq!(second.facts().unwrap().parent, Some(parent_id));
    let again: Value = retry().await.unwrap().json().await.unwrap();
    assert_eq!(again, answer);
    let splits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'SampleAliquoted'",
    )
    .bind(&parent)
    .fetch_one(&api.db.app)
    .await
    .unwrap();
    assert_eq!(splits, 1);
}

/// POST `path` with `If-Match: if_match`.
async fn post_if_match(
    api: &Api,
    token: &str,
    path: &str,
    if_match: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = api
        .client
        .post(format!("{}{path}", api.base))
        .bearer_auth(token)
        .header("if-match", if_match)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_command_on_a_version_changed_since_is_refused_412_and_writes_nothing() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let tech = api.token("tech.1").await;
    let admin = api.token("admin.1").await;
    let (order, sample_id) = api
        .received_tube("MRN-IFM", "ACC-IFM", json!({"tests": ["K", "NA"]}))
        .await;
    let (s, recorded) = api
        .post(&tech, "/results", json!({"sample_id": sample_id, "test_code": "K",
                                       "value": {"kind": "numeric", "value": 4.1, "unit": "mmol/L"}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{recorded}");
    let result_id = recorded["id"].as_str().unwrap().to_string();
    // The technologist reads the result, at version 1.
    api.project().await;
    let (s, seen) = api.get(&tech, &format!("/results/{result_id}")).await;
    assert_eq!((s, &seen["version"]), (StatusCode::OK, &json!(1)), "{seen}");
    let etag = format!("\"{}\"", seen["version"]);
    // Meanwhile the value is corrected (a colleague, or the same user in another window).
    let (s, corrected) = api
        .post(&tech, &format!("/results/{result_id}/correct"),
              json!({"value": {"kind": "numeric", "value": 6.1, "unit": "mmol/L"}, "reason": "transcription error"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{corrected}");
    let events = |id: String| {
        let pool = api.db.app.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let before = events(result_id.clone()).await;
    // Verifying what was seen is refused: 412, naming the record, nothing written.
    let verify = format!("/results/{result_id}/verify");
    let (s, problem) = post_if_match(&api, &tech, &verify, &etag, json!({})).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/precondition-failed"),
        "{problem}"
    );
    // It says where the record is now: the correction's position.
    assert_eq!(
        problem["record"],
        json!({"type": "Result", "id": result_id, "position": corrected["position"]})
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("is at version 2, not at version 1"),
        "{problem}"
    );
    assert_eq!(events(result_id.clone()).await, before);
    // Not a version, a weak tag, or two tags: 400, nothing written.
    for bad in ["1", "W/\"2\"", "\"2\", \"3\"", "\"-2\"", "\"x\""] {
        let (s, problem) = post_if_match(&api, &tech, &verify, bad, json!({})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("If-Match"),
            "{problem}"
        );
    }
    assert_eq!(events(result_id.clone()).await, before);
    // Read again where the problem says: the corrected value, at version 2, is verified
    // on it.
    api.project().await;
    let (s, seen) = api
        .get(
            &tech,
            &format!(
                "/results/{result_id}?min_position={}",
                problem["record"]["position"]
            ),
        )
        .await;
    assert_eq!((s, &seen["version"]), (StatusCode::OK, &json!(2)), "{seen}");
    assert_eq!(seen["numeric_value"], 6.1);
    let (s, verified) = post_if_match(&api, &tech, &verify, "\"2\"", json!({})).await;
    assert_eq!(
        (s, &verified["version"]),
        (StatusCode::OK, &json!(3)),
        "{verified}"
    );
    // A retry of the refused request under the same Idempotency-Key, now on version 2,
    // is another request (its answer is not the stored 412).
    let keyed = |version: &'static str| {
        api.client
            .post(format!("{}/results/{result_id}/correct", api.base))
            .bearer_auth(&tech)
            .header("idempotency-key", "correct-1")
            .header("if-match", version)
            .json(
                &json!({"value": {"kind": "numeric", "value": 6.2, "unit": "mmol/L"},
                          "reason": "re-read"}),
            )
            .send()
    };
    assert_eq!(
        keyed("\"1\"").await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    let r = keyed("\"3\"").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("idempotency-key-reused"),
        "{problem}"
    );
    // `*` is any version; the same holds for orders and samples.
    let (s, tube) = api.get(&tech, &format!("/samples/{sample_id}")).await;
    assert_eq!((s, &tube["version"]), (StatusCode::OK, &json!(2)), "{tube}");
    let (s, stored) = post_if_match(
        &api,
        &tech,
        &format!("/samples/{sample_id}/store"),
        "*",
        json!({"location": {"room": "Cold room 1", "device": "Fridge 2", "rack": "R4", "position": "B7"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{stored}");
    api.project().await;
    let (s, o) = api
        .get(
            &reception,
            &format!("/orders/{}", order["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!((s, &o["version"]), (StatusCode::OK, &json!(1)), "{o}");
    let (s, problem) = post_if_match(
        &api,
        &reception,
        &format!("/orders/{}/tests", order["id"].as_str().unwrap()),
        "\"7\"",
        json!({"tests": ["CREA"]}),
    )
    .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{problem}");
    // Bad input is bad at any version: 422 naming the field, not 412.
    let (s, problem) = post_if_match(
        &api,
        &reception,
        &format!("/orders/{}/tests", order["id"].as_str().unwrap()),
        "\"7\"",
        json!({"tests": ["CREA", "CREA"]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/tests/1", "{problem}");
    let (s, added) = post_if_match(
        &api,
        &reception,
        &format!("/orders/{}/tests", order["id"].as_str().unwrap()),
        "\"1\"",
        json!({"tests": ["CREA"]}),
    )
    .await;
    assert_eq!(
        (s, &added["version"]),
        (StatusCode::OK, &json!(2)),
        "{added}"
    );
    // No version to have read: a user account, a patient, a record the command creates.
    for (token, path, body) in [
        (
            &admin,
            "/users/phleb.1/disable".to_string(),
            json!({"reason": "left the lab"}),
        ),
        (&reception, "/orders".to_string(), order_body("MRN-IFM2")),
        (
            &admin,
            format!("/patients/{}/erase", o["patient_id"].as_str().unwrap()),
            json!({"reason": "asked to be forgotten"}),
        ),
    ] {
        let (s, problem) = post_if_match(&api, token, &path, "\"1\"", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {problem}");
    }
    // Nothing of them was done: the patient is not erased.
    let (s, patient) = api
        .get(
            &admin,
            &format!("/patients/{}", o["patient_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        (s, &patient["erased"]),
        (StatusCode::OK, &json!(false)),
        "{patient}"
    );
}

fn order_body(mrn: &str) -> Value {
    json!({
        "patient": {"mrn": mrn, "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
        "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": ["K", "NA"]
    })
}

#[tokio::test]
async fn a_lab_day_through_the_api() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let phleb = api.token("phleb.1").await;
    let tech = api.token("tech.1").await;
    let path = api.token("path.1").await;
    let clinician = api.token("dr.rao").await;
    let auditor = api.token("audit.1").await;

    let (s, order) = api.post(&reception, "/orders", order_body("MRN-1")).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    assert_eq!(order["version"], 1);
    let order_id = order["id"].as_str().unwrap().to_string();
    assert!(order["order_number"].as_str().unwrap().starts_with("ORD-"));

    let (s, sample) = api
        .post(
            &phleb,
            "/samples",
            json!({"order_id": order_id, "accession_number": "ACC-H1", "specimen_type": "serum",
                                        "container": "red/SST", "tests": ["K", "NA"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sample}");
    let sample_id = sample["id"].as_str().unwrap().to_string();
    let (s, _) = api
        .post(&tech, &format!("/samples/{sample_id}/receive"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);

    let (s, result) = api
        .post(&tech, "/results", json!({"sample_id": sample_id, "test_code": "K",
                                       "value": {"kind": "numeric", "value": 4.1, "unit": "mmol/L"}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{result}");
    let result_id = result["id"].as_str().unwrap().to_string();
    let (s, _) = api
        .post(&tech, &format!("/results/{result_id}/verify"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    // Four-eyes: the verifier is a technologist; a pathologist authorises.
    let (s, released) = api
        .post(&path, &format!("/results/{result_id}/authorise"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{released}");
    let (s, amended) = api
        .post(&path, &format!("/results/{result_id}/amend"),
              json!({"value": {"kind": "numeric", "value": 5.5, "unit": "mmol/L"}, "reason": "instrument recalibrated"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{amended}");
    assert_eq!(amended["version"], 4);

    api.project().await;
    let (s, o) = api
        .get(
            &reception,
            &format!("/orders/{order_id}?min_position={}", amended["position"]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    let stages: Vec<(&str, &str)> = o["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["test_code"].as_str().unwrap(),
                t["stage"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(stages, [("K", "released"), ("NA", "to_result")]);
    let patient = o["patient_id"].as_str().unwrap();
    let (s, cumulative) = api
        .get(&clinician, &format!("/patients/{patient}/results?test=K"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cumulative[0]["numeric_value"], 5.5);
    assert_eq!(cumulative[0]["amended"], true);
    // The whole report is sent as the results model keeps it; every released result
    // here is K, so it equals the one aggregated for the filter.
    let (s, whole) = api
        .get(&clinician, &format!("/patients/{patient}/results"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(whole, cumulative);
    // A range of days the model cannot compare with, or out of order: 422 naming it
    // (a year before 4713 BC was PostgreSQL's error, answered 500).
    for (range, pointer) in [
        ("from=-5000-01-01", "/from"),
        ("to=+20000-01-01", "/to"),
        ("from=2026-03-05&to=2026-03-04", "/from"),
    ] {
        api.refused_at(
            &clinician,
            &format!("/patients/{patient}/results?{range}"),
            pointer,
        )
        .await;
    }
    let (s, same_day) = api
        .get(
            &clinician,
            &format!("/patients/{patient}/results?from=2026-03-04&to=2026-03-04"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{same_day}");
    let stored: String = sqlx::query_scalar(
        "SELECT report FROM proj_results.cumulative_reports WHERE patient_id = $1::uuid",
    )
    .bind(patient)
    .fetch_one(&api.db.app)
    .await
    .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), whole);
    // What is stored is what is sent (a marker written in its place comes back)…
    let report = |sql: &'static str| {
        sqlx::query(sql)
            .bind(patient.to_string())
            .execute(&api.db.app)
    };
    report(
        "UPDATE proj_results.cumulative_reports SET report = '[{\"marker\":1}]' WHERE patient_id = $1::uuid",
    )
    .await
    .unwrap();
    let (_, sent) = api
        .get(&clinician, &format!("/patients/{patient}/results"))
        .await;
    assert_eq!(sent, json!([{"marker": 1}]));
    // …and a patient with none (a model from before reports) gets the rows aggregated.
    report("DELETE FROM proj_results.cumulative_reports WHERE patient_id = $1::uuid")
        .await
        .unwrap();
    let (s, aggregated) = api
        .get(&clinician, &format!("/patients/{patient}/results"))
        .await;
    assert_eq!((s, &aggregated), (StatusCode::OK, &whole));
    let (s, by_acc) = api.get(&tech, "/samples/by-accession/acc-h1").await;
    assert_eq!(
        (s, by_acc["status"].as_str()),
        (StatusCode::OK, Some("received"))
    );

    // The auditor sees every event with who, role, why and what changed.
    let (s, history) = api
        .get(&auditor, &format!("/audit/results/{result_id}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{history}");
    let events = history["events"].as_array().unwrap();
    let who: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        who,
        [
            ("tech.1", "technologist"),
            ("tech.1", "technologist"),
            ("path.1", "pathologist"),
            ("path.1", "pathologist")
        ]
    );
    assert_eq!(events[3]["reason"], "instrument recalibrated");
    assert!(events[3]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["pointer"] == "/current/value/value"
            && c["before"] == 4.1
            && c["after"] == 5.5));
    // …and the state as it was before the amendment.
    let before = events[2]["recorded_at"].as_str().unwrap();
    let (_, then) = api
        .get(
            &auditor,
            &format!(
                "/audit/results/{result_id}?as_of={}",
                before.replace('+', "%2B")
            ),
        )
        .await;
    assert_eq!(then["state"]["current"]["value"]["value"], 4.1);
    assert_eq!(then["events"].as_array().unwrap().len(), 3);
    // Verification on demand: every chain intact (no seals configured here).
    let (s, v) = api.get(&auditor, "/audit/verification").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            v["chains"]["intact"].as_bool(),
            v["chains"]["events"].as_i64()
        ),
        (Some(true), Some(7))
    );
    assert_eq!(v["seals"]["checked"], false);
    assert_eq!(v["snapshots"]["sound"], true, "{v}");

    // The same history as CSV, and everything the technologist did today.
    let csv = api
        .client
        .get(format!("{}/audit/results/{result_id}?format=csv", api.base))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with(
        "sequence,position,recorded_at,event_type,actor,role,reason,field,before,after\n"
    ));
    assert!(
        csv.lines().any(|l| l.contains("ResultAmended")
            && l.contains("instrument recalibrated")
            && l.ends_with(",/current/value/value,4.1,5.5")),
        "{csv}"
    );
    let day = chrono::Utc::now();
    let from = (day - chrono::Duration::hours(1))
        .to_rfc3339()
        .replace('+', "%2B");
    let to = (day + chrono::Duration::hours(1))
        .to_rfc3339()
        .replace('+', "%2B");
    let (s, did) = api
        .get(
            &auditor,
            &format!("/audit/actors/tech.1?from={from}&to={to}"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{did}");
    let kinds: Vec<&str> = did["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["SampleReceived", "ResultRecorded", "ResultVerified"]
    );
    assert_eq!(did["next_after"], Value::Null);
    // A page at a time: the pages join up to the whole, in order, with nothing twice.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..3 {
        let cursor = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let (s, page) = api
            .get(
                &auditor,
                &format!("/audit/actors/tech.1?from={from}&to={to}&limit=2{cursor}"),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        // The other records come with every page, each once: the log-in that made the
        // token on the first, nothing new after it.
        let expected_logins = if after.is_none() { 1 } else { 0 };
        assert_eq!(
            page["logins"].as_array().map(Vec::len),
            Some(expected_logins),
            "{page}"
        );
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        after = page["next_after"].as_str().map(str::to_string);
        if after.is_none() {
            break;
        }
    }
    assert_eq!(paged, did["events"].as_array().unwrap().clone());
    for (query, pointer) in [
        ("&limit=0", "/limit"),
        ("&limit=10001", "/limit"),
        ("&after=x.1", "/after"),
    ] {
        let path = format!("/audit/actors/tech.1?from={from}&to={to}{query}");
        api.refused_at(&auditor, &path, pointer).await;
    }
    api.db.drop().await;
}

#[tokio::test]
async fn a_worklist_sends_the_most_urgent_first_up_to_its_limit_with_the_whole_count() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let tech = api.token("tech.1").await;
    // Three orders of two tests each, placed one after another: six tests to collect.
    let mut orders = Vec::new();
    for mrn in ["MRN-WL-1", "MRN-WL-2", "MRN-WL-3"] {
        let (s, order) = api.post(&reception, "/orders", order_body(mrn)).await;
        assert_eq!(s, StatusCode::CREATED, "{order}");
        orders.push(order["id"].as_str().unwrap().to_string());
    }
    // Then a STAT order: its target is far shorter, so its tests are due first.
    let mut stat = order_body("MRN-WL-STAT");
    stat["priority"] = json!("stat");
    let (s, order) = api.post(&reception, "/orders", stat).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let stat_order = order["id"].as_str().unwrap().to_string();
    api.project().await;
    let get = |path: String| {
        let (client, base, tech) = (api.client.clone(), api.base.clone(), tech.clone());
        async move {
            let r = client
                .get(format!("{base}{path}"))
                .bearer_auth(tech)
                .send()
                .await
                .unwrap();
            let total = r
                .headers()
                .get("x-total-count")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status(), total, r.json::<Value>().await.unwrap())
        }
    };
    let (s, total, all) = get("/worklists?stage=to_collect".into()).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert_eq!(total.as_deref(), Some("8"));
    let in_order: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(in_order.len(), 8);
    // None is overdue yet: the STAT tests first (due soonest), then the routine ones,
    // the oldest first; each row says when it is due.
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["overdue"] == false));
    assert_eq!(in_order[..2], [stat_order.as_str(), stat_order.as_str()]);
    assert_eq!(in_order[2], orders[0]);
    assert_eq!(in_order[7], orders[2]);
    assert!(
        all.as_array().unwrap().iter().all(|w| w["due"].is_string()),
        "{all}"
    );
    // Up to the limit, the same rows in the same order; the count is still the whole.
    let (s, total, top) = get("/worklists?stage=to_collect&limit=4".into()).await;
    assert_eq!(s, StatusCode::OK, "{top}");
    assert_eq!(total.as_deref(), Some("8"));
    assert_eq!(top.as_array().unwrap()[..], all.as_array().unwrap()[..4]);
    for (query, pointer) in [
        ("limit=0", "/limit"),
        ("limit=10001", "/limit"),
        ("stage=done", "/stage"),
    ] {
        api.refused_at(&tech, &format!("/worklists?{query}"), pointer)
            .await;
    }
    api.db.drop().await;
}

/// A critical value waits for the lab's call (a lab list: clinicians do not see a value
/// before it is released), then for the clinician's acknowledgement, and then leaves.
#[tokio::test]
async fn critical_results_wait_for_the_call_then_for_the_clinician() {
    let api = Api::start().await;
    let reception = &api.token("reception.1").await;
    let phleb = &api.token("phleb.1").await;
    let tech = &api.token("tech.1").await;
    let path = &api.token("path.1").await;
    let clinician = &api.token("dr.rao").await;
    let (_, order) = api.post(reception, "/orders", order_body("MRN-CRIT")).await;
    let (_, sample) = api
        .post(
            phleb,
            "/samples",
            json!({"order_id": order["id"], "accession_number": "ACC-CRIT",
            "specimen_type": "serum", "container": "red/SST", "tests": ["K", "NA"]}),
        )
        .await;
    let sample = sample["id"].as_str().unwrap().to_string();
    api.post(tech, &format!("/samples/{sample}/receive"), json!({}))
        .await;
    let mut critical = Vec::new();
    for (test, value) in [("K", 7.2), ("NA", 118.0)] {
        let (s, r) = api
            .post(
                tech,
                "/results",
                json!({"sample_id": sample, "test_code": test,
                "value": {"kind": "numeric", "value": value, "unit": "mmol/L"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        critical.push(r["id"].as_str().unwrap().to_string());
    }
    let list = |token: &str, query: &str| {
        let request = api
            .client
            .get(format!("{}/critical-results{query}", api.base))
            .bearer_auth(token);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let total = r.headers()["x-total-count"].to_str().unwrap().to_string();
            let rows: Value = r.json().await.unwrap();
            let rows: Vec<(String, String)> = rows
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["test_code"].as_str().unwrap().into(),
                        c["awaiting"].as_str().unwrap().into(),
                    )
                })
                .collect();
            (total, rows)
        }
    };
    api.project().await;
    let calls = |n: usize| {
        [("K", "notification"), ("NA", "notification")][..n]
            .iter()
            .map(|(t, a)| (t.to_string(), a.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(list(tech, "").await, ("2".to_string(), calls(2)));
    assert_eq!(list(tech, "?limit=1").await, ("2".to_string(), calls(1)));
    assert_eq!(
        list(clinician, "").await,
        ("0".to_string(), vec![]),
        "a value not yet released"
    );
    // Called through and released: now the clinician's to acknowledge.
    let k = &critical[0];
    let (s, r) = api
        .post(
            tech,
            &format!("/results/{k}/critical-notifications"),
            json!({
            "notified_person": "Dr Rao", "method": "phone", "value_conveyed": "potassium 7.2",
            "read_back_confirmed": true, "notified_at": chrono::Utc::now()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    api.post(tech, &format!("/results/{k}/verify"), json!({}))
        .await;
    let (s, r) = api
        .post(path, &format!("/results/{k}/authorise"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    api.project().await;
    let waiting = vec![("K".to_string(), "acknowledgement".to_string())];
    assert_eq!(
        list(clinician, "").await,
        ("1".to_string(), waiting.clone())
    );
    let (s, _) = api
        .post(clinician, &format!("/results/{k}/acknowledge"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    api.project().await;
    assert_eq!(list(clinician, "").await, ("0".to_string(), vec![]));
    assert_eq!(
        list(tech, "").await,
        (
            "1".to_string(),
            vec![("NA".to_string(), "notification".to_string())]
        )
    );
    // Amended to another critical value: released at once, so the clinician's to
    // acknowledge again (not the lab's call, which the lab's list still shows).
    let (s, r) = api
        .post(path, &format!("/results/{k}/amend"),
              json!({"value": {"kind": "numeric", "value": 7.6, "unit": "mmol/L"}, "reason": "rerun on a fresh aliquot"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    api.project().await;
    assert_eq!(list(clinician, "").await, ("1".to_string(), waiting));
    let (_, lab) = list(tech, "").await;
    assert!(
        lab.contains(&("K".to_string(), "notification".to_string())),
        "{lab:?}"
    );
    // Acknowledged by the clinician before the lab's call: off the clinician's list, on
    // the lab's until the call is recorded.
    let (s, _) = api
        .post(clinician, &format!("/results/{k}/acknowledge"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    api.project().await;
    assert_eq!(list(clinician, "").await, ("0".to_string(), vec![]));
    let (_, lab) = list(tech, "").await;
    assert!(
        lab.contains(&("K".to_string(), "notification".to_string())),
        "{lab:?}"
    );
    api.refused_at(tech, "/critical-results?limit=0", "/limit")
        .await;
    api.db.drop().await;
}

#[tokio::test]
async fn auditors_see_each_rotation_of_the_key_encryption_key() {
    use lis_commands::keys::{rotate, Keks, KeyEncryptionKey, LocalKek, RotationBy};
    let api = Api::start().await;
    let auditor = api.token("audit.1").await;
    let (s, none) = api.get(&auditor, "/audit/key-rotations").await;
    assert_eq!(s, StatusCode::OK, "{none}");
    assert_eq!(none["rotations"], json!([]));
    let old = Arc::new(LocalKek::from_base64(lis_tests::TEST_KEK).unwrap());
    let new = Arc::new(LocalKek::from_base64(&LocalKek::generate()).unwrap());
    let by = RotationBy {
        actor: "sec.officer",
        reason: "staff change",
    };
    let keks = Keks::rotating(new.clone(), old.clone()).unwrap();
    let report = rotate(&api.db.owner, &keks, by, 1000).await.unwrap();
    let (s, seen) = api.get(&auditor, "/audit/key-rotations").await;
    assert_eq!(s, StatusCode::OK, "{seen}");
    let r = &seen["rotations"][0];
    assert_eq!(
        seen["rotations"].as_array().map(Vec::len),
        Some(1),
        "{seen}"
    );
    assert_eq!(
        (
            &r["from_kek_id"],
            &r["to_kek_id"],
            &r["actor"],
            &r["reason"]
        ),
        (
            &json!(old.id()),
            &json!(new.id()),
            &json!("sec.officer"),
            &json!("staff change")
        )
    );
    assert_eq!(
        (&r["ledger_keys"], &r["patient_keys"]),
        (&json!(2), &json!(0))
    );
    assert!(
        r["started_at"].is_string() && r["finished_at"].is_string(),
        "{r}"
    );
    assert_eq!(r["run"], json!(report.run.to_string()));
    // A run that stopped part-way: its batches add up, and it has no finished_at.
    let stopped = uuid::Uuid::new_v4();
    for (step, keys) in [
        ("ledger-keys", 2),
        ("patient-keys", 1000),
        ("patient-keys", 500),
    ] {
        sqlx::query(
            "INSERT INTO kek_rotations (run_id, step, from_kek_id, to_kek_id, keys, actor_id, reason)
             VALUES ($1, $2, 'local:aaaa', 'local:bbbb', $3, 'sec.officer', 'staff change')",
        )
        .bind(stopped)
        .bind(step)
        .bind(keys as i64)
        .execute(&api.db.owner)
        .await
        .unwrap();
    }
    let (_, seen) = api.get(&auditor, "/audit/key-rotations").await;
    let r = &seen["rotations"][1];
    assert_eq!(r["run"], json!(stopped.to_string()), "{seen}");
    assert_eq!(
        (&r["ledger_keys"], &r["patient_keys"], &r["finished_at"]),
        (&json!(2), &json!(1500), &Value::Null)
    );
    api.db.drop().await;
}

#[tokio::test]
async fn roles_and_errors_are_answered_with_problems() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let phleb = api.token("phleb.1").await;
    let tech = api.token("tech.1").await;
    let clinician = api.token("dr.rao").await;
    let auditor = api.token("audit.1").await;
    let url = |p: &str| format!("{}{p}", api.base);

    // 401: no token, a forged token, a token of another issuer.
    let r = api
        .client
        .post(url("/orders"))
        .json(&order_body("MRN-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let forged = format!("{}x", &reception[..reception.len() - 1]);
    assert_eq!(
        api.post(&forged, "/orders", order_body("MRN-2")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let other = auth::issue(
        &auth::AuthConfig {
            secret: SECRET.to_vec(),
            issuer: "someone-else".into(),
            audience: "lisledger-api".into(),
            ttl_secs: 60,
        },
        &auth::Grant::standing(ActorId::parse("reception.1").unwrap(), Role::Admin),
    )
    .unwrap()
    .0;
    assert_eq!(
        api.post(&other, "/orders", order_body("MRN-2")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A wrong password, and an unknown user: the same answer, which does not tell
    // which it was.
    let login = |username: &'static str| {
        api.client
            .post(url("/auth/login"))
            .json(&json!({"username": username, "password": "wrong password!"}))
            .send()
    };
    let r = login("reception.1").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let wrong: Value = r.json().await.unwrap();
    let r = login("nobody.here").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let unknown: Value = r.json().await.unwrap();
    for field in ["type", "title", "status", "detail"] {
        assert_eq!(wrong[field], unknown[field], "{field}");
    }

    // 403: each role only does its own work; auditors change nothing.
    for (token, path) in [
        (&phleb, "/orders"),
        (&auditor, "/orders"),
        (&clinician, "/results"),
    ] {
        let (s, p) = api.post(token, path, json!({})).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {p}");
    }
    let (s, _) = api.get(&reception, "/audit/orders/x").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // 400 malformed; 422 with every offending field.
    let r = api
        .client
        .post(url("/orders"))
        .bearer_auth(&reception)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut bad = order_body("");
    bad["patient"]["date_of_birth"] = json!("17/05/1980");
    bad["patient"]["sex"] = json!("x");
    let (s, p) = api.post(&reception, "/orders", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let pointers: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        ["/patient/mrn", "/patient/sex", "/patient/date_of_birth"]
    );
    let mut unknown = order_body("MRN-3");
    unknown["tests"] = json!(["K", "NOPE"]);
    let (s, p) = api.post(&reception, "/orders", unknown).await;
    assert_eq!(
        (s, p["errors"][0]["pointer"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/tests/1"))
    );
    let (s, p) = api.post(&reception, "/orders", json!({"patient": 5})).await;
    assert_eq!(
        (s, p["errors"][0]["pointer"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/patient"))
    );

    // 404s.
    let (s, _) = api
        .get(&reception, &format!("/orders/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.get(&reception, "/orders/not-a-uuid").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r = api.client.get(url("/nowhere")).send().await.unwrap();
    assert_eq!(
        (r.status(), r.headers()["content-type"].to_str().unwrap()),
        (StatusCode::NOT_FOUND, "application/problem+json")
    );
    let r = api.client.delete(url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    // 409 names the rule.
    let (_, order) = api.post(&reception, "/orders", order_body("MRN-4")).await;
    let id = order["id"].as_str().unwrap();
    let (s, p) = api
        .post(
            &reception,
            &format!("/orders/{id}/tests"),
            json!({"tests": ["K"]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (_, _) = api
        .post(
            &reception,
            &format!("/orders/{id}/cancel"),
            json!({"reason": "patient left"}),
        )
        .await;
    let (s, p) = api
        .post(
            &reception,
            &format!("/orders/{id}/cancel"),
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(
        (s, p["rule"].as_str()),
        (StatusCode::CONFLICT, Some("order.cancelled"))
    );
    let (s, p) = api
        .post(
            &tech,
            &format!("/results/{}/verify", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, p["rule"].as_str()),
        (StatusCode::CONFLICT, Some("result.not-recorded"))
    );

    // CORS: the configured origin is allowed, another is not.
    let pre = api
        .client
        .request(reqwest::Method::OPTIONS, url("/orders"))
        .header("origin", "https://ward.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://ward.example"
    );
    let pre = api
        .client
        .request(reqwest::Method::OPTIONS, url("/orders"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!pre.headers().contains_key("access-control-allow-origin"));

    // Every outcome is counted.
    let metrics = api
        .client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"lis_commands_total{outcome="rejected",route="/orders/{id}/cancel"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"lis_commands_total{outcome="invalid",route="/orders"}"#),
        "{metrics}"
    );
    // No two commands here raced on an order's records (tests/tests/contention.rs counts
    // the ledger's own figure when they do).
    assert!(
        metrics.contains("\nlis_commands_decided_again_total 0\n"),
        "{metrics}"
    );

    // 413.
    let huge = json!({"reason": "x".repeat(http::MAX_BODY)});
    let (s, _) = api
        .post(&reception, &format!("/orders/{id}/cancel"), huge)
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    api.db.drop().await;
}

#[tokio::test]
async fn a_retried_command_with_the_same_idempotency_key_writes_once() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let send = |key: &str, body: Value| {
        api.client
            .post(format!("{}/orders", api.base))
            .bearer_auth(&reception)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send("k-1", order_body("MRN-5")).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = send("k-1", order_body("MRN-5")).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&api.db.app)
        .await
        .unwrap();
    assert_eq!(events, 1);
    let other = send("k-1", order_body("MRN-6")).await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    api.db.drop().await;
}

#[tokio::test]
async fn every_documented_endpoint_exists() {
    let api = Api::start().await;
    let spec: Value = api
        .client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        http::openapi::ENDPOINTS.len()
    );
    for (path, methods) in paths {
        let concrete = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{code}", "K")
            .replace("{accession}", "ACC-1")
            .replace("{kind}", "orders");
        for method in methods.as_object().unwrap().keys() {
            let r = match method.as_str() {
                "get" => api.client.get(format!("{}{concrete}", api.base)),
                _ => api
                    .client
                    .post(format!("{}{concrete}", api.base))
                    .json(&json!({})),
            }
            .send()
            .await
            .unwrap();
            let expected = match path.as_str() {
                "/healthz" | "/readyz" | "/metrics" | "/fhir/metadata" => StatusCode::OK,
                "/auth/login" => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::UNAUTHORIZED,
            };
            assert_eq!(r.status(), expected, "{method} {path}");
        }
    }
    api.db.drop().await;
}

/// Reads SSE frames until `n` events have arrived; returns (id, data) pairs.
async fn read_events(resp: &mut reqwest::Response, n: usize) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("events in time")
            .unwrap()
            .expect("open stream");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let id = frame
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(str::to_string);
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string);
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_event_stream_resumes_after_a_disconnect_and_hides_identity_from_analysts() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let analyst = api.token("analyst.1").await;
    let auditor = api.token("audit.1").await;
    for mrn in ["MRN-S1", "MRN-S2", "MRN-S3"] {
        let (s, _) = api.post(&reception, "/orders", order_body(mrn)).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let url = format!("{}/events/stream?aggregate_type=Order", api.base);
    let mut first = api
        .client
        .get(&url)
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let got = read_events(&mut first, 2).await;
    drop(first); // the client disconnects after two events
    assert!(
        got.iter().all(|(_, e)| {
            let placed = &e["payload"]["OrderPlaced"];
            placed.get("identity").is_none() && placed.get("clinical_notes").is_none()
        }),
        "{got:?}"
    );
    assert!(got
        .iter()
        .all(|(_, e)| e["payload"]["OrderPlaced"]["patient_id"].is_string()));

    // Resume: only the third order, then live events as they are written.
    let mut resumed = api
        .client
        .get(&url)
        .bearer_auth(&analyst)
        .header("Last-Event-ID", &got[1].0)
        .send()
        .await
        .unwrap();
    let (s, fourth) = api.post(&reception, "/orders", order_body("MRN-S4")).await;
    assert_eq!(s, StatusCode::CREATED);
    let rest = read_events(&mut resumed, 2).await;
    let ids: Vec<&str> = got
        .iter()
        .chain(rest.iter())
        .map(|(_, e)| e["aggregate_id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "no event twice: {ids:?}");
    assert_eq!(rest[1].1["aggregate_id"], fourth["id"]);

    // Auditors get the stored event: identity sealed; other roles may not read the
    // stream; a bad cursor is a 422.
    let mut whole = api
        .client
        .get(&url)
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    let events = read_events(&mut whole, 1).await;
    let placed = &events[0].1["payload"]["OrderPlaced"];
    assert_eq!(placed["identity"]["kind"], "patient_identity");
    assert!(!placed.to_string().contains("Asha"), "{placed}");
    let r = api
        .client
        .get(&url)
        .bearer_auth(&reception)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = api
        .client
        .get(&url)
        .bearer_auth(&analyst)
        .header("Last-Event-ID", "nonsense")
        .send()
        .await
        .unwrap();
    // A bad header is named as the header, not as the query's `after`.
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("Last-Event-ID"),
        "{problem}"
    );
    let (s, problem) = api.get(&analyst, "/events/stream?after=nonsense").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/after", "{problem}");
    api.db.drop().await;
}

#[tokio::test]
async fn a_user_over_the_rate_limit_gets_429_with_retry_after() {
    let api = Api::start_limited(3).await;
    let reception = api.token("reception.1").await;
    for _ in 0..3 {
        let (s, _) = api
            .get(&reception, &format!("/orders/{}", uuid::Uuid::new_v4()))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let r = api
        .client
        .get(format!("{}/orders/{}", api.base, uuid::Uuid::new_v4()))
        .bearer_auth(&reception)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Another user is not affected.
    let tech = api.token("tech.1").await;
    let (s, _) = api
        .get(&tech, &format!("/orders/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    api.db.drop().await;
}

#[tokio::test]
async fn analytics_are_served_over_a_date_range() {
    use lis_projections::models::analytics::Analytics;
    use lis_projections::projection::Projection;
    let url = std::env::var("LIS_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into());
    let database = format!("lis_analytics_http_{}", uuid::Uuid::new_v4().simple());
    let analytics = Arc::new(Analytics::connect(&url, &database).await.unwrap());
    let api = Api::start_with(0, Some(analytics.clone()), None, 0).await;
    lis_tests::lab_day(&api.db).await;
    ensure_schema(
        &mut api.db.app.acquire().await.unwrap(),
        analytics.as_ref(),
        &schema_of(analytics.name()),
    )
    .await
    .unwrap();
    catch_up(&api.db.app, analytics.as_ref()).await;

    let analyst = api.token("analyst.1").await;
    let today = chrono::Utc::now().date_naive();
    let range = format!("from={}&to={}", today - chrono::Duration::days(1), today);
    let (s, volumes) = api
        .get(&analyst, &format!("/analytics/volumes?{range}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{volumes}");
    assert_eq!(volumes.as_array().unwrap().len(), 3);
    let (_, rejections) = api
        .get(&analyst, &format!("/analytics/rejections?{range}"))
        .await;
    assert_eq!(rejections[0]["reason"], "haemolysed");
    let (s, _) = api
        .get(&analyst, &format!("/analytics/nonsense?{range}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, p) = api
        .get(
            &analyst,
            &format!(
                "/analytics/volumes?from={today}&to={}",
                today - chrono::Duration::days(2)
            ),
        )
        .await;
    assert_eq!(
        (s, p["errors"][0]["pointer"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/from"))
    );
    let (s, ready) = api.get(&analyst, "/readyz").await;
    assert_eq!((s, ready["mongodb"].as_str()), (StatusCode::OK, Some("ok")));
    let reception = api.token("reception.1").await;
    let (s, _) = api
        .get(&reception, &format!("/analytics/volumes?{range}"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    analytics.database().drop().await.unwrap();
    api.db.drop().await;
}

#[tokio::test]
async fn with_postgresql_down_the_api_answers_503_never_500() {
    // A pool pointing where nothing listens: every query is refused. The key vault's own
    // pool is closed with its (dropped) database, so it is refused too.
    let db = lis_tests::TestDb::new().await;
    let vault = db.vault().await;
    db.drop().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let auth_config = auth::AuthConfig {
        secret: SECRET.to_vec(),
        issuer: "lisledger".into(),
        audience: "lisledger-api".into(),
        ttl_secs: 300,
    };
    let token = auth::issue(
        &auth_config,
        &auth::Grant::standing(ActorId::parse("reception.1").unwrap(), Role::Reception),
    )
    .unwrap()
    .0;
    let state = AppState {
        pool: pool.clone(),
        ledger: Arc::new(lis_commands::Ledger::new(
            pool,
            lis_commands::LedgerConfig::default(),
            vault,
        )),
        auth: Arc::new(auth_config),
        kafka: None,
        analytics: None,
        metrics: Default::default(),
        per_address: Arc::new(http::limits::RateLimiter::new(0)),
        per_user: Arc::new(http::limits::RateLimiter::new(0)),
        in_flight: Default::default(),
        seal_verifier: None,
        cors_origins: vec![],
        // Nothing revoked: the database is away.
        revocations: Default::default(),
        lockout: Default::default(),
        public_url: None,
        request_timeout: std::time::Duration::from_secs(35),
    };
    let base = serve(state).await;
    let client = Client::new();
    let calls = [
        client.get(format!("{base}/readyz")),
        client
            .post(format!("{base}/orders"))
            .bearer_auth(&token)
            .json(&order_body("MRN-9")),
        client
            .get(format!("{base}/orders/{}", uuid::Uuid::new_v4()))
            .bearer_auth(&token),
        client
            .post(format!("{base}/auth/login"))
            .json(&json!({"username": "a", "password": "b"})),
    ];
    for call in calls {
        let r = call.send().await.unwrap();
        let url = r.url().to_string();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{url}");
        assert!(r.headers().contains_key("retry-after"), "{url}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{url}"
        );
    }
}

#[tokio::test]
async fn sql_injection_strings_are_stored_as_text_or_refused() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let auditor = api.token("audit.1").await;
    let evil = "Robert'); DROP TABLE events; --";
    let body = json!({
        "patient": {"mrn": "MRN-X1", "name": evil, "sex": "male", "date_of_birth": "1980-05-17"},
        "ordering_clinician": "x' OR '1'='1", "priority": "routine",
        "collection_site": "'; TRUNCATE events CASCADE; --", "clinical_notes": "\\'; SELECT pg_sleep(10); --",
        "tests": ["K"]
    });
    let (s, order) = api.post(&reception, "/orders", body).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let history: Value = api
        .client
        .get(format!(
            "{}/audit/orders/{}",
            api.base,
            order["id"].as_str().unwrap()
        ))
        .bearer_auth(&auditor)
        .header("break-glass-reason", "injection test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let placed = &history["events"][0]["payload"]["OrderPlaced"];
    assert_eq!(placed["identity"]["name"], evil);
    assert_eq!(placed["clinical_notes"], "\\'; SELECT pg_sleep(10); --");
    assert_eq!(placed["collection_site"], "'; TRUNCATE events CASCADE; --");
    // Identifiers with such characters are refused, naming the field.
    let mut bad = order_body("MRN'; DROP TABLE users; --");
    bad["tests"] = json!(["K'; DROP TABLE events; --"]);
    let (s, p) = api.post(&reception, "/orders", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (s, _) = api
        .get(&reception, "/samples/by-accession/ACC'%20OR%20'1'='1")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&api.db.app)
        .await
        .unwrap();
    assert_eq!(events, 1);
    api.db.drop().await;
}

#[tokio::test]
async fn identity_is_shown_as_each_role_may_see_it_and_only_an_admin_erases() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let auditor = api.token("audit.1").await;
    let analyst = api.token("analyst.1").await;
    let admin = api.token("admin.1").await;
    let mut body = order_body("MRN-PRIV-9");
    body["patient"]["phone"] = json!("+91 98450 12345");
    body["patient"]["abha_number"] = json!("91-2345-6789-0123");
    body["clinical_notes"] = json!("on warfarin");
    let (s, placed) = api.post(&reception, "/orders", body).await;
    assert_eq!(s, StatusCode::CREATED, "{placed}");
    let order_id = placed["id"].as_str().unwrap().to_string();
    api.project().await;
    let (_, order) = api.get(&reception, &format!("/orders/{order_id}")).await;
    let patient = order["patient_id"].as_str().unwrap().to_string();
    let with_glass = |token: &str, path: &str, reason: &str| {
        api.client
            .get(format!("{}{path}", api.base))
            .bearer_auth(token)
            .header("break-glass-reason", reason)
            .send()
    };

    // Care roles see the identity; auditors see it masked; analysts not at all.
    let (s, p) = api.get(&reception, &format!("/patients/{patient}")).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["identity"]["name"], "Asha Verma");
    assert_eq!(p["identity"]["phone"], "+919845012345");
    assert_eq!(p["erased"], false);
    let (s, p) = api.get(&auditor, &format!("/patients/{patient}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["identity"]["name"], "A*** V****");
    assert_eq!(p["identity"]["date_of_birth"], "1980-**-**");
    assert!(
        !p.to_string().contains("Asha") && !p.to_string().contains("MRN-PRIV-9"),
        "{p}"
    );
    let (s, _) = api.get(&analyst, &format!("/patients/{patient}")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let history = format!("/audit/orders/{order_id}");
    let (s, h) = api.get(&auditor, &history).await;
    assert_eq!(s, StatusCode::OK);
    let text = h.to_string();
    assert!(
        !text.contains("Asha") && !text.contains("warfarin"),
        "{text}"
    );
    assert_eq!(
        h["events"][0]["payload"]["OrderPlaced"]["identity"]["name"],
        "A*** V****"
    );
    assert_eq!(
        h["events"][0]["payload"]["OrderPlaced"]["clinical_notes"],
        "[masked]"
    );

    // Break glass: an auditor with a reason sees it whole, and the access is logged.
    let r = with_glass(&auditor, &history, "NABL assessment, request 12")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h: Value = r.json().await.unwrap();
    assert_eq!(
        h["events"][0]["payload"]["OrderPlaced"]["identity"]["name"],
        "Asha Verma"
    );
    assert_eq!(
        h["events"][0]["payload"]["OrderPlaced"]["clinical_notes"],
        "on warfarin"
    );
    let logged: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor_id, reason, resource FROM break_glass_log")
            .fetch_all(&api.db.app)
            .await
            .unwrap();
    assert_eq!(
        logged,
        [(
            "audit.1".to_string(),
            "NABL assessment, request 12".to_string(),
            format!("audit/orders/{order_id}")
        )]
    );
    // Auditors review the break-glass reads: all of them over a range, each user's with
    // their activity; a range before the read holds none, and a reversed one is refused.
    let range = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        format!(
            "from={}&to={}",
            from.to_rfc3339().replace('+', "%2B"),
            to.to_rfc3339().replace('+', "%2B")
        )
    };
    let now = chrono::Utc::now();
    let around = range(
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    );
    let (s, reads) = api
        .get(&auditor, &format!("/audit/break-glass?{around}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{reads}");
    let read = &reads["reads"][0];
    assert_eq!(reads["reads"].as_array().map(Vec::len), Some(1), "{reads}");
    assert_eq!(
        (
            &read["actor"],
            &read["role"],
            &read["reason"],
            &read["resource"]
        ),
        (
            &json!("audit.1"),
            &json!("auditor"),
            &json!("NABL assessment, request 12"),
            &json!(format!("audit/orders/{order_id}"))
        )
    );
    assert!(
        read["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{read}"
    );
    let (s, did) = api
        .get(&auditor, &format!("/audit/actors/audit.1?{around}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{did}");
    assert_eq!(did["break_glass"], reads["reads"], "{did}");
    let (_, did) = api
        .get(&auditor, &format!("/audit/actors/reception.1?{around}"))
        .await;
    assert_eq!(did["break_glass"], json!([]), "{did}");
    let before = range(
        now - chrono::Duration::hours(2),
        now - chrono::Duration::hours(1),
    );
    let (_, none) = api
        .get(&auditor, &format!("/audit/break-glass?{before}"))
        .await;
    assert_eq!(none["reads"], json!([]), "{none}");
    // Two more reads; a page of two, then the rest.
    for reason in ["NABL assessment, request 13", "NABL assessment, request 14"] {
        let r = with_glass(&auditor, &history, reason).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (s, first) = api
        .get(&auditor, &format!("/audit/break-glass?{around}&limit=2"))
        .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let next = first["next_after"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (s, second) = api
        .get(
            &auditor,
            &format!("/audit/break-glass?{around}&limit=2&after={next}"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{second}");
    let (_, did) = api
        .get(&auditor, &format!("/audit/actors/audit.1?{around}"))
        .await;
    assert_eq!(
        did["break_glass"].as_array().map(Vec::len),
        Some(3),
        "{did}"
    );
    assert_eq!(did["break_glass_truncated"], false, "{did}");
    for (query, pointer) in [
        ("&limit=0", "/limit"),
        ("&after=1", "/after"),
        ("&after=-300000000000000000.1", "/after"),
    ] {
        let path = format!("/audit/break-glass?{around}{query}");
        api.refused_at(&auditor, &path, pointer).await;
    }
    // Times the database cannot hold are refused by name, not failed on.
    let as_of = format!("{history}?as_of=-5000-01-01T00:00:00Z");
    for (path, pointer) in [
        (
            "/audit/break-glass?from=-5000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "/from",
        ),
        (
            "/audit/actors/audit.1?from=2026-01-01T00:00:00Z&to=%2B20000-01-01T00:00:00Z",
            "/to",
        ),
        (as_of.as_str(), "/as_of"),
    ] {
        api.refused_at(&auditor, path, pointer).await;
    }
    let reasons: Vec<&str> = first["reads"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["reads"].as_array().unwrap())
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "NABL assessment, request 12",
            "NABL assessment, request 13",
            "NABL assessment, request 14"
        ]
    );
    assert_eq!(second["next_after"], Value::Null, "{second}");
    let reversed = range(now + chrono::Duration::hours(1), now);
    api.refused_at(&auditor, &format!("/audit/break-glass?{reversed}"), "/from")
        .await;
    let (s, _) = api
        .get(&reception, &format!("/audit/break-glass?{around}"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let r = with_glass(&admin, &format!("/patients/{patient}"), "curious")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = with_glass(&auditor, &history, " ").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Erasure: admin only, with a reason; then identity reads [erased] for everyone.
    let erase = format!("/patients/{patient}/erase");
    let (s, _) = api
        .post(&reception, &erase, json!({"reason": "asked"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, p) = api.post(&admin, &erase, json!({})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (s, p) = api
        .post(
            &admin,
            &erase,
            json!({"reason": "patient request, DPDP s.12"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let (s, p) = api.get(&reception, &format!("/patients/{patient}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (p["erased"].clone(), p["identity"].clone()),
        (json!(true), json!("[erased]"))
    );
    let h: Value = with_glass(&auditor, &history, "erasure check")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        h["events"][0]["payload"]["OrderPlaced"]["identity"],
        "[erased]"
    );
    assert_eq!(
        h["events"][0]["payload"]["OrderPlaced"]["clinical_notes"],
        "[erased]"
    );
    let csv = with_glass(&auditor, &format!("{history}?format=csv"), "erasure check")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.contains("[erased]") && !csv.contains("Asha"), "{csv}");
    let (s, p) = api
        .get(&auditor, &format!("/audit/patients/{patient}"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["events"][0]["event_type"], "PatientErased");
    assert_eq!(p["events"][0]["actor"], "admin.1");
    let (s, p) = api.post(&admin, &erase, json!({"reason": "again"})).await;
    assert_eq!(
        (s, p["rule"].as_str()),
        (StatusCode::CONFLICT, Some("patient.already-erased"))
    );
    let (s, _) = api
        .post(
            &admin,
            &format!("/patients/{}/erase", uuid::Uuid::new_v4()),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    api.db.drop().await;
}

#[tokio::test]
async fn readiness_probes_kafka_where_configured() {
    use lis_projections::kafka_health::KafkaProbe;
    let brokers = std::env::var("LIS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let live = Api::start_with(
        0,
        None,
        Some(Arc::new(KafkaProbe::new(&brokers).unwrap())),
        0,
    )
    .await;
    let token = live.token("analyst.1").await;
    let (s, ready) = live.get(&token, "/readyz").await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    assert!(
        ready["kafka"].as_str().unwrap().starts_with("ok"),
        "{ready}"
    );
    live.db.drop().await;
    // Nothing listens on port 1: not ready, said as a problem.
    let dead = Api::start_with(
        0,
        None,
        Some(Arc::new(KafkaProbe::new("127.0.0.1:1").unwrap())),
        0,
    )
    .await;
    let token = dead.token("analyst.1").await;
    let (s, p) = dead.get(&token, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{p}");
    assert_eq!(p["detail"], "Kafka is not answering");
    dead.db.drop().await;
}

/// Found by schemathesis: a NUL character (which PostgreSQL cannot store or compare)
/// answered 500, and analytics on a server without MongoDB answered 503 as if it were a
/// passing outage.
#[tokio::test]
async fn nul_characters_and_absent_analytics_are_client_errors() {
    let api = Api::start().await;
    let r = api
        .client
        .post(format!("{}/auth/login", api.base))
        .json(&json!({"username": "\u{0}", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/username");
    let clinician = api.token("dr.rao").await;
    let (status, problem) = api
        .post(
            &clinician,
            "/orders",
            json!({
                "patient": {"mrn": "M-1", "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
                "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2",
                "tests": ["K"], "clinical_notes": null, "x\u{0}": 1
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    // Refused for the NUL in the member's name (an unknown member alone is refused too,
    // but for another reason).
    assert_eq!(problem["errors"][0]["pointer"], "/x\u{0}", "{problem}");
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("NUL")),
        "{problem}"
    );
    let auditor = api.token("audit.1").await;
    for path in [
        "/audit/actors/a%00b?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
        "/audit/orders/x%00",
    ] {
        let (status, problem) = api.get(&auditor, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {problem}");
        assert_eq!(problem["status"], 400);
    }
    // A bad query parameter is a 422 naming it, a NUL in one too.
    for (path, named) in [
        (
            "/audit/actors/a?from=yesterday&to=2026-01-02T00:00:00Z",
            "/from",
        ),
        (
            "/audit/actors/a?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&x%00=1",
            "/x\u{0}",
        ),
    ] {
        let (status, problem) = api.get(&auditor, path).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {problem}"
        );
        assert_eq!(problem["errors"][0]["pointer"], named, "{path}: {problem}");
    }
    // Ids that cannot exist are not found, with or without `as_of`.
    for path in [
        "/audit/orders/null,null?as_of=2000-01-01T00:00:00Z",
        "/audit/orders/7f1d2b8c-0000-4c55-9a3e-0b6f4c1e2d4a?as_of=2000-01-01T00:00:00Z",
        "/audit/actors/%C3%97?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
    ] {
        let (status, problem) = api.get(&auditor, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {problem}");
    }
    let admin = api.token("admin.1").await;
    for report in ["volumes", "nonsense"] {
        let (status, problem) = api
            .get(
                &admin,
                &format!("/analytics/{report}?from=2026-01-01&to=2026-01-02"),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{report}: {problem}");
    }
    api.db.drop().await;
}

#[tokio::test]
async fn beyond_the_requests_in_flight_the_api_answers_503_at_once() {
    // One request at a time. No projection worker runs here, so a read waiting for the
    // order's position holds the only permit (up to its 5 s bound).
    let api = Api::start_with(0, None, None, 1).await;
    let token = api.token("reception.1").await;
    let (s, placed) = api.post(&token, "/orders", order_body("MRN-OVER")).await;
    assert_eq!(s, StatusCode::CREATED, "{placed}");
    let path = format!(
        "/orders/{}?min_position={}",
        placed["id"].as_str().unwrap(),
        placed["position"]
    );
    let wait = || {
        let (client, base, token) = (api.client.clone(), api.base.clone(), token.clone());
        let path = path.clone();
        tokio::spawn(async move {
            let r = client
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let problem: Value = r.json().await.unwrap();
            (status, problem)
        })
    };
    // Once the waiting read holds the only permit, any other request is refused at once
    // (until then it is served: a 404 for an order that does not exist). If a probe
    // took the permit first, the waiting read was the one refused: it is sent again.
    let mut waiting = wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let (s, p, took) = loop {
        // Let the waiting read go first.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if waiting.is_finished() {
            let (status, problem) = waiting.await.unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
            waiting = wait();
            continue;
        }
        let started = std::time::Instant::now();
        let (s, p) = api
            .get(&token, &format!("/orders/{}", uuid::Uuid::new_v4()))
            .await;
        if s != StatusCode::NOT_FOUND || std::time::Instant::now() > deadline {
            break (s, p, started.elapsed());
        }
    };
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{p}");
    assert_eq!(
        p["type"], "https://lisledger.example/problems/overloaded",
        "{p}"
    );
    assert!(took < std::time::Duration::from_secs(2));
    // Probes are always answered.
    let r = api
        .client
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The waiting read ends (503: its model never got there, not shed), and the permit
    // is back.
    let (status, problem) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(
        problem["type"], "https://lisledger.example/problems/unavailable",
        "{problem}"
    );
    let (s, p) = api
        .get(&token, &format!("/orders/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
    api.db.drop().await;
}

#[tokio::test]
async fn an_idempotency_key_outside_its_documented_form_is_refused_and_nothing_is_written() {
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let send = |key: &[u8], mrn: &str| {
        api.client
            .post(format!("{}/orders", api.base))
            .bearer_auth(&reception)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(key).unwrap(),
            )
            .json(&order_body(mrn))
            .send()
    };
    let long = vec![b'k'; 201];
    for (n, key) in [b"a\tb".as_slice(), b"\x80key", &long]
        .into_iter()
        .enumerate()
    {
        let r = send(key, &format!("MRN-8{n}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{key:?}");
        let problem: Value = r.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("Idempotency-Key")),
            "{problem}"
        );
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&api.db.app)
        .await
        .unwrap();
    assert_eq!(events, 0, "a refused request wrote an event");
    // Spaces inside a key are part of it.
    let r = send(b"retry 1 of order 9", "MRN-89").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    api.db.drop().await;
}

/// A gauge's value in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[tokio::test]
async fn the_metrics_show_what_an_open_transaction_holds_back_from_the_feed() {
    use sqlx::Connection;
    let api = Api::start().await;
    let reception = api.token("reception.1").await;
    let scrape = || async {
        let r = api.client.get(format!("{}/metrics", api.base)).send().await;
        r.unwrap().text().await.unwrap()
    };
    // A transaction that holds an id and stays open, as an operator's forgotten psql
    // session would.
    let mut holder =
        sqlx::PgConnection::connect(&api.db.url_as(lis_eventstore_migrations::APP_ROLE))
            .await
            .unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut holder)
        .await
        .unwrap();
    let (s, _) = api
        .post(&reception, "/orders", order_body("MRN-HELD"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let metrics = scrape().await;
    assert!(
        gauge(&metrics, "lis_feed_held_back_events") >= 1.0,
        "{metrics}"
    );
    // The held-back event was committed before the scrape: it has waited some time.
    assert!(
        gauge(&metrics, "lis_feed_held_back_seconds") > 0.0,
        "{metrics}"
    );
    // Once it ends, nothing is held back (other tests' transactions in the cluster may
    // hold the feed for a moment).
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = scrape().await;
        if gauge(&metrics, "lis_feed_held_back_events") == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    api.db.drop().await;
}

/// The names in a page of log-ins, in order.
fn login_names(page: &Value) -> Vec<String> {
    page["logins"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|l| l["user"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn an_audit_page_never_steps_over_an_entry_still_being_written() {
    use sqlx::Connection;
    let api = Api::start().await;
    let now = chrono::Utc::now();
    let range = format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let auditor = api.token("audit.1").await;
    let reception = api.token("reception.1").await;
    // A log-in written by a transaction that stays open (of another role: the owner's),
    // then one written and committed after it began.
    let mut holder =
        sqlx::PgConnection::connect(&api.db.url_as(lis_eventstore_migrations::OWNER_ROLE))
            .await
            .unwrap();
    started(
        &mut holder,
        "BEGIN",
        "INSERT INTO logins (username, succeeded) VALUES ('held.in.flight', false)",
    )
    .await;
    let r = api
        .client
        .post(format!("{}/auth/login", api.base))
        .json(&json!({"username": "path.1", "password": "not the password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And an order placed meanwhile (its events too are after the open transaction's start).
    let (s, settling) = api
        .post(&reception, "/orders", order_body("MRN-SETTLE"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Its state as of now is not final while the older transaction is open.
    let as_of = |at: chrono::DateTime<chrono::Utc>| {
        format!(
            "/audit/orders/{}?as_of={}",
            settling["id"].as_str().unwrap(),
            at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
        )
    };
    let (s, unsettled) = api.get(&auditor, &as_of(chrono::Utc::now())).await;
    assert_eq!(s, StatusCode::OK, "{unsettled}");
    assert_eq!(unsettled["as_of_settled"], false, "{unsettled}");
    // The page stops where entries may still be committing: the committed log-in after
    // the open transaction's start is not shown yet, and the page says where to resume.
    let (s, first) = api
        .get(&auditor, &format!("/audit/logins?{range}&limit=100"))
        .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(login_names(&first), ["audit.1", "reception.1"], "{first}");
    assert_eq!(first["next_after"], Value::Null, "{first}");
    let resume = first["resume_after"]
        .as_str()
        .unwrap_or_else(|| panic!("a place to resume from: {first}"))
        .to_string();
    let settled: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(first["settled_until"].clone()).unwrap();
    assert!(settled < chrono::Utc::now(), "{first}");
    let (_, did) = api
        .get(&auditor, &format!("/audit/actors/reception.1?{range}"))
        .await;
    assert_eq!(did["events"], json!([]), "{did}");
    assert_eq!(did["logins"].as_array().map(Vec::len), Some(1), "{did}");
    let activity_resume = did["resume_after"].as_str().unwrap().to_string();
    // A user's lists stop there too: path.1's failed log-in is not on its first page.
    let (_, path_first) = api
        .get(&auditor, &format!("/audit/actors/path.1?{range}"))
        .await;
    assert_eq!(path_first["logins"], json!([]), "{path_first}");
    let path_resume = path_first["resume_after"].as_str().unwrap().to_string();
    // Once it commits, the next page holds both, in the order they were written.
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    // (A second back: a statement of the server's own, a poll, may have just begun.)
    let second_ago = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (_, settled) = api.get(&auditor, &as_of(second_ago)).await;
    assert_eq!(settled["as_of_settled"], true, "{settled}");
    let (s, rest) = api
        .get(
            &auditor,
            &format!("/audit/logins?{range}&limit=100&after={resume}"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rest}");
    assert_eq!(login_names(&rest), ["held.in.flight", "path.1"], "{rest}");
    assert!(
        rest["resume_after"].is_string(),
        "the range is still open: {rest}"
    );
    let (_, did) = api
        .get(
            &auditor,
            &format!("/audit/actors/reception.1?{range}&after={activity_resume}"),
        )
        .await;
    let types: Vec<&str> = did["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"OrderPlaced"), "{did}");
    assert_eq!(
        did["logins"],
        json!([]),
        "sent once, on the first page: {did}"
    );
    // Each page's lists go on from where the previous page's ended: the failed log-in
    // comes with the page resumed from, and once.
    let (_, path_rest) = api
        .get(
            &auditor,
            &format!("/audit/actors/path.1?{range}&after={path_resume}"),
        )
        .await;
    assert_eq!(
        path_rest["logins"]
            .as_array()
            .map(|l| l.iter().map(|e| e["succeeded"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(false)]),
        "{path_rest}"
    );
    let again = path_rest["resume_after"].as_str().unwrap();
    let (_, path_again) = api
        .get(
            &auditor,
            &format!("/audit/actors/path.1?{range}&after={again}"),
        )
        .await;
    assert_eq!(path_again["logins"], json!([]), "{path_again}");
    // A range that has ended, with nothing running, is whole: nothing to resume.
    let ended = format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")
    );
    let (_, whole) = api
        .get(&auditor, &format!("/audit/logins?{ended}&limit=100"))
        .await;
    assert_eq!(whole["resume_after"], Value::Null, "{whole}");
    assert_eq!(whole["settled_until"], whole["to"], "{whole}");
    assert_eq!(
        login_names(&whole),
        ["audit.1", "reception.1", "held.in.flight", "path.1"],
        "{whole}"
    );
    holder.close().await.unwrap();
    api.db.drop().await;
}

/// Begins a transaction on `conn` with `begin`, runs `then` in it, and says when it began.
async fn started(
    conn: &mut sqlx::PgConnection,
    begin: &str,
    then: &str,
) -> chrono::DateTime<chrono::Utc> {
    sqlx::query(begin).execute(&mut *conn).await.unwrap();
    sqlx::query(then).execute(&mut *conn).await.unwrap();
    sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn without_sight_of_other_roles_sessions_the_horizon_is_unknown_not_guessed() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    // A role like the application's, without pg_read_all_stats.
    let role = format!("lis_blind_{}", &db.name[db.name.len() - 8..]);
    let admin = db.superuser().await;
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name),
    ] {
        sqlx::query(&statement).execute(&admin).await.unwrap();
    }
    let blind = TestDb::pool_as(&role, &db.name).await;
    assert!(!http::settled::can_see_other_sessions(&blind).await.unwrap());
    assert!(http::settled::can_see_other_sessions(&db.app)
        .await
        .unwrap());
    // While a session of another role is connected, a blind role cannot tell.
    let connect = || async {
        sqlx::PgConnection::connect(&db.url_as(lis_eventstore_migrations::OWNER_ROLE))
            .await
            .unwrap()
    };
    // A long reader, as pg_dump is: it writes nothing, so it holds nothing back.
    let mut reader = connect().await;
    let reading_since = started(
        &mut reader,
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "SELECT count(*) FROM logins",
    )
    .await;
    let refused = http::settled::horizon(&blind).await.unwrap_err();
    assert_eq!(refused.status, 503);
    assert!(http::settled::horizon(&db.app).await.unwrap() > reading_since);
    // A transaction that has written (it holds an id): the application role sees it and
    // stops at its start.
    let mut other = connect().await;
    let open_since = started(&mut other, "BEGIN", "SELECT pg_current_xact_id()").await;
    let horizon = http::settled::horizon(&db.app).await.unwrap();
    assert_eq!(horizon, open_since);
    reader.close().await.unwrap();
    other.close().await.unwrap();
    blind.close().await;
    admin.close().await;
    let admin_url = lis_tests::admin_url();
    db.drop().await;
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_log_ins_lock_an_account_for_a_while_and_a_reset_unlocks_it() {
    // A window long enough that nothing here leaves it by itself.
    let window = std::time::Duration::from_secs(300);
    let api = Api::start_locking(http::lockout::Lockout {
        after: 3,
        window,
        ..Default::default()
    })
    .await;
    let admin = api.token("admin.1").await;
    let auditor = api.token("audit.1").await;
    let attempt = |user: &'static str, password: &'static str| {
        let (client, base) = (api.client.clone(), api.base.clone());
        async move {
            let r = client
                .post(format!("{base}/auth/login"))
                .json(&json!({"username": user, "password": password}))
                .send()
                .await
                .unwrap();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let status = r.status();
            (status, r.json::<Value>().await.unwrap(), retry_after)
        }
    };
    const RIGHT: &str = "correct horse battery";
    // A success starts the count again: two wrong, right, two wrong still logs in.
    for password in ["wrong 1", "wrong 2", RIGHT, "wrong 3", "wrong 4", RIGHT] {
        let (s, _, _) = attempt("path.1", password).await;
        let expected = if password == RIGHT { 200 } else { 401 };
        assert_eq!(s.as_u16(), expected, "path.1 with {password}");
    }
    // Three wrong in the window lock the account: the right password is then refused
    // without being checked, saying until when.
    for password in ["wrong 1", "wrong 2", "wrong 3"] {
        let (s, _, _) = attempt("tech.1", password).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, locked, retry) = attempt("tech.1", RIGHT).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{locked}");
    assert!(
        locked["type"].as_str().unwrap().ends_with("login-locked"),
        "{locked}"
    );
    let retry = retry.expect("Retry-After");
    assert!((250..=300).contains(&retry), "{retry}");
    // Others are not locked with it, and a name that is no account never locks (no name
    // is recorded for it).
    assert_eq!(attempt("path.1", RIGHT).await.0, StatusCode::OK);
    for _ in 0..5 {
        let (s, _, _) = attempt("nobody.here", "wrong").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // A name is the account's however it is capitalised, and every spelling of it shares
    // one count.
    let (s, token, _) = attempt("ANALYST.1", RIGHT).await;
    assert_eq!(s, StatusCode::OK, "{token}");
    assert_eq!(token["role"], "analyst", "{token}");
    for spelling in ["PHLEB.1", "Phleb.1", "phleb.1"] {
        assert_eq!(attempt(spelling, "wrong").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        attempt("phleb.1", RIGHT).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Where an older database holds two names that differ only in case (from before
    // migration 0013), neither is guessed at: each logs in only as written.
    api.db
        .tamper(&["INSERT INTO users (username, role, password_hash)
             SELECT 'Admin.1', role, password_hash FROM users WHERE username = 'admin.1'"])
        .await;
    assert_eq!(attempt("ADMIN.1", RIGHT).await.0, StatusCode::UNAUTHORIZED);
    let (s, token, _) = attempt("Admin.1", RIGHT).await;
    assert_eq!((s, &token["role"]), (StatusCode::OK, &json!("admin")));
    // A burst of guesses at once is checked one at a time: three, then locked.
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(attempt("dr.rao", "a guess")))
        .collect();
    let mut answers = Vec::new();
    for guess in burst {
        answers.push(guess.await.unwrap().0.as_u16());
    }
    answers.sort_unstable();
    assert_eq!(answers, [401, 401, 401, 429, 429, 429, 429, 429, 429, 429]);
    // Administrators see it in the list of accounts.
    let locked_until = |name: &'static str| {
        let admin = admin.clone();
        let api = &api;
        async move {
            let (s, list) = api.get(&admin, "/users").await;
            assert_eq!(s, StatusCode::OK, "{list}");
            list["users"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["username"] == name)
                .unwrap()["locked_until"]
                .clone()
        }
    };
    assert_eq!(locked_until("path.1").await, Value::Null);
    assert!(locked_until("tech.1").await.is_string());
    // A reset by an administrator unlocks at once.
    let (s, reset) = api
        .post(
            &admin,
            "/users/tech.1/password",
            json!({"password": "a fresh one for tech one", "reason": "locked out, asked at the bench"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{reset}");
    assert_eq!(reset["locked_until"], Value::Null, "{reset}");
    let (s, body, _) = attempt("tech.1", "a fresh one for tech one").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // The lock ends when the oldest of the failures leaves the window, however often the
    // password was tried meanwhile: attempts while locked do not count. Three failures
    // written as the window's age less four seconds play the time gone by.
    sqlx::query(
        "INSERT INTO logins (at, username, succeeded, client_addr)
         SELECT clock_timestamp() - make_interval(secs => $1), 'reception.1', false, '192.0.2.1'
           FROM generate_series(1, 3)",
    )
    .bind(window.as_secs_f64() - 4.0)
    .execute(&api.db.owner)
    .await
    .unwrap();
    let unlocks: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(locked_until("reception.1").await).expect("reception.1 locked");
    assert!(unlocks < chrono::Utc::now() + chrono::Duration::seconds(5));
    // Guesses sent while the lock has more than a second to run are refused (one sent
    // nearer its end may reach the server after it, and be checked: a 401).
    let mut refused_meanwhile = 0;
    while chrono::Utc::now() + chrono::Duration::seconds(1) < unlocks {
        let (s, _, _) = attempt("reception.1", "still guessing").await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        refused_meanwhile += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused_meanwhile > 0);
    let left = (unlocks - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(100)).await;
    let (s, body, _) = attempt("reception.1", RIGHT).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // The record: three failures, then the locked attempts (marked so), then the success.
    let now = chrono::Utc::now();
    let range = format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::seconds(1)).format("%Y-%m-%dT%H:%M:%S%.6fZ")
    );
    let (_, record) = api
        .get(&auditor, &format!("/audit/actors/reception.1?{range}"))
        .await;
    let outcomes: Vec<(bool, bool)> = record["logins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["succeeded"].as_bool().unwrap(),
                l["locked"].as_bool().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![(false, false); 3];
    expected.extend(vec![(false, true); refused_meanwhile]);
    expected.push((true, false));
    assert_eq!(outcomes, expected, "{record}");
    api.db.drop().await;
}

#[tokio::test]
async fn a_users_lists_longer_than_a_page_go_on_with_the_next_page() {
    let api = Api::start().await;
    let auditor = api.token("audit.1").await;
    // More log-ins of one user than a page's list holds (10,000).
    sqlx::query(
        "INSERT INTO logins (username, succeeded, client_addr)
         SELECT 'phleb.1', false, '192.0.2.7' FROM generate_series(1, 10001)",
    )
    .execute(&api.db.owner)
    .await
    .unwrap();
    let now = chrono::Utc::now();
    let range = format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let (mut seen, mut pages) = (0, 0);
    let mut after: Option<String> = None;
    loop {
        let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let (s, page) = api
            .get(&auditor, &format!("/audit/actors/phleb.1?{range}{cursor}"))
            .await;
        assert_eq!(s, StatusCode::OK);
        let logins = page["logins"].as_array().unwrap().len();
        assert!(logins <= 10_000);
        assert_eq!(page["logins_truncated"], false);
        seen += logins;
        pages += 1;
        assert!(pages <= 3, "the pages go round");
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!((seen, pages), (10_001, 2), "each once, over two pages");
    api.db.drop().await;
}
