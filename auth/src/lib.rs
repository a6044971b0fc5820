//! tidings-auth: the credentials both planes check, with no I/O of their own.
//!
//! - [`device`]: long-lived device credential secrets, stored only as hashes.
//! - [`password`]: argon2id hashing (the REST API registers and logs users in).
//! - [`tokens`]: access JWTs, which the REST API issues and both the REST API and the
//!   broker's CONNECT handler verify; and opaque refresh tokens, stored only as hashes.
//!
//! Whether a session was revoked is a question for the store; callers ask it after
//! [`tokens::TokenKeys::verify_access`] succeeds.

pub mod device;
pub mod password;
pub mod tokens;

pub use tokens::{AccessClaims, TokenError, TokenKeys};
