//! A thin client of the ledger's HTTP API for the load generators: bench users made for
//! the run, their log-ins, and one command as one timed request.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lis_api::http::users::{self, ChangedBy};
use lis_domain::actor::{ActorId, Role};
use serde_json::Value;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// One access token per role the lab flow needs.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub reception: String,
    pub phlebotomist: String,
    pub technologist: String,
    pub pathologist: String,
    pub clinician: String,
}

/// What one command request gave: its status, body and latency.
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub body: Value,
    pub latency: Duration,
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    /// Send an `Idempotency-Key` with every command, as a client that retries must.
    pub idempotency_keys: bool,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .timeout(Duration::from_secs(60))
                .build()?,
            idempotency_keys: false,
        })
    }

    /// Makes one user per role for this run (passwords never leave the process) and
    /// logs each in.
    pub async fn bench_users(&self, pool: &PgPool) -> anyhow::Result<Tokens> {
        let run: u32 = rand::random();
        let token = |role: Role| {
            let name = format!("bench.{}.{run:08x}", role.as_str());
            let password = B64.encode(rand::random::<[u8; 18]>());
            async move {
                let user = ActorId::parse(&name).map_err(|e| anyhow::anyhow!(e.message))?;
                let by = ChangedBy::tool("lisledger bench", "a user of one benchmark run");
                users::add_user(pool, &user, role, &password, &by).await?;
                self.login(&name, &password).await
            }
        };
        Ok(Tokens {
            reception: token(Role::Reception).await?,
            phlebotomist: token(Role::Phlebotomist).await?,
            technologist: token(Role::Technologist).await?,
            pathologist: token(Role::Pathologist).await?,
            clinician: token(Role::Clinician).await?,
        })
    }

    /// One `POST /auth/login`, answered whatever its status.
    pub async fn login_attempt(
        &self,
        user: &str,
        password: &str,
    ) -> anyhow::Result<reqwest::Response> {
        self.http
            .post(format!("{}/auth/login", self.base))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
            .await
            .context("cannot reach the API")
    }

    async fn login(&self, user: &str, password: &str) -> anyhow::Result<String> {
        let r = self.login_attempt(user, password).await?;
        if !r.status().is_success() {
            bail!("log-in of {user} refused: {}", r.status());
        }
        let v: Value = r.json().await?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .context("no access_token in the log-in answer")
    }

    /// POSTs one command (with a fresh `Idempotency-Key` if so configured).
    pub async fn command(&self, token: &str, path: &str, body: &Value) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body);
        if self.idempotency_keys {
            request = request.header("idempotency-key", uuid::Uuid::new_v4().to_string());
        }
        let r = request
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            latency: started.elapsed(),
        })
    }
}
