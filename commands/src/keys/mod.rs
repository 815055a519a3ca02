//! Patient keys: what makes erasure possible in an append-only ledger (crypto-shredding).
//!
//! - [`kek`]: the key-encryption key from configuration, behind a trait so that a cloud
//!   KMS can take its place;
//! - [`vault`]: per-patient data keys (wrapped by the KEK, in `patient_keys`), sealing and
//!   opening identities, the MRN pseudonym index, and erasure;
//! - [`rotate`]: re-wrapping every stored key from the previous KEK to the current one.
//!
//! See docs/privacy.md for which fields are sealed and where every field lives.

pub mod kek;
pub mod rotate;
pub mod vault;

pub use kek::{KeyEncryptionKey, LocalKek};
pub use rotate::{rotate, RotationBy, RotationReport};
pub use vault::{Keks, Opened, PatientVault};

/// What went wrong with keys or sealed data.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key-encryption key is configured: set LIS_KEK (base64 of 32 bytes) or LIS_KEK_FILE (a file holding it); `lisledger keys generate` makes one")]
    MissingKek,
    #[error("the key-encryption key is malformed: {0}")]
    BadKek(String),
    #[error("the configured key-encryption key ({configured}) is not the one this ledger's keys are wrapped with ({stored}); set it (and, during a rotation, LIS_KEK_PREVIOUS) before anything is sealed or opened")]
    WrongKek { configured: String, stored: String },
    #[error("keys are wrapped by a key-encryption key that is neither the current ({current}) nor the previous ({previous}): {found}; no rotation from here can open them, and nothing was changed")]
    ForeignKek {
        current: String,
        previous: String,
        found: String,
    },
    #[error("a wrapped key could not be opened with the key-encryption key: {0}")]
    Unwrap(String),
    #[error("sealed {what} of patient {patient} cannot be opened: {reason}")]
    Corrupt {
        what: &'static str,
        patient: String,
        reason: String,
    },
    #[error("patient {0} has been erased; nothing new is sealed for them")]
    Erased(String),
    #[error("patient {0} has no data key")]
    UnknownPatient(String),
    #[error("the key-encryption key rotation is unfinished: {0}")]
    Unfinished(String),
    #[error("another `keys rotate` is running on this database; wait for it to end")]
    RotationRunning,
    #[error("this database has no kek_rotations table yet: run `lisledger migrate` first")]
    NotMigrated,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}
