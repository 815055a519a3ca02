//! PostgreSQL crashed and restarted under load (a private cluster: the shared one is
//! never touched). While it is down the API answers 503 with Retry-After — never 500 —
//! and when it is back everything recovers with no operator action: the API, the relay
//! and the projection workers (still the same processes) carry on, every acknowledged
//! command is stored exactly once, the read models equal a rebuild, the trail verifies.
//! Reads, the patient's identity among them, answer 503 too while it is down.
//! Also here, as it needs a cluster of its own that allows two-phase commit: a prepared
//! transaction holds the auditors' pages by time (503) until it ends. And the network
//! to the shared cluster falling silent (a proxy that stops forwarding): 503 within the
//! acquire timeout, not a request that waits on TCP; falling silent mid-statement: 503
//! at the command's or the request's deadline, and the connection closed, not lost;
//! falling silent in the middle of the relay's and a worker's batches: each gives the
//! batch up at its timeout and carries on when the network answers again. And the
//! leading relay frozen: the server frees the leader lock after its lease, a standby
//! leads.

mod support;

use lis_eventstore_migrations::{APP_ROLE, OWNER_ROLE};
use lis_tests::{assert_models_equal_rebuilds, TestDb};
use std::path::PathBuf;
use std::time::Duration;
use support::load::{assert_exactly_once, Load};
use support::silent_proxy::SilentProxy;
use support::{tails, wait_healthy, wait_projected, wait_sealed, PrivatePg, Role, Stack};

const DATABASE: &str = "lisledger";

/// Polls `GET /readyz` until it answers `want` (or panics with the API's log).
async fn wait_ready(base: &str, want: reqwest::StatusCode, api: &Role) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        let status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status())
            .ok();
        if status == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never answered {want} (last {status:?})\n{}",
            api.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An order the load placed (waiting up to 30 s for one), and its patient.
async fn an_order_and_its_patient(url: &str) -> (String, String) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let ids = sqlx::query_as(
            "SELECT aggregate_id, payload -> 'OrderPlaced' ->> 'patient_id' FROM events
              WHERE event_type = 'OrderPlaced' ORDER BY position LIMIT 1",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(ids) = ids {
            break ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the load placed no order"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pool.close().await;
    ids
}

/// Every kind of read while the database is down — a patient's identity (whose key's
/// status is read first), their cumulative results and orders, an order, the worklists,
/// the critical list, an audit history — answers 503 with Retry-After, never 500.
async fn assert_reads_unavailable(base: &str, order: &str, patient: &str, api: &Role) {
    use lis_domain::actor::Role as LabRole;
    let client = reqwest::Client::new();
    let clinician = support::token("dr.1", LabRole::Clinician);
    let tech = support::token("tech.1", LabRole::Technologist);
    let auditor = support::token("audit.1", LabRole::Auditor);
    for (token, path) in [
        (&clinician, format!("/patients/{patient}")),
        (&clinician, format!("/patients/{patient}/results")),
        (&clinician, format!("/patients/{patient}/orders")),
        (&clinician, format!("/orders/{order}")),
        (&tech, "/worklists".to_string()),
        (&clinician, "/critical-results".to_string()),
        (&auditor, format!("/audit/orders/{order}")),
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let retry = response.headers().contains_key("retry-after");
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            (status, retry),
            (reqwest::StatusCode::SERVICE_UNAVAILABLE, true),
            "GET {path} with the database down: {body}\n{}",
            api.log_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_gives_503_then_recovers_by_itself() {
    let pg = PrivatePg::init();
    pg.start();
    let mut stack = Stack::on(pg.url(APP_ROLE, DATABASE), false);
    stack.set("LIS_ADMIN_DATABASE_URL", pg.admin_url());
    stack.set("LIS_MIGRATION_DATABASE_URL", pg.url(OWNER_ROLE, DATABASE));
    let catalogue =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/seed/test-catalogue.csv");
    for args in [
        vec!["db", "init"],
        vec!["migrate"],
        vec!["catalogue", "import", catalogue.to_str().unwrap()],
    ] {
        let out = stack.run(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let base = stack.with_api();
    let mut api = stack.spawn("serve", &["serve"]);
    let mut relay = stack.spawn("relay", &["relay"]);
    let names = ["orders", "specimens", "results"];
    let mut workers = stack.spawn("project", &["project", "orders", "specimens", "results"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;

    let load = Load::start(&base, 3);
    let (order, patient) = an_order_and_its_patient(&pg.url(APP_ROLE, DATABASE)).await;
    for cycle in 1..=2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        println!("cycle {cycle}: PostgreSQL crashes");
        pg.crash();
        // Down: the API says so (503 with Retry-After), and the clients keep retrying.
        wait_ready(&base, reqwest::StatusCode::SERVICE_UNAVAILABLE, &api).await;
        assert_reads_unavailable(&base, &order, &patient, &api).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pg.start();
        println!("cycle {cycle}: PostgreSQL is back");
        wait_ready(&base, reqwest::StatusCode::OK, &api).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outcome = load.stop().await;
    assert!(
        outcome.errors.is_empty(),
        "commands without a final 2xx answer (a 500 among them?):\n{}\n\n{}",
        outcome.errors.join("\n"),
        tails(&[&api, &relay, &workers])
    );
    println!(
        "{} commands acknowledged, {} answers 503 on the way",
        outcome.acked.len(),
        outcome.unavailable
    );
    assert!(outcome.unavailable > 0, "the outage was never seen");

    // Nothing was restarted by hand: the same processes carry on.
    for role in [&mut api, &mut relay, &mut workers] {
        assert!(role.is_running(), "exited:\n{}", role.log_tail());
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&pg.url(APP_ROLE, DATABASE))
        .await
        .unwrap();
    assert_exactly_once(&pool, &outcome.acked).await;
    let db = TestDb {
        name: DATABASE.into(),
        app: pool.clone(),
        owner: pool.clone(),
    };
    wait_projected(
        &db,
        &names,
        Duration::from_secs(60),
        &[&api, &relay, &workers],
    )
    .await;
    drop((api, relay, workers));
    assert_models_equal_rebuilds(&pool).await;
    stack.assert_audit_verifies();
    pool.close().await;
}

/// A prepared transaction (two-phase commit) belongs to no session, so the horizon of
/// the auditors' pages by time cannot see when it began, nor hold the pages back at it:
/// while one is open those pages answer 503 rather than pass what it wrote, and once it
/// has committed they answer with it. The shared cluster allows none
/// (`max_prepared_transactions = 0`, PostgreSQL's default); this one does.
#[tokio::test]
async fn while_a_prepared_transaction_is_open_the_audit_pages_by_time_answer_503() {
    use lis_domain::actor::Role as LabRole;
    use sqlx::Connection;
    let pg = PrivatePg::init();
    pg.start_with(&["max_prepared_transactions=2"]);
    let mut stack = Stack::on(pg.url(APP_ROLE, DATABASE), false);
    stack.set("LIS_ADMIN_DATABASE_URL", pg.admin_url());
    stack.set("LIS_MIGRATION_DATABASE_URL", pg.url(OWNER_ROLE, DATABASE));
    for args in [vec!["db", "init"], vec!["migrate"]] {
        let out = stack.run(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let base = stack.with_api();
    let api = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let auditor = support::token("audit.1", LabRole::Auditor);
    let now = chrono::Utc::now();
    let range = format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let pages = [
        format!("/audit/logins?{range}"),
        format!("/audit/users?{range}"),
        format!("/audit/break-glass?{range}"),
        format!("/audit/actors/audit.1?{range}"),
    ];
    let get = |path: String| {
        let (client, url, auditor) = (client.clone(), format!("{base}{path}"), auditor.clone());
        async move {
            let r = client.get(url).bearer_auth(auditor).send().await.unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body)
        }
    };
    for page in &pages {
        let (status, body) = get(page.clone()).await;
        assert_eq!(status, reqwest::StatusCode::OK, "GET {page}: {body}");
    }

    // A log-in recorded by a transaction that is then prepared, not committed.
    let mut owner = sqlx::PgConnection::connect(&pg.url(OWNER_ROLE, DATABASE))
        .await
        .unwrap();
    for statement in [
        "BEGIN",
        "INSERT INTO logins (username, succeeded) VALUES ('prepared.in.flight', false)",
        "PREPARE TRANSACTION 'lis-audit-horizon'",
    ] {
        sqlx::query(statement).execute(&mut owner).await.unwrap();
    }
    let mut held = Vec::new();
    for page in &pages {
        held.push((page.clone(), get(page.clone()).await));
    }
    sqlx::query("COMMIT PREPARED 'lis-audit-horizon'")
        .execute(&mut owner)
        .await
        .unwrap();
    owner.close().await.unwrap();
    for (page, (status, body)) in held {
        assert_eq!(
            status,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "GET {page} with a prepared transaction open: {body}\n{}",
            api.log_tail()
        );
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("prepared transaction")),
            "{body}"
        );
    }
    assert!(
        api.log_tail().contains("a prepared transaction is open"),
        "{}",
        api.log_tail()
    );
    // Committed: the pages answer again, with what it wrote.
    let (status, logins) = get(pages[0].clone()).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{logins}");
    let names: Vec<&str> = logins["logins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["user"].as_str())
        .collect();
    assert_eq!(names, ["prepared.in.flight"], "{logins}");
}

/// A connection the network dropped without a word (a cable pulled, a firewall that
/// forgot the flow) takes a statement sent on it and never answers: a request on it
/// would wait a quarter of an hour for TCP to give up, or for good behind a middlebox.
/// Idle connections are tested before use, so while the database is silent requests
/// are answered 503 within the pool's acquire timeout (5 s), and when it speaks again
/// they are answered as before, by the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_fallen_silent_is_answered_503_within_seconds_then_recovers() {
    let Silenceable {
        db,
        proxy,
        base,
        api,
        client,
    } = serve_behind_a_proxy(&[]).await;
    let bearer = support::token("dr.silent", lis_domain::actor::Role::Clinician);
    let order = format!("{base}/orders/{}", uuid::Uuid::new_v4());
    let get = |url: String| {
        let request = client.get(url).bearer_auth(&bearer);
        async move {
            let started = std::time::Instant::now();
            let answer = request.send().await;
            (answer.map(|r| r.status()), started.elapsed())
        }
    };
    for _ in 0..3 {
        let (status, _) = get(order.clone()).await;
        assert_eq!(status.unwrap(), reqwest::StatusCode::NOT_FOUND);
    }

    proxy.fall_silent();
    // Idle past the point where connections are tested when taken.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for url in [order.clone(), format!("{base}/readyz"), order.clone()] {
        let (status, took) = get(url.clone()).await;
        assert_eq!(
            status.as_ref().ok(),
            Some(&reqwest::StatusCode::SERVICE_UNAVAILABLE),
            "GET {url} with the database silent, after {took:?}: {status:?}\n{}",
            api.log_tail()
        );
        assert!(took < Duration::from_secs(15), "GET {url} took {took:?}");
    }

    proxy.speak();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, took) = get(order.clone()).await;
        if status.as_ref().ok() == Some(&reqwest::StatusCode::NOT_FOUND) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && took < Duration::from_secs(15),
            "after the database spoke again: {status:?} after {took:?}\n{}",
            api.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_ready(&base, reqwest::StatusCode::OK, &api).await;
    db.drop().await;
}

/// `lisledger serve` reaching a database of its own through a [`SilentProxy`].
struct Silenceable {
    db: TestDb,
    proxy: SilentProxy,
    base: String,
    api: Role,
    /// Its timeout (60 s) is far longer than any bound the tests assert: a request that
    /// hangs fails them.
    client: reqwest::Client,
}

/// A [`SilentProxy`] to `db`, and the application role's URL through it.
async fn behind_a_proxy(db: &TestDb) -> (SilentProxy, String) {
    let direct = db.url_as(APP_ROLE);
    let at = direct.find('@').unwrap() + 1;
    let slash = at + direct[at..].find('/').unwrap();
    let proxy = SilentProxy::start(direct[at..slash].to_string()).await;
    let url = format!("{}{}{}", &direct[..at], proxy.addr, &direct[slash..]);
    (proxy, url)
}

/// Starts `serve` (with `settings` on top of the test API's) behind a proxy, up.
async fn serve_behind_a_proxy(settings: &[(&str, &str)]) -> Silenceable {
    let db = TestDb::new().await;
    let (proxy, url) = behind_a_proxy(&db).await;
    let mut stack = Stack::on(url, false);
    let base = stack.with_api();
    for (key, value) in settings {
        stack.set(key, value.to_string());
    }
    let api = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &api, Duration::from_secs(30)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    Silenceable {
        db,
        proxy,
        base,
        api,
        client,
    }
}

/// What a client got: status and body, or why it got nothing.
type Answer = Result<(reqwest::StatusCode, String), String>;

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let r = request.send().await.map_err(|e| e.to_string())?;
    Ok((r.status(), r.text().await.unwrap_or_default()))
}

impl Silenceable {
    /// Sends `request` while a transaction of `locker` holds `lock` (a `LOCK TABLE`);
    /// once a session waits on it, falls silent and releases it, so that the database's
    /// answer is sent and lost; then speaks again. Asserts that the client got a 503,
    /// within seconds of the silence, and returns its body.
    async fn assert_503_when_silenced_mid_statement(
        &self,
        locker: &sqlx::PgPool,
        lock: &str,
        request: reqwest::RequestBuilder,
    ) -> String {
        let mut held = locker.begin().await.unwrap();
        sqlx::query(lock).execute(&mut *held).await.unwrap();
        let waiting = tokio::spawn(answer(request));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let blocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&self.db.name)
            .fetch_one(&self.db.app)
            .await
            .unwrap();
            if blocked > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing waited on the lock\n{}",
                self.api.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.proxy.fall_silent();
        let silent_at = std::time::Instant::now();
        held.commit().await.unwrap();
        let (status, body) = waiting.await.unwrap().unwrap();
        let took = silent_at.elapsed();
        self.proxy.speak();
        assert_eq!(
            status,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{body}\n{}",
            self.api.log_tail()
        );
        assert!(took < Duration::from_secs(15), "answered after {took:?}");
        body
    }

    async fn finish(self) {
        let Silenceable { db, api, .. } = self;
        drop(api);
        db.drop().await;
    }

    /// Sends `request(n)` for n = 1, 2, … until it is answered `want`, for up to 60 s.
    async fn until_answered(
        &self,
        want: reqwest::StatusCode,
        request: impl Fn(u32) -> reqwest::RequestBuilder,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for n in 1.. {
            let (status, body) = answer(request(n)).await.unwrap();
            if status == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not answered {want} after the network spoke again: {status} {body}\n{}",
                self.api.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The network falls silent while a command waits on the database (here: on a lock the
/// test holds, released once the proxy is silent, so the answer is sent and lost). The
/// command is given up after `LIS_COMMAND_TIMEOUT_SECS` and answered 503, and its
/// connection is closed rather than given back to wait on the silence: with a pool of
/// one connection, the same process then serves commands again once the network does.
/// Held before its write went out, it is not stored (503 `unavailable`); held in its
/// append, it is stored at the server though the answer is lost (503 `outcome-unknown`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_database_falls_silent_mid_statement_is_given_up_and_503() {
    let silenceable = serve_behind_a_proxy(&[
        ("LIS_DB_MAX_CONNECTIONS", "1"),
        ("LIS_COMMAND_TIMEOUT_SECS", "3"),
    ])
    .await;
    let bearer = support::token("reception.silent", lis_domain::actor::Role::Reception);
    let place = |mrn: String| {
        silenceable
            .client
            .post(format!("{}/orders", silenceable.base))
            .bearer_auth(&bearer)
            .json(&serde_json::json!({
                "patient": {"mrn": mrn, "name": "Asha Verma", "sex": "female", "date_of_birth": "1980-05-17"},
                "ordering_clinician": "Dr Rao", "priority": "routine", "collection_site": "OPD 2", "tests": ["K"]
            }))
    };
    let (status, body) = answer(place("MRN-S1".into())).await.unwrap();
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");

    // The next command waits on a lock of the test's, on the database's side. Silenced
    // there, the client gets a 503 of `problem` type, and the events stored meanwhile
    // are counted; then the same process serves commands again.
    let owner = silenceable.db.owner.clone();
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&owner)
            .await
            .unwrap()
    };
    let (on, owner, place) = (&silenceable, &owner, &place);
    let silenced = |lock: &'static str, problem: &'static str, mrn: &'static str| async move {
        let before = events().await;
        let body = on
            .assert_503_when_silenced_mid_statement(owner, lock, place(mrn.into()))
            .await;
        let answered: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            answered["type"],
            format!("https://lisledger.example/problems/{problem}"),
            "{body}"
        );
        let stored = events().await - before;
        on.until_answered(reqwest::StatusCode::CREATED, |n| {
            place(format!("{mrn}-{n}"))
        })
        .await;
        (stored, answered)
    };
    // Held in its aggregate's load, before its write went out: not stored.
    let stored = silenced(
        "LOCK TABLE events IN ACCESS EXCLUSIVE MODE",
        "unavailable",
        "MRN-S2",
    )
    .await
    .0;
    assert_eq!(stored, 0, "a command cut short before its write");
    // Its load passes and its append waits: released once the network is silent, the
    // append commits at the server and its answer is lost. The client is told the
    // outcome is unknown, not that the database was away, and which record to read: it
    // was stored there.
    let (stored, problem) = silenced(
        "LOCK TABLE events IN EXCLUSIVE MODE",
        "outcome-unknown",
        "MRN-S4",
    )
    .await;
    assert!(stored > 0, "the append whose answer was lost committed");
    assert_eq!(problem["record"]["type"], "Order", "{problem}");
    let order = problem["record"]["id"].as_str().unwrap_or_default();
    let there: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Order' AND aggregate_id = $1",
    )
    .bind(order)
    .fetch_one(owner)
    .await
    .unwrap();
    assert_eq!(there, 1, "the order named by the problem: {problem}");
    silenceable.finish().await;
}

/// The network falls silent while a read waits on the database (on a lock the test
/// holds on the orders model, released once the proxy is silent: the answer is sent and
/// lost). The read is answered 503 at the request deadline (`LIS_REQUEST_TIMEOUT_SECS`),
/// and the connection it left in the middle of a statement is closed rather than given
/// back to wait on the silence for good: with a pool of one connection, the same process
/// answers reads again once the network does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_database_falls_silent_mid_statement_is_answered_503_and_frees_its_connection()
{
    let bearer = support::token("dr.silent.read", lis_domain::actor::Role::Clinician);
    let order = format!("/orders/{}", uuid::Uuid::new_v4());
    let lock = "LOCK TABLE proj_orders.orders IN ACCESS EXCLUSIVE MODE";
    a_read_silenced_mid_statement(&bearer, &order, reqwest::StatusCode::NOT_FOUND, lock).await;
}

/// `GET path` with `bearer` answers `answered`; then the network falls silent while it
/// waits on `lock` ([`Silenceable::assert_503_when_silenced_mid_statement`], the lock
/// taken by a superuser); it answers `answered` again once the network does.
/// `serve` has a pool of one connection and a request deadline of 3 s.
async fn a_read_silenced_mid_statement(
    bearer: &str,
    path: &str,
    answered: reqwest::StatusCode,
    lock: &str,
) {
    let silenceable = serve_behind_a_proxy(&[
        ("LIS_DB_MAX_CONNECTIONS", "1"),
        ("LIS_COMMAND_TIMEOUT_SECS", "2"),
        ("LIS_REQUEST_TIMEOUT_SECS", "3"),
    ])
    .await;
    let url = format!("{}{path}", silenceable.base);
    let get = || silenceable.client.get(&url).bearer_auth(bearer);
    let (status, body) = answer(get()).await.unwrap();
    assert_eq!(status, answered, "{body}");

    let su = silenceable.db.superuser().await;
    silenceable
        .assert_503_when_silenced_mid_statement(&su, lock, get())
        .await;

    silenceable.until_answered(answered, |_| get()).await;
    silenceable.finish().await;
}

/// The network falls silent while an auditor's `GET /audit/verification` reads the store
/// (on a lock the test holds on the events, released once the proxy is silent). The
/// verification has no deadline, as it reads the whole store, but is given up when it
/// has read nothing for the request deadline, answered 503, and its connection closed:
/// with a pool of one connection, the same process verifies again once the network
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_whose_database_falls_silent_is_answered_503_and_frees_its_connection() {
    let bearer = support::token("auditor.silent", lis_domain::actor::Role::Auditor);
    let lock = "LOCK TABLE events IN ACCESS EXCLUSIVE MODE";
    a_read_silenced_mid_statement(
        &bearer,
        "/audit/verification",
        reqwest::StatusCode::OK,
        lock,
    )
    .await;
}

/// The network to PostgreSQL falls silent while the relay and a projection worker wait
/// on the database in the middle of a batch (each on a lock the test holds, released
/// once the proxy is silent: their answers are sent and lost), and stays silent for a
/// few seconds. Each gives its batch up after `LIS_WORKER_TIMEOUT_SECS` and carries on
/// when the network answers again, as the same process: the events stored later are
/// sealed into the Merkle log and projected. On the way the server ends the sessions
/// they left idle in a transaction (they held the batch's leaves and rows, which the
/// retries need), and the relay ends its own former lock session, which still held the
/// leader lock at the server: without either, nothing would move again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_and_a_worker_whose_database_falls_silent_mid_batch_carry_on() {
    relay_and_worker_silenced_mid_batch(false).await;
}

/// The same over Kafka: the relay has published the batch when it waits to write its
/// leaves, and the worker applies it from its consumer group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_kafka_a_relay_and_a_worker_whose_database_falls_silent_mid_batch_carry_on() {
    relay_and_worker_silenced_mid_batch(true).await;
}

async fn relay_and_worker_silenced_mid_batch(kafka: bool) {
    let db = TestDb::new().await;
    let (proxy, url) = behind_a_proxy(&db).await;
    let mut stack = Stack::on(url, kafka);
    stack.set("LIS_WORKER_TIMEOUT_SECS", "3".into());
    // The relay gives its lead up 6 s into the silence; the server would free the lock
    // 12 s into it, after the network answers again, so the relay ends that session.
    stack.set("LIS_RELAY_LEASE_SECS", "12".into());
    let relay = stack.spawn("relay", &["relay"]);
    let project = stack.spawn("project", &["project", "orders"]);
    let roles = [&relay, &project];
    let ledger = db.ledger().await;
    let su = db.superuser().await;
    let all_carried = || async {
        let (events, leaves, projected): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM audit_log_leaves),
                    (SELECT sum(last_sequence)::bigint FROM proj_orders.offsets)",
        )
        .fetch_one(&su)
        .await
        .unwrap_or((1, 0, None));
        leaves == events && projected == Some(events)
    };
    let wait_carried = |why: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !all_carried().await {
            assert!(
                std::time::Instant::now() < deadline,
                "{why}: not sealed and projected within 60 s\n{}",
                tails(&roles)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    lis_tests::place(&ledger, "MRN-Q1", &["K"]).await;
    wait_carried("before the silence").await;

    // The relay's next batch waits to write its leaves, the worker's to write its rows.
    // (An ACCESS EXCLUSIVE lock would take a transaction id, and the feed would hand
    // nothing on while it is held.)
    let mut held = su.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit_log_leaves, proj_orders.orders IN EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    lis_tests::place(&ledger, "MRN-Q2", &["K"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&db.name)
        .fetch_one(&db.app)
        .await
        .unwrap();
        if blocked >= 2 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let activity: Option<String> = sqlx::query_scalar(
                "SELECT string_agg(format('%s %s %s: %s', usename, state, wait_event_type,
                                          left(query, 80)), E'\n')
                   FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&db.name)
            .fetch_one(&su)
            .await
            .unwrap();
            panic!(
                "the relay and the worker did not both wait on the lock; sessions:\n{}\n{}",
                activity.unwrap_or_default(),
                tails(&roles)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.fall_silent();
    held.commit().await.unwrap();
    // Past each one's timeout, and the relay's look at its lock that follows one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.speak();

    lis_tests::place(&ledger, "MRN-Q3", &["K"]).await;
    wait_carried("after the silence").await;
    let log = relay.log_text();
    assert!(
        log.contains("ended its own former lock session"),
        "the relay's lock session did not go silent, so its ending was not tested\n{}",
        tails(&roles)
    );
    let (mut relay, mut project) = (relay, project);
    assert!(
        relay.is_running() && project.is_running(),
        "the same processes carried on\n{}",
        tails(&[&relay, &project])
    );
    drop((relay, project));
    db.drop().await;
}

/// The leading relay's process freezes (SIGSTOP: its host hung, or lost the network
/// without a reset). Its connections stay open and its kernel still acknowledges what
/// the server sends, keepalives included, so its lock session would hold the leader lock
/// for as long as the freeze lasts, and nothing would be sealed or published. The server
/// ends that session once it has been sent nothing for the lease
/// (`LIS_RELAY_LEASE_SECS`), and a standby leads: the events stored meanwhile are sealed.
/// Thawed, the former leader finds its lock gone and stands by, and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_the_lead_from_a_frozen_leader_after_its_lease() {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    stack.set("LIS_RELAY_LEASE_SECS", "2".into());
    let ledger = db.ledger().await;
    let leader = stack.spawn("relay-a", &["relay"]);
    wait_logged(&leader, "relay is the leader").await;
    lis_tests::place(&ledger, "MRN-F1", &["K"]).await;
    wait_sealed(&db, &leader, Duration::from_secs(30)).await;

    leader.freeze();
    let standby = stack.spawn("relay-b", &["relay"]);
    lis_tests::place(&ledger, "MRN-F2", &["K"]).await;
    // Without the lease, the frozen leader's session would hold the lock for good.
    wait_sealed(&db, &standby, Duration::from_secs(30)).await;
    assert!(
        standby.log_text().contains("relay is the leader"),
        "the events were sealed, but not by the standby\n{}",
        tails(&[&leader, &standby])
    );

    leader.thaw();
    wait_logged(&leader, "the leader lock connection was lost").await;
    // Two leases more: a leader that answers keeps its lead (its looks keep the session
    // from idling out).
    tokio::time::sleep(Duration::from_secs(4)).await;
    lis_tests::place(&ledger, "MRN-F3", &["K"]).await;
    wait_sealed(&db, &standby, Duration::from_secs(30)).await;
    let standby_log = standby.log_text();
    assert!(
        standby_log.matches("relay is the leader").count() == 1
            && !standby_log.contains("stopped leading"),
        "the standby lost the lead it took\n{}",
        tails(&[&leader, &standby])
    );
    let holders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND objid::bigint = $1
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(lis_projections::relay::LEADER_LOCK)
    .fetch_one(&db.app)
    .await
    .unwrap();
    assert_eq!(
        holders,
        1,
        "one relay leads\n{}",
        tails(&[&leader, &standby])
    );
    let (mut leader, mut standby) = (leader, standby);
    assert!(
        leader.is_running() && standby.is_running(),
        "both relays carry on\n{}",
        tails(&[&leader, &standby])
    );
    stack.assert_audit_verifies();
    drop((leader, standby));
    db.drop().await;
}

/// Waits until `role` has logged `line` (or panics with its log).
async fn wait_logged(role: &Role, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !role.log_text().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "not logged within 30 s: {line}\n{}",
            role.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
