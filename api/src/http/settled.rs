//! Where the audit records are final: the time before which every entry that will ever
//! be in them is already committed, so that an auditor's pages by time never pass an
//! entry still being written.
//!
//! Every audit record's time (an event's `recorded_at`, a log-in's `at`, …) is the
//! database's clock when its row was inserted. An entry not yet visible belongs to a
//! transaction still running: one that has written (it holds a transaction id) and
//! began before the entry, or one whose statement is inserting it right now and began
//! before it. A transaction that has written nothing and runs no statement (a reader, a
//! `pg_dump`) can only write later, after now. So every entry older than the earliest
//! such start, read by a later statement, is there: that is the horizon. A page cut at it
//! and a cursor never past it cannot step over an entry that commits late (a keyset page
//! by time would, for good). It assumes the database's clock does not step back (NTP
//! slews it; an operator setting it back by hand would undo the argument) and no
//! prepared transaction (two-phase commit, which the ledger does not use) is open:
//! while one is, the horizon is unknown.

use super::problem::Problem;
use chrono::{DateTime, Utc};
use lis_commands::connection::connection;
use sqlx::PgPool;

/// The time before which every audit entry of this database is committed: the start of
/// the earliest transaction of another session that has written, or of a statement
/// running in one that has not (autovacuum and the like write no audit entries), or the
/// start of this statement if there is none: its clock is read before the sessions are.
/// Read before, and in another statement than, the page it cuts. It needs to see other
/// roles' sessions (`pg_read_all_stats`, granted to the application role by `lisledger
/// db init`); without it, while a session of another role is connected, it is unknown:
/// 503.
pub async fn horizon(pool: &PgPool) -> Result<DateTime<Utc>, Problem> {
    let (horizon, hidden, prepared): (DateTime<Utc>, i64, i64) = sqlx::query_as(
        "SELECT least(now(), min(CASE WHEN backend_xid IS NOT NULL THEN xact_start
                                      WHEN state IN ('active', 'fastpath function call')
                                      THEN query_start END)),
                count(*) FILTER (WHERE query = '<insufficient privilege>'),
                (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database())
           FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND (backend_type = 'client backend' OR query = '<insufficient privilege>')",
    )
    .fetch_one(&mut *connection(pool).await?)
    .await?;
    if prepared > 0 {
        // Two-phase commit: a prepared transaction is in no session, and its start is
        // not kept. The ledger prepares none; an operator's would hold these pages.
        tracing::error!(
            prepared,
            "a prepared transaction is open in the database: the auditors' pages by time wait for it"
        );
        return Err(Problem::unavailable(
            "a prepared transaction is open in the database, so recent audit entries may not \
             be final yet (see the server's log); nothing was read",
        ));
    }
    if hidden > 0 {
        tracing::error!(
            sessions = hidden,
            "cannot see other roles' transactions to tell which audit entries are final: \
             grant pg_read_all_stats to the application role (`lisledger db init`)"
        );
        return Err(Problem::unavailable(
            "the server cannot yet tell which recent audit entries are final (see its log); \
             nothing was read",
        ));
    }
    Ok(horizon)
}

/// Whether the application role may see other roles' sessions, as [`horizon`] needs;
/// `serve` warns at start-up if not.
pub async fn can_see_other_sessions(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")
        .fetch_one(&mut *connection(pool).await?)
        .await
}
