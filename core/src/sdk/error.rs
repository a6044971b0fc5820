//! Typed errors. Every fallible SDK call returns [`SdkError`]; nothing panics across
//! the FFI boundary.

/// Why an SDK call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum SdkError {
    /// The configuration cannot work (bad URL, device id, keep-alive, data path).
    #[error("invalid configuration: {detail}")]
    Config { detail: String },
    /// An argument was rejected before anything was sent (bad id, body too large...).
    #[error("invalid argument ({code}): {detail}")]
    InvalidArgument { code: String, detail: String },
    /// No session: log in or provide tokens first.
    #[error("not logged in")]
    NotLoggedIn,
    /// The server refused the credentials or the session ended; log in again.
    #[error("authentication failed ({code}): {detail}")]
    Auth { code: String, detail: String },
    /// The server could not be reached or the connection broke.
    #[error("network error: {detail}")]
    Network { detail: String },
    /// The TLS handshake failed: the server's certificate is not trusted (not signed by
    /// the pinned CA or a public root, wrong host name, expired) or the other end does
    /// not speak TLS. Not retried into silence: check `pinned_ca_pem` and the URLs.
    #[error("TLS error: {detail}")]
    Tls { detail: String },
    /// The app's secret store (Keychain, Android Keystore, or the SDK's file store)
    /// failed to read, write or delete the session's tokens.
    #[error("secret store error: {detail}")]
    Keystore { detail: String },
    /// The server answered with an error.
    #[error("server error {status} ({code}): {detail}")]
    Server {
        status: u16,
        code: String,
        detail: String,
    },
    /// The local database failed.
    #[error("local storage error: {detail}")]
    Storage { detail: String },
    /// The client was shut down.
    #[error("the client is shut down")]
    Closed,
}

impl SdkError {
    pub(crate) fn config(detail: impl Into<String>) -> Self {
        SdkError::Config {
            detail: detail.into(),
        }
    }
    pub(crate) fn network(detail: impl std::fmt::Display) -> Self {
        SdkError::Network {
            detail: detail.to_string(),
        }
    }
    pub(crate) fn invalid(code: impl Into<String>, detail: impl Into<String>) -> Self {
        SdkError::InvalidArgument {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

/// The rustls error somewhere in `err`'s chain, if any. `io::Error::source()` skips the
/// error it wraps (tokio-rustls reports handshake failures as an `io::Error` around a
/// `rustls::Error`), so each link's wrapped error is looked at too.
pub(crate) fn tls_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(t) = tls_cause(inner) {
                    return Some(t);
                }
            }
        }
        cur = e.source();
    }
    None
}

impl SdkError {
    /// A transport failure: [`SdkError::Tls`] when TLS refused it, else `Network`.
    pub(crate) fn transport(err: &(dyn std::error::Error + 'static)) -> Self {
        match tls_cause(err) {
            Some(detail) => SdkError::Tls { detail },
            None => SdkError::network(err),
        }
    }
}

impl From<reqwest::Error> for SdkError {
    fn from(e: reqwest::Error) -> Self {
        SdkError::transport(&e)
    }
}

/// A foreign secret store that throws something other than [`SdkError`].
impl From<uniffi::UnexpectedUniFFICallbackError> for SdkError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        SdkError::Keystore { detail: e.reason }
    }
}

impl From<rusqlite::Error> for SdkError {
    fn from(e: rusqlite::Error) -> Self {
        SdkError::Storage {
            detail: e.to_string(),
        }
    }
}

impl From<serde_json::Error> for SdkError {
    fn from(e: serde_json::Error) -> Self {
        SdkError::Storage {
            detail: format!("json: {e}"),
        }
    }
}

pub type Result<T, E = SdkError> = std::result::Result<T, E>;
