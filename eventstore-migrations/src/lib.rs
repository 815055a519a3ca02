//! Versioned SQL migrations of the event store and catalogue, and the database bootstrap.
//!
//! Two roles keep the audit trail honest: the owner role (`lisledger_owner`) owns every
//! table and runs the migrations; the application role (`lisledger_app`) that the ledger
//! connects as may only INSERT and SELECT the events. [`bootstrap`] creates both roles and
//! the database (as a superuser, once per cluster or per test database); [`migrate`] then
//! applies `migrations/*.sql` in order, as the owner.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;

/// The embedded migrations, in version order.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Owns the schema; runs migrations.
pub const OWNER_ROLE: &str = "lisledger_owner";
/// What the ledger connects as: INSERT and SELECT on the events, nothing more.
pub const APP_ROLE: &str = "lisledger_app";

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("database name `{0}` must be 1 to 63 lower-case letters, digits or underscores")]
    BadDatabaseName(String),
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn check_name(name: &str) -> Result<(), MigrationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(MigrationError::BadDatabaseName(name.to_string()))
    }
}

async fn admin_connection(admin_url: &str) -> Result<PgConnection, MigrationError> {
    let options = PgConnectOptions::from_str(admin_url)
        .map_err(|e| MigrationError::BadUrl(e.to_string()))?
        .log_statements(tracing::log::LevelFilter::Debug);
    Ok(options.connect().await?)
}

/// Creates the owner and application roles (if missing) and the database `database`
/// owned by the owner role (if missing). Needs a superuser (or CREATEROLE + CREATEDB)
/// connection. Safe to run concurrently and repeatedly.
pub async fn bootstrap(admin_url: &str, database: &str) -> Result<(), MigrationError> {
    check_name(database)?;
    let mut conn = admin_connection(admin_url).await?;
    // Serialise concurrent bootstraps (parallel tests) on one cluster-wide lock.
    sqlx::query("SELECT pg_advisory_lock(7302415)")
        .execute(&mut conn)
        .await?;
    let result = async {
        for role in [OWNER_ROLE, APP_ROLE] {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                    .bind(role)
                    .fetch_one(&mut conn)
                    .await?;
            if !exists {
                sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
                    .execute(&mut conn)
                    .await?;
            }
        }
        // To see when other roles' transactions began: the auditors' pages by time stop
        // before the oldest one still running (`api/src/http/settled.rs`). Read-only
        // statistics; granted on any run that finds it missing, for clusters made before
        // it. A bootstrap role that may not grant it (CREATEROLE without ADMIN OPTION on
        // it, PostgreSQL 16 on) warns instead: `serve` then says so too.
        let granted: bool =
            sqlx::query_scalar("SELECT pg_has_role($1, 'pg_read_all_stats', 'USAGE')")
                .bind(APP_ROLE)
                .fetch_one(&mut conn)
                .await?;
        if !granted {
            let grant = sqlx::query(&format!("GRANT pg_read_all_stats TO {APP_ROLE}"))
                .execute(&mut conn)
                .await;
            match grant {
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                    tracing::warn!(
                        "could not grant pg_read_all_stats to {APP_ROLE} ({e}): grant it as a \
                         superuser, or the auditors' pages by time answer 503 while another \
                         role's session is connected"
                    );
                }
                other => {
                    other?;
                }
            }
        }
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query(&format!(
                "CREATE DATABASE {database} OWNER {OWNER_ROLE} ENCODING 'UTF8'"
            ))
            .execute(&mut conn)
            .await?;
            sqlx::query(&format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"))
                .execute(&mut conn)
                .await?;
            // CREATE: the read models' schemas. Migration 0005 grants it as well, but a
            // database restored from a dump gets it only here: pg_dump does not carry
            // database privileges (docs/reliability.md, backup drill).
            sqlx::query(&format!(
                "GRANT CONNECT, TEMPORARY, CREATE ON DATABASE {database} TO {APP_ROLE}"
            ))
            .execute(&mut conn)
            .await?;
        }
        Ok::<(), MigrationError>(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock(7302415)")
        .execute(&mut conn)
        .await?;
    result
}

/// Sets the login passwords of the owner and application roles (for deployments that
/// authenticate by password; the local cluster trusts loopback and needs none).
pub async fn set_passwords(
    admin_url: &str,
    owner: Option<&str>,
    app: Option<&str>,
) -> Result<(), MigrationError> {
    let mut conn = admin_connection(admin_url).await?;
    for (role, password) in [(OWNER_ROLE, owner), (APP_ROLE, app)] {
        if let Some(p) = password {
            let statement: String = sqlx::query_scalar(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
            )
            .bind(role)
            .bind(p)
            .fetch_one(&mut conn)
            .await?;
            sqlx::query(&statement).execute(&mut conn).await?;
        }
    }
    conn.close().await?;
    Ok(())
}

/// Drops a database (used by tests to clean up their own databases).
pub async fn drop_database(admin_url: &str, database: &str) -> Result<(), MigrationError> {
    check_name(database)?;
    let mut conn = admin_connection(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Applies every pending migration. Run as the owner role.
pub async fn migrate(owner_pool: &PgPool) -> Result<(), MigrationError> {
    MIGRATOR.run(owner_pool).await?;
    Ok(())
}
