//! Extractors: handlers never parse headers or raw bodies themselves.

use axum::extract::rejection::JsonRejection;
use axum::extract::Query;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use tidings_auth::TokenError;

use crate::error::{is_body_timeout, ApiError};
use crate::state::AppState;

/// A JSON body whose failures are typed API errors: unreadable JSON is 400 `malformed`,
/// well-formed JSON of the wrong shape 422 `invalid`, a body over the limit 413
/// `too_large`, a missing JSON content type 415, a body that stopped arriving 408
/// `timeout`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::malformed(e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send Content-Type: application/json",
                ),
                JsonRejection::BytesRejection(e) if is_body_timeout(e) => ApiError::body_timeout(),
                JsonRejection::BytesRejection(_)
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the request body is over the size limit",
                    )
                }
                _ => ApiError::malformed(rejection.body_text()),
            }),
        }
    }
}

/// The authenticated caller: a valid, unexpired access JWT whose session is not revoked.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub session_id: String,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("unauthorized", "send Authorization: Bearer <access token>")
        })?;
        let claims = state.keys.verify_access(token).map_err(|e| match e {
            TokenError::Expired => ApiError::unauthorized("token_expired", e.to_string()),
            _ => ApiError::unauthorized("invalid_token", e.to_string()),
        })?;
        if !state.store.session_active(&claims.sid).await? {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "this session has ended; log in again",
            ));
        }
        Ok(AuthUser {
            user_id: claims.sub,
            session_id: claims.sid,
        })
    }
}

/// The bearer token of the request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Query parameters whose failures are 422 `invalid` with the reason.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::invalid(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::http::StatusCode;
    use futures_util::StreamExt;
    use tower_http::timeout::TimeoutBody;

    use super::*;

    /// A JSON request whose body sends `first` and then nothing, behind the server's
    /// idle body timeout.
    fn stalled_json(first: &'static str) -> Request {
        let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(first))])
            .chain(futures_util::stream::pending());
        let body = Body::new(TimeoutBody::new(
            Duration::from_millis(50),
            Body::from_stream(stalled),
        ));
        Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("request")
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_is_408_with_connection_close() {
        let err =
            match ApiJson::<serde_json::Value>::from_request(stalled_json("{\"a\":"), &()).await {
                Ok(_) => panic!("a stalled body was accepted"),
                Err(e) => e,
            };
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(err.code, "timeout");
        let res = axum::response::IntoResponse::into_response(err);
        assert_eq!(res.headers()[header::CONNECTION], "close");
    }

    #[tokio::test]
    async fn other_body_errors_stay_400() {
        let broken = futures_util::stream::iter([Err::<Bytes, _>(std::io::Error::other("reset"))]);
        let req = Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(broken))
            .expect("request");
        let err = match ApiJson::<serde_json::Value>::from_request(req, &()).await {
            Ok(_) => panic!("a broken body was accepted"),
            Err(e) => e,
        };
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(!axum::response::IntoResponse::into_response(err)
            .headers()
            .contains_key(header::CONNECTION));
    }
}
