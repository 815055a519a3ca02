//! One database connection for the whole of a command; and connections that a request
//! cut short closes rather than gives back.
//!
//! sqlx tests a connection with a round trip each time it goes back to its pool, so a
//! command that took a connection for each of its statements (its aggregate's load, the
//! look-ups its rules make, a patient's key, the append: 8 to record a result) paid a
//! round trip more for each. While a command runs inside [`within`], the store, the
//! look-ups and the key vault send their statements to the one connection it holds;
//! elsewhere, and for a statement made while that connection is busy with another of the
//! same command or for another pool, each takes a connection from its pool as before
//! (so nothing ever waits on a connection its own command holds, and no statement runs
//! on another pool's database or role).
//!
//! The API runs each request inside [`scoped`]. A request cut short (its deadline
//! passed, or its client went away) may leave a connection in the middle of a
//! statement; sqlx would test it on its way back to the pool with a round trip that
//! nothing bounds, which on a network that fell silent waits for TCP to give up (a
//! quarter of an hour or more, for good behind a middlebox that swallows what it gets),
//! and the pool's place with it; closing it instead is bounded (sqlx gives a close on
//! drop 5 s). So the connections [`connection`] hands out inside a request are closed
//! when the request is cut short, and so is the connection of a transaction begun by
//! [`begin`], which a caller may keep across awaits and hand on (as sqlx's `Pool::begin`
//! gives it). The relay and the projection workers run each batch inside [`scoped`]
//! under a timeout, the same way. A statement sent to a pool directly
//! (`fetch_one(&pool)`) is outside all this.
//!
//! A command cut short after its write went out may or may not be stored: the write
//! commits at the server whether or not its answer arrives. [`WriteWatch`] tells the
//! command's caller which it was, so that the client is told the outcome is unknown
//! rather than that nothing happened.

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Database, PgConnection, PgPool, Postgres, TransactionManager};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

tokio::task_local! {
    static HELD: Held;
    /// Set when the running request is cut short ([`scoped`]).
    static CUT: Arc<AtomicBool>;
    /// Where the running command's write stands ([`WriteWatch`]).
    static WRITE: WriteWatch;
}

/// Where a command's write stands: not sent, sent and unanswered, or answered (stored, or
/// refused by the server). Set by the store ([`write_sent`], [`write_answered`]) while
/// the command runs inside [`WriteWatch::watch`].
#[derive(Debug, Clone, Default)]
pub struct WriteWatch(Arc<AtomicU8>);

const SENT: u8 = 1;
const ANSWERED: u8 = 2;

impl WriteWatch {
    /// Runs `command` with this watch on its write.
    pub async fn watch<F: Future>(&self, command: F) -> F::Output {
        WRITE.scope(self.clone(), command).await
    }

    /// Whether the write went out and no answer came back: the command may have been
    /// stored, or not.
    pub fn in_doubt(&self) -> bool {
        self.0.load(Ordering::SeqCst) == SENT
    }
}

/// The running command's write (the statement, or the COMMIT, that makes it durable) is
/// about to go out.
pub fn write_sent() {
    let _ = WRITE.try_with(|w| w.0.store(SENT, Ordering::SeqCst));
}

/// The server answered the running command's write: it is stored, or it is not.
pub fn write_answered() {
    let _ = WRITE.try_with(|w| w.0.store(ANSWERED, Ordering::SeqCst));
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
    Pooled(Pooled),
}

/// A connection of the pool's, closed when dropped if its request was cut short.
pub struct Pooled {
    conn: PoolConnection<Postgres>,
    cut: Option<Arc<AtomicBool>>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Runs before `conn` (a field) is dropped and given back.
        if self
            .cut
            .as_ref()
            .is_some_and(|cut| cut.load(Ordering::SeqCst))
        {
            self.conn.close_on_drop();
        }
    }
}

impl Deref for Conn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Conn::Command(held) => held,
            Conn::Pooled(own) => &own.conn,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Conn::Command(held) => held,
            Conn::Pooled(own) => &mut own.conn,
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
    Ok(Conn::Pooled(Pooled::acquire(pool).await?))
}

impl Pooled {
    /// A connection of `pool`'s, carrying the running request's cut flag if any.
    async fn acquire(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            conn: pool.acquire().await?,
            cut: CUT.try_with(Arc::clone).ok(),
        })
    }
}

/// A transaction on a connection of its own from `pool` (never the running command's:
/// it may outlive the command, as an idempotency claim does), owned, so that it can be
/// kept across awaits and handed on. Dropped while still open, it is rolled back as
/// sqlx's own transaction is (on the connection's way back to the pool); dropped while
/// its request is being cut short ([`scoped`]), its connection is closed instead.
pub async fn begin(pool: &PgPool) -> Result<Tx, sqlx::Error> {
    let mut conn = Pooled::acquire(pool).await?;
    <Postgres as Database>::TransactionManager::begin(&mut conn.conn, None).await?;
    Ok(Tx { conn, open: true })
}

/// The transaction of [`begin`].
pub struct Tx {
    conn: Pooled,
    open: bool,
}

impl Tx {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        <Postgres as Database>::TransactionManager::commit(&mut self.conn.conn).await?;
        self.open = false;
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        <Postgres as Database>::TransactionManager::rollback(&mut self.conn.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Runs before `conn` (a field) is dropped: closed if cut, else given back, where
        // sqlx runs the rollback queued here first.
        if self.open {
            <Postgres as Database>::TransactionManager::start_rollback(&mut self.conn.conn);
        }
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn.conn
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn.conn
    }
}

/// Runs `work` (a request) so that, if it is cut short, the connections it holds from
/// [`connection`] at that moment are closed rather than given back (see the module).
pub fn scoped<F: Future>(work: F) -> Scoped<F> {
    let cut = Arc::new(AtomicBool::new(false));
    Scoped {
        work: Box::pin(CUT.scope(Arc::clone(&cut), work)),
        cut,
        finished: false,
    }
}

/// Runs `work` inside [`scoped`] for at most `limit`: `None` when the limit came first,
/// and the connections `work` then held were closed (a request's deadline, a batch of
/// the relay or a projection worker).
pub async fn scoped_for<F: Future>(limit: Duration, work: F) -> Option<F::Output> {
    tokio::time::timeout(limit, scoped(work)).await.ok()
}

/// The future of [`scoped`].
pub struct Scoped<F: Future> {
    work: Pin<Box<tokio::task::futures::TaskLocalFuture<Arc<AtomicBool>, F>>>,
    cut: Arc<AtomicBool>,
    finished: bool,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = self.work.as_mut().poll(cx);
        if output.is_ready() {
            self.finished = true;
        }
        output
    }
}

impl<F: Future> Drop for Scoped<F> {
    fn drop(&mut self) {
        // Runs before `work` (a field) is dropped, and the connections it holds with it.
        if !self.finished {
            self.cut.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs `command` (a command, or any work that must not wait on the database for longer
/// than `timeout`) with one connection of `pool` for its statements (see the module).
/// Work cut short, by the timeout or by its caller going away, closes the connection
/// rather than giving it back: a connection left in the
/// middle of a statement is tested on its way back to the pool by a round trip that
/// nothing bounds, and on a network that fell silent that round trip, and the pool's
/// place with it, would wait for TCP to give up (a quarter of an hour or more).
pub async fn within<F: Future>(
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
                "the database did not answer within {} s",
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
