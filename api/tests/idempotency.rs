//! An `Idempotency-Key` claim against real PostgreSQL: while its command runs, the claim
//! holds the key's lock but no transaction id (the ordered feed would otherwise hold
//! back every event committed after it, for every read model); a retry meanwhile is a
//! 409; once the response is stored, a retry gets it back. A key is one request: the same
//! key and body sent to another path, or with another method, is refused; the request
//! is kept as an HMAC under the server's key, not as a plain hash of a body that may hold
//! a password.

use axum::http::{HeaderMap, StatusCode};
use lis_api::http::idempotency::{claim, finish, AfterDeath, Claim};
use lis_tests::TestDb;
use serde_json::json;

#[tokio::test]
async fn a_claimed_key_holds_no_transaction_id_until_its_response_is_stored() {
    let db = TestDb::new().await;
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", "order/42 retry".parse().unwrap());
    let body = br#"{"tests": ["K"]}"#;
    const SECRET: &[u8] = b"the server's token key, 32 bytes!";
    let attempt_at = |request: &'static str| {
        claim(
            &db.app,
            &headers,
            "reception.1",
            request,
            body,
            SECRET,
            AfterDeath::Answer(StatusCode::CREATED),
        )
    };
    let attempt = || attempt_at("POST /orders");
    let Ok(Claim::Run(Some(held))) = attempt().await else {
        panic!("the first attempt runs its command");
    };

    let open_xids: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND backend_xid IS NOT NULL",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(open_xids, 0, "a claim in flight holds a transaction id");
    match attempt().await {
        Err(p) => assert_eq!(
            (p.status, p.kind),
            (409, "idempotency-in-progress"),
            "{:?}",
            p.detail
        ),
        Ok(_) => panic!("a retry ran while the first attempt held the key"),
    }

    let answer = json!({"id": "7f1c4c2e-2c1a-4e39-9a1b-3f3d2b1e0c11", "version": 1, "position": 1});
    finish(held, StatusCode::CREATED, &answer).await.unwrap();
    match attempt().await {
        Ok(Claim::Replay(status, body)) => {
            assert_eq!((status, body), (StatusCode::CREATED, answer))
        }
        _ => panic!("a retry after the answer was stored gets it back"),
    }
    for other in [
        "POST /orders/2f1c4c2e-2c1a-4e39-9a1b-3f3d2b1e0c11/tests",
        "PUT /orders",
    ] {
        match attempt_at(other).await {
            Err(p) => assert_eq!(
                (p.status, p.kind),
                (422, "idempotency-key-reused"),
                "{other}"
            ),
            Ok(_) => panic!("{other}: the same key and body for another request was not refused"),
        }
    }
    let stored: Vec<u8> = sqlx::query_scalar(
        "SELECT request_sha256 FROM idempotency_keys WHERE key = 'order/42 retry'",
    )
    .fetch_one(&db.app)
    .await
    .unwrap();
    use sha2::Digest;
    let plain = sha2::Sha256::new()
        .chain_update(b"POST /orders\n")
        .chain_update(body)
        .finalize();
    assert_ne!(
        stored,
        plain.to_vec(),
        "the request is kept as a plain hash"
    );
    assert_ne!(stored, sha2::Sha256::digest(body).to_vec());
    db.drop().await;
}
