//! Running `lisledger` roles as real processes against the local stack, to kill them.

#![allow(dead_code)]

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
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut env = vec![
            ("LIS_DATABASE_URL".to_string(), db.url_as(APP_ROLE)),
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

    pub fn get(&self, key: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Starts `lisledger ARGS` in the background; its output goes to a log file.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Role {
        let log = self.logs.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lisledger"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start lisledger");
        Role { child, log }
    }

    /// Runs `lisledger ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_lisledger"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run lisledger")
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

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
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
            let tails: Vec<String> = roles
                .iter()
                .map(|r| format!("{}:\n{}", r.log.display(), r.log_tail()))
                .collect();
            panic!(
                "projections did not catch up to {total} events\n{}",
                tails.join("\n\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
