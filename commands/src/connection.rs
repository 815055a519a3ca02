//! One database connection for the whole of a command.
//!
//! sqlx tests a connection with a round trip each time it goes back to its pool, so a
//! command that took a connection for each of its statements (its aggregate's load, the
//! look-ups its rules make, a patient's key, the append: 8 to record a result) paid a
//! round trip more for each. While a command runs inside [`for_command`], the store, the
//! look-ups and the key vault send their statements to the one connection it holds;
//! elsewhere, and for a statement made while that connection is busy with another of the
//! same command or for another pool, each takes a connection from its pool as before
//! (so nothing ever waits on a connection its own command holds, and no statement runs
//! on another pool's database or role).

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool, Postgres};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

tokio::task_local! {
    static HELD: Held;
}

/// The running command's connection, and which pool it came from.
struct Held {
    /// The pool's connect options: one `Arc` for a pool and its clones, another for any
    /// other pool (even of the same database), so it tells pools apart.
    pool: Arc<PgConnectOptions>,
    conn: Arc<Mutex<PoolConnection<Postgres>>>,
}

/// A connection to send statements to: the running command's, or one of the pool's.
pub enum Conn {
    Command(OwnedMutexGuard<PoolConnection<Postgres>>),
    Pooled(PoolConnection<Postgres>),
}

impl Deref for Conn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Conn::Command(held) => held,
            Conn::Pooled(own) => own,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Conn::Command(held) => held,
            Conn::Pooled(own) => own,
        }
    }
}

/// The running command's connection if it is free and of `pool`, else one from `pool`.
/// Keep it for one statement (or one transaction) and let it go: used as a temporary,
/// `query.fetch_one(&mut *connection(pool).await?)`.
pub async fn connection(pool: &PgPool) -> Result<Conn, sqlx::Error> {
    let options = pool.connect_options();
    let held = HELD
        .try_with(|h| Arc::ptr_eq(&h.pool, &options).then(|| Arc::clone(&h.conn)))
        .ok()
        .flatten();
    if let Some(guard) = held.and_then(|h| h.try_lock_owned().ok()) {
        return Ok(Conn::Command(guard));
    }
    Ok(Conn::Pooled(pool.acquire().await?))
}

/// Runs `command` with one connection of `pool` for its statements (see the module),
/// for at most `timeout`. A command cut short, by the timeout or by its caller going
/// away, closes the connection rather than giving it back: a connection left in the
/// middle of a statement is tested on its way back to the pool by a round trip that
/// nothing bounds, and on a network that fell silent that round trip, and the pool's
/// place with it, would wait for TCP to give up (a quarter of an hour or more).
pub async fn for_command<F: Future>(
    pool: &PgPool,
    timeout: Duration,
    command: F,
) -> Result<F::Output, sqlx::Error> {
    let conn = Arc::new(Mutex::new(pool.acquire().await?));
    let unfinished = CloseUnlessFinished(Some(Arc::clone(&conn)));
    let held = Held {
        pool: pool.connect_options(),
        conn,
    };
    let outcome = tokio::time::timeout(timeout, HELD.scope(held, command)).await;
    // The command's future is gone by now, and every guard of the connection it held.
    match outcome {
        Ok(output) => {
            unfinished.finished();
            Ok(output)
        }
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the database did not finish the command within {} s",
                timeout.as_secs_f64()
            ),
        ))),
    }
}

/// Marks the command's connection to be closed when dropped, unless the command finished.
struct CloseUnlessFinished(Option<Arc<Mutex<PoolConnection<Postgres>>>>);

impl CloseUnlessFinished {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseUnlessFinished {
    fn drop(&mut self) {
        // By now the command's future is gone, and the guards it held with it.
        if let Some(conn) = self.0.take() {
            match conn.try_lock() {
                Ok(mut conn) => conn.close_on_drop(),
                Err(_) => tracing::warn!("a cut-short command's connection is still in use"),
            }
        }
    }
}
