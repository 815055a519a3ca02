//! KEK rotation: every key the ledger keeps wrapped (its own and each patient's data key)
//! re-wrapped from the previous key-encryption key to the current one.
//!
//! Only the wrapping changes. The data keys themselves, so every sealed value in the
//! events, and the pseudonym index's HMAC key, so every pseudonym, stay as they were; the
//! hash chains are untouched. Each row names the KEK that wraps it (`kek_id`) and is
//! re-wrapped in place with a compare-and-set, in batches of their own transactions: a
//! rotation that stops part-way leaves every key readable with the two KEKs and is
//! finished by running it again. Erased patients have no key left to re-wrap.
//! A finished rotation is recorded in the append-only `kek_rotations` (migration 0011).

use super::kek::KeyEncryptionKey;
use super::vault::{ledger_key_aad, patient_key_aad, Keks};
use super::KeyError;
use lis_domain::ids::PatientId;
use sqlx::PgPool;
use uuid::Uuid;

/// Keys re-wrapped per transaction.
pub const ROTATE_BATCH: i64 = 1000;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub from: String,
    pub to: String,
    /// `kek-check` and `mrn-index`, when still wrapped by the previous KEK.
    pub ledger_keys: u64,
    pub patient_keys: u64,
}

/// Who rotated, and why: kept in `kek_rotations`.
#[derive(Debug, Clone)]
pub struct RotationBy<'a> {
    pub actor: &'a str,
    pub reason: &'a str,
}

/// Re-wraps every live key wrapped by `keks`' previous KEK with its current one, `batch`
/// keys a transaction, until none is left (keys a process that still runs with only the
/// previous KEK adds meanwhile are re-wrapped too). Refused, changing nothing, when a key
/// is wrapped by a KEK that is neither. `owner` must be allowed to update the key tables
/// (the owner role).
pub async fn rotate(
    owner: &PgPool,
    keks: &Keks,
    by: RotationBy<'_>,
    batch: i64,
) -> Result<RotationReport, KeyError> {
    let previous = keks.previous().ok_or_else(|| {
        KeyError::BadKek("a rotation needs the previous key-encryption key too".into())
    })?;
    let current = keks.current();
    refuse_foreign_keks(owner, keks).await?;
    let mut report = RotationReport {
        from: previous.id().to_string(),
        to: current.id().to_string(),
        ledger_keys: rewrap_ledger_keys(owner, previous, current).await?,
        patient_keys: 0,
    };
    loop {
        let n = rewrap_patient_keys(owner, previous, current, batch.max(1)).await?;
        if n == 0 {
            break;
        }
        report.patient_keys += n;
        tracing::info!(
            patient_keys = report.patient_keys,
            "keys rotate: patient keys re-wrapped"
        );
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM patient_keys WHERE kek_id = $1 AND wrapped_key IS NOT NULL",
    )
    .bind(previous.id())
    .fetch_one(owner)
    .await?;
    if left > 0 {
        return Err(KeyError::Unfinished(format!(
            "{left} patient keys are still wrapped by {}; run it again",
            previous.id()
        )));
    }
    sqlx::query(
        "INSERT INTO kek_rotations (from_kek_id, to_kek_id, ledger_keys, patient_keys, actor_id, reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&report.from)
    .bind(&report.to)
    .bind(report.ledger_keys as i64)
    .bind(report.patient_keys as i64)
    .bind(by.actor)
    .bind(by.reason)
    .execute(owner)
    .await?;
    Ok(report)
}

/// The live keys per KEK id that is neither of `keks`: a key no rotation here can open.
async fn refuse_foreign_keks(owner: &PgPool, keks: &Keks) -> Result<(), KeyError> {
    let foreign: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kek_id, count(*) FROM (
             SELECT kek_id FROM ledger_keys
             UNION ALL SELECT kek_id FROM patient_keys WHERE wrapped_key IS NOT NULL) k
          WHERE kek_id NOT IN ($1, $2)
          GROUP BY kek_id ORDER BY kek_id",
    )
    .bind(keks.current().id())
    .bind(keks.previous().map(|p| p.id()).unwrap_or_default())
    .fetch_all(owner)
    .await?;
    match foreign.first() {
        None => Ok(()),
        Some((id, n)) => Err(KeyError::WrongKek {
            configured: format!(
                "{} and the previous {} ({n} keys are wrapped by neither)",
                keks.current().id(),
                keks.previous().map(|p| p.id()).unwrap_or_default()
            ),
            stored: id.clone(),
        }),
    }
}

/// The ledger's own keys, in one transaction.
async fn rewrap_ledger_keys(
    owner: &PgPool,
    previous: &dyn KeyEncryptionKey,
    current: &dyn KeyEncryptionKey,
) -> Result<u64, KeyError> {
    let mut tx = owner.begin().await?;
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT name, wrapped FROM ledger_keys WHERE kek_id = $1 ORDER BY name FOR UPDATE",
    )
    .bind(previous.id())
    .fetch_all(&mut *tx)
    .await?;
    for (name, wrapped) in &rows {
        let aad = ledger_key_aad(name);
        let key = previous.unwrap(wrapped, &aad).await?;
        sqlx::query("UPDATE ledger_keys SET kek_id = $2, wrapped = $3 WHERE name = $1")
            .bind(name)
            .bind(current.id())
            .bind(current.wrap(&key, &aad).await?)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Up to `batch` patient keys, in one transaction; how many were re-wrapped.
async fn rewrap_patient_keys(
    owner: &PgPool,
    previous: &dyn KeyEncryptionKey,
    current: &dyn KeyEncryptionKey,
    batch: i64,
) -> Result<u64, KeyError> {
    let mut tx = owner.begin().await?;
    // Locked: an erasure of one of these waits for the commit, then destroys the
    // re-wrapped key.
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT patient_id, wrapped_key FROM patient_keys
          WHERE kek_id = $1 AND wrapped_key IS NOT NULL
          ORDER BY patient_id LIMIT $2 FOR UPDATE",
    )
    .bind(previous.id())
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut rewrapped = Vec::with_capacity(rows.len());
    for (id, wrapped) in &rows {
        let aad = patient_key_aad(PatientId::from_uuid(*id));
        let key = previous.unwrap(wrapped, &aad).await.map_err(|e| {
            KeyError::Unwrap(format!("patient {id}'s key under {}: {e}", previous.id()))
        })?;
        ids.push(*id);
        rewrapped.push(current.wrap(&key, &aad).await?);
    }
    let updated = sqlx::query(
        "UPDATE patient_keys p SET kek_id = $2, wrapped_key = u.wrapped
           FROM unnest($1::uuid[], $3::bytea[]) AS u(patient_id, wrapped)
          WHERE p.patient_id = u.patient_id AND p.kek_id = $4",
    )
    .bind(&ids)
    .bind(current.id())
    .bind(&rewrapped)
    .bind(previous.id())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(updated)
}
