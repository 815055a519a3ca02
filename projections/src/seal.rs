//! Audit seals: signed checkpoints of the Merkle log of event hashes.
//!
//! In relay order, each event becomes a leaf (`i64be(position) ‖ event hash`); every N
//! events or T seconds the relay signs (origin, tree size, root) with Ed25519 in the C2SP
//! "signed note" form, stores it and publishes it where the database admin cannot rewrite
//! it (a Kafka topic; a file for the quality manager). A checkpoint held outside the
//! database makes even a rewrite of a whole hash chain, or the removal of an aggregate's
//! last events, detectable.

use crate::merkle::{leaf_hash, Hash};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The leaf of one event in the audit log.
pub fn event_leaf(position: i64, event_hash: &[u8]) -> Hash {
    let mut data = Vec::with_capacity(8 + event_hash.len());
    data.extend_from_slice(&position.to_be_bytes());
    data.extend_from_slice(event_hash);
    leaf_hash(&data)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body: origin, size and base64 root, one per line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.tree_size,
            B64.encode(self.root)
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("seal key: {0}")]
    Key(String),
    #[error("signed note is malformed: {0}")]
    Malformed(String),
    #[error("signature does not verify with key {0}")]
    BadSignature(String),
}

/// The 4-byte key id of the signed-note format: SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([0x01]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Signs checkpoints.
pub struct Sealer {
    name: String,
    key: SigningKey,
}

impl Sealer {
    /// A sealer from a base64 32-byte Ed25519 seed.
    pub fn from_base64_seed(name: &str, seed: &str) -> Result<Self, SealError> {
        let bytes = B64
            .decode(seed.trim())
            .map_err(|e| SealError::Key(format!("not base64: {e}")))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::Key("an Ed25519 seed is 32 bytes".into()))?;
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
            return Err(SealError::Key(format!(
                "key name `{name}` must be one word without `+`"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let sig: Signature = self.key.sign(body.as_bytes());
        let mut blob = key_id(&self.name, &self.key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

/// Checks signed notes against one public key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// From `name` and a base64 32-byte public key.
    pub fn from_base64(name: &str, public_key: &str) -> Result<Self, SealError> {
        let bytes = B64
            .decode(public_key.trim())
            .map_err(|e| SealError::Key(format!("not base64: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::Key("an Ed25519 public key is 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| SealError::Key(e.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    pub fn public_key_base64(&self) -> String {
        B64.encode(self.key.as_bytes())
    }

    /// Verifies a signed note and returns the checkpoint it signs.
    pub fn open(&self, note: &str) -> Result<Checkpoint, SealError> {
        let (body, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| SealError::Malformed("no blank line before the signatures".into()))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let origin = lines.next().unwrap_or_default().to_string();
        let tree_size: u64 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| SealError::Malformed("tree size is not a number".into()))?;
        let root: Hash = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SealError::Malformed("root is not a base64 SHA-256 hash".into()))?;
        let wanted = key_id(&self.name, &self.key);
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                continue;
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                continue;
            };
            if name != self.name {
                continue;
            }
            let blob = B64
                .decode(blob)
                .map_err(|_| SealError::Malformed("signature is not base64".into()))?;
            if blob.len() != 68 || blob[..4] != wanted {
                continue;
            }
            let sig = Signature::from_slice(&blob[4..])
                .map_err(|e| SealError::Malformed(e.to_string()))?;
            self.key
                .verify(body.as_bytes(), &sig)
                .map_err(|_| SealError::BadSignature(self.name.clone()))?;
            return Ok(Checkpoint {
                origin,
                tree_size,
                root,
            });
        }
        Err(SealError::BadSignature(self.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "lisledger.example/lab-1".into(),
            tree_size: 42,
            root: leaf_hash(b"root"),
        }
    }

    #[test]
    fn a_signed_note_opens_with_the_right_key_only() {
        let sealer = Sealer::from_base64_seed("lab-1", SEED).unwrap();
        let note = sealer.sign(&checkpoint());
        assert!(note.starts_with("lisledger.example/lab-1\n42\n"));
        assert_eq!(sealer.verifier().open(&note).unwrap(), checkpoint());

        let other = Sealer::from_base64_seed("lab-1", &B64.encode([9u8; 32])).unwrap();
        assert!(other.verifier().open(&note).is_err());
    }

    #[test]
    fn an_altered_note_does_not_verify() {
        let sealer = Sealer::from_base64_seed("lab-1", SEED).unwrap();
        let note = sealer.sign(&checkpoint());
        let bigger = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            sealer.verifier().open(&bigger),
            Err(SealError::BadSignature("lab-1".into()))
        );
        let root = B64.encode(checkpoint().root);
        let other_root = note.replace(&root, &B64.encode(leaf_hash(b"other")));
        assert!(sealer.verifier().open(&other_root).is_err());
        assert!(sealer.verifier().open("garbage").is_err());
    }

    #[test]
    fn keys_are_checked() {
        assert!(Sealer::from_base64_seed("lab-1", "c2hvcnQ=").is_err());
        assert!(Sealer::from_base64_seed("two words", SEED).is_err());
    }
}
