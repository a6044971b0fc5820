//! Extractors: handlers never parse headers or raw bodies themselves.

use axum::extract::rejection::JsonRejection;
use axum::extract::Query;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use serde::de::DeserializeOwned;
use tidings_auth::{device, TokenError};
use tidings_store::DeviceGrant;

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

/// The authenticated caller: a valid, unexpired access JWT whose session is not
/// revoked, or a live device credential's secret.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub session_id: String,
    /// Set when the caller is a device or bot using a device credential.
    pub device: Option<DeviceGrant>,
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
        if device::is_secret(token) {
            let Some(credential) = state
                .store
                .device_credential_by_secret(&device::secret_hash(token))
                .await?
            else {
                return Err(ApiError::unauthorized(
                    "invalid_token",
                    "unknown or revoked device credential",
                ));
            };
            device_may(&credential.grant, &parts.method, parts.uri.path())?;
            return Ok(AuthUser {
                user_id: credential.user_id,
                session_id: credential.id,
                device: Some(credential.grant),
            });
        }
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
            device: None,
        })
    }
}

/// What a device credential may do over REST. Account management (the profile,
/// deleting the account, other credentials) needs a login: a leaked device secret must
/// not be able to take the account over. A credential limited to some conversations or
/// to one direction reaches only those conversations' routes, reading with GET if it
/// may receive and writing otherwise if it may send.
fn device_may(grant: &DeviceGrant, method: &Method, path: &str) -> Result<(), ApiError> {
    let account = path.starts_with("/v1/me/devices")
        || (path == "/v1/me" && method != Method::GET)
        || path.starts_with("/v1/auth/");
    if account {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "credential_scope",
            "a device credential cannot manage the account; log in",
        ));
    }
    if grant.is_full() {
        return Ok(());
    }
    let reading = method == Method::GET || method == Method::HEAD;
    let direction = if reading {
        grant.can_receive
    } else {
        grant.can_send
    };
    let conv = path
        .strip_prefix("/v1/conversations/")
        .map(|rest| rest.split('/').next().unwrap_or(rest));
    match conv {
        Some(conv) if direction && grant.covers(conv) => Ok(()),
        // The uniform answer for a conversation one may not see.
        Some(_) if direction => Err(ApiError::not_found("no such conversation")),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "credential_scope",
            "this device credential is limited to some conversations or to one direction",
        )),
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
