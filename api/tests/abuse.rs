//! Abuse of the running `lisledger serve`: expired, unsigned and wrong-audience tokens and
//! tokens signed with another key, a body that claims another actor or role, and JSON
//! nested ten thousand deep — all refused with a problem, no event written, the server
//! still up.

mod support;

use jsonwebtoken::{encode, EncodingKey, Header};
use lis_domain::actor::Role as LabRole;
use lis_tests::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use support::{token, wait_healthy, Stack, JWT_SECRET};

fn signed(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn abusive_tokens_and_bodies_are_refused_and_write_nothing() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    let api = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;
    let http = reqwest::Client::new();
    let order = json!({
        "patient": {"mrn": "MRN-A1", "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
        "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": ["K"]
    });
    let post = |token: String, body: String| {
        http.post(format!("{base}/orders"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Tokens: expired an hour ago; for another audience; unsigned (alg "none").
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, aud: &str| {
        json!({"sub": "reception.1", "role": "admin", "iss": "lisledger", "aud": aud,
               "iat": now - 7200, "exp": exp, "jti": uuid::Uuid::new_v4().to_string()})
    };
    let expired = signed(claims(now - 3600, "lisledger-api"));
    let elsewhere = signed(claims(now + 600, "another-api"));
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    // Every claim right, signed with a key the server does not hold.
    let other_key = encode(
        &Header::default(),
        &claims(now + 600, "lisledger-api"),
        &EncodingKey::from_secret(b"another-key-of-thirty-two-bytes-or-more"),
    )
    .unwrap();
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(now + 600, "lisledger-api"))
    );
    for (what, t) in [
        ("expired", expired),
        ("wrong audience", elsewhere),
        ("unsigned", unsigned),
        ("signed with another key", other_key),
    ] {
        let r = post(t, order.to_string()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
    }

    // Role escalation through the body: the actor and role come from the token only;
    // a body naming them is refused.
    let reception = token("reception.1", LabRole::Reception);
    for (field, value) in [
        ("actor_id", json!("path.1")),
        ("role", json!("admin")),
        ("actor_role", json!("pathologist")),
    ] {
        let mut body = order.clone();
        body[field] = value;
        let r = post(reception.clone(), body.to_string()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{field}");
    }

    // The same through the bodies the domain's own types are read from: a hand-over and
    // a critical-value notification naming an actor, a role or a receipt's condition
    // naming a note are refused, not the extra field dropped.
    let tech = token("tech.1", LabRole::Technologist);
    let id = uuid::Uuid::new_v4();
    for (path, body) in [
        (
            format!("/samples/{id}/handover"),
            json!({"from": "Ward 3 nurse", "to": "Courier", "location": "Ward 3",
                   "at": "2026-03-03T08:00:00Z", "actor_id": "path.1"}),
        ),
        (
            format!("/results/{id}/critical-notifications"),
            json!({"notified_person": "Dr Rao", "method": "phone", "value_conveyed": "K 6.9",
                   "read_back_confirmed": true, "notified_at": "2026-03-03T08:00:00Z",
                   "role": "pathologist"}),
        ),
        (
            format!("/samples/{id}/receive"),
            json!({"condition": {"status": "satisfactory", "note": "fine"}}),
        ),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(&tech)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
    }

    // JSON nested 10,000 deep: a 400, not a crash.
    let deep = format!(
        "{{\"patient\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let r = post(reception.clone(), deep).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", api.log_tail());

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(events, 0);
    // The honest request still works.
    let r = post(reception, order.to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    drop(api);
    db.drop().await;
}
