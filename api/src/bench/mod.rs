//! `lisledger bench`: the benchmarks of issue #5, each reported against a baseline
//! measured in the same run (see docs/benchmarks.md for the commands and figures).
//!
//! - [`throughput`]: commands through the HTTP API against [`pgbench`] (benchmark 1),
//!   with each role's peak memory from [`roles`] (benchmark 6);
//! - [`fanout`]: time from a command's commit to its visibility in each read model
//!   (benchmark 2);
//! - [`replay`]: rebuilding every read model against `COPY events TO STDOUT` (benchmark 3);
//! - [`openloop`]: a patient's cumulative results at a constant rate against `/healthz`
//!   (benchmark 5);
//! - [`login`]: an unknown user's log-in time against a wrong password's (security).
//!
//! The load generators share [`client`] (the API), [`labflow`] (one order's life) and
//! [`stats`] (percentiles).

mod audit;
mod client;
mod fanout;
mod labflow;
mod login;
mod openloop;
mod pgbench;
mod replay;
mod roles;
mod stats;
mod throughput;
mod xids;

use anyhow::Context;
use clap::Subcommand;
use lis_api::config::Config;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Benchmarks 1 and 6: closed-loop clients sending the lab flow through the API
    /// (started here with `relay` and `project`) against pgbench; peak memory per role.
    Commands {
        /// Client counts, one measurement each.
        #[arg(long, value_delimiter = ',', default_values_t = [16, 64, 256])]
        clients: Vec<usize>,
        /// Measured seconds per client count (ledger and pgbench alike).
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Unmeasured seconds of load before each ledger measurement.
        #[arg(long, default_value_t = 5)]
        warmup_secs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the roles' logs and pgbench's files go.
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
        /// Send an Idempotency-Key with every command.
        #[arg(long)]
        idempotency_keys: bool,
        /// The order mix (as `demo --mix`): a CSV of profiles, or `uniform`.
        #[arg(long)]
        mix: Option<String>,
    },
    /// Benchmark 2: a steady command rate through the API (with relay and project,
    /// started here); time from each command's answer to its event in each read model.
    Fanout {
        /// Commands (= events) a second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Clients sharing the rate.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
        /// Send an Idempotency-Key with every command.
        #[arg(long)]
        idempotency_keys: bool,
        /// The order mix (as `demo --mix`): a CSV of profiles, or `uniform`.
        #[arg(long)]
        mix: Option<String>,
    },
    /// Benchmark 3: rebuild every read model (swapped in live) against COPY TO STDOUT.
    Replay,
    /// Benchmark 4: `audit verify`'s chain check against sha256sum over the same bytes.
    Audit,
    /// Benchmark 5: patients' cumulative results open-loop at constant rates, against
    /// /healthz of the same server (started here); needs projected results.
    Read {
        /// Requests a second, one measurement each.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000])]
        rates: Vec<u32>,
        /// Seconds per rate and endpoint.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
    /// Log-in timing: an unknown user against a wrong password (and a correct one for
    /// scale), against the API (started here).
    Login {
        /// Attempts of each kind.
        #[arg(long, default_value_t = 200)]
        attempts: usize,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
}

pub async fn run(
    config: &Config,
    app: PgPool,
    owner: PgPool,
    command: BenchCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Commands {
            clients,
            secs,
            warmup_secs,
            seed,
            dir,
            idempotency_keys,
            mix,
        } => {
            let shape = Shape {
                levels: clients,
                secs,
                warmup: Duration::from_secs(warmup_secs),
                seed,
                idempotency_keys,
                mix,
            };
            commands(config, &app, &owner, &shape, &dir).await
        }
        BenchCommand::Replay => {
            replay::run(&app).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Audit => Ok(if audit::run(&app).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        BenchCommand::Fanout {
            rate,
            secs,
            clients,
            dir,
            idempotency_keys,
            mix,
        } => {
            let load = FanOutLoad {
                rate,
                secs,
                clients,
                idempotency_keys,
                mix,
            };
            fan_out(config, &app, &load, &dir).await
        }
        BenchCommand::Read { rates, secs, dir } => read(config, &app, &rates, secs, &dir).await,
        BenchCommand::Login { attempts, dir } => {
            let base = base_url(config);
            let mut roles = roles::Roles::start(&base, &[], &dir).await?;
            login::run(&client::Api::new(&base)?, &app, attempts).await?;
            roles.check_alive()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn base_url(config: &Config) -> String {
    format!("http://{}", config.http_addr)
}

/// What benchmark 1 runs.
struct Shape {
    levels: Vec<usize>,
    secs: u64,
    warmup: Duration,
    seed: u64,
    idempotency_keys: bool,
    mix: Option<String>,
}

async fn commands(
    config: &Config,
    app: &PgPool,
    owner: &PgPool,
    shape: &Shape,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let Shape {
        levels,
        secs,
        warmup,
        seed,
        idempotency_keys,
        mix,
    } = shape;
    let (secs, warmup, seed) = (*secs, *warmup, *seed);
    let mix = crate::mix::in_force(app, mix.as_deref()).await?;
    let base = base_url(config);
    let mut roles = roles::Roles::start(&base, &["relay", "project"], dir).await?;
    let mut api = client::Api::new(&base)?;
    api.idempotency_keys = *idempotency_keys;
    let tokens = api.bench_users(app).await?;
    // Benchmark 6's baseline: each role's peak once started and healthy, before any load.
    let idle = roles.peak_memory();
    let (payload, metadata) = pgbench::prepare(owner, dir).await?;
    say!(
        "benchmark 1: lab-flow commands through {base} against pgbench inserts of a {payload}+{metadata}-byte event row; {secs} s per client count; Idempotency-Key {}",
        if *idempotency_keys { "on every command" } else { "not sent" }
    );
    let setup = Arc::new(throughput::Setup {
        api,
        tokens,
        mix,
        run: rand::random(),
        seed,
    });
    for &clients in levels.iter() {
        let mut level = throughput::level(&setup, clients, warmup, secs).await?;
        roles.check_alive()?;
        if level.commands == 0 {
            anyhow::bail!(
                "no command succeeded with {clients} clients (by status: {:?}); see {}",
                level.refused,
                dir.join("serve.log").display()
            );
        }
        match pgbench::run(owner, &config.migration_database_url, clients, secs, dir).await {
            Ok(mut baseline) => throughput::report(&mut level, Some(&mut baseline)),
            Err(e) => {
                throughput::report(&mut level, None);
                say!("      no baseline: {e:#}");
            }
        }
        say!("      peak memory so far: {}", memory_line(&roles, &idle));
    }
    pgbench::clean_up(owner).await?;
    say!(
        "benchmark 6: peak memory (VmHWM) under benchmark 1, and against each role's peak when started, before the load: {}",
        memory_line(&roles, &idle)
    );
    Ok(ExitCode::SUCCESS)
}

/// Each role's peak so far, with its peak before the load (`idle`) and the ratio.
fn memory_line(roles: &roles::Roles, idle: &[(&'static str, Option<u64>)]) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    roles
        .peak_memory()
        .iter()
        .map(|(name, kib)| {
            let before = idle.iter().find(|(n, _)| n == name).and_then(|(_, k)| *k);
            match (kib, before) {
                (Some(k), Some(b)) if b > 0 => format!(
                    "{name} {:.1} MiB (idle {:.1} MiB, {:.2}×)",
                    mib(*k),
                    mib(b),
                    *k as f64 / b as f64
                ),
                (Some(k), _) => format!("{name} {:.1} MiB", mib(*k)),
                (None, _) => format!("{name} ?"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn read(
    config: &Config,
    app: &PgPool,
    rates: &[u32],
    secs: u64,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    // The patients with the most released results, and how many each has on average.
    let patients: Vec<(String, i64)> = sqlx::query_as(
        "SELECT patient_id::text, count(*) FROM proj_results.cumulative_results
          GROUP BY patient_id ORDER BY count(*) DESC LIMIT 200",
    )
    .fetch_all(app)
    .await
    .context("no results read model (run `lisledger project` or `projections rebuild results`)")?;
    if patients.is_empty() {
        anyhow::bail!(
            "no released results yet: load some (`bench commands`, `demo`) and project them"
        );
    }
    let mean = patients.iter().map(|p| p.1).sum::<i64>() as f64 / patients.len() as f64;
    let paths: Vec<String> = patients
        .iter()
        .map(|(id, _)| format!("/patients/{id}/results"))
        .collect();
    let base = base_url(config);
    let mut roles = roles::Roles::start(&base, &[], dir).await?;
    let api = client::Api::new(&base)?;
    let tokens = api.bench_users(app).await?;
    say!(
        "benchmark 5: GET /patients/ID/results over {} patients ({mean:.0} released results each on average) as a clinician, open-loop, {secs} s per rate; baseline GET /healthz at the same rate",
        patients.len()
    );
    let healthz = ["/healthz".to_string()];
    for &rate in rates {
        let mut trivial =
            openloop::run(&api.http, &base, &tokens.clinician, &healthz, rate, secs).await;
        let mut ours = openloop::run(&api.http, &base, &tokens.clinician, &paths, rate, secs).await;
        roles.check_alive()?;
        openloop::report(rate, &mut ours, &mut trivial);
    }
    Ok(ExitCode::SUCCESS)
}

/// What benchmark 2 sends.
struct FanOutLoad {
    rate: u32,
    secs: u64,
    clients: usize,
    idempotency_keys: bool,
    mix: Option<String>,
}

async fn fan_out(
    config: &Config,
    app: &PgPool,
    load: &FanOutLoad,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let FanOutLoad {
        rate,
        secs,
        clients,
        idempotency_keys,
        ref mix,
    } = *load;
    let mix = Arc::new(crate::mix::in_force(app, mix.as_deref()).await?);
    let base = base_url(config);
    let mut roles = roles::Roles::start(&base, &["relay", "project"], dir).await?;
    let mut api = client::Api::new(&base)?;
    api.idempotency_keys = idempotency_keys;
    let tokens = Arc::new(api.bench_users(app).await?);
    // Let the workers make their schemas and catch up with what is already stored.
    let until = std::time::Instant::now() + Duration::from_secs(300);
    let schemas = loop {
        roles.check_alive()?;
        let schemas = fanout::models(
            app,
            config.mongo_url.is_some(),
            config.kafka_brokers.is_some(),
        )
        .await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(app)
            .await?;
        let models = schemas
            .iter()
            .filter(|s| !fanout::BASELINES.contains(&s.as_str()));
        let running = fanout::running(config.mongo_url.is_some()).len();
        let mut behind = models.clone().count() < running;
        for s in models {
            let at: Option<i64> =
                sqlx::query_scalar(&format!("SELECT max(max_position) FROM {s}.progress"))
                    .fetch_one(app)
                    .await?;
            behind |= at.unwrap_or(0) < last.unwrap_or(0);
        }
        if !behind || std::time::Instant::now() > until {
            break schemas;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    say!(
        "benchmark 2: {rate} commands/s from {clients} clients for {secs} s through {base}; Idempotency-Key {}; lag from each answer to the event in: {}",
        if idempotency_keys { "on every command" } else { "not sent" },
        schemas.join(", ")
    );
    let api = Arc::new(api);
    let mut lags = fanout::run(app, api, tokens, mix, schemas, clients, rate, secs).await?;
    roles.check_alive()?;
    say!(
        "  achieved {:.0} commands/s; {} events not seen everywhere within 10 s of the end",
        lags.commands as f64 / secs as f64,
        lags.unseen
    );
    // The baseline: how late the watcher itself sees the row in `events`.
    let baseline = lags
        .models
        .iter()
        .position(|m| m == fanout::BASELINE)
        .map(|i| lags.lags[i].percentile_ms(99.0));
    for (model, lag) in lags.models.iter().zip(lags.lags.iter_mut()) {
        let p99 = lag.percentile_ms(99.0);
        let ratio = match baseline {
            Some(b) if model != fanout::BASELINE && b > 0.0 => {
                format!("  p99 {:.2}× the baseline's", p99 / b)
            }
            _ => String::new(),
        };
        say!(
            "  {model:<16} p50 {:>7.1} ms  p99 {p99:>7.1} ms  max {:>7.1} ms  ({} events){ratio}",
            lag.percentile_ms(50.0),
            lag.max_ms(),
            lag.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
