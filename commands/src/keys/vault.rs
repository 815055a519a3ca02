//! The key vault: one data key per patient, wrapped by the KEK, and everything done
//! with it — sealing identity into events, opening it again, erasing it for good.
//!
//! Data keys are 256-bit AES-GCM keys in `patient_keys` (migration 0009), created on a
//! patient's first order. Erasure sets the wrapped key to NULL (a trigger forbids bringing
//! it back): every [`Sealed`] value of that patient, in any event, snapshot or Kafka
//! message, can then only be reported as erased. The MRN → pseudonymous patient id index
//! holds HMAC-SHA-256 of the MRN, never the MRN, and loses the patient's row on erasure.
//! Nothing is cached: an erasure is effective for every process at once.
//!
//! Each wrapped key names the KEK that wrapped it (`kek_id`). The vault holds the current
//! KEK and, while a rotation is under way, the previous one ([`Keks`]): it opens a key
//! with whichever KEK its row names and wraps new keys with the current one only.

use super::kek::KeyEncryptionKey;
use super::KeyError;
use crate::connection::connection;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use lis_domain::ids::PatientId;
use lis_domain::patient::Mrn;
use lis_domain::sealed::{Sealed, SealedKind};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use uuid::Uuid;
use zeroize::Zeroizing;

/// A sealed value, opened: the value, or the fact that its patient was erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened<T> {
    Clear(T),
    Erased,
}

/// Where a patient's data key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Erased { at: chrono::DateTime<chrono::Utc> },
}

/// Seals values of one patient under their data key (see [`PatientVault::sealer`]).
pub struct Sealer {
    patient: PatientId,
    cipher: Aes256Gcm,
}

impl Sealer {
    /// Seals `value` (as JSON): a fresh random nonce, the patient and kind as associated
    /// data.
    pub fn seal<T: Serialize>(&self, kind: SealedKind, value: &T) -> Result<Sealed, KeyError> {
        let plain = Zeroizing::new(serde_json::to_vec(value).map_err(|e| KeyError::Corrupt {
            what: kind.as_str(),
            patient: self.patient.to_string(),
            reason: e.to_string(),
        })?);
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &sealed_aad(kind, self.patient),
                },
            )
            .map_err(|e| KeyError::Unwrap(e.to_string()))?;
        Ok(Sealed {
            kind,
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        })
    }
}

pub struct PatientVault {
    pool: PgPool,
    keks: Keks,
    index_key: Zeroizing<Vec<u8>>,
}

/// The KEKs a process holds: the current one, which wraps every new key, and during a
/// rotation (`lisledger keys rotate`) the previous one, which still opens the keys not
/// yet re-wrapped.
#[derive(Clone)]
pub struct Keks {
    current: Arc<dyn KeyEncryptionKey>,
    previous: Option<Arc<dyn KeyEncryptionKey>>,
}

impl Keks {
    /// The current KEK alone.
    pub fn new(current: Arc<dyn KeyEncryptionKey>) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// The current KEK and the previous one. Refused when they are the same key.
    pub fn rotating(
        current: Arc<dyn KeyEncryptionKey>,
        previous: Arc<dyn KeyEncryptionKey>,
    ) -> Result<Self, KeyError> {
        if current.id() == previous.id() {
            return Err(KeyError::BadKek(format!(
                "the previous key-encryption key is the current one ({})",
                current.id()
            )));
        }
        Ok(Self {
            current,
            previous: Some(previous),
        })
    }

    /// The KEK that wraps every new key.
    pub fn current(&self) -> &dyn KeyEncryptionKey {
        self.current.as_ref()
    }

    /// The KEK being retired, during a rotation.
    pub fn previous(&self) -> Option<&dyn KeyEncryptionKey> {
        self.previous.as_deref()
    }

    /// The KEK whose id a row names, or why none of ours is it.
    pub fn by_id(&self, stored: &str) -> Result<&dyn KeyEncryptionKey, KeyError> {
        std::iter::once(self.current())
            .chain(self.previous())
            .find(|k| k.id() == stored)
            .ok_or_else(|| KeyError::WrongKek {
                configured: self.ids(),
                stored: stored.to_string(),
            })
    }

    /// `local:…`, or `local:… (previous local:…)`.
    fn ids(&self) -> String {
        match self.previous() {
            Some(p) => format!("{} (previous {})", self.current.id(), p.id()),
            None => self.current.id().to_string(),
        }
    }
}

fn random_key() -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut_slice());
    key
}

pub(crate) fn patient_key_aad(patient: PatientId) -> Vec<u8> {
    format!("lisledger/v1/patient-key/{patient}").into_bytes()
}

fn sealed_aad(kind: SealedKind, patient: PatientId) -> Vec<u8> {
    format!("lisledger/v1/{}/{patient}", kind.as_str()).into_bytes()
}

impl PatientVault {
    /// Opens the vault with `kek`, refusing a KEK other than the one this ledger's keys
    /// are wrapped with. On a new ledger it creates the check value and the index key.
    pub async fn connect(pool: PgPool, kek: Arc<dyn KeyEncryptionKey>) -> Result<Self, KeyError> {
        Self::connect_with(pool, Keks::new(kek)).await
    }

    /// [`PatientVault::connect`] with the previous KEK too, during a rotation: the
    /// ledger's keys may be wrapped by either.
    pub async fn connect_with(pool: PgPool, keks: Keks) -> Result<Self, KeyError> {
        ledger_key(&pool, &keks, "kek-check").await?;
        let index_key = ledger_key(&pool, &keks, "mrn-index").await?;
        if let Some(previous) = keks.previous() {
            let in_use: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT FROM ledger_keys WHERE kek_id = $1)
                     OR EXISTS (SELECT FROM patient_keys WHERE kek_id = $1 AND wrapped_key IS NOT NULL)",
            )
            .bind(previous.id())
            .fetch_one(&pool)
            .await?;
            if !in_use {
                tracing::warn!(
                    previous = previous.id(),
                    "the previous key-encryption key wraps no key any more: unset LIS_KEK_PREVIOUS so that the retired key is not held"
                );
            }
        }
        Ok(Self {
            pool,
            keks,
            index_key,
        })
    }

    /// The index's HMAC of `mrn`.
    fn mrn_digest(&self, mrn: &Mrn) -> Result<Vec<u8>, KeyError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.index_key)
            .map_err(|e| KeyError::BadKek(e.to_string()))?;
        mac.update(mrn.as_str().as_bytes());
        Ok(mac.finalize().into_bytes().to_vec())
    }

    /// The pseudonymous patient id of `mrn`, if a patient has it (none is made: a look-up
    /// by MRN, as a clinician's system asks for its patient's results).
    pub async fn find_pseudonym(&self, mrn: &Mrn) -> Result<Option<PatientId>, KeyError> {
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT patient_id FROM patient_pseudonyms WHERE mrn_hmac = $1")
                .bind(self.mrn_digest(mrn)?)
                .fetch_optional(&mut *connection(&self.pool).await?)
                .await?;
        Ok(id.map(PatientId::from_uuid))
    }

    /// The pseudonymous patient id of `mrn`, created on first use. Safe under concurrency:
    /// two first orders for one MRN get the same id.
    pub async fn pseudonym(&self, mrn: &Mrn) -> Result<PatientId, KeyError> {
        let digest = self.mrn_digest(mrn)?;
        // One round trip: insert unless present, and return the id either way. (A row
        // committed by a racing first order while this statement ran is read again.)
        let mut id: Option<Uuid> = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO patient_pseudonyms (mrn_hmac, patient_id) VALUES ($1, $2)
                          ON CONFLICT (mrn_hmac) DO NOTHING RETURNING patient_id)
             SELECT patient_id FROM ins
             UNION ALL SELECT patient_id FROM patient_pseudonyms WHERE mrn_hmac = $1 LIMIT 1",
        )
        .bind(&digest)
        .bind(Uuid::new_v4())
        .fetch_optional(&mut *connection(&self.pool).await?)
        .await?;
        if id.is_none() {
            id =
                sqlx::query_scalar("SELECT patient_id FROM patient_pseudonyms WHERE mrn_hmac = $1")
                    .bind(&digest)
                    .fetch_optional(&mut *connection(&self.pool).await?)
                    .await?;
        }
        let id = id.ok_or_else(|| {
            KeyError::UnknownPatient(format!(
                "pseudonym of MRN (hmac {})",
                hex::encode(&digest[..8])
            ))
        })?;
        Ok(PatientId::from_uuid(id))
    }

    /// Whether the patient has a key, and whether it was erased; `None` for a patient the
    /// ledger never sealed anything for.
    pub async fn status(&self, patient: PatientId) -> Result<Option<KeyStatus>, KeyError> {
        let row = sqlx::query("SELECT erased_at FROM patient_keys WHERE patient_id = $1")
            .bind(patient.as_uuid())
            .fetch_optional(&mut *connection(&self.pool).await?)
            .await?;
        Ok(row.map(
            |r| match r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("erased_at") {
                Some(at) => KeyStatus::Erased { at },
                None => KeyStatus::Active,
            },
        ))
    }

    /// The patient's data key, created on first use; `None` once erased.
    async fn data_key(
        &self,
        patient: PatientId,
        create: bool,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        let aad = patient_key_aad(patient);
        let read = || async {
            sqlx::query("SELECT kek_id, wrapped_key FROM patient_keys WHERE patient_id = $1")
                .bind(patient.as_uuid())
                .fetch_optional(&mut *connection(&self.pool).await?)
                .await
        };
        let mut row = read().await?;
        if row.is_none() && create {
            // The patient's first sealed value: make their key (a KEK call, so only on a
            // miss; of racing first orders one insert wins and all read the winner).
            let kek = self.keks.current();
            let wrapped = kek.wrap(&random_key(), &aad).await?;
            sqlx::query(
                "INSERT INTO patient_keys (patient_id, kek_id, wrapped_key) VALUES ($1, $2, $3)
                 ON CONFLICT (patient_id) DO NOTHING",
            )
            .bind(patient.as_uuid())
            .bind(kek.id())
            .bind(&wrapped)
            .execute(&mut *connection(&self.pool).await?)
            .await?;
            row = read().await?;
        }
        let row = row.ok_or_else(|| KeyError::UnknownPatient(patient.to_string()))?;
        let Some(wrapped) = row.get::<Option<Vec<u8>>, _>("wrapped_key") else {
            return Ok(None);
        };
        let stored: String = row.get("kek_id");
        Ok(Some(
            self.keks.by_id(&stored)?.unwrap(&wrapped, &aad).await?,
        ))
    }

    /// A sealer for the patient's values, with their data key (created if this is their
    /// first). Refused for an erased patient.
    pub async fn sealer(&self, patient: PatientId) -> Result<Sealer, KeyError> {
        let key = self
            .data_key(patient, true)
            .await?
            .ok_or_else(|| KeyError::Erased(patient.to_string()))?;
        Ok(Sealer {
            patient,
            cipher: Aes256Gcm::new_from_slice(&key).map_err(|e| KeyError::Unwrap(e.to_string()))?,
        })
    }

    /// Opens a sealed value of `patient`: the value, or [`Opened::Erased`] once the key is
    /// destroyed. A value that does not open under a live key is an error, never garbage.
    pub async fn open<T: DeserializeOwned>(
        &self,
        patient: PatientId,
        sealed: &Sealed,
    ) -> Result<Opened<T>, KeyError> {
        let corrupt = |reason: String| KeyError::Corrupt {
            what: sealed.kind.as_str(),
            patient: patient.to_string(),
            reason,
        };
        let key = match self.data_key(patient, false).await {
            Ok(Some(key)) => key,
            Ok(None) => return Ok(Opened::Erased),
            Err(KeyError::UnknownPatient(_)) => {
                return Err(corrupt("the patient has no data key".into()))
            }
            Err(e) => return Err(e),
        };
        let nonce = STANDARD
            .decode(&sealed.nonce)
            .map_err(|e| corrupt(format!("nonce: {e}")))?;
        if nonce.len() != 12 {
            return Err(corrupt("nonce is not 12 bytes".into()));
        }
        let ciphertext = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|e| corrupt(format!("ciphertext: {e}")))?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|e| corrupt(e.to_string()))?;
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &sealed_aad(sealed.kind, patient),
                    },
                )
                .map_err(|_| corrupt("authentication failed".into()))?,
        );
        serde_json::from_slice(&plain)
            .map(Opened::Clear)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Destroys the patient's data key and their pseudonym-index row, in one transaction.
    /// Returns whether a live key was destroyed (false: already erased). Idempotent.
    pub async fn erase(&self, patient: PatientId) -> Result<bool, KeyError> {
        let mut conn = connection(&self.pool).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let destroyed = sqlx::query(
            "UPDATE patient_keys SET wrapped_key = NULL, erased_at = clock_timestamp()
              WHERE patient_id = $1 AND erased_at IS NULL",
        )
        .bind(patient.as_uuid())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM patient_pseudonyms WHERE patient_id = $1")
            .bind(patient.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(destroyed > 0)
    }
}

pub(crate) fn ledger_key_aad(name: &str) -> Vec<u8> {
    format!("lisledger/v1/ledger-key/{name}").into_bytes()
}

/// A key of the ledger itself (`kek-check`, `mrn-index`), created on first use (wrapped
/// by the current KEK), opened with the KEK its row names.
async fn ledger_key(
    pool: &PgPool,
    keks: &Keks,
    name: &str,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let aad = ledger_key_aad(name);
    let read = || {
        sqlx::query("SELECT kek_id, wrapped FROM ledger_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
    };
    let row = match read().await? {
        Some(row) => row,
        None => {
            // A new ledger: make the key (racing starts: one insert wins).
            let kek = keks.current();
            let wrapped = kek.wrap(&random_key(), &aad).await?;
            sqlx::query(
                "INSERT INTO ledger_keys (name, kek_id, wrapped) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(kek.id())
            .bind(&wrapped)
            .execute(pool)
            .await?;
            read()
                .await?
                .ok_or_else(|| KeyError::Unwrap(format!("ledger key {name} vanished")))?
        }
    };
    let stored: String = row.get("kek_id");
    let kek = keks.by_id(&stored)?;
    kek.unwrap(&row.get::<Vec<u8>, _>("wrapped"), &aad)
        .await
        .map_err(|e| KeyError::Unwrap(format!("ledger key {name} under {stored} is damaged: {e}")))
}
