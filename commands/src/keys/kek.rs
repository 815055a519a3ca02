//! The key-encryption key (KEK): wraps every data key the ledger stores.
//!
//! [`KeyEncryptionKey`] is the seam for a cloud KMS (wrap/unwrap calls over the network);
//! [`LocalKek`] is the built-in one, 32 bytes from configuration, used with AES-256-GCM.
//! A KEK is known by its id (a fingerprint, never the key), stored beside every key it
//! wraps, so that a wrong KEK is named at start-up.

use super::KeyError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Wraps and unwraps data keys. `aad` binds a wrapped key to what it is for.
#[async_trait::async_trait]
pub trait KeyEncryptionKey: Send + Sync {
    /// A stable, non-secret id of this KEK (stored beside what it wraps).
    fn id(&self) -> &str;
    async fn wrap(&self, key: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError>;
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError>;
}

/// A 256-bit KEK held in memory, from `LIS_KEK` / `LIS_KEK_FILE`.
pub struct LocalKek {
    cipher: Aes256Gcm,
    id: String,
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKek").field("id", &self.id).finish()
    }
}

impl LocalKek {
    /// From the base64 (standard) of exactly 32 bytes; surrounding whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|e| KeyError::BadKek(format!("not base64: {e}")))?,
        );
        if bytes.len() != 32 {
            return Err(KeyError::BadKek(format!(
                "it must be 32 bytes (base64 of 44 characters), not {} bytes",
                bytes.len()
            )));
        }
        let digest = Sha256::digest([b"lisledger-kek-id\0".as_slice(), &bytes].concat());
        Ok(Self {
            cipher: Aes256Gcm::new_from_slice(&bytes)
                .map_err(|e| KeyError::BadKek(e.to_string()))?,
            id: format!("local:{}", hex::encode(&digest[..8])),
        })
    }

    /// A fresh random KEK, as base64 (for `lisledger keys generate`).
    pub fn generate() -> String {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        STANDARD.encode(key.as_ref())
    }
}

#[async_trait::async_trait]
impl KeyEncryptionKey for LocalKek {
    fn id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, key: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: key, aad })
            .map_err(|e| KeyError::Unwrap(format!("wrap: {e}")))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if wrapped.len() < 12 + 16 {
            return Err(KeyError::Unwrap("wrapped key too short".into()));
        }
        let (nonce, sealed) = wrapped.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| {
                KeyError::Unwrap("authentication failed (wrong KEK or altered key)".into())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wraps_and_unwraps_and_refuses_another_kek_or_purpose() {
        let kek = LocalKek::from_base64(&LocalKek::generate()).unwrap();
        let other = LocalKek::from_base64(&LocalKek::generate()).unwrap();
        assert_ne!(kek.id(), other.id());
        let wrapped = kek.wrap(b"data key", b"patient/1").await.unwrap();
        assert_eq!(
            kek.unwrap(&wrapped, b"patient/1").await.unwrap().as_slice(),
            b"data key"
        );
        assert!(kek.unwrap(&wrapped, b"patient/2").await.is_err());
        assert!(other.unwrap(&wrapped, b"patient/1").await.is_err());
    }

    #[test]
    fn a_malformed_kek_says_what_is_wrong() {
        let short = LocalKek::from_base64("AAAA").unwrap_err().to_string();
        assert!(short.contains("32 bytes"), "{short}");
        let junk = LocalKek::from_base64("not base64!")
            .unwrap_err()
            .to_string();
        assert!(junk.contains("not base64"), "{junk}");
    }
}
