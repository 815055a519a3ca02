//! User accounts and their administration: adding a user, disabling and enabling them,
//! giving them another role and resetting their password, by an admin over HTTP or by an
//! operator with `lisledger users …`.
//!
//! The database keeps the record (migration 0012): a trigger on `users` writes every
//! change to the append-only `user_changes`, with the actor, their role, the reason and
//! the request id that [`begin`] sets for the change's transaction, and refuses a change
//! that names none. A second trigger bumps the user's token generation, so that tokens
//! issued before the change stop working ([`super::revocation`]). Auditors read the
//! record at `GET /audit/users`. Users also change their own password here
//! (`POST /auth/password`), giving the current one.

use super::auth::{Action, Caller};
use super::body::parse;
use super::commands::{id, idempotent, no_if_match};
use super::lockout::{self, Lockout};
use super::problem::{FieldProblem, Problem};
use super::AppState;
use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::Argon2;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use lis_commands::connection::{self, connection};
use lis_domain::actor::{ActorId, Role};
use lis_domain::text::Reason;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgPool, Postgres};

/// The shortest password accepted.
pub const PASSWORD_MIN: usize = 12;
/// The longest password accepted (it is hashed whole).
const PASSWORD_MAX: usize = 1024;

/// Who makes a change to a user, in what role, why, and in which request: written with
/// the change to `user_changes`.
#[derive(Debug, Clone)]
pub struct ChangedBy {
    /// A user name, or the operator's login for `lisledger users …`.
    pub actor: String,
    /// The actor's role (`admin` over HTTP, `operator` from the command line).
    pub role: String,
    pub reason: String,
    pub request_id: Option<String>,
}

impl ChangedBy {
    /// A change made from the command line (`lisledger users …`) by an operator holding
    /// the database's credentials, who names themself and says why.
    pub fn operator(actor: &str, reason: &str) -> Result<Self, UserError> {
        if actor.trim().is_empty() {
            return Err(UserError::Unnamed);
        }
        let reason = Reason::parse(reason).map_err(|e| UserError::NoReason(e.message))?;
        Ok(Self {
            actor: actor.trim().to_string(),
            role: "operator".into(),
            reason: reason.as_str().to_string(),
            request_id: None,
        })
    }

    /// A change made by one of the ledger's own tools (the demo, the benches), not by a
    /// person.
    pub fn tool(tool: &str, reason: &str) -> Self {
        Self {
            actor: tool.to_string(),
            role: Role::System.as_str().into(),
            reason: reason.to_string(),
            request_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")]
    WeakPassword,
    #[error("role system is the ledger itself, never a person")]
    SystemRole,
    #[error("name who is making the change (--actor; USER is empty)")]
    Unnamed,
    #[error("say why: {0}")]
    NoReason(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("user {user} already exists as {existing}: names are unique regardless of case")]
    ExistsAs { user: String, existing: String },
    #[error("no user {0}")]
    NotFound(String),
    #[error("user {user} is already {state}")]
    Unchanged { user: String, state: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("hashing failed: {0}")]
    Hash(String),
}

impl From<UserError> for Problem {
    fn from(e: UserError) -> Self {
        let at = |pointer: &str, e: &UserError| {
            Problem::invalid(vec![FieldProblem {
                pointer: pointer.into(),
                detail: e.to_string(),
            }])
        };
        match e {
            UserError::WeakPassword => at("/password", &e),
            UserError::SystemRole => at("/role", &e),
            UserError::Exists(_) | UserError::ExistsAs { .. } => {
                Problem::conflict("user-exists", "The user already exists", e.to_string())
            }
            UserError::NotFound(_) => Problem::not_found(e.to_string()),
            UserError::Unchanged { .. } => {
                Problem::conflict("user-unchanged", "Nothing to change", e.to_string())
            }
            UserError::Database(e) => Problem::from(e),
            // The API names the actor from the token and reads the reason as a `Reason`.
            UserError::Unnamed | UserError::NoReason(_) => {
                tracing::error!(error = %e, "a user change without actor or reason");
                Problem::internal()
            }
            UserError::Hash(e) => {
                tracing::error!(error = %e, "password hashing failed");
                Problem::internal()
            }
        }
    }
}

/// A password as a user is given one: 12 to 1,024 characters. Never shown in logs.
#[derive(Deserialize, JsonSchema)]
#[serde(try_from = "String")]
#[schemars(extend("minLength" = PASSWORD_MIN, "maxLength" = PASSWORD_MAX))]
pub struct Password(String);

impl Password {
    pub fn parse(text: &str) -> Result<Self, UserError> {
        let n = text.chars().count();
        if (PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
            Ok(Self(text.to_string()))
        } else {
            Err(UserError::WeakPassword)
        }
    }
}

impl TryFrom<String> for Password {
    type Error = UserError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

/// A role a person may hold: any but `system`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "Role")]
pub struct PersonRole(Role);

impl PersonRole {
    pub fn parse(role: Role) -> Result<Self, UserError> {
        match role {
            Role::System => Err(UserError::SystemRole),
            role => Ok(Self(role)),
        }
    }
}

impl TryFrom<Role> for PersonRole {
    type Error = UserError;
    fn try_from(role: Role) -> Result<Self, Self::Error> {
        Self::parse(role)
    }
}

impl std::fmt::Display for PersonRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl JsonSchema for PersonRole {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PersonRole".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let roles: Vec<&str> = Role::PEOPLE.iter().map(Role::as_str).collect();
        schemars::json_schema!({ "type": "string", "enum": roles,
            "description": "A role a person may hold (system is the ledger itself)" })
    }
}

/// One account as the API and `lisledger users list` show it (never its password hash).
#[derive(Serialize, JsonSchema, sqlx::FromRow)]
pub struct Account {
    #[schemars(with = "ActorId")]
    pub username: String,
    #[schemars(with = "Role")]
    pub role: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    /// The last successful log-in, if any.
    pub last_login: Option<DateTime<Utc>>,
    /// Locked after failed log-ins until then ([`super::lockout`]), if it is now.
    pub locked_until: Option<DateTime<Utc>>,
    /// The password was set by someone else: the user must change it at their next
    /// log-in, before doing anything else.
    pub password_change_required: bool,
}

/// An account's row as [`Account`] reads it; $1 and $2 are the lock-out's failures and
/// window in seconds.
macro_rules! account_sql {
    () => {
        "SELECT username, role, disabled, created_at,
                (SELECT max(at) FROM logins l
                  WHERE l.username = u.username AND succeeded AND kind = 'log-in') AS last_login,
                lis_login_locked_until(u.username, $1, $2) AS locked_until,
                password_must_change AS password_change_required
           FROM users u"
    };
}

/// Opens the transaction of a change, naming who makes it for the record.
async fn begin(pool: &PgPool, by: &ChangedBy) -> Result<connection::Tx, sqlx::Error> {
    let mut tx = connection::begin(pool).await?;
    sqlx::query(
        "SELECT set_config('lis.actor_id', $1, true), set_config('lis.actor_role', $2, true),
                set_config('lis.reason', $3, true), set_config('lis.request_id', $4, true)",
    )
    .bind(&by.actor)
    .bind(&by.role)
    .bind(&by.reason)
    .bind(by.request_id.as_deref().unwrap_or_default())
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// An Argon2id hash of `password`, made off the async workers.
async fn hash(password: &Password) -> Result<String, UserError> {
    let password = password.0.clone();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| UserError::Hash(e.to_string()))?
    .map_err(|e| UserError::Hash(e.to_string()))
}

/// Adds a user with an Argon2id hash of `password`; `temporary`: they must change it
/// before doing anything else (it was set by another person over the API).
pub async fn add(
    pool: &PgPool,
    user: &ActorId,
    role: PersonRole,
    password: &Password,
    temporary: bool,
    by: &ChangedBy,
) -> Result<(), UserError> {
    let hash = hash(password).await?;
    let mut tx = begin(pool, by).await?;
    let inserted = sqlx::query(
        "INSERT INTO users (username, role, password_hash, password_must_change)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(user.as_str())
    .bind(role.0.as_str())
    .bind(hash)
    .bind(temporary)
    .execute(&mut *tx)
    .await;
    let inserted = match inserted {
        // Migration 0013's trigger: the name differs from another only in case.
        Err(sqlx::Error::Database(d)) if d.constraint() == Some("users_name_unique") => {
            drop(tx);
            let existing: String = sqlx::query_scalar(
                "SELECT username FROM users WHERE lower(username) = lower($1) AND username <> $1 LIMIT 1",
            )
            .bind(user.as_str())
            .fetch_one(&mut *connection(pool).await?)
            .await?;
            return Err(UserError::ExistsAs {
                user: user.to_string(),
                existing,
            });
        }
        other => other?,
    };
    if inserted.rows_affected() == 0 {
        return Err(UserError::Exists(user.to_string()));
    }
    tx.commit().await?;
    Ok(())
}

/// [`add`] from unchecked parts (the role and password are checked first), with a
/// password that stands: for the ledger's own tools and tests.
pub async fn add_user(
    pool: &PgPool,
    user: &ActorId,
    role: Role,
    password: &str,
    by: &ChangedBy,
) -> Result<(), UserError> {
    add(
        pool,
        user,
        PersonRole::parse(role)?,
        &Password::parse(password)?,
        false,
        by,
    )
    .await
}

/// Runs `update` (binding the user name as $1, `value` as $2 and, where it has one,
/// `extra` as $3) in a change's transaction; no row changed is "no such user", or
/// `unchanged` if the user exists.
async fn change<T>(
    pool: &PgPool,
    user: &ActorId,
    by: &ChangedBy,
    update: &'static str,
    value: T,
    extra: Option<bool>,
    unchanged: &str,
) -> Result<(), UserError>
where
    T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
{
    let mut tx = begin(pool, by).await?;
    let mut query = sqlx::query(update).bind(user.as_str()).bind(value);
    if let Some(extra) = extra {
        query = query.bind(extra);
    }
    let changed = query.execute(&mut *tx).await?;
    if changed.rows_affected() == 0 {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE username = $1)")
                .bind(user.as_str())
                .fetch_one(&mut *tx)
                .await?;
        return Err(if exists {
            UserError::Unchanged {
                user: user.to_string(),
                state: unchanged.to_string(),
            }
        } else {
            UserError::NotFound(user.to_string())
        });
    }
    tx.commit().await?;
    Ok(())
}

/// Disables a user (no log-in; their tokens refused) or enables them again.
pub async fn set_disabled(
    pool: &PgPool,
    user: &ActorId,
    disabled: bool,
    by: &ChangedBy,
) -> Result<(), UserError> {
    let state = if disabled { "disabled" } else { "enabled" };
    change(
        pool,
        user,
        by,
        "UPDATE users SET disabled = $2 WHERE username = $1 AND disabled <> $2",
        disabled,
        None,
        state,
    )
    .await
}

/// Gives a user another role; their tokens in the old one are refused from then on.
pub async fn set_role(
    pool: &PgPool,
    user: &ActorId,
    role: PersonRole,
    by: &ChangedBy,
) -> Result<(), UserError> {
    change(
        pool,
        user,
        by,
        "UPDATE users SET role = $2 WHERE username = $1 AND role <> $2",
        role.0.as_str(),
        None,
        &format!("in role {}", role.0),
    )
    .await
}

/// Gives a user a new password; their tokens are refused from then on. `temporary`:
/// they must change it before doing anything else.
pub async fn reset_password(
    pool: &PgPool,
    user: &ActorId,
    password: &Password,
    temporary: bool,
    by: &ChangedBy,
) -> Result<(), UserError> {
    let hash = hash(password).await?;
    change(
        pool,
        user,
        by,
        "UPDATE users SET password_hash = $2, password_must_change = $3 WHERE username = $1",
        hash,
        Some(temporary),
        "",
    )
    .await
}

/// Gives `user` the password `new` in place of the one they proved they know, whose
/// stored hash was `current_hash`: recorded as changed by its user (not reset), and
/// refused if the password was reset meanwhile.
async fn change_own(
    pool: &PgPool,
    user: &ActorId,
    current_hash: &str,
    new: &Password,
    by: &ChangedBy,
) -> Result<bool, UserError> {
    let hash = hash(new).await?;
    let mut tx = begin(pool, by).await?;
    sqlx::query("SELECT set_config('lis.own_password', 'yes', true)")
        .execute(&mut *tx)
        .await?;
    let changed = sqlx::query(
        "UPDATE users SET password_hash = $2, password_must_change = false
          WHERE username = $1 AND password_hash = $3",
    )
    .bind(user.as_str())
    .bind(hash)
    .bind(current_hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(changed.rows_affected() == 1)
}

/// Every account, by name, locked or not as `lockout` says.
pub async fn list(pool: &PgPool, lockout: &Lockout) -> Result<Vec<Account>, sqlx::Error> {
    sqlx::query_as(concat!(account_sql!(), " ORDER BY username"))
        .bind(lockout.failures())
        .bind(lockout.window.as_secs_f64())
        .fetch_all(&mut *connection(pool).await?)
        .await
}

async fn account(s: &AppState, user: &ActorId) -> Result<Value, Problem> {
    let account: Account = sqlx::query_as(concat!(account_sql!(), " WHERE username = $3"))
        .bind(s.lockout.failures())
        .bind(s.lockout.window.as_secs_f64())
        .bind(user.as_str())
        .fetch_one(&mut *connection(&s.pool).await?)
        .await?;
    Ok(json!(account))
}

// --- HTTP -----------------------------------------------------------------------------

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUserBody {
    username: ActorId,
    role: PersonRole,
    password: Password,
    /// Why this person is given access (their post, who asked for it).
    reason: Reason,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    reason: Reason,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleBody {
    role: PersonRole,
    reason: Reason,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    password: Password,
    reason: Reason,
}

fn changed_by(caller: &Caller, reason: &Reason) -> ChangedBy {
    ChangedBy {
        actor: caller.actor.id.to_string(),
        role: caller.actor.role.as_str().to_string(),
        reason: reason.as_str().to_string(),
        request_id: Some(caller.context.correlation_id.to_string()),
    }
}

/// Every account (admins and auditors).
pub async fn accounts(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, Problem> {
    caller.require(Action::ReadUsers)?;
    Ok(Json(json!({ "users": list(&s.pool, &s.lockout).await? })))
}

/// Adds a user (admin).
pub async fn add_account(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    caller.require(Action::ManageUsers)?;
    no_if_match(&headers)?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::CREATED, async {
            let b: NewUserBody = parse(&body)?;
            add(
                &s.pool,
                &b.username,
                b.role,
                &b.password,
                true,
                &changed_by(&caller, &b.reason),
            )
            .await?;
            tracing::info!(user = %b.username, role = %b.role, by = %caller.actor.id, "user added");
            account(&s, &b.username).await
        })
        .await,
    )
}

/// Wrong current passwords allowed per user in [`STRIKE_WINDOW`]; beyond, every password
/// change of theirs is refused until the oldest leaves the window (or an administrator
/// resets the password), so a stolen token cannot be used to guess the password behind
/// it. Recorded and counted in the database with the log-ins ([`super::lockout`]), so
/// every instance refuses alike; they do not lock log-ins.
pub const STRIKES: i32 = 5;
pub const STRIKE_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnPasswordBody {
    current_password: String,
    new_password: Password,
}

/// A user changes their own password, giving the current one. Their tokens, the one
/// that made the change included, are refused from then on: they log in again.
pub async fn change_own_password(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    caller.require(Action::ChangeOwnPassword)?;
    no_if_match(&headers)?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::OK, async {
            let b: OwnPasswordBody = parse(&body)?;
            let user = &caller.actor.id;
            let field = |pointer: &str, detail: &str| {
                Problem::invalid(vec![FieldProblem {
                    pointer: pointer.into(),
                    detail: detail.into(),
                }])
            };
            let (name, from) = (user.as_str(), caller.context.client_addr.as_deref());
            let record = |succeeded: bool, locked: bool| {
                let kind = lockout::Attempt::PasswordChange;
                lockout::record(&s.pool, kind, Some(name), succeeded, locked, from)
            };
            // The name's turn (shared with its log-ins), from the look at its strikes to
            // the record of this attempt: guesses sent in parallel are checked in turn.
            let turn = s.lockout.gate.turn(name).await;
            let struck = lockout::locked_until(
                &s.pool,
                lockout::Attempt::PasswordChange,
                name,
                STRIKES,
                STRIKE_WINDOW,
            );
            if let Some(until) = struck.await? {
                record(false, true).await?;
                let wait = lockout::seconds_until(until);
                tracing::warn!(user = %user, %until, "password change refused: too many wrong current passwords");
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "password-strikes",
                    "Too many wrong passwords",
                )
                .detail(format!(
                    "{STRIKES} wrong current passwords in {} minutes: no password change of \
                     this account until {} (retry in {wait} s), unless an administrator resets \
                     its password; the password was not checked",
                    STRIKE_WINDOW.as_secs() / 60,
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ));
                p.retry_after = Some(wait);
                return Err(p);
            }
            let current = super::auth::check_password(&s.pool, name, &b.current_password);
            let Some(current_hash) = current.await?.granted_hash else {
                record(false, false).await?;
                tracing::warn!(user = %user, "wrong current password in a password change");
                return Err(field("/current_password", "not your current password"));
            };
            // The attempt is settled (a right password leaves no strike): the name's
            // log-ins need not wait for the rest of the change.
            drop(turn);
            if b.new_password.0 == b.current_password {
                return Err(field(
                    "/new_password",
                    "the new password must differ from the current one",
                ));
            }
            let by = ChangedBy {
                actor: user.to_string(),
                role: caller.actor.role.as_str().to_string(),
                reason: "changed by the user".into(),
                request_id: Some(caller.context.correlation_id.to_string()),
            };
            if !change_own(&s.pool, user, &current_hash, &b.new_password, &by).await? {
                return Err(Problem::conflict(
                    "password-changed-meanwhile",
                    "The password changed meanwhile",
                    "your password was reset or changed while this request ran; log in again",
                ));
            }
            refreshed(&s).await;
            tracing::info!(user = %user, "password changed by its user");
            account(&s, user).await
        })
        .await,
    )
}

/// After a change made here, this instance refuses the user's old tokens at once; the
/// others within a poll ([`super::revocation`]).
async fn refreshed(s: &AppState) {
    if let Err(e) = s.revocations.refresh(&s.pool).await {
        tracing::warn!(error = %e, "could not reload revoked tokens after a user change");
    }
}

/// The changes an admin makes to an account: the last segment of its path.
const CHANGES: [&str; 4] = ["disable", "enable", "role", "password"];

/// One change to the account named in the path (admin), `POST /users/{user}/{change}`:
/// `disable` (no log-in, tokens refused), `enable`, `role` (tokens in the old role
/// refused) or `password` (tokens refused). Answers with the account as it now stands.
///
/// An admin may not change their own account this way: a lab is never left without the
/// admin who made the change, nobody raises their own access, and a password is changed
/// by its user only with the current one (`POST /auth/password`).
pub async fn change_account(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((raw, change)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    if !CHANGES.contains(&change.as_str()) {
        return Err(Problem::not_found(format!(
            "no such resource: /users/{raw}/{change}"
        )));
    }
    caller.require(Action::ManageUsers)?;
    let user = id(&raw, ActorId::parse, "user")?;
    if caller.actor.id == user {
        return Err(Problem::conflict(
            "own-account",
            "Not on your own account",
            "another admin must change your own account; change your own password with POST /auth/password, giving the current one",
        ));
    }
    no_if_match(&headers)?;
    Ok(
        idempotent(&s, &caller, &headers, &body, StatusCode::OK, async {
            match change.as_str() {
                "role" => {
                    let b: RoleBody = parse(&body)?;
                    set_role(&s.pool, &user, b.role, &changed_by(&caller, &b.reason)).await?
                }
                "password" => {
                    let b: PasswordBody = parse(&body)?;
                    let by = changed_by(&caller, &b.reason);
                    reset_password(&s.pool, &user, &b.password, true, &by).await?
                }
                disable_or_enable => {
                    let b: ReasonBody = parse(&body)?;
                    let disable = disable_or_enable == "disable";
                    set_disabled(&s.pool, &user, disable, &changed_by(&caller, &b.reason)).await?
                }
            }
            refreshed(&s).await;
            tracing::info!(user = %user, change, by = %caller.actor.id, "user account changed");
            account(&s, &user).await
        })
        .await,
    )
}
