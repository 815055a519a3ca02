//! The physical limit of benchmark 1: `pgbench` running single-row INSERT transactions
//! of an event-sized row (same columns, indexes and constraints as `events`, payload
//! and metadata padded to the ledger's average sizes, no trigger) with the same client
//! count on the same database. Per-transaction latencies come from `pgbench --log`.

use super::stats::Latencies;
use anyhow::{bail, Context};
use sqlx::PgPool;
use std::path::Path;
use std::process::Command;

/// The baseline's table: `events`' shape without its triggers.
const TABLE: &str = "bench_baseline_events";

pub struct Baseline {
    pub per_sec: f64,
    pub latencies: Latencies,
}

/// `pgbench` on PATH, else Debian's PostgreSQL 15 copy.
fn program() -> String {
    let debian = "/usr/lib/postgresql/15/bin/pgbench";
    if which("pgbench") || !Path::new(debian).exists() {
        "pgbench".into()
    } else {
        debian.into()
    }
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Creates the baseline table (as the owner) and writes the pgbench script whose row
/// matches the average stored event. Returns the row's payload and metadata sizes.
pub async fn prepare(owner: &PgPool, dir: &Path) -> anyhow::Result<(i32, i32)> {
    let (payload, metadata): (i32, i32) = sqlx::query_as(
        "SELECT coalesce(avg(octet_length(payload::text)), 366)::int,
                coalesce(avg(octet_length(metadata::text)), 223)::int
           FROM (SELECT payload, metadata FROM events ORDER BY position DESC LIMIT 10000) e",
    )
    .fetch_one(owner)
    .await?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (LIKE events INCLUDING ALL)"
    ))
    .execute(owner)
    .await
    .context("creating the pgbench baseline table")?;
    // `{"pad" : "…"}` is 12 bytes around the padding; the metadata names an actor too.
    let script = format!(
        "INSERT INTO {TABLE} (aggregate_type, aggregate_id, sequence, event_type, event_version,
            payload, metadata, tx_id, recorded_at, prev_hash, hash)
         VALUES ('Result', gen_random_uuid()::text, 1, 'ResultRecorded', '1.0.0',
            json_build_object('pad', repeat('x', {})),
            json_build_object('actor_id', 'bench', 'actor_role', 'technologist', 'pad', repeat('x', {})),
            pg_current_xact_id(), clock_timestamp(),
            decode(repeat('00', 32), 'hex'), decode(repeat('ab', 32), 'hex'));\n",
        (payload - 12).max(1),
        (metadata - 60).max(1),
    );
    std::fs::write(dir.join("pgbench-insert.sql"), script)?;
    Ok((payload, metadata))
}

/// Runs pgbench for `secs` seconds with `clients` clients (2 threads, prepared
/// statements) against `url`.
pub async fn run(
    owner: &PgPool,
    url: &str,
    clients: usize,
    secs: u64,
    dir: &Path,
) -> anyhow::Result<Baseline> {
    sqlx::query(&format!("TRUNCATE {TABLE}"))
        .execute(owner)
        .await?;
    let logs = dir.join(format!("pgbench-c{clients}"));
    if logs.exists() {
        std::fs::remove_dir_all(&logs)?;
    }
    std::fs::create_dir_all(&logs)?;
    let dir = dir.to_path_buf();
    let url = url.to_string();
    let output = tokio::task::spawn_blocking({
        let logs = logs.clone();
        move || {
            Command::new(program())
                .args(["-n", "-M", "prepared", "-j", "2", "--log"])
                .arg(format!("--log-prefix={}", logs.join("tx").display()))
                .arg(format!("--client={clients}"))
                .arg(format!("--time={secs}"))
                .arg(format!(
                    "--file={}",
                    dir.join("pgbench-insert.sql").display()
                ))
                .arg(&url)
                .output()
        }
    })
    .await?
    .context("cannot run pgbench (Debian: apt-get install postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let per_sec = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no tps in pgbench's output")?;
    let mut latencies = Latencies::default();
    for entry in std::fs::read_dir(&logs)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            // client_id transaction_no time_us script_no epoch epoch_us
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                latencies.record_micros(us);
            }
        }
    }
    std::fs::remove_dir_all(&logs)?;
    Ok(Baseline { per_sec, latencies })
}

/// Drops the baseline table.
pub async fn clean_up(owner: &PgPool) -> anyhow::Result<()> {
    sqlx::query(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .execute(owner)
        .await?;
    Ok(())
}
