//! KEK rotation: every key the ledger keeps wrapped (its own and each patient's data key)
//! re-wrapped from the previous key-encryption key to the current one.
//!
//! Only the wrapping changes. The data keys themselves, so every sealed value in the
//! events, and the pseudonym index's HMAC key, so every pseudonym, stay as they were; the
//! hash chains are untouched. Each row names the KEK that wraps it (`kek_id`). A patient
//! key is re-wrapped in place by a compare-and-set on its old wrapped value, with no row
//! lock held while the KEKs work (a KMS call may be slow): an erasure that lands first
//! wins, and its key stays destroyed. The ledger's own two keys are re-wrapped under a
//! row lock, in one transaction. Batches commit one by one, each writing its own record
//! to the append-only `kek_rotations` in its transaction, so the record always says what
//! was done, even by a run that stopped part-way; a later run finishes the rotation, and
//! writes its `finished` record once every live key is under the current KEK.

use super::kek::KeyEncryptionKey;
use super::vault::{ledger_key_aad, patient_key_aad, Keks};
use super::KeyError;
use lis_domain::ids::PatientId;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use std::collections::BTreeSet;
use uuid::Uuid;

/// Keys re-wrapped per transaction.
pub const ROTATE_BATCH: i64 = 1000;

/// Held for a whole run, so that two runs never interleave.
const ROTATION_LOCK: i64 = 0x6c69_735f_6b65_6b00; // "lis_kek\0"

/// What a rotation run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The run's id in `kek_rotations`.
    pub run: Uuid,
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

/// One run's context: its id, who and why, the two KEKs.
struct Run<'a> {
    id: Uuid,
    by: RotationBy<'a>,
    previous: &'a dyn KeyEncryptionKey,
    current: &'a dyn KeyEncryptionKey,
}

impl Run<'_> {
    /// Appends a step of this run to `kek_rotations`, in `tx`.
    async fn record(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        step: &str,
        keys: u64,
    ) -> Result<(), KeyError> {
        sqlx::query(
            "INSERT INTO kek_rotations (run_id, step, from_kek_id, to_kek_id, keys, actor_id, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(self.id)
        .bind(step)
        .bind(self.previous.id())
        .bind(self.current.id())
        .bind(keys as i64)
        .bind(self.by.actor)
        .bind(self.by.reason)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Re-wraps every live key wrapped by `keys`' previous KEK with its current one, `batch`
/// keys a transaction, pass after pass until a pass finds none (keys a process still
/// running with only the previous KEK adds meanwhile are re-wrapped too). Refused,
/// changing nothing, when a live key is wrapped by a KEK that is neither, or another
/// run holds the rotation lock. A key the previous KEK cannot open is left as it is and
/// named at the end ([`KeyError::Unfinished`]); so is a run that could not finish.
/// `owner` must be allowed to update the key tables (the owner role).
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
    // The lock's own connection, taken out of the pool: the session lock ends with it on
    // every path (a pooled connection would go back to the pool still holding it).
    let mut lock = owner.acquire().await?.detach();
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('kek_rotations') IS NOT NULL")
        .fetch_one(&mut lock)
        .await?;
    if !has_table {
        return Err(KeyError::NotMigrated);
    }
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(ROTATION_LOCK)
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        return Err(KeyError::RotationRunning);
    }
    let run = Run {
        id: Uuid::new_v4(),
        by,
        previous,
        current,
    };
    let outcome = rotate_locked(owner, keks, &run, batch.max(1)).await;
    // Closing the session releases the lock (dropped unclosed, the session ends too).
    let _ = lock.close().await;
    outcome
}

async fn rotate_locked(
    owner: &PgPool,
    keks: &Keks,
    run: &Run<'_>,
    batch: i64,
) -> Result<RotationReport, KeyError> {
    refuse_foreign_keks(owner, keks).await?;
    let mut report = RotationReport {
        run: run.id,
        from: run.previous.id().to_string(),
        to: run.current.id().to_string(),
        ledger_keys: rewrap_ledger_keys(owner, run).await?,
        patient_keys: 0,
    };
    // Passes in patient id order, each batch after the last one's last key (a scan from
    // the start every batch would pass over every key already re-wrapped). A key added
    // behind the pass by a process still wrapping with the previous KEK is found by the
    // next pass; the rotation ends with a pass that re-wraps none.
    let mut unopened: BTreeSet<Uuid> = BTreeSet::new();
    loop {
        let mut pass = 0;
        let mut after = Uuid::nil();
        while let Some(done) = rewrap_patient_keys(owner, run, after, batch).await? {
            after = done.last;
            pass += done.rewrapped;
            unopened.extend(done.unopened);
            report.patient_keys += done.rewrapped;
            tracing::info!(
                patient_keys = report.patient_keys,
                "keys rotate: patient keys re-wrapped"
            );
        }
        if pass == 0 {
            break;
        }
    }
    if !unopened.is_empty() {
        let shown: Vec<String> = unopened.iter().take(20).map(Uuid::to_string).collect();
        return Err(KeyError::Unfinished(format!(
            "{} patient keys could not be opened with {} and are still wrapped by it (patients {}{}); every other key is re-wrapped",
            unopened.len(),
            run.previous.id(),
            shown.join(", "),
            if unopened.len() > shown.len() { ", …" } else { "" }
        )));
    }
    // Done when every live key is under the current KEK: recorded in the same
    // transaction as that check.
    let mut tx = owner.begin().await?;
    let left: i64 = live_keys_per_kek(&mut tx)
        .await?
        .into_iter()
        .filter(|(id, _)| id != run.current.id())
        .map(|(_, n)| n)
        .sum();
    if left > 0 {
        return Err(KeyError::Unfinished(format!(
            "{left} keys are wrapped by a KEK other than {} (added while it ran?); run it again",
            run.current.id()
        )));
    }
    run.record(&mut tx, "finished", 0).await?;
    tx.commit().await?;
    Ok(report)
}

/// Live keys (the ledger's and patients') per KEK id that wraps them: what the checks
/// before and after a run are worked out from.
async fn live_keys_per_kek(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT kek_id, count(*) FROM (
             SELECT kek_id FROM ledger_keys
             UNION ALL SELECT kek_id FROM patient_keys WHERE wrapped_key IS NOT NULL) k
          GROUP BY kek_id ORDER BY kek_id",
    )
    .fetch_all(conn)
    .await?)
}

/// Refuses a live key wrapped by a KEK that is neither of `keks`: no rotation here can
/// open it.
async fn refuse_foreign_keks(owner: &PgPool, keks: &Keks) -> Result<(), KeyError> {
    let (current, previous) = (keks.current().id(), keks.previous().map(|p| p.id()));
    let found: Vec<String> = live_keys_per_kek(&mut *owner.acquire().await?)
        .await?
        .into_iter()
        .filter(|(id, _)| id != current && Some(id.as_str()) != previous)
        .map(|(id, n)| format!("{n} under {id}"))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(KeyError::ForeignKek {
        current: current.to_string(),
        previous: previous.unwrap_or_default().to_string(),
        found: found.join(", "),
    })
}

/// The ledger's own keys, in one transaction with their record.
async fn rewrap_ledger_keys(owner: &PgPool, run: &Run<'_>) -> Result<u64, KeyError> {
    let mut tx = owner.begin().await?;
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT name, wrapped FROM ledger_keys WHERE kek_id = $1 ORDER BY name FOR UPDATE",
    )
    .bind(run.previous.id())
    .fetch_all(&mut *tx)
    .await?;
    for (name, wrapped) in &rows {
        let aad = ledger_key_aad(name);
        let key = run.previous.unwrap(wrapped, &aad).await.map_err(|e| {
            KeyError::Unwrap(format!(
                "ledger key {name} under {}: {e}",
                run.previous.id()
            ))
        })?;
        sqlx::query("UPDATE ledger_keys SET kek_id = $2, wrapped = $3 WHERE name = $1")
            .bind(name)
            .bind(run.current.id())
            .bind(run.current.wrap(&key, &aad).await?)
            .execute(&mut *tx)
            .await?;
    }
    if !rows.is_empty() {
        run.record(&mut tx, "ledger-keys", rows.len() as u64)
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// What one batch of patient keys did.
struct Batch {
    /// The last patient id read: the next batch starts after it.
    last: Uuid,
    rewrapped: u64,
    /// Keys the previous KEK could not open, left as they are.
    unopened: Vec<Uuid>,
}

/// Up to `batch` live patient keys under the previous KEK after `after`, in patient id
/// order; `None` when none is left. Read without locks, opened and wrapped again, then
/// each written only if its row still holds the wrapped key that was read (an erasure
/// meanwhile wins; every wrapping has its own random nonce, so the bytes name it), in
/// one transaction with the batch's record. The update is driven by the patient ids
/// alone: a `kek_id` condition there once made the planner, misled by statistics taken
/// before the previous run, scan the table for each id (7 s a batch at 36,000 keys).
async fn rewrap_patient_keys(
    owner: &PgPool,
    run: &Run<'_>,
    after: Uuid,
    batch: i64,
) -> Result<Option<Batch>, KeyError> {
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT patient_id, wrapped_key FROM patient_keys
          WHERE patient_id > $3 AND kek_id = $1 AND wrapped_key IS NOT NULL
          ORDER BY patient_id LIMIT $2",
    )
    .bind(run.previous.id())
    .bind(batch)
    .bind(after)
    .fetch_all(owner)
    .await?;
    let Some(&(last, _)) = rows.last() else {
        return Ok(None);
    };
    let mut ids = Vec::with_capacity(rows.len());
    let mut old = Vec::with_capacity(rows.len());
    let mut new = Vec::with_capacity(rows.len());
    let mut unopened = Vec::new();
    for (id, wrapped) in rows {
        let aad = patient_key_aad(PatientId::from_uuid(id));
        match run.previous.unwrap(&wrapped, &aad).await {
            Ok(key) => {
                new.push(run.current.wrap(&key, &aad).await?);
                ids.push(id);
                old.push(wrapped);
            }
            // The key does not open (damaged, or not this KEK's): left, and named.
            Err(e @ KeyError::Unwrap(_)) => {
                tracing::warn!(patient = %id, error = %e, "keys rotate: a patient key does not open with the previous KEK; left as it is");
                unopened.push(id);
            }
            // Anything else (a KMS away) stops the run.
            Err(e) => return Err(e),
        }
    }
    let mut tx = owner.begin().await?;
    let rewrapped = sqlx::query(
        "UPDATE patient_keys p SET kek_id = $2, wrapped_key = u.new
           FROM unnest($1::uuid[], $3::bytea[], $4::bytea[]) AS u(patient_id, old, new)
          WHERE p.patient_id = u.patient_id AND p.wrapped_key = u.old",
    )
    .bind(&ids)
    .bind(run.current.id())
    .bind(&old)
    .bind(&new)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if rewrapped > 0 {
        run.record(&mut tx, "patient-keys", rewrapped).await?;
    }
    tx.commit().await?;
    Ok(Some(Batch {
        last,
        rewrapped,
        unopened,
    }))
}
