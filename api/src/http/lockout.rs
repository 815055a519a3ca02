//! Lock-out after failed log-ins: an account with [`Lockout::after`] failed log-ins within
//! the last [`Lockout::window`] is refused (429, `Retry-After`) without its password
//! being checked, until the oldest of them leaves the window, or an administrator resets
//! its password. Counted in the database from the record of log-ins (migration 0014's
//! `lis_login_locked_until`), so every instance of `serve` locks alike; two attempts at
//! the same moment may both be checked, so a few more than `after` can be tried.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;

/// When an account locks, and for how long (`LIS_LOGIN_LOCK_AFTER`,
/// `LIS_LOGIN_LOCK_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Failed log-ins that lock the account (0: never).
    pub after: u32,
    /// The window they are counted in.
    pub window: Duration,
}

impl Default for Lockout {
    fn default() -> Self {
        Self {
            after: 5,
            window: Duration::from_secs(15 * 60),
        }
    }
}

impl Lockout {
    /// [`Lockout::after`] as the database function takes it.
    pub fn failures(&self) -> i32 {
        i32::try_from(self.after).unwrap_or(i32::MAX)
    }

    /// The window as a person reads it: `15 minutes`, `90 seconds`.
    pub fn window_text(&self) -> String {
        match self.window.as_secs() {
            s if s % 60 == 0 && s > 60 => format!("{} minutes", s / 60),
            60 => "a minute".into(),
            s => format!("{s} seconds"),
        }
    }

    /// Until when `user` may not log in, if it is locked now.
    pub async fn locked_until(
        &self,
        pool: &PgPool,
        user: &str,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar("SELECT lis_login_locked_until($1, $2, $3)")
            .bind(user)
            .bind(self.failures())
            .bind(self.window.as_secs_f64())
            .fetch_one(pool)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_reads_as_a_person_would_say_it() {
        let text = |secs| {
            Lockout {
                after: 5,
                window: Duration::from_secs(secs),
            }
            .window_text()
        };
        assert_eq!(text(900), "15 minutes");
        assert_eq!(text(60), "a minute");
        assert_eq!(text(90), "90 seconds");
        assert_eq!(text(3), "3 seconds");
    }
}
