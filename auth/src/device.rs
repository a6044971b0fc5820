//! Device credential secrets: `tdk_` + 32 random bytes in base64url (47 characters).
//!
//! The prefix tells a secret from a JWT at a glance (the broker and the REST API accept
//! either as a password or bearer) and makes a leaked one easy for secret scanners to
//! find. Like refresh tokens, only the SHA-256 is stored: a secret has 256 bits of
//! entropy, so a fast hash is enough and a lookup by hash needs no per-row salt.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

const PREFIX: &str = "tdk_";

/// A fresh secret, shown to its owner once.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether a password or bearer token is a device secret (rather than a JWT).
pub fn is_secret(s: &str) -> bool {
    s.starts_with(PREFIX)
}

/// What the store keeps of a secret.
pub fn secret_hash(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_unique_and_hash_stably() {
        let (a, b) = (new_secret(), new_secret());
        assert!(is_secret(&a) && a.len() == 47, "{a}");
        assert_ne!(a, b);
        assert_eq!(secret_hash(&a), secret_hash(&a));
        assert_ne!(secret_hash(&a), secret_hash(&b));
        assert!(!is_secret("eyJhbGciOiJIUzI1NiJ9.x.y"));
    }
}
