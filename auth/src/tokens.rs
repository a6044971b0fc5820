//! Access and refresh tokens.
//!
//! An access token is an HS256 JWT: `sub` (user id), `sid` (session id), `iat`, `exp`,
//! `iss` = "tidings". It is short-lived, because the only way to end it early is for the
//! verifier to ask the store whether its session was revoked; the REST API and the
//! broker both do that. A refresh token is 32 bytes (base64url); the store keeps only
//! its SHA-256, so a database leak does not hand out sessions. The first token of a
//! session is random; each rotation's successor is an HMAC of the token it replaces
//! ([`TokenKeys::successor_refresh_token`]), so the server can hand the same successor
//! again to a client whose refresh reply was lost without ever storing a token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const ISSUER: &str = "tidings";

/// Separates the refresh-successor key from the JWT key derived from the same secret:
/// no HMAC output of one use can stand in for the other.
const REFRESH_KEY_LABEL: &[u8] = b"tidings refresh-token successor v1";

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    /// The session (login) this token belongs to.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired; refresh it")]
    Expired,
    #[error("the access token is not valid")]
    Invalid,
    #[error("could not sign a token: {0}")]
    Signing(String),
}

/// The signing secret and token lifetimes.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Keyed with a key derived from the secret; cloned per successor (cheap, no rehash
    /// of the key).
    refresh_mac: HmacSha256,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").finish_non_exhaustive()
    }
}

/// Shortest secret accepted: HS256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;

impl TokenKeys {
    pub fn new(
        secret: &[u8],
        access_ttl_secs: i64,
        refresh_ttl_secs: i64,
    ) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::Signing(format!(
                "the JWT secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        // Clocks of one deployment agree closely; a long leeway would stretch every token.
        validation.leeway = 5;
        let refresh_key = hmac_sha256(mac_for(secret)?, REFRESH_KEY_LABEL);
        Ok(TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            refresh_mac: mac_for(&refresh_key)?,
            access_ttl_secs,
            refresh_ttl_secs,
        })
    }

    /// A fresh random secret, for a data directory's first start.
    pub fn generate_secret() -> [u8; 48] {
        let mut secret = [0u8; 48];
        rand::Rng::fill(&mut rand::thread_rng(), &mut secret[..]);
        secret
    }

    /// Signs an access token for `user` in `session`, valid from `now` (Unix seconds).
    pub fn issue_access(&self, user: &str, session: &str, now: i64) -> Result<String, TokenError> {
        self.sign(&AccessClaims {
            sub: user.to_owned(),
            sid: session.to_owned(),
            iat: now,
            exp: now + self.access_ttl_secs,
            iss: ISSUER.to_owned(),
        })
    }

    /// Signs arbitrary claims (tests use this to make expired tokens).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// Checks signature, algorithm, issuer and expiry.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

impl TokenKeys {
    /// The refresh token that replaces `old` when it is rotated: the same for the same
    /// `old` and secret, so a retried refresh can be answered with the token its lost
    /// reply carried, and unguessable without the secret. Every node of a deployment
    /// shares the secret, so any node can answer the retry.
    pub fn successor_refresh_token(&self, old: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac_sha256(self.refresh_mac.clone(), old.as_bytes()))
    }
}

fn mac_for(key: &[u8]) -> Result<HmacSha256, TokenError> {
    // HMAC takes keys of any length; the error only exists in the generic API.
    HmacSha256::new_from_slice(key).map_err(|e| TokenError::Signing(e.to_string()))
}

fn hmac_sha256(mut mac: HmacSha256, message: &[u8]) -> [u8; 32] {
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A new opaque refresh token, for the start of a session.
pub fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps of a refresh token.
pub fn refresh_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32], 900, 3600).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn issued_tokens_verify() {
        let k = keys();
        let t = k.issue_access("u1", "s1", now()).unwrap();
        let c = k.verify_access(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.sid.as_str()), ("u1", "s1"));
    }

    #[test]
    fn expired_forged_and_garbage_tokens_fail() {
        let k = keys();
        let old = k.issue_access("u1", "s1", now() - 10_000).unwrap();
        assert_eq!(k.verify_access(&old), Err(TokenError::Expired));
        let other = TokenKeys::new(&[8u8; 32], 900, 3600).unwrap();
        let forged = other.issue_access("u1", "s1", now()).unwrap();
        assert_eq!(k.verify_access(&forged), Err(TokenError::Invalid));
        assert_eq!(k.verify_access("garbage"), Err(TokenError::Invalid));
        // alg=none: header {"alg":"none","typ":"JWT"} with the same claims, no signature.
        let claims = forged.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert_eq!(k.verify_access(&none), Err(TokenError::Invalid));
    }

    #[test]
    fn short_secrets_are_refused_and_refresh_hashes_are_stable() {
        assert!(TokenKeys::new(b"short", 1, 1).is_err());
        let t = new_refresh_token();
        assert_eq!(refresh_token_hash(&t), refresh_token_hash(&t));
        assert_ne!(
            refresh_token_hash(&t),
            refresh_token_hash(&new_refresh_token())
        );
    }

    #[test]
    fn successors_are_stable_per_secret_and_look_like_fresh_tokens() {
        let k = keys();
        let t = new_refresh_token();
        let next = k.successor_refresh_token(&t);
        assert_eq!(
            next,
            keys().successor_refresh_token(&t),
            "same secret, same successor"
        );
        assert_ne!(next, t);
        assert_ne!(next, k.successor_refresh_token(&next), "the chain moves on");
        assert_ne!(next, k.successor_refresh_token(&new_refresh_token()));
        let other = TokenKeys::new(&[8u8; 32], 900, 3600).unwrap();
        assert_ne!(
            next,
            other.successor_refresh_token(&t),
            "depends on the secret"
        );
        assert_eq!(next.len(), t.len(), "same shape as a random token");
        assert!(URL_SAFE_NO_PAD.decode(&next).is_ok_and(|b| b.len() == 32));
        // RFC 4231 test case 2, so this is HMAC-SHA256 and not something like it.
        let mac = hmac_sha256(mac_for(b"Jefe").unwrap(), b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
