//! Benchmark 3: rebuild every PostgreSQL read model from the whole event store, against a
//! bare sequential read of the events table (`COPY events TO STDOUT`, bytes discarded)
//! timed in the same run. Each model alone first, then all of them from one read. Each
//! rebuild also reports the longest a transaction of it held an id ([`super::xids`]):
//! for that long the live models and the relay read nothing new.

use super::stats::percent;
use super::xids::XidWatch;
use futures::TryStreamExt;
use lis_projections::projection::Projection;
use sqlx::PgPool;
use std::time::Instant;

/// Seconds and bytes of `COPY events TO STDOUT` read to the end and thrown away.
pub async fn copy_baseline(pool: &PgPool) -> anyhow::Result<(f64, u64)> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut stream = conn.copy_out_raw("COPY events TO STDOUT").await?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        bytes += chunk.len() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), bytes))
}

pub async fn run(pool: &PgPool) -> anyhow::Result<()> {
    let events = lis_commands::audit::count_events(pool).await?;
    let (copy_secs, bytes) = copy_baseline(pool).await?;
    let copy_rate = events as f64 / copy_secs;
    say!(
        "benchmark 3: replay of {events} events; baseline COPY events TO STDOUT: {copy_secs:.2} s, {:.0} MiB ({copy_rate:.0} events/s)",
        bytes as f64 / 1048576.0
    );
    let (mut total_secs, mut total_events) = (0.0, 0u64);
    for projection in lis_projections::models::all() {
        let watch = XidWatch::start(pool);
        let started = Instant::now();
        let report =
            lis_projections::worker::rebuild(pool, projection.as_ref(), &mut |_| {}).await?;
        let secs = started.elapsed().as_secs_f64();
        let holds = watch.stop().await?;
        let rate = report.events as f64 / secs;
        total_secs += secs;
        total_events += report.events;
        say!(
            "  {:<10} {secs:>7.2} s  {rate:>8.0} events/s  ({:.1}% of COPY); {holds}",
            projection.name(),
            percent(rate, copy_rate)
        );
    }
    let rate = total_events as f64 / total_secs;
    say!(
        "  one by one {total_secs:>7.2} s  {rate:>8.0} events/s per model on average ({:.1}% of COPY)",
        percent(rate, copy_rate)
    );
    // Every model at once, from one read of the store (`projections rebuild all`).
    let all = lis_projections::models::all();
    let projections: Vec<&dyn Projection> = all.iter().map(|p| p.as_ref()).collect();
    let watch = XidWatch::start(pool);
    let started = Instant::now();
    let reports = lis_projections::worker::rebuild_all(pool, &projections, &mut |_| {}).await?;
    let secs = started.elapsed().as_secs_f64();
    let holds = watch.stop().await?;
    let read = reports.iter().map(|r| r.events).max().unwrap_or(0);
    let rate = read as f64 / secs;
    say!(
        "  all at once {secs:>6.2} s  {rate:>8.0} events/s, every model ({:.1}% of COPY); {:.0} model-events/s; {holds}",
        percent(rate, copy_rate),
        reports.iter().map(|r| r.events).sum::<u64>() as f64 / secs
    );
    // The machine may be busier or quieter by now: the baseline again, for the reader.
    let (again, _) = copy_baseline(pool).await?;
    say!(
        "  baseline again after the rebuilds: {again:.2} s ({:.0} events/s)",
        events as f64 / again
    );
    Ok(())
}
