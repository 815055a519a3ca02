//! Lock-out after failed log-ins: an account with [`Lockout::after`] failed log-ins within
//! the last [`Lockout::window`] is refused (429, `Retry-After`) without its password
//! being checked, until the oldest of them leaves the window, or an administrator resets
//! its password. Counted in the database from the record of log-ins (migration 0014's
//! `lis_login_locked_until`), so every instance of `serve` locks alike. Within an
//! instance an account's log-ins take turns ([`Gate`]): a burst of guesses in parallel is
//! checked one at a time, so the lock stops it at `after`; across N instances up to N
//! may be checked at once.
//!
//! A wrong current password in a password change is recorded and counted the same way,
//! as an attempt of its own kind (migration 0015), against its own limit
//! ([`super::users::STRIKES`]): a stolen token cannot be used to guess the password
//! behind it, on any instance, and auditors see the guesses beside the log-ins.

use chrono::{DateTime, Utc};
use lis_commands::connection::connection;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;

/// When an account locks, and for how long (`LIS_LOGIN_LOCK_AFTER`,
/// `LIS_LOGIN_LOCK_SECS`), and the turns its log-ins take.
#[derive(Debug, Clone)]
pub struct Lockout {
    /// Failed log-ins that lock the account (0: never).
    pub after: u32,
    /// The window they are counted in.
    pub window: Duration,
    pub gate: Arc<Gate>,
}

impl Default for Lockout {
    fn default() -> Self {
        Self {
            after: 5,
            window: Duration::from_secs(15 * 60),
            gate: Default::default(),
        }
    }
}

/// One log-in of an account at a time, in this instance: a name's turn is held from the
/// look at its lock to the record of the attempt.
#[derive(Debug, Default)]
pub struct Gate(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A log-in's turn for its name; the next attempt at the name waits until it is dropped.
pub struct Turn<'a> {
    gate: &'a Gate,
    name: String,
    held: Option<OwnedMutexGuard<()>>,
}

impl Gate {
    /// Waits for `name`'s turn.
    pub async fn turn(&self, name: &str) -> Turn<'_> {
        let lock = {
            let mut names = self.0.lock().unwrap_or_else(|p| p.into_inner());
            names.entry(name.to_string()).or_default().clone()
        };
        Turn {
            gate: self,
            name: name.to_string(),
            held: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.held.take();
        let mut names = self.gate.0.lock().unwrap_or_else(|p| p.into_inner());
        // No one else holds or awaits it (they would hold a clone): forget the name.
        if names
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            names.remove(&self.name);
        }
    }
}

/// What an attempt to prove a password was for (`logins.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// `POST /auth/login`.
    LogIn,
    /// `POST /auth/password`: the current password, given to change it.
    PasswordChange,
}

impl Attempt {
    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::LogIn => "log-in",
            Attempt::PasswordChange => "password-change",
        }
    }
}

/// Records an attempt, before it is answered: of `account` (`None` when the name is no
/// account: what was typed may be a password), whether it succeeded, whether it was
/// refused unchecked because the account was locked, and from where.
pub async fn record(
    pool: &PgPool,
    attempt: Attempt,
    account: Option<&str>,
    succeeded: bool,
    locked: bool,
    client_addr: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO logins (username, succeeded, client_addr, locked, kind)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(account)
    .bind(succeeded)
    .bind(client_addr)
    .bind(locked)
    .bind(attempt.as_str())
    .execute(&mut *connection(pool).await?)
    .await
    .map(|_| ())
}

/// Until when `user` may make no attempt of this kind, if `after` failed ones within
/// `window` lock it now.
pub async fn locked_until(
    pool: &PgPool,
    attempt: Attempt,
    user: &str,
    after: i32,
    window: Duration,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT lis_attempts_locked_until($1, $2, $3, $4)")
        .bind(user)
        .bind(attempt.as_str())
        .bind(after)
        .bind(window.as_secs_f64())
        .fetch_one(&mut *connection(pool).await?)
        .await
}

/// Whole seconds from now until `until`, rounded up and at least 1: a client that waits
/// as told finds it unlocked.
pub fn seconds_until(until: DateTime<Utc>) -> u16 {
    let wait = ((until - Utc::now()).num_milliseconds() + 999)
        .div_euclid(1000)
        .max(1);
    wait.min(i64::from(u16::MAX)) as u16
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
        locked_until(pool, Attempt::LogIn, user, self.failures(), self.window).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_reads_as_a_person_would_say_it() {
        let text = |secs| {
            Lockout {
                window: Duration::from_secs(secs),
                ..Default::default()
            }
            .window_text()
        };
        assert_eq!(text(900), "15 minutes");
        assert_eq!(text(60), "a minute");
        assert_eq!(text(90), "90 seconds");
        assert_eq!(text(3), "3 seconds");
    }

    #[tokio::test]
    async fn a_names_log_ins_take_turns_and_the_name_is_forgotten_after() {
        let gate = Gate::default();
        let first = gate.turn("tech.1").await;
        let other = gate.turn("path.1").await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.turn("tech.1")).await;
        assert!(waiting.is_err(), "a second turn of the same name waits");
        drop((first, other));
        let again = gate.turn("tech.1").await;
        drop(again);
        assert!(gate.0.lock().unwrap().is_empty());
    }
}
