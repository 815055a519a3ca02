//! Catalogue import and loading.
//!
//! An import parses the whole file first ([`lis_domain::catalogue::parse_csv`]); any bad
//! cell refuses the file and nothing is written. A good file becomes the next version in
//! one transaction; earlier versions stay, unchangeable, because results name them.

use lis_domain::catalogue::{
    parse_csv, Catalogue, CatalogueFileError, CatalogueVersion, TestDefinition,
};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error(transparent)]
    File(#[from] CatalogueFileError),
    #[error("catalogue version {version} holds an unreadable test {code}: {message}")]
    Corrupt {
        version: i32,
        code: String,
        message: String,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub version: CatalogueVersion,
    pub tests: usize,
}

/// Imports `text` (the catalogue CSV) as the next catalogue version.
pub async fn import(
    pool: &PgPool,
    text: &str,
    source_name: &str,
    imported_by: &str,
) -> Result<ImportReport, CatalogueError> {
    let tests = parse_csv(text)?;
    let digest = Sha256::digest(text.as_bytes()).to_vec();
    let mut tx = pool.begin().await?;
    // One import at a time; the version number is the next free one.
    sqlx::query("SELECT pg_advisory_xact_lock(7302416)")
        .execute(&mut *tx)
        .await?;
    let version: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) + 1 FROM catalogue_versions")
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO catalogue_versions (version, imported_by, source_name, source_sha256, test_count) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(version)
    .bind(imported_by)
    .bind(source_name)
    .bind(&digest)
    .bind(tests.len() as i32)
    .execute(&mut *tx)
    .await?;
    for t in &tests {
        let definition = serde_json::to_value(t).map_err(|e| CatalogueError::Corrupt {
            version,
            code: t.code.to_string(),
            message: e.to_string(),
        })?;
        sqlx::query(
            "INSERT INTO catalogue_tests (version, code, loinc, name, department, definition) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(version)
        .bind(t.code.as_str())
        .bind(&t.loinc)
        .bind(&t.name)
        .bind(&t.department)
        .bind(definition)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(ImportReport {
        version: CatalogueVersion(version),
        tests: tests.len(),
    })
}

/// The newest catalogue version number, if any catalogue was imported.
pub async fn current_version(pool: &PgPool) -> Result<Option<CatalogueVersion>, sqlx::Error> {
    let v: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM catalogue_versions")
        .fetch_one(&mut *crate::connection::connection(pool).await?)
        .await?;
    Ok(v.map(CatalogueVersion))
}

/// Loads one catalogue version.
pub async fn load(pool: &PgPool, version: CatalogueVersion) -> Result<Catalogue, CatalogueError> {
    let rows = sqlx::query(
        "SELECT code, definition FROM catalogue_tests WHERE version = $1 ORDER BY code",
    )
    .bind(version.0)
    .fetch_all(&mut *crate::connection::connection(pool).await?)
    .await?;
    let mut tests = Vec::with_capacity(rows.len());
    for row in rows {
        let code: String = row.get("code");
        let definition: serde_json::Value = row.get("definition");
        let def: TestDefinition =
            serde_json::from_value(definition).map_err(|e| CatalogueError::Corrupt {
                version: version.0,
                code,
                message: e.to_string(),
            })?;
        tests.push(def);
    }
    Ok(Catalogue::new(version, tests))
}
