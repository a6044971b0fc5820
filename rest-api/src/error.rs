//! One error type for every handler. The `code` strings are stable API (clients switch
//! on them); the messages are for people and may change.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tidings_store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 429 with `Retry-After`, from a rate limiter's wait in milliseconds.
    pub fn rate_limited(wait_ms: u64) -> Self {
        let secs = wait_ms.div_ceil(1000).max(1);
        ApiError {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {secs} s"),
            )
        }
    }
    /// The HTTP form of a protocol error code (the worker's refusals, REST sends).
    pub fn from_code(code: tidings_core::protocol::ErrorCode, message: impl Into<String>) -> Self {
        use tidings_core::protocol::ErrorCode as C;
        let status = match code {
            C::Malformed => StatusCode::BAD_REQUEST,
            C::UnknownOp | C::UnsupportedVersion | C::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            C::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            C::NotMember | C::Forbidden => StatusCode::FORBIDDEN,
            C::NotFound => StatusCode::NOT_FOUND,
            C::Conflict => StatusCode::CONFLICT,
            C::Unauthorized => StatusCode::UNAUTHORIZED,
            C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, code.as_str(), message)
    }
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 408 `timeout`: the request body stopped arriving before it was complete.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body stopped arriving; send it again",
        )
    }
    /// A request body that could not be read: 408 when the server's body timeout cut
    /// it off, else 400 `malformed` (the client broke the framing or went away).
    pub fn body_unreadable(err: &(dyn std::error::Error + 'static), what: &str) -> Self {
        if is_body_timeout(err) {
            Self::body_timeout()
        } else {
            Self::malformed(format!("{what}: {err}"))
        }
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it was logged",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            // The rest of the body may still be in flight (a stalled or an oversized
            // one is never read to its end), so the connection cannot carry another
            // request: say so (RFC 9110 §15.5.9) rather than just hang up, or a client
            // reusing it sees its next request fail.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// Whether a body error (anywhere in its chain) is the idle timeout the server wraps
/// every request body in (`tower_http::timeout::TimeoutBody`, see the binary's
/// `http_server`).
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::conflict("conflict", m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::internal()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
