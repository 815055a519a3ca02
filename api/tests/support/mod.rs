//! Running `lisledger` roles as real processes against the local stack, to kill them.

#![allow(dead_code)]

pub mod load;
pub mod mongo_proxy;
pub mod silent_proxy;

use base64::Engine;
use lis_eventstore_migrations::APP_ROLE;
use lis_tests::TestDb;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn kafka_brokers() -> String {
    std::env::var("LIS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn mongo_url() -> String {
    std::env::var("LIS_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

pub fn seal_seed() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

/// The environment of one test's stack: its own database, topics, groups and analytics.
pub struct Stack {
    pub id: String,
    pub env: Vec<(String, String)>,
    pub logs: PathBuf,
}

impl Stack {
    pub fn new(db: &TestDb, kafka: bool) -> Self {
        Self::on(db.url_as(APP_ROLE), kafka)
    }

    /// A stack whose roles connect to `database_url` (as the application role).
    pub fn on(database_url: String, kafka: bool) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut env = vec![
            ("LIS_DATABASE_URL".to_string(), database_url),
            ("LIS_SEAL_KEY".into(), seal_seed()),
            ("LIS_KEK".into(), lis_tests::TEST_KEK.into()),
            ("LIS_SEAL_EVERY_EVENTS".into(), "10".into()),
            ("LIS_SEAL_EVERY_SECS".into(), "1".into()),
            ("LIS_MONGO_URL".into(), mongo_url()),
            ("LIS_MONGO_DATABASE".into(), format!("lis_analytics_{id}")),
            ("RUST_LOG".into(), "info,sqlx=warn,rdkafka=warn".into()),
        ];
        if kafka {
            env.extend([
                ("LIS_KAFKA_BROKERS".into(), kafka_brokers()),
                ("LIS_TOPIC_ORDERS".into(), format!("lis.test.{id}.orders")),
                ("LIS_TOPIC_SAMPLES".into(), format!("lis.test.{id}.samples")),
                ("LIS_TOPIC_RESULTS".into(), format!("lis.test.{id}.results")),
                (
                    "LIS_TOPIC_PATIENTS".into(),
                    format!("lis.test.{id}.patients"),
                ),
                ("LIS_TOPIC_SEALS".into(), format!("lis.test.{id}.seals")),
                ("LIS_KAFKA_GROUP_PREFIX".into(), format!("lis-test-{id}")),
            ]);
        }
        let logs = std::env::temp_dir().join(format!("lisledger-test-{id}"));
        std::fs::create_dir_all(&logs).unwrap();
        Self { id, env, logs }
    }

    /// Sets (or replaces) one variable of the roles' environment.
    pub fn set(&mut self, key: &str, value: String) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value));
    }

    pub fn get(&self, key: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// `lisledger ARGS` with this stack's environment only: a stack without Kafka
    /// runs single-node even where the test runner's environment names a broker.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lisledger"));
        c.args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if self.get("LIS_KAFKA_BROKERS").is_empty() {
            c.env_remove("LIS_KAFKA_BROKERS");
        }
        c
    }

    /// Starts `lisledger ARGS` in the background; its output goes to a log file.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Role {
        let log = self.logs.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = self
            .command(args)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start lisledger");
        Role { child, log }
    }

    /// Runs `lisledger ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run lisledger")
    }

    /// Runs `lisledger ARGS` to completion with `input` on its standard input.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lisledger");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("run lisledger")
    }
}

/// A running role; killed with SIGKILL when dropped.
pub struct Role {
    child: Child,
    pub log: PathBuf,
}

impl Role {
    /// SIGKILL: no clean-up, no flush, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stops where it is, its connections open and its kernel
    /// still acknowledging what arrives (a host that hung, as the network sees it).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a frozen process carries on where it stopped.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {}", self.child.id());
    }

    /// Whether the process is still running (it has not exited by itself).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the role has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last lines of each role's log, for a failure message.
pub fn tails(roles: &[&Role]) -> String {
    roles
        .iter()
        .map(|r| format!("{}:\n{}", r.log.display(), r.log_tail()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Waits until every event in the store is applied by each named projection.
pub async fn wait_projected(db: &TestDb, names: &[&str], timeout: Duration, roles: &[&Role]) {
    let deadline = Instant::now() + timeout;
    loop {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&db.app)
            .await
            .unwrap();
        let mut done = true;
        for name in names {
            let applied: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT sum(last_sequence)::bigint FROM proj_{name}.offsets"
            ))
            .fetch_one(&db.app)
            .await
            .unwrap_or(None);
            done &= applied == Some(total);
        }
        if done {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "projections did not catch up to {total} events\n{}",
                tails(roles)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The token key the API roles of a [`Stack::with_api`] sign with.
pub const JWT_SECRET: &str = "a-test-only-token-key-of-32-bytes-or-more";

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Stack {
    /// Configures `lisledger serve` on a free port, no rate limits, the test token key;
    /// returns the API's base URL.
    pub fn with_api(&mut self) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        self.env.extend([
            ("LIS_HTTP_ADDR".to_string(), addr.clone()),
            ("LIS_JWT_SECRET".into(), JWT_SECRET.into()),
            ("LIS_RATE_PER_ADDRESS".into(), "0".into()),
            ("LIS_RATE_PER_USER".into(), "0".into()),
            ("LIS_DB_MAX_CONNECTIONS".into(), "6".into()),
        ]);
        format!("http://{addr}")
    }

    /// Runs `lisledger audit verify` and asserts that every chain and seal is sound.
    pub fn assert_audit_verifies(&self) {
        let verify = self.run(&["audit", "verify"]);
        let stdout = String::from_utf8_lossy(&verify.stdout);
        assert!(
            verify.status.success(),
            "audit verify failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(stdout.contains("every audit seal is sound"), "{stdout}");
    }
}

/// A bearer token for `user` in `role`, signed with [`JWT_SECRET`].
pub fn token(user: &str, role: lis_domain::actor::Role) -> String {
    use lis_api::http::auth;
    let config = auth::AuthConfig {
        secret: JWT_SECRET.as_bytes().to_vec(),
        issuer: "lisledger".into(),
        audience: "lisledger-api".into(),
        ttl_secs: 3600,
    };
    auth::issue(
        &config,
        &auth::Grant::standing(lis_domain::actor::ActorId::parse(user).unwrap(), role),
    )
    .unwrap()
    .0
}

/// Polls `GET base/healthz` until the API answers (or panics with the role's log).
pub async fn wait_healthy(base: &str, role: &Role, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API did not come up\n{}",
            role.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn analytics_summary(
    a: &lis_projections::models::analytics::Analytics,
    day: &str,
) -> serde_json::Value {
    use lis_projections::analytics_queries::{abnormal_rates, rejections, turnaround, volumes};
    serde_json::json!({
        "volumes": volumes(a, day, day).await.unwrap(),
        "turnaround": turnaround(a, day, day).await.unwrap(),
        "rejections": rejections(a, day, day).await.unwrap(),
        "rates": abnormal_rates(a, day, day).await.unwrap(),
    })
}

/// The analytics of `stack` (its own MongoDB database): today's summary of every report.
pub async fn analytics_today(stack: &Stack) -> serde_json::Value {
    use lis_projections::models::analytics::Analytics;
    let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
    let analytics = Analytics::new(client.database(&stack.get("LIS_MONGO_DATABASE")));
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    analytics_summary(&analytics, &today).await
}

/// Drops the MongoDB database of `stack`.
pub async fn drop_analytics(stack: &Stack) {
    let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
    let db = client.database(&stack.get("LIS_MONGO_DATABASE"));
    db.drop().await.unwrap();
}

/// Asserts that the stack's analytics (built by its workers) equal a fresh replay of the
/// event store into another database; drops both and returns today's summary.
pub async fn assert_analytics_equal_replay(db: &TestDb, stack: &Stack) -> serde_json::Value {
    use lis_projections::models::analytics::Analytics;
    let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
    let live = Analytics::new(client.database(&stack.get("LIS_MONGO_DATABASE")));
    let fresh =
        Analytics::new(client.database(&format!("{}_replay", stack.get("LIS_MONGO_DATABASE"))));
    lis_projections::worker::rebuild(&db.app, &fresh, &mut |_| {})
        .await
        .unwrap();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let expected = analytics_summary(&fresh, &today).await;
    assert_eq!(analytics_summary(&live, &today).await, expected);
    live.database().drop().await.unwrap();
    fresh.database().drop().await.unwrap();
    expected
}

/// A PostgreSQL program: from `LIS_PG_BIN` if set, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout, as `deploy/postgres.sh` installs).
pub fn pg_bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("LIS_PG_BIN") {
        return PathBuf::from(dir).join(name);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin")).join(name)
}

fn pg_server_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server-side PostgreSQL program (initdb, pg_ctl, pg_resetwal), as `postgres`
/// when the tests run as root (the server refuses to run as root); panics on failure.
pub fn pg_server_tool(name: &str, args: &[&str]) -> String {
    let out = pg_server_command(name)
        .args(args)
        .output()
        .expect("run a PostgreSQL program");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

/// A private PostgreSQL cluster in a temporary directory on a free port: for the tests
/// that crash or replace the whole server, which must never touch the shared one.
/// Stopped (immediately) and removed when dropped.
pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    /// `initdb` (trust authentication on loopback, superuser `postgres`); not started.
    pub fn init() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "lisledger-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:", &dir.display().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "chown {}", dir.display());
        }
        let data = dir.join("data");
        pg_server_tool(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        Self {
            dir,
            port: free_port(),
        }
    }

    pub fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn start(&self) {
        self.start_with(&[]);
    }

    /// Starts it with these settings too (`name=value`, as `postgres -c` takes them).
    pub fn start_with(&self, settings: &[&str]) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        for setting in settings {
            options.push_str(&format!(" -c {setting}"));
        }
        let log = self.dir.join("server.log").display().to_string();
        pg_server_tool(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server like a crash (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut); the next start runs crash recovery.
    pub fn crash(&self) {
        pg_server_tool(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = pg_server_command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until the relay has sealed every event of the store (a signed checkpoint whose
/// tree covers them all).
pub async fn wait_sealed(db: &TestDb, relay: &Role, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let sealed: Option<i64> =
            sqlx::query_scalar("SELECT max(tree_size) FROM audit_checkpoints")
                .fetch_one(&db.app)
                .await
                .unwrap();
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&db.app)
            .await
            .unwrap();
        if sealed == Some(events) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sealed {sealed:?} of {events}\n{}",
            relay.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client of one running API: its base URL and a connection pool.
pub struct ApiClient {
    pub http: reqwest::Client,
    pub base: String,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            base: base.to_string(),
        }
    }

    /// The API's own OpenAPI document.
    pub async fn spec(&self) -> serde_json::Value {
        let r = self.http.get(format!("{}/openapi.json", self.base));
        r.send().await.unwrap().json().await.unwrap()
    }

    /// POSTs `body` as JSON with `bearer`; the status and the JSON answer (null if none).
    pub async fn post(
        &self,
        bearer: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let r = self.http.post(format!("{}{path}", self.base));
        let r = r.bearer_auth(bearer).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// POSTs a command that must succeed; returns the id it answers with.
    pub async fn ok(&self, bearer: &str, path: &str, body: serde_json::Value) -> String {
        let (status, answer) = self.post(bearer, path, &body).await;
        assert!(status.is_success(), "{path} {body}: {status} {answer}");
        answer["id"].as_str().unwrap_or_default().to_string()
    }

    /// POSTs a command that must be refused as invalid (422), naming a field at or
    /// under `pointer`.
    pub async fn refused(&self, bearer: &str, path: &str, body: serde_json::Value, pointer: &str) {
        let (status, problem) = self.post(bearer, path, &body).await;
        assert_eq!(
            status,
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {problem}"
        );
        let named = problem["errors"].as_array().into_iter().flatten().any(|e| {
            e["pointer"]
                .as_str()
                .is_some_and(|p| p.starts_with(pointer))
        });
        assert!(named, "{path}: the problem names {pointer}: {problem}");
    }
}

/// Runs the external checker `deploy/{script}` (FHIR's, HL7's) over `files`: whether it
/// passed, and what it printed.
#[allow(dead_code)]
pub fn external_check(script: &str, files: &[PathBuf]) -> (bool, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(script);
    let out = std::process::Command::new(&script)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
