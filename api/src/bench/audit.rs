//! Benchmark 4: `audit verify`'s chain check over the whole store, against `sha256sum`
//! over the same bytes: the very query the verifier reads, in chain order, copied out
//! (`COPY (…) TO STDOUT` piped into `sha256sum`), timed in the same run.

use futures::TryStreamExt;
use sqlx::PgPool;
use std::process::Stdio;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Seconds and bytes of the rows `audit verify` reads
/// ([`lis_commands::audit::CHAINS_IN_ORDER`]), copied out as text through `sha256sum`.
async fn sha256sum_baseline(pool: &PgPool) -> anyhow::Result<(f64, u64)> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut sum = tokio::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run sha256sum (coreutils): {e}"))?;
    let mut stdin = sum.stdin.take().expect("stdin is piped");
    let copy = format!("COPY ({}) TO STDOUT", lis_commands::audit::CHAINS_IN_ORDER);
    let mut stream = conn.copy_out_raw(&copy).await?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        bytes += chunk.len() as u64;
        stdin.write_all(&chunk).await?;
    }
    drop(stdin);
    let status = sum.wait().await?;
    anyhow::ensure!(status.success(), "sha256sum failed: {status}");
    Ok((started.elapsed().as_secs_f64(), bytes))
}

pub async fn run(pool: &PgPool) -> anyhow::Result<bool> {
    let (base_secs, bytes) = sha256sum_baseline(pool).await?;
    let started = Instant::now();
    let report = lis_commands::audit::verify_chains(pool, &mut |_| {}).await?;
    let secs = started.elapsed().as_secs_f64();
    let events = report.events as f64;
    say!(
        "benchmark 4: audit verify's chain check over {} events in {} aggregates",
        report.events,
        report.aggregates
    );
    say!(
        "  audit verify          {secs:>7.2} s  {:>9.0} events/s",
        events / secs
    );
    say!(
        "  baseline: sha256sum   {base_secs:>7.2} s  {:>9.0} events/s  over the same {:.0} MiB, in the same order",
        events / base_secs,
        bytes as f64 / 1048576.0
    );
    say!(
        "  audit verify / sha256sum: {:.2}× the events a second{}",
        base_secs / secs,
        if report.is_intact() {
            ""
        } else {
            "; CHAINS BROKEN (run `lisledger audit verify`)"
        }
    );
    Ok(report.is_intact())
}
