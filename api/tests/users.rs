//! User administration against the real `lisledger serve` and PostgreSQL: an admin adds,
//! disables, enables, re-roles and resets users over HTTP (and an operator from the
//! command line); a user's earlier tokens stop working at once on the instance that made
//! the change and within a poll on another; every change is in the auditors' record with
//! who, in what role, why and in which request; and the database refuses any change to
//! users that names no actor and reason, and any edit of the record.

mod support;

use lis_tests::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{wait_healthy, ApiClient, Stack};

const ADMIN_PASSWORD: &str = "admin horse battery staple";

/// A token for `user`, or the status the log-in was refused with.
async fn login(api: &ApiClient, user: &str, password: &str) -> Result<String, StatusCode> {
    let r = api
        .http
        .post(format!("{}/auth/login", api.base))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::OK => Ok(r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()),
        s => Err(s),
    }
}

async fn get(api: &ApiClient, bearer: &str, path: &str) -> (StatusCode, Value) {
    let r = api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until `api` refuses `token` (a change made elsewhere reaches an instance within
/// its poll of a second); fails if it still accepts it after 4 s (a poll, and room for a
/// busy CI machine).
async fn refused_within_a_poll(api: &ApiClient, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        match get(api, token, "/worklists").await.0 {
            StatusCode::UNAUTHORIZED => return,
            StatusCode::OK if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            StatusCode::OK => panic!("{} still accepts the token after 4 s", api.base),
            other => panic!("{} answered {other}", api.base),
        }
    }
}

/// The first log-in of a user whose password an admin set: the token may only change
/// it (every other call is 403 `password-change-required`); it is changed to `chosen`.
async fn settle(api: &ApiClient, user: &str, temporary: &str, chosen: &str) {
    let r = api
        .http
        .post(format!("{}/auth/login", api.base))
        .json(&json!({ "username": user, "password": temporary }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["password_change_required"], true, "{answer}");
    let token = answer["access_token"].as_str().unwrap();
    let (status, problem) = get(api, token, "/worklists").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/password-change-required"),
        "{problem}"
    );
    let change = json!({ "current_password": temporary, "new_password": chosen });
    let (status, answer) = api.post(token, "/auth/password", &change).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// A migrated database with `admin.1` added from the command line, and `serve` on it.
async fn started() -> (TestDb, Stack, ApiClient, support::Role) {
    let db = TestDb::new().await;
    let mut stack = Stack::new(&db, false);
    let base = stack.with_api();
    let added = stack.run_with_input(
        &[
            "users",
            "add",
            "admin.1",
            "--role",
            "admin",
            "--reason",
            "the lab's first admin",
            "--actor",
            "it.ops",
        ],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let serve = stack.spawn("serve", &["serve"]);
    wait_healthy(&base, &serve, Duration::from_secs(30)).await;
    (db, stack, ApiClient::new(&base), serve)
}

#[tokio::test]
async fn an_admin_manages_users_and_a_changed_users_tokens_stop_working_at_once() {
    let (db, stack, api, _serve) = started().await;
    let admin = login(&api, "admin.1", ADMIN_PASSWORD).await.unwrap();

    // Added over HTTP; they log in and work.
    let (status, account) = api
        .post(
            &admin,
            "/users",
            &json!({ "username": "tech.9", "role": "technologist",
                     "password": "tech nine's temporary", "reason": "joined biochemistry, 3 March" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    assert_eq!(
        (&account["username"], &account["role"], &account["disabled"]),
        (&json!("tech.9"), &json!("technologist"), &json!(false))
    );
    // The password the admin set is temporary: the first log-in may only change it.
    settle(
        &api,
        "tech.9",
        "tech nine's temporary",
        "tech nine's passphrase",
    )
    .await;
    let tech = login(&api, "tech.9", "tech nine's passphrase")
        .await
        .unwrap();
    assert_eq!(get(&api, &tech, "/worklists").await.0, StatusCode::OK);

    // Disabled: the token in hand is refused at once, and so is a new log-in.
    let reason = json!({ "reason": "left the lab" });
    let (status, account) = api.post(&admin, "/users/tech.9/disable", &reason).await;
    assert_eq!(
        (status, &account["disabled"]),
        (StatusCode::OK, &json!(true))
    );
    let (status, problem) = get(&api, &tech, "/worklists").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("disabled"));
    assert_eq!(
        login(&api, "tech.9", "tech nine's passphrase").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let (status, problem) = api.post(&admin, "/users/tech.9/disable", &reason).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("/user-unchanged"));

    // Enabled again: a new log-in works; the token from before the disabling does not.
    let back = json!({ "reason": "rejoined" });
    assert_eq!(
        api.post(&admin, "/users/tech.9/enable", &back).await.0,
        StatusCode::OK
    );
    let tech2 = login(&api, "tech.9", "tech nine's passphrase")
        .await
        .unwrap();
    assert_eq!(get(&api, &tech2, "/worklists").await.0, StatusCode::OK);
    assert_eq!(
        get(&api, &tech, "/worklists").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Another role: tokens in the old one are refused; a new log-in carries the new one.
    let promote = json!({ "role": "pathologist", "reason": "appointed consultant pathologist" });
    let (status, account) = api.post(&admin, "/users/tech.9/role", &promote).await;
    assert_eq!(
        (status, &account["role"]),
        (StatusCode::OK, &json!("pathologist"))
    );
    assert_eq!(
        get(&api, &tech2, "/worklists").await.0,
        StatusCode::UNAUTHORIZED
    );
    let r = api
        .http
        .post(format!("{}/auth/login", api.base))
        .json(&json!({ "username": "tech.9", "password": "tech nine's passphrase" }))
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["role"], "pathologist");
    let path9 = answer["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(&api, &path9, "/worklists").await.0, StatusCode::OK);
    assert_eq!(
        api.post(&admin, "/users/tech.9/role", &promote).await.0,
        StatusCode::CONFLICT
    );

    // A new password: the old one and the tokens made with it stop working.
    let reset = json!({ "password": "a brand new passphrase", "reason": "forgotten password, identity checked in person" });
    assert_eq!(
        api.post(&admin, "/users/tech.9/password", &reset).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&api, &path9, "/worklists").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&api, "tech.9", "tech nine's passphrase").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let path9 = login(&api, "tech.9", "a brand new passphrase")
        .await
        .unwrap();
    // A reset password is temporary too: this token may only change it.
    let (status, problem) = get(&api, &path9, "/worklists").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("/password-change-required"));

    // The user then changes it themself, giving the current one; their tokens, this one
    // included, are refused afterwards.
    api.refused(
        &path9,
        "/auth/password",
        json!({ "current_password": "not the password", "new_password": "mine and only mine" }),
        "/current_password",
    )
    .await;
    api.refused(
        &path9,
        "/auth/password",
        json!({ "current_password": "a brand new passphrase", "new_password": "a brand new passphrase" }),
        "/new_password",
    )
    .await;
    api.refused(
        &path9,
        "/auth/password",
        json!({ "current_password": "a brand new passphrase", "new_password": "short" }),
        "/new_password",
    )
    .await;
    let own = json!({ "current_password": "a brand new passphrase", "new_password": "mine and only mine" });
    assert_eq!(
        api.post(&path9, "/auth/password", &own).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&api, &path9, "/worklists").await.0,
        StatusCode::UNAUTHORIZED
    );
    let path9 = login(&api, "tech.9", "mine and only mine").await.unwrap();
    assert_eq!(get(&api, &path9, "/worklists").await.0, StatusCode::OK);

    // What is refused, and where.
    for (path, body, status) in [
        (
            "/users/admin.1/disable",
            json!({ "reason": "x" }),
            StatusCode::CONFLICT,
        ),
        (
            "/users/admin.1/role",
            json!({ "role": "auditor", "reason": "x" }),
            StatusCode::CONFLICT,
        ),
        (
            "/users/nobody.9/disable",
            json!({ "reason": "x" }),
            StatusCode::NOT_FOUND,
        ),
        (
            "/users/nobody.9/password",
            json!({ "password": "long enough password", "reason": "x" }),
            StatusCode::NOT_FOUND,
        ),
        (
            "/users/a%20b/disable",
            json!({ "reason": "x" }),
            StatusCode::NOT_FOUND,
        ),
        (
            "/users",
            json!({ "username": "tech.9", "role": "technologist", "password": "long enough password", "reason": "again" }),
            StatusCode::CONFLICT,
        ),
    ] {
        let (got, problem) = api.post(&admin, path, &body).await;
        assert_eq!(got, status, "{path} {body}: {problem}");
    }
    let new = |field: &str, value: Value| {
        let mut body = json!({ "username": "new.1", "role": "clinician",
                               "password": "long enough password", "reason": "new" });
        body[field] = value;
        body
    };
    api.refused(
        &admin,
        "/users",
        new("password", json!("short")),
        "/password",
    )
    .await;
    api.refused(&admin, "/users", new("role", json!("system")), "/role")
        .await;
    api.refused(&admin, "/users", new("role", json!("wizard")), "/role")
        .await;
    api.refused(&admin, "/users", new("username", json!("a b")), "/username")
        .await;
    api.refused(&admin, "/users", new("reason", json!(" ")), "/reason")
        .await;
    api.refused(&admin, "/users/tech.9/disable", json!({}), "")
        .await;
    api.refused(
        &admin,
        "/users/tech.9/role",
        json!({ "role": "system", "reason": "x" }),
        "/role",
    )
    .await;
    // An admin resets no password of their own: they change it, giving the current one
    // (their tokens then go too).
    let reset_own = json!({ "password": "a newer admin passphrase", "reason": "routine change" });
    let (status, problem) = api
        .post(&admin, "/users/admin.1/password", &reset_own)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("/auth/password"));
    let own =
        json!({ "current_password": ADMIN_PASSWORD, "new_password": "a newer admin passphrase" });
    assert_eq!(
        api.post(&admin, "/auth/password", &own).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&api, &admin, "/users").await.0,
        StatusCode::UNAUTHORIZED
    );
    let admin = login(&api, "admin.1", "a newer admin passphrase")
        .await
        .unwrap();

    // The accounts as they stand, for admins and auditors.
    let (status, list) = get(&api, &admin, "/users").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<(&str, &str, bool)> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert!(u.get("password_hash").is_none(), "{u}");
            (
                u["username"].as_str().unwrap(),
                u["role"].as_str().unwrap(),
                u["disabled"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("admin.1", "admin", false),
            ("tech.9", "pathologist", false)
        ]
    );

    // The record: every change, in order, by whom, in what role, why.
    let auditor_added = json!({ "username": "audit.1", "role": "auditor",
                                "password": "auditor temporary", "reason": "NABL assessment" });
    assert_eq!(
        api.post(&admin, "/users", &auditor_added).await.0,
        StatusCode::CREATED
    );
    settle(&api, "audit.1", "auditor temporary", "auditor passphrase").await;
    let auditor = login(&api, "audit.1", "auditor passphrase").await.unwrap();
    let range = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";
    let (status, record) = get(&api, &auditor, &format!("/audit/users?{range}")).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let changes = record["changes"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["user"].as_str().unwrap(),
                c["change"].as_str().unwrap(),
                c["actor"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("admin.1", "added", "it.ops", "the lab's first admin"),
            ("tech.9", "added", "admin.1", "joined biochemistry, 3 March"),
            (
                "tech.9",
                "password-changed",
                "tech.9",
                "changed by the user"
            ),
            ("tech.9", "disabled", "admin.1", "left the lab"),
            ("tech.9", "enabled", "admin.1", "rejoined"),
            (
                "tech.9",
                "role-changed",
                "admin.1",
                "appointed consultant pathologist"
            ),
            (
                "tech.9",
                "password-reset",
                "admin.1",
                "forgotten password, identity checked in person"
            ),
            (
                "tech.9",
                "password-changed",
                "tech.9",
                "changed by the user"
            ),
            (
                "admin.1",
                "password-changed",
                "admin.1",
                "changed by the user"
            ),
            ("audit.1", "added", "admin.1", "NABL assessment"),
            (
                "audit.1",
                "password-changed",
                "audit.1",
                "changed by the user"
            ),
        ]
    );
    assert_eq!(changes[0]["actor_role"], "operator");
    assert!(changes[0]["request_id"].is_null());
    assert_eq!(changes[7]["actor_role"], "pathologist", "{}", changes[7]);
    let promotion = &changes[5];
    assert_eq!(
        (
            &promotion["role_before"],
            &promotion["role_after"],
            &promotion["actor_role"]
        ),
        (
            &json!("technologist"),
            &json!("pathologist"),
            &json!("admin")
        )
    );
    assert!(
        uuid::Uuid::parse_str(promotion["request_id"].as_str().unwrap()).is_ok(),
        "{promotion}"
    );
    // A page at a time: the pages join up to the whole.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let (status, page) = get(
            &api,
            &auditor,
            &format!("/audit/users?{range}&limit=3{cursor}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let entries = page["changes"].as_array().unwrap();
        assert!(entries.len() <= 3);
        paged.extend(entries.iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(&paged, changes);
    // Each user's activity holds the account changes they made, and those made to theirs.
    for user in ["admin.1", "tech.9", "audit.1"] {
        let (status, activity) =
            get(&api, &auditor, &format!("/audit/actors/{user}?{range}")).await;
        assert_eq!(status, StatusCode::OK, "{activity}");
        let expected: Vec<&Value> = changes
            .iter()
            .filter(|c| c["user"] == user || c["actor"] == user)
            .collect();
        assert!(!expected.is_empty());
        let got: Vec<&Value> = activity["account_changes"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(got, expected, "{user}");
        assert_eq!(activity["account_changes_truncated"], false);
    }

    // Every log-in attempt is recorded: who, whether it succeeded; a name that is no
    // account is not kept.
    assert_eq!(
        login(&api, "no.such.user", "perhaps a password").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let (status, record) = get(&api, &auditor, &format!("/audit/logins?{range}")).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let attempts: Vec<(&str, Option<&str>, bool)> = record["logins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["client_addr"], "127.0.0.1", "{l}");
            let kind = l["kind"].as_str().unwrap();
            (kind, l["user"].as_str(), l["succeeded"].as_bool().unwrap())
        })
        .collect();
    let (ok, refused, log_in) = (true, false, "log-in");
    assert_eq!(
        attempts,
        [
            (log_in, Some("admin.1"), ok),
            (log_in, Some("tech.9"), ok), // the temporary password, to change it
            (log_in, Some("tech.9"), ok),
            (log_in, Some("tech.9"), refused), // disabled
            (log_in, Some("tech.9"), ok),
            (log_in, Some("tech.9"), ok),      // the new role
            (log_in, Some("tech.9"), refused), // the old password
            (log_in, Some("tech.9"), ok),      // the reset, temporary one
            // A wrong current password, to change it: recorded as a password change.
            ("password-change", Some("tech.9"), refused),
            (log_in, Some("tech.9"), ok), // their own new password
            (log_in, Some("admin.1"), ok),
            (log_in, Some("audit.1"), ok), // temporary
            (log_in, Some("audit.1"), ok),
            (log_in, None, refused),
        ]
    );
    let (_, activity) = get(&api, &auditor, &format!("/audit/actors/tech.9?{range}")).await;
    assert_eq!(
        activity["logins"].as_array().unwrap().len(),
        9,
        "{activity}"
    );
    let (_, list) = get(&api, &admin, "/users").await;
    assert!(list["users"][0]["last_login"].is_string(), "{list}");

    // Auditors read the accounts and the record; they change nothing.
    assert_eq!(get(&api, &auditor, "/users").await.0, StatusCode::OK);
    assert_eq!(
        api.post(&auditor, "/users/tech.9/disable", &reason).await.0,
        StatusCode::FORBIDDEN
    );
    let (events,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(&db.app)
        .await
        .unwrap();
    assert_eq!(events, 0, "user administration writes no lab event");

    // From the command line: a change without a reason or an actor is refused before
    // anything is written; one with both is recorded as the operator's.
    let cli = |args: &[&str]| {
        let out = stack.run(args);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    // A password an operator sets stands, unless they say it is temporary.
    let required = |password: &'static str| {
        let api = &api;
        async move {
            let r = api
                .http
                .post(format!("{}/auth/login", api.base))
                .json(&json!({ "username": "audit.1", "password": password }))
                .send()
                .await
                .unwrap();
            let answer: Value = r.json().await.unwrap();
            answer["password_change_required"].clone()
        }
    };
    for (flags, password, must_change) in [
        (&[][..], "operator set this one", false),
        (&["--temporary"][..], "operator set a temporary", true),
    ] {
        let mut args = vec![
            "users", "password", "audit.1", "--reason", "recovery", "--actor", "it.ops",
        ];
        args.extend_from_slice(flags);
        let out = stack.run_with_input(&args, &format!("{password}\n"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(required(password).await, json!(must_change), "{flags:?}");
    }
    let (_, list) = get(&api, &admin, "/users").await;
    let audit1 = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "audit.1")
        .unwrap()
        .clone();
    assert_eq!(audit1["password_change_required"], true, "{audit1}");
    settle(
        &api,
        "audit.1",
        "operator set a temporary",
        "auditor passphrase",
    )
    .await;
    let auditor = login(&api, "audit.1", "auditor passphrase").await.unwrap();
    let (ok, text) = cli(&[
        "users", "disable", "tech.9", "--reason", " ", "--actor", "it.ops",
    ]);
    assert!(!ok && text.contains("say why"), "{text}");
    let (ok, text) = cli(&[
        "users", "disable", "tech.9", "--reason", "x", "--actor", " ",
    ]);
    assert!(!ok && text.contains("--actor"), "{text}");
    let (ok, text) = cli(&[
        "users", "role", "tech.9", "--role", "system", "--reason", "x", "--actor", "it.ops",
    ]);
    assert!(!ok && text.contains("never a person"), "{text}");
    let (ok, text) = cli(&[
        "users",
        "disable",
        "tech.9",
        "--reason",
        "contract ended",
        "--actor",
        "it.ops",
    ]);
    assert!(ok, "{text}");
    refused_within_a_poll(&api, &path9).await;
    let (ok, text) = cli(&["users", "list"]);
    let columns = |user: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(user));
        let line = line.unwrap_or_else(|| panic!("{user} not listed: {text}"));
        line.split_whitespace().take(4).map(String::from).collect()
    };
    assert!(ok, "{text}");
    assert_eq!(
        columns("tech.9"),
        ["tech.9", "pathologist", "disabled", "-"]
    );
    assert_eq!(columns("audit.1"), ["audit.1", "auditor", "-", "-"]);
    let (_, record) = get(&api, &auditor, &format!("/audit/users?{range}")).await;
    let last = record["changes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (
            &last["change"],
            &last["actor"],
            &last["actor_role"],
            &last["reason"]
        ),
        (
            &json!("disabled"),
            &json!("it.ops"),
            &json!("operator"),
            &json!("contract ended")
        )
    );
    // Two resets and a change of audit.1's password, then the disabling.
    assert_eq!(
        record["changes"].as_array().unwrap().len(),
        changes.len() + 4
    );
    db.drop().await;
}

#[tokio::test]
async fn a_change_made_through_one_instance_holds_on_another_within_a_poll() {
    let (db, mut stack, a, _serve_a) = started().await;
    let base_b = stack.with_api();
    let serve_b = stack.spawn("serve-b", &["serve"]);
    wait_healthy(&base_b, &serve_b, Duration::from_secs(30)).await;
    let b = ApiClient::new(&base_b);
    let admin = login(&a, "admin.1", ADMIN_PASSWORD).await.unwrap();
    let add = json!({ "username": "dr.9", "role": "clinician",
                      "password": "doctor nine temporary", "reason": "ward 4 consultant" });
    assert_eq!(a.post(&admin, "/users", &add).await.0, StatusCode::CREATED);
    settle(
        &a,
        "dr.9",
        "doctor nine temporary",
        "doctor nine passphrase",
    )
    .await;
    let doctor = login(&a, "dr.9", "doctor nine passphrase").await.unwrap();
    assert_eq!(
        get(&b, &doctor, "/critical-results").await.0,
        StatusCode::OK
    );

    // An analyst's event stream open on B ends once A has disabled them.
    let add = json!({ "username": "an.9", "role": "analyst",
                      "password": "analyst nine temporary", "reason": "dashboards" });
    assert_eq!(a.post(&admin, "/users", &add).await.0, StatusCode::CREATED);
    settle(
        &a,
        "an.9",
        "analyst nine temporary",
        "analyst nine passphrase",
    )
    .await;
    let analyst = login(&a, "an.9", "analyst nine passphrase").await.unwrap();
    let stream = reqwest::Client::new()
        .get(format!("{base_b}/events/stream"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let left = json!({ "reason": "moved to another hospital" });
    assert_eq!(
        a.post(&admin, "/users/an.9/disable", &left).await.0,
        StatusCode::OK
    );
    let ended = tokio::time::timeout(Duration::from_secs(4), stream.text()).await;
    match ended {
        Ok(Ok(_)) => {} // the server ended the stream: a whole, well-formed answer
        Ok(Err(e)) => panic!("the stream broke rather than ended: {e}"),
        Err(_) => panic!("the stream of a disabled user still runs after 4 s"),
    }

    // One Idempotency-Key is one request: the same key and body sent to disable
    // another user is refused, not answered with the first user's account.
    let keyed = |path: &str| {
        a.http
            .post(format!("{}{path}", a.base))
            .bearer_auth(&admin)
            .header("idempotency-key", "disable-1")
            .json(&json!({ "reason": "left" }))
            .send()
    };
    let add = json!({ "username": "rec.9", "role": "reception",
                      "password": "reception nine passphrase", "reason": "front desk" });
    assert_eq!(a.post(&admin, "/users", &add).await.0, StatusCode::CREATED);
    assert_eq!(
        keyed("/users/rec.9/disable").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        keyed("/users/rec.9/disable").await.unwrap().status(),
        StatusCode::OK
    );
    let other = keyed("/users/dr.9/disable").await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/idempotency-key-reused"),
        "{problem}"
    );
    assert_eq!(
        get(&b, &doctor, "/critical-results").await.0,
        StatusCode::OK
    );

    // A new role given through A, and a log-in there: B accepts the new token at once,
    // though it may not have seen the change yet (it looks when a token is newer).
    let role = json!({ "role": "pathologist", "reason": "appointed" });
    assert_eq!(
        a.post(&admin, "/users/dr.9/role", &role).await.0,
        StatusCode::OK
    );
    let pathologist = login(&a, "dr.9", "doctor nine passphrase").await.unwrap();
    assert_eq!(get(&b, &pathologist, "/worklists").await.0, StatusCode::OK);
    assert_eq!(
        get(&b, &doctor, "/critical-results").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Disabled through A: B refuses the token within a poll or two.
    let disable = json!({ "reason": "left" });
    assert_eq!(
        a.post(&admin, "/users/dr.9/disable", &disable).await.0,
        StatusCode::OK
    );
    refused_within_a_poll(&b, &pathologist).await;

    // A token cannot be used to guess the password behind it: after five wrong current
    // passwords, even the right one is refused for a while, on every instance (the
    // guesses went to A, the right one to B and then A).
    let add = json!({ "username": "pw.9", "role": "clinician",
                      "password": "pw nine temporary", "reason": "guessing test" });
    assert_eq!(a.post(&admin, "/users", &add).await.0, StatusCode::CREATED);
    settle(&a, "pw.9", "pw nine temporary", "pw nine passphrase").await;
    let stolen = login(&a, "pw.9", "pw nine passphrase").await.unwrap();
    for guess in 0..5 {
        let wrong = json!({ "current_password": format!("guess number {guess}"),
                            "new_password": "the attacker's own" });
        a.refused(&stolen, "/auth/password", wrong, "/current_password")
            .await;
    }
    let right =
        json!({ "current_password": "pw nine passphrase", "new_password": "the attacker's own" });
    for api in [&b, &a] {
        let r = api
            .http
            .post(format!("{}/auth/password", api.base))
            .bearer_auth(&stolen)
            .json(&right)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "on {}", api.base);
        assert!(r.headers().contains_key("retry-after"));
        let problem: Value = r.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("the password was not checked")),
            "{problem}"
        );
    }
    // They do not lock the account's log-ins.
    assert!(
        login(&a, "pw.9", "pw nine passphrase").await.is_ok(),
        "the password was changed"
    );
    // The auditors see the guesses, apart from the log-ins: five wrong, two refused
    // unchecked.
    let auditor_add = json!({ "username": "aud.9", "role": "auditor",
                              "password": "auditor nine temporary", "reason": "review" });
    assert_eq!(
        a.post(&admin, "/users", &auditor_add).await.0,
        StatusCode::CREATED
    );
    settle(
        &a,
        "aud.9",
        "auditor nine temporary",
        "auditor nine passphrase",
    )
    .await;
    let auditor = login(&a, "aud.9", "auditor nine passphrase").await.unwrap();
    let range = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";
    let (status, activity) = get(&b, &auditor, &format!("/audit/actors/pw.9?{range}")).await;
    assert_eq!(status, StatusCode::OK, "{activity}");
    let attempts: Vec<(String, bool, bool)> = activity["logins"]
        .as_array()
        .unwrap_or_else(|| panic!("{activity}"))
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap_or("").to_string(),
                l["succeeded"].as_bool().unwrap(),
                l["locked"].as_bool().unwrap(),
            )
        })
        .collect();
    let change = |succeeded, locked| ("password-change".to_string(), succeeded, locked);
    let log_in = |succeeded| ("log-in".to_string(), succeeded, false);
    assert_eq!(
        attempts,
        [
            log_in(true),
            log_in(true),
            change(false, false),
            change(false, false),
            change(false, false),
            change(false, false),
            change(false, false),
            change(false, true),
            change(false, true),
            log_in(true),
        ],
        "{activity}"
    );
    assert_eq!(
        get(&a, &pathologist, "/worklists").await.0,
        StatusCode::UNAUTHORIZED
    );
    db.drop().await;
}

#[tokio::test]
async fn the_database_records_every_change_to_users_and_refuses_edits_of_the_record() {
    let db = TestDb::new().await;
    let by = lis_api::http::users::ChangedBy::operator("it.ops", "first user").unwrap();
    lis_api::http::users::add_user(
        &db.app,
        &lis_domain::actor::ActorId::parse("tech.1").unwrap(),
        lis_domain::actor::Role::Technologist,
        "correct horse battery",
        &by,
    )
    .await
    .unwrap();

    // Changing users without naming an actor and reason is refused, as the application
    // role and as the owner; so is deleting or renaming a user, or truncating the table.
    for pool in [&db.app, &db.owner] {
        for sql in [
            "UPDATE users SET disabled = true WHERE username = 'tech.1'",
            "UPDATE users SET role = 'admin' WHERE username = 'tech.1'",
            "INSERT INTO users (username, role, password_hash) VALUES ('sneaky.1', 'admin', 'x')",
        ] {
            let e = sqlx::query(sql).execute(pool).await.unwrap_err();
            assert!(
                e.to_string()
                    .contains("must name its actor, role and reason"),
                "{sql}: {e}"
            );
        }
    }
    let named = "SELECT set_config('lis.actor_id', 'it.ops', true), set_config('lis.actor_role', 'operator', true), set_config('lis.reason', 'test', true)";
    sqlx::query(
        "INSERT INTO logins (username, succeeded, client_addr) VALUES ('tech.1', true, '10.0.0.9')",
    )
    .execute(&db.app)
    .await
    .unwrap();
    let (trigger, privileges) = ("never", "permission denied");
    let append_only = "is append-only";
    for (pool, sql, refusal) in [
        (&db.owner, "DELETE FROM users WHERE username = 'tech.1'", trigger),
        (&db.owner, "UPDATE users SET username = 'tech.2' WHERE username = 'tech.1'", trigger),
        (&db.owner, "TRUNCATE users CASCADE", append_only),
        (&db.app, "DELETE FROM users WHERE username = 'tech.1'", privileges),
        (&db.app, "UPDATE users SET username = 'tech.2' WHERE username = 'tech.1'", privileges),
        (&db.app, "UPDATE users SET token_generation = 0 WHERE username = 'tech.1'", privileges),
        (&db.app, "UPDATE users SET password_must_change = true WHERE username = 'tech.1'", "stays temporary"),
        (&db.app, "INSERT INTO users (username, role, password_hash, created_at) VALUES ('old.1', 'admin', 'x', '2001-01-01')", privileges),
        (&db.app, "UPDATE users SET role = 'system' WHERE username = 'tech.1'", "users_person_role"),
        (&db.app, "INSERT INTO user_changes (username, change, role_after, actor_id, actor_role, reason) VALUES ('tech.1', 'added', 'admin', 'x', 'x', 'x')", privileges),
        (&db.app, "UPDATE user_changes SET reason = 'other'", privileges),
        (&db.app, "DELETE FROM user_changes", privileges),
        (&db.owner, "UPDATE user_changes SET reason = 'other'", append_only),
        (&db.owner, "DELETE FROM user_changes", append_only),
        (&db.owner, "TRUNCATE user_changes", append_only),
        (&db.app, "INSERT INTO logins (at, username, succeeded) VALUES ('2001-01-01', 'tech.1', true)", privileges),
        (&db.app, "UPDATE logins SET succeeded = false", privileges),
        (&db.app, "DELETE FROM logins", privileges),
        (&db.owner, "UPDATE logins SET succeeded = false", append_only),
        (&db.owner, "DELETE FROM logins", append_only),
        (&db.owner, "TRUNCATE logins", append_only),
    ] {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(named).execute(&mut *tx).await.unwrap();
        let refused = sqlx::query(sql).execute(&mut *tx).await;
        let e = refused.expect_err(sql).to_string();
        assert!(e.contains(refusal), "{sql}: {e}");
    }

    // A temporary table of the same name does not take the record's place.
    let mut tx = db.app.begin().await.unwrap();
    sqlx::query(named).execute(&mut *tx).await.unwrap();
    sqlx::query(
        "CREATE TEMP TABLE user_changes (id bigint, at timestamptz, username text, change text,
           role_before text, role_after text, actor_id text, actor_role text, reason text,
           request_id text) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("GRANT ALL ON pg_temp.user_changes TO PUBLIC")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET role = 'pathologist' WHERE username = 'tech.1'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let shadowed: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_temp.user_changes")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(shadowed, 0, "the change was recorded in a temporary table");
    tx.commit().await.unwrap();

    // An operator of the session's own, placed before pg_catalog, does not run inside
    // the guards: a password change still bumps the token generation.
    let before: i64 =
        sqlx::query_scalar("SELECT token_generation FROM users WHERE username = 'tech.1'")
            .fetch_one(&db.app)
            .await
            .unwrap();
    let mut tx = db.app.begin().await.unwrap();
    sqlx::query(named).execute(&mut *tx).await.unwrap();
    for sql in [
        "CREATE SCHEMA evil",
        "CREATE FUNCTION evil.same(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        "CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.same)",
        "SET LOCAL search_path = evil, pg_catalog, public",
        "UPDATE users SET password_hash = 'another hash' WHERE username = 'tech.1'",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let after: i64 =
        sqlx::query_scalar("SELECT token_generation FROM users WHERE username = 'tech.1'")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(
        after,
        before + 1,
        "a password change left the token generation"
    );
    // Every trigger function of the ledger is pinned so, the ones to come included.
    let unpinned: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace
           JOIN pg_language l ON l.oid = p.prolang
          WHERE n.nspname = 'public' AND l.lanname = 'plpgsql'
            AND NOT coalesce(p.proconfig::text LIKE '%search_path=pg_catalog%', false)",
    )
    .fetch_all(&db.owner)
    .await
    .unwrap();
    assert!(
        unpinned.is_empty(),
        "functions without a pinned search_path: {unpinned:?}"
    );

    // A change that names its actor is recorded, and bumps the token generation, in the
    // same transaction; a statement that changes nothing records nothing.
    let mut tx = db.app.begin().await.unwrap();
    sqlx::query(named).execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE users SET disabled = true WHERE username = 'tech.1'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET role = role WHERE username = 'tech.1'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let record: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT change, actor_id, actor_role, reason FROM user_changes ORDER BY id")
            .fetch_all(&db.app)
            .await
            .unwrap();
    let record: Vec<(&str, &str, &str, &str)> = record
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
        .collect();
    assert_eq!(
        record,
        [
            ("added", "it.ops", "operator", "first user"),
            ("role-changed", "it.ops", "operator", "test"),
            ("password-reset", "it.ops", "operator", "test"),
            ("disabled", "it.ops", "operator", "test"),
        ]
    );
    let generation: i64 =
        sqlx::query_scalar("SELECT token_generation FROM users WHERE username = 'tech.1'")
            .fetch_one(&db.app)
            .await
            .unwrap();
    assert_eq!(generation, 3);
    db.drop().await;
}

/// `Dr.Rao` and `dr.rao` would be two accounts behind one name in every audit record: a
/// name that differs from another only in case is refused, over HTTP, from the command
/// line and by the database itself, even when two are added at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_names_are_unique_regardless_of_case() {
    use lis_api::http::users::{add_user, ChangedBy, UserError};
    use lis_domain::actor::{ActorId, Role};
    let (db, stack, api, _serve) = started().await;
    let admin = login(&api, "admin.1", ADMIN_PASSWORD).await.unwrap();
    let by = ChangedBy::operator("it.ops", "a test of names").unwrap();
    let add = |name: &str| {
        let (pool, by, name) = (db.app.clone(), by.clone(), name.to_string());
        async move {
            let name = ActorId::parse(&name).unwrap();
            add_user(
                &pool,
                &name,
                Role::Pathologist,
                "correct horse battery",
                &by,
            )
            .await
        }
    };
    add("dr.rao").await.unwrap();

    let (s, problem) = api
        .post(
            &admin,
            "/users",
            &json!({"username": "Dr.Rao", "role": "clinician",
            "password": "correct horse battery", "reason": "a new clinician"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{problem}");
    assert_eq!(
        problem["detail"],
        "user Dr.Rao already exists as dr.rao: names are unique regardless of case"
    );
    let cli = stack.run_with_input(
        &[
            "users",
            "add",
            "DR.RAO",
            "--role",
            "clinician",
            "--reason",
            "again",
            "--actor",
            "it.ops",
        ],
        "correct horse battery\n",
    );
    assert!(!cli.status.success());
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("already exists as dr.rao"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    // The exact name is still "already exists", as before.
    assert!(matches!(add("dr.rao").await, Err(UserError::Exists(_))));

    // Two at once, many times: exactly one of each pair is added.
    for round in 0..10 {
        let (a, b) = (format!("race.{round}"), format!("RACE.{round}"));
        let (x, y) = tokio::join!(tokio::spawn(add(&a)), tokio::spawn(add(&b)));
        let outcomes = [x.unwrap(), y.unwrap()];
        let added = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(added, 1, "{a} / {b}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(UserError::ExistsAs { .. }))),
            "{outcomes:?}"
        );
    }
    let folded: Vec<(String, i64)> = sqlx::query_as(
        "SELECT lower(username), count(*) FROM users GROUP BY 1 HAVING count(*) > 1",
    )
    .fetch_all(&db.app)
    .await
    .unwrap();
    assert_eq!(folded, []);

    // The database refuses it to anyone who writes users directly, the owner included.
    let insert = |name: &str| {
        format!(
            "INSERT INTO users (username, role, password_hash) VALUES ('{name}', 'clinician', 'x')"
        )
    };
    let mut tx = by_hand(&db.owner, false).await;
    let e = sqlx::query(&insert("DR.rao"))
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        e.as_database_error().and_then(|d| d.constraint()),
        Some("users_name_unique"),
        "{e}"
    );
    drop(tx);

    // One at a time: while a first add is open, a second waits for it, then is refused.
    let mut first = by_hand(&db.owner, false).await;
    sqlx::query(&insert("hold.me"))
        .execute(&mut *first)
        .await
        .unwrap();
    let second = tokio::spawn(add("HOLD.ME"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second add did not wait for the first"
    );
    first.commit().await.unwrap();
    match second.await.unwrap() {
        Err(UserError::ExistsAs { existing, .. }) => assert_eq!(existing, "hold.me"),
        other => panic!("{other:?}"),
    }
    // Where a stricter isolation would read an older snapshot, adding is refused.
    let mut strict = by_hand(&db.owner, true).await;
    let e = sqlx::query(&insert("strict.one"))
        .execute(&mut *strict)
        .await
        .unwrap_err();
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("25000"),
        "{e}"
    );
    drop(strict);
    db.drop().await;
}

/// A transaction on `pool` that names an operator, their role and a reason, as a change
/// to users must; at repeatable read if `strict`.
async fn by_hand(pool: &sqlx::PgPool, strict: bool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    if strict {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    for (key, value) in [
        ("lis.actor_id", "it.ops"),
        ("lis.actor_role", "admin"),
        ("lis.reason", "by hand"),
    ] {
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx
}
