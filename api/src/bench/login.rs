//! The log-in's timing (docs/security.md): a wrong password for a real user against any
//! password for a user who does not exist, as many of each, interleaved in a random
//! order, one request at a time. An unknown user's password is checked against a dummy
//! hash, so the two should take alike and a caller cannot learn which names exist. The
//! wrong password is the baseline; the figure is the unknown user's p50 and p99 as a
//! ratio to it. A correct log-in is timed beside them for scale.

use super::client::Api;
use super::stats::Latencies;
use anyhow::bail;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lis_api::http::users::{self, ChangedBy};
use lis_domain::actor::{ActorId, Role};
use rand::seq::SliceRandom;
use reqwest::StatusCode;
use sqlx::PgPool;
use std::time::Instant;

/// The three kinds of attempt, timed apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    WrongPassword,
    UnknownUser,
    Correct,
}

/// Every kind, each at its own index (its discriminant) in the timings.
const KINDS: [Attempt; 3] = [
    Attempt::WrongPassword,
    Attempt::UnknownUser,
    Attempt::Correct,
];

impl Attempt {
    fn expected(self) -> StatusCode {
        match self {
            Attempt::Correct => StatusCode::OK,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Times `attempts` log-ins of each kind against the API at `api`.
pub async fn run(api: &Api, pool: &PgPool, attempts: usize) -> anyhow::Result<()> {
    let run: u32 = rand::random();
    let name = format!("bench.login.{run:08x}");
    let password = B64.encode(rand::random::<[u8; 18]>());
    let user = ActorId::parse(&name).map_err(|e| anyhow::anyhow!(e.message))?;
    let by = ChangedBy::tool("lisledger bench", "the user of a log-in timing run");
    users::add_user(pool, &user, Role::Clinician, &password, &by).await?;
    let mut order: Vec<Attempt> = KINDS
        .iter()
        .flat_map(|&a| std::iter::repeat_n(a, attempts))
        .collect();
    order.shuffle(&mut rand::thread_rng());
    say!(
        "benchmark: log-in timing, {attempts} attempts of each kind, interleaved at random, one at a time"
    );
    let mut times: [Latencies; KINDS.len()] = Default::default();
    // One unmeasured attempt of each kind first (connections, caches).
    for (i, &attempt) in KINDS.iter().chain(order.iter()).enumerate() {
        let (username, pass) = match attempt {
            Attempt::WrongPassword => (name.clone(), format!("not-{password}")),
            Attempt::UnknownUser => (format!("nobody.{run:08x}.{i}"), password.clone()),
            Attempt::Correct => (name.clone(), password.clone()),
        };
        let started = Instant::now();
        let r = api.login_attempt(&username, &pass).await?;
        let status = r.status();
        r.bytes().await?;
        let took = started.elapsed();
        if status != attempt.expected() {
            bail!("{attempt:?} answered {status}, not {}", attempt.expected());
        }
        if i >= KINDS.len() {
            times[attempt as usize].record(took);
        }
    }
    let [wrong, unknown, correct] = &mut times;
    let (base50, base99) = (wrong.percentile_ms(50.0), wrong.percentile_ms(99.0));
    say!("  baseline: wrong password   {}", wrong.summary());
    say!("  unknown user               {}", unknown.summary());
    say!("  correct password (scale)   {}", correct.summary());
    say!(
        "  unknown user / wrong password: p50 {:.2}×, p99 {:.2}×",
        unknown.percentile_ms(50.0) / base50,
        unknown.percentile_ms(99.0) / base99
    );
    Ok(())
}
