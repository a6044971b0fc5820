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
