//! Who is calling: users with Argon2id password hashes, short-lived JWT bearer tokens,
//! and the permission matrix (docs/security.md).
//!
//! The actor written into every event's metadata comes from the verified token — never
//! from a request body.

use super::problem::Problem;
use super::AppState;
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lis_commands::connection::connection;
use lis_commands::CommandContext;
use lis_domain::actor::{Actor, ActorId, Role};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::net::SocketAddr;
use uuid::Uuid;

/// Token settings.
#[derive(Clone)]
pub struct AuthConfig {
    pub secret: Vec<u8>,
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
    jti: String,
    /// The user's token generation when it was issued ([`super::revocation`]); tokens
    /// made before generations existed are generation 0.
    #[serde(default)]
    generation: i64,
    /// The user's password is temporary: this token may only change it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    password_change_required: bool,
}

/// Issues a token for what a log-in was granted; returns it and its lifetime in seconds.
pub fn issue(config: &AuthConfig, grant: &Grant) -> Result<(String, u64), Problem> {
    let Grant {
        user,
        role,
        generation,
        password_change_required,
    } = grant;
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = Claims {
        sub: user.to_string(),
        role: *role,
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        iat: now,
        exp: now + config.ttl_secs,
        jti: Uuid::new_v4().to_string(),
        generation: *generation,
        password_change_required: *password_change_required,
    };
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&config.secret),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "cannot sign token");
        Problem::internal()
    })?;
    Ok((token, config.ttl_secs))
}

fn verify(config: &AuthConfig, token: &str) -> Result<Claims, Problem> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.leeway = 5;
    decode::<Claims>(
        token,
        &DecodingKey::from_secret(&config.secret),
        &validation,
    )
    .map(|d| d.claims)
    .map_err(|e| Problem::unauthorized(format!("invalid token: {e}")))
}

/// The authenticated caller of a request, with the audit context of its commands.
pub struct Caller {
    pub actor: Actor,
    pub context: CommandContext,
    /// The request's method and path (`POST /results/…/verify`): what an
    /// `Idempotency-Key` is bound to, with the body.
    pub request: String,
    /// The token's user generation and expiry (seconds since the epoch): a long-lived
    /// answer (an event stream) checks them again as it goes.
    pub token: TokenStanding,
}

/// What a verified token says of its own validity.
#[derive(Debug, Clone, Copy)]
pub struct TokenStanding {
    pub generation: i64,
    pub expires: u64,
    /// Its user's password is temporary: the token may only change it.
    pub password_change_required: bool,
}

/// What a log-in grants: a token for this user, role and generation.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user: ActorId,
    pub role: Role,
    pub generation: i64,
    /// The password is temporary (set by another person over the API).
    pub password_change_required: bool,
}

impl Grant {
    /// A grant for a user whose password stands, at generation 0 (tests, tools).
    pub fn standing(user: ActorId, role: Role) -> Self {
        Self {
            user,
            role,
            generation: 0,
            password_change_required: false,
        }
    }
}

impl Caller {
    /// Whether the caller reads only results released to clinicians (the permission
    /// matrix's "read results (clinicians: released only)").
    pub fn released_only(&self) -> bool {
        self.actor.role == Role::Clinician
    }

    /// Refuses the request unless the caller's role may do `action`, and their password
    /// stands (a temporary one allows changing it, nothing else).
    pub fn require(&self, action: Action) -> Result<(), Problem> {
        if self.token.password_change_required && action != Action::ChangeOwnPassword {
            return Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "password-change-required",
                "Change your password first",
            )
            .detail("your password was set by someone else: change it with POST /auth/password, then log in again"));
        }
        if allowed(self.actor.role, action) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "role {} may not {}",
                self.actor.role,
                action.describe()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Problem::unauthorized("send `Authorization: Bearer <token>` (POST /auth/login)")
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            Problem::unauthorized("the Authorization header must be a Bearer token")
        })?;
        let claims = verify(&state.auth, token.trim())?;
        let id = ActorId::parse(&claims.sub)
            .map_err(|_| Problem::unauthorized("the token names no valid user"))?;
        state
            .revocations
            .admit(&state.pool, id.as_str(), claims.generation)
            .await?;
        state.per_user.check(&format!("user:{id}"))?;
        let actor = Actor::new(id, claims.role);
        let mut context = CommandContext::new(actor.clone());
        if let Some(c) = parts
            .headers
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Uuid::parse_str(v).ok())
        {
            context.correlation_id = c;
        }
        context.client_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(Self {
            actor,
            context,
            request: format!("{} {}", parts.method, parts.uri.path()),
            token: TokenStanding {
                generation: claims.generation,
                expires: claims.exp,
                password_change_required: claims.password_change_required,
            },
        })
    }
}

/// What a caller may want to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ManageOrders,
    Collect,
    HandOver,
    HandleSpecimens,
    EnterResults,
    Verify,
    Release,
    NotifyCritical,
    Acknowledge,
    ReadOrders,
    ReadSamples,
    ReadResults,
    ReadWorklists,
    ReadAudit,
    ReadStream,
    ReadAnalytics,
    ErasePatients,
    ManageUsers,
    ReadUsers,
    ChangeOwnPassword,
}

impl Action {
    fn describe(&self) -> &'static str {
        match self {
            Action::ManageOrders => "place or change orders",
            Action::Collect => "collect specimens",
            Action::HandOver => "hand specimens over",
            Action::HandleSpecimens => "receive, reject, aliquot, store or dispose of specimens",
            Action::EnterResults => "record, correct or rerun results",
            Action::Verify => "verify results",
            Action::Release => "authorise, amend or retract results",
            Action::NotifyCritical => "record critical-value notifications",
            Action::Acknowledge => "acknowledge results",
            Action::ReadOrders => "read orders",
            Action::ReadSamples => "read specimens",
            Action::ReadResults => "read results",
            Action::ReadWorklists => "read worklists",
            Action::ReadAudit => "read the audit trail",
            Action::ReadStream => "read the event stream",
            Action::ReadAnalytics => "read analytics",
            Action::ErasePatients => "erase patients",
            Action::ManageUsers => "add users or change their accounts",
            Action::ReadUsers => "read the list of users",
            Action::ChangeOwnPassword => "change a password (system is not a person)",
        }
    }
}

/// The permission matrix (docs/security.md). Auditors read everything and change nothing;
/// clinicians see released results only (the result queries serve released rows to them).
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    match action {
        ManageOrders => matches!(role, Reception | Clinician | Admin),
        Collect => matches!(role, Phlebotomist | Technologist),
        HandOver => matches!(role, Phlebotomist | Technologist | Reception),
        HandleSpecimens => matches!(role, Technologist | Pathologist),
        EnterResults => matches!(role, Technologist | Pathologist),
        Verify => matches!(role, Technologist | Pathologist),
        Release => matches!(role, Pathologist),
        NotifyCritical => matches!(role, Technologist | Pathologist),
        Acknowledge => matches!(role, Clinician),
        ReadOrders | ReadSamples => {
            matches!(
                role,
                Reception | Phlebotomist | Technologist | Pathologist | Clinician | Auditor | Admin
            )
        }
        ReadResults => matches!(role, Technologist | Pathologist | Clinician | Auditor),
        ReadWorklists => matches!(
            role,
            Reception | Phlebotomist | Technologist | Pathologist | Auditor
        ),
        ReadAudit => matches!(role, Auditor),
        ReadStream => matches!(role, Analyst | Auditor),
        ReadAnalytics => matches!(role, Analyst | Auditor | Pathologist | Admin),
        ErasePatients | ManageUsers => matches!(role, Admin),
        ReadUsers => matches!(role, Admin | Auditor),
        ChangeOwnPassword => Role::PEOPLE.contains(&role),
    }
}

/// What a password check found.
pub struct PasswordCheck {
    /// The account named, if there is one (disabled or not).
    pub account: Option<String>,
    /// What the log-in grants, if the password is theirs and they may log in (not
    /// disabled, and a person's role).
    pub granted: Option<Grant>,
    /// The stored hash the password matched, when granted.
    pub granted_hash: Option<String>,
}

/// The account a log-in names: the one of that name as written, else the one whose name
/// differs from it only in case, if there is exactly one (names are unique regardless of
/// case since migration 0013; an older pair is told apart only as written). `None` when
/// the name is no account's.
pub async fn account_named(pool: &PgPool, typed: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT username FROM users WHERE username = $1
         UNION ALL
         (SELECT min(username) FROM users WHERE lower(username) = lower($1)
           HAVING count(*) = 1 AND NOT EXISTS (SELECT FROM users WHERE username = $1))",
    )
    .bind(typed)
    .fetch_optional(&mut *connection(pool).await?)
    .await
}

/// Checks `password` against `user`'s. Always spends the hashing time, so that a wrong
/// user name (or a disabled user) cannot be told from a wrong password by timing.
pub async fn check_password(
    pool: &PgPool,
    user: &str,
    password: &str,
) -> Result<PasswordCheck, sqlx::Error> {
    type Row = (String, String, String, i64, bool, bool);
    let row: Option<Row> = sqlx::query_as(
        "SELECT username, role, password_hash, token_generation, disabled, password_must_change
           FROM users WHERE username = $1",
    )
    .bind(user)
    .fetch_optional(&mut *connection(pool).await?)
    .await?;
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1xXAh2oZ6GBvQFQa9kHppUxiYpnqBwcxyL9M+Kp7dQs";
    let stored = row.as_ref().map_or(DUMMY.to_string(), |r| r.2.clone());
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    let account = row.as_ref().map(|r| r.0.clone());
    let (granted, granted_hash) = match (ok, row) {
        (true, Some((name, role, hash, generation, false, must_change))) => {
            match (ActorId::parse(&name), Role::parse(&role)) {
                // `system` is the ledger itself: no person logs in as it.
                (Ok(user), Ok(role)) if role != Role::System => {
                    let grant = Grant {
                        user,
                        role,
                        generation,
                        password_change_required: must_change,
                    };
                    (Some(grant), Some(hash))
                }
                _ => (None, None),
            }
        }
        _ => (None, None),
    };
    Ok(PasswordCheck {
        account,
        granted,
        granted_hash,
    })
}
