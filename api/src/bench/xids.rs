//! How long transactions hold a transaction id while a benchmark runs. The ordered feed
//! hands on no event of a transaction newer than the oldest one still open with an id
//! (`pg_snapshot_xmin`), so each such transaction stalls every reader of the feed, the
//! live models and the relay, for as long as it lives. Sampled from `pg_stat_activity`
//! every 20 ms: each figure is a lower bound, short by up to one interval. Only this
//! database's sessions are watched (the feed's horizon is the whole cluster's; on a
//! benchmark's own database the others are what runs beside it).

use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const EVERY: Duration = Duration::from_millis(20);

/// What the watch saw.
#[derive(Debug, Default)]
pub struct Holds {
    /// The longest any one transaction held its id.
    pub longest: Duration,
    /// The statement it was running when last seen.
    pub statement: String,
    /// Transactions that held one for a second or more.
    pub over_a_second: usize,
}

impl std::fmt::Display for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "longest transaction id held {:.0} ms ({}); {} held one for 1 s or more",
            self.longest.as_secs_f64() * 1000.0,
            self.statement,
            self.over_a_second
        )
    }
}

/// A running watch of the other sessions of the pool's database.
pub struct XidWatch {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Holds, sqlx::Error>>,
}

/// A transaction, by its session and id: when it was first and last seen, and doing what.
type Seen = HashMap<(i32, String), (Instant, Instant, String)>;

impl XidWatch {
    pub fn start(pool: &PgPool) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let pool = pool.clone();
        let task = tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut seen = Seen::new();
            loop {
                let rows: Vec<(i32, String, String)> = sqlx::query_as(
                    "SELECT pid, backend_xid::text, left(regexp_replace(query, '\\s+', ' ', 'g'), 60)
                       FROM pg_stat_activity
                      WHERE backend_xid IS NOT NULL AND datname = current_database()
                        AND pid <> pg_backend_pid()",
                )
                .fetch_all(&mut *conn)
                .await?;
                let now = Instant::now();
                for (pid, xid, statement) in rows {
                    let entry = seen.entry((pid, xid)).or_insert((now, now, String::new()));
                    entry.1 = now;
                    entry.2 = statement;
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
            let mut holds = Holds::default();
            for (first, last, statement) in seen.into_values() {
                let held = last - first;
                if held >= Duration::from_secs(1) {
                    holds.over_a_second += 1;
                }
                if held > holds.longest {
                    holds.longest = held;
                    holds.statement = statement;
                }
            }
            Ok(holds)
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> anyhow::Result<Holds> {
        let _ = self.stop.send(());
        Ok(self.task.await??)
    }
}
