//! Tokens that no longer speak for their user.
//!
//! A token is signed for its whole lifetime (`LIS_TOKEN_TTL_SECS`) and carries the token
//! generation of its user when it was issued. Disabling a user, giving them another role
//! or a new password bumps their generation (a trigger on `users`, migration 0012), and
//! a token of an older generation, or of a disabled user, is refused from then on.
//!
//! Each `serve` keeps the generations of the users that have any (few: most never change)
//! in memory, so a request costs no database round trip. It reloads them when
//! `user_changes` has grown, polled every [`POLL`], and at once after a change it made
//! itself: a change holds at once on the instance that made it, and on the others within
//! about a second. Refreshes run one at a time, so an older read never overwrites a newer
//! one. If the records cannot be read for [`STALE`] (the database away), tokens are not
//! trusted on old knowledge: requests are answered 503 until a read succeeds.

use super::problem::Problem;
use lis_commands::connection::connection;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

/// How often each instance looks for changes to users.
pub const POLL: Duration = Duration::from_secs(1);

/// How old what an instance knows may be before it stops admitting tokens on it.
pub const STALE: Duration = Duration::from_secs(10);

/// What this instance knows of users whose tokens may have been revoked.
#[derive(Default)]
pub struct Revocations {
    known: RwLock<Known>,
    /// Held by the refresh under way.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Known {
    /// When the records were last read (whether or not they had changed).
    read_at: Option<Instant>,
    /// `user_changes`' row count and largest id when `users` was last read: the record is
    /// append-only, so any change committed since moves the count.
    mark: (i64, i64),
    /// User → (token generation, disabled), for users with a generation above 0 or
    /// disabled; anyone else's tokens stand.
    users: HashMap<String, (i64, bool)>,
}

impl Known {
    /// Whether the records were read within [`STALE`].
    fn fresh(&self) -> bool {
        self.read_at.is_some_and(|at| at.elapsed() < STALE)
    }
}

impl Revocations {
    /// Reads what is revoked now, and keeps it current every [`POLL`] for as long as the
    /// returned value lives, on a connection of its own (a pool busy with requests does
    /// not make it stale).
    pub async fn start(pool: PgPool) -> Result<Arc<Self>, sqlx::Error> {
        let revocations = Arc::new(Self::default());
        revocations.refresh(&pool).await?;
        let options = (*pool.connect_options()).clone();
        let weak: Weak<Self> = Arc::downgrade(&revocations);
        tokio::spawn(async move {
            // Its own connection, not a pool's: a read that gets no answer (the network
            // dropped the connection without a word) is given up after a few polls and
            // the connection with it, where a pool would test it on return, waiting on
            // the same silence for good, and every refresh behind it too.
            let mut conn: Option<PgConnection> = None;
            loop {
                tokio::time::sleep(POLL).await;
                let Some(revocations) = weak.upgrade() else {
                    return;
                };
                let read = tokio::time::timeout(POLL * 5, async {
                    let c = match &mut conn {
                        Some(c) => c,
                        None => conn.insert(PgConnection::connect_with(&options).await?),
                    };
                    revocations.refresh_on(c).await
                })
                .await;
                let failed = match read {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer in {} s", (POLL * 5).as_secs()),
                };
                conn = None;
                tracing::warn!(error = %failed, "could not look for revoked tokens; keeping what is known");
            }
        });
        Ok(revocations)
    }

    /// Reloads the users' generations if `user_changes` has grown since the last load.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        self.read(&mut *connection(pool).await?).await
    }

    /// [`Revocations::refresh`] on a connection of its own.
    async fn refresh_on(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        self.read(conn).await
    }

    /// The reload itself; the caller holds `refreshing`.
    async fn read(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let read_at = Instant::now();
        let mark: (i64, i64) =
            sqlx::query_as("SELECT count(*), coalesce(max(id), 0) FROM user_changes")
                .fetch_one(&mut *conn)
                .await?;
        {
            let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
            if known.read_at.is_some() && known.mark == mark {
                known.read_at = Some(read_at);
                return Ok(());
            }
        }
        let rows: Vec<(String, i64, bool)> = sqlx::query_as(
            "SELECT username, token_generation, disabled FROM users
              WHERE token_generation > 0 OR disabled",
        )
        .fetch_all(&mut *conn)
        .await?;
        let users = rows.into_iter().map(|(u, g, d)| (u, (g, d))).collect();
        // A lock poisoned by a panic elsewhere still holds a whole map: take it over.
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        *known = Known {
            read_at: Some(read_at),
            mark,
            users,
        };
        Ok(())
    }

    /// Whether the records were read within [`STALE`].
    pub fn current(&self) -> bool {
        self.known.read().unwrap_or_else(|p| p.into_inner()).fresh()
    }

    /// Whether a token of `user` issued under `generation` stands, on what is known now.
    pub fn check(&self, user: &str, generation: i64) -> Verdict {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        if !known.fresh() {
            return Verdict::Stale;
        }
        let (current, disabled) = known.users.get(user).copied().unwrap_or((0, false));
        if generation > current {
            Verdict::Newer
        } else if disabled {
            Verdict::Revoked("this user is disabled; their tokens are no longer accepted")
        } else if generation < current {
            Verdict::Revoked(
                "this token was revoked: the user's role or password has changed since it was issued; log in again",
            )
        } else {
            Verdict::Stands
        }
    }

    /// Refuses a token of `user` issued under `generation` if it has been revoked. A
    /// token newer than this instance knows of (issued by another instance after a
    /// change not yet seen here) makes it look again first.
    pub async fn admit(&self, pool: &PgPool, user: &str, generation: i64) -> Result<(), Problem> {
        let mut verdict = self.check(user, generation);
        if verdict == Verdict::Newer {
            self.refresh(pool).await?;
            verdict = self.check(user, generation);
        }
        match verdict {
            Verdict::Stands => Ok(()),
            Verdict::Revoked(why) => Err(Problem::unauthorized(why)),
            Verdict::Stale => Err(Problem::unavailable(
                "the user records could not be read lately, so no token can be confirmed; try again shortly",
            )),
            // Still unknown after a fresh look: not a generation this database gave
            // (restored from an older backup, say). Refused; logging in again mends it.
            Verdict::Newer => Err(Problem::unauthorized(
                "this token names a newer generation of its user than the database holds; log in again",
            )),
        }
    }
}

/// What [`Revocations::check`] says of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Stands,
    Revoked(&'static str),
    /// Issued under a generation this instance has not seen yet.
    Newer,
    /// The records were not read within [`STALE`]: nothing can be said.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knowing(users: &[(&str, i64, bool)]) -> Revocations {
        let r = Revocations::default();
        let mut known = r.known.write().unwrap();
        known.read_at = Some(Instant::now());
        known.users = users
            .iter()
            .map(|(u, g, d)| (u.to_string(), (*g, *d)))
            .collect();
        drop(known);
        r
    }

    #[test]
    fn older_generations_and_disabled_users_are_refused_newer_ones_looked_up() {
        let r = knowing(&[("tech.1", 2, false), ("gone.1", 1, true)]);
        assert_eq!(r.check("tech.1", 2), Verdict::Stands);
        assert!(matches!(r.check("tech.1", 1), Verdict::Revoked(_)));
        assert!(matches!(r.check("tech.1", 0), Verdict::Revoked(_)));
        assert_eq!(r.check("tech.1", 3), Verdict::Newer);
        assert!(matches!(r.check("gone.1", 1), Verdict::Revoked(_)));
        assert!(matches!(r.check("gone.1", 0), Verdict::Revoked(_)));
        // Disabled, then enabled and logged in elsewhere: not refused on stale knowledge.
        assert_eq!(r.check("gone.1", 2), Verdict::Newer);
        // Users never changed stand at generation 0.
        assert_eq!(r.check("dr.rao", 0), Verdict::Stands);
        assert_eq!(r.check("dr.rao", 1), Verdict::Newer);
        // Nothing is said before the records have been read.
        assert_eq!(Revocations::default().check("dr.rao", 0), Verdict::Stale);
    }

    #[tokio::test]
    async fn knowledge_older_than_stale_admits_no_token() {
        // A pool that never connects: admitting must not need the database to refuse.
        let nowhere = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let r = Revocations::default();
        let never_read = r.admit(&nowhere, "dr.rao", 0).await.unwrap_err();
        assert_eq!(never_read.status, 503);
        r.known.write().unwrap().read_at = Some(Instant::now());
        assert!(r.admit(&nowhere, "dr.rao", 0).await.is_ok());
        let long_ago = Instant::now().checked_sub(STALE + Duration::from_secs(1));
        r.known.write().unwrap().read_at = long_ago;
        let stale = r.admit(&nowhere, "dr.rao", 0).await.unwrap_err();
        assert_eq!((stale.status, stale.retry_after.is_some()), (503, true));
    }
}
