//! Sealed personal data: ciphertext that events carry and the domain cannot read.
//!
//! A patient's identity (and an order's free-text clinical notes) enter the ledger only
//! as a [`Sealed`] value: AES-256-GCM under that patient's own data key, bound to the
//! patient and to what the value is. The keys live outside the event log (the `commands`
//! crate's key vault), so destroying one key erases the patient from every event at once
//! while the events, and their hash chain, stay intact. This crate only carries the bytes.

use serde::{Deserialize, Serialize};

/// What a sealed value holds; part of the authenticated data, so a sealed identity
/// cannot be passed off as a note, or one patient's value as another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SealedKind {
    PatientIdentity,
    ClinicalNotes,
}

impl SealedKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SealedKind::PatientIdentity => "patient_identity",
            SealedKind::ClinicalNotes => "clinical_notes",
        }
    }
}

/// An encrypted value: `AES-256-GCM(key = the patient's data key, nonce,
/// aad = "lisledger/v1/" + kind + "/" + patient id)` of the value's JSON, base64 (standard,
/// padded). The tag is the last 16 bytes of the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sealed {
    pub kind: SealedKind,
    /// 12 random bytes, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
}
