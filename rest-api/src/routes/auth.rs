//! Accounts and sessions: register, log in, refresh, log out.
//!
//! Every successful register or login opens a session (one per device login) and
//! returns a short-lived access JWT plus a refresh token. Refreshing rotates the refresh
//! token; presenting an already-used one is treated as theft and ends the session,
//! except as a retry: within `refresh_grace_ms` of the rotation, and while its successor
//! is unused, the same successor is returned again (the reply may have been lost).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_auth::{password, tokens};
use tidings_core::protocol::ids::{is_client_id, new_id};
use tidings_core::protocol::limits::{PASSWORD_MAX, PASSWORD_MIN, USERNAME_MAX, USERNAME_MIN};
use tidings_store::{now_ms, NewRefreshToken, NewUser, Rotation, Session, Store, StoreError, User};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::client_addr::ClientAddr;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CredentialsRequest {
    pub username: String,
    pub password: String,
    /// The device this login is for; it becomes the `{device}` of the MQTT client id
    /// `{user}:{device}`. Optional: a session without one can still connect.
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserSummary {
    pub id: String,
    pub username: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokensResponse {
    pub user: UserSummary,
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// Lower-cases and checks a username: 3-32 of `[a-z0-9_.-]`.
fn normalize_username(raw: &str) -> ApiResult<String> {
    let name = raw.trim().to_lowercase();
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&name.len()) || !ok_chars {
        return Err(ApiError::invalid(format!(
            "username must be {USERNAME_MIN}-{USERNAME_MAX} characters of a-z, 0-9, '_', '.', '-'"
        )));
    }
    Ok(name)
}

pub fn check_password(password: &str) -> ApiResult<()> {
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&password.len()) {
        return Err(ApiError::invalid(format!(
            "password must be {PASSWORD_MIN}-{PASSWORD_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_device(device: &Option<String>) -> ApiResult<()> {
    match device {
        Some(d) if !is_client_id(d) => Err(ApiError::invalid(
            "device_id must be 1-64 characters of A-Z, a-z, 0-9, '_', '-'",
        )),
        _ => Ok(()),
    }
}

/// Runs argon2 on the hashing pool, off the async workers.
pub(crate) async fn hashing<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    state.hashing.run(f).await.ok_or_else(|| {
        tracing::error!("the password hashing pool is gone");
        ApiError::internal()
    })
}

fn refresh_token_record(state: &AppState, token: &str) -> NewRefreshToken {
    let now = now_ms();
    NewRefreshToken {
        token_hash: tokens::refresh_token_hash(token),
        created_at: now,
        expires_at: now + state.keys.refresh_ttl_secs * 1000,
    }
}

fn tokens_for(
    state: &AppState,
    user: &User,
    session: &str,
    refresh_token: String,
) -> ApiResult<TokensResponse> {
    let access_token = state
        .keys
        .issue_access(&user.id, session, now_ms() / 1000)
        .map_err(|e| {
            tracing::error!(error = %e, "could not sign an access token");
            ApiError::internal()
        })?;
    Ok(TokensResponse {
        user: UserSummary {
            id: user.id.clone(),
            username: user.username.clone(),
        },
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.keys.access_ttl_secs,
    })
}

/// Opens a session for `user` and returns its first tokens.
async fn open_session(
    state: &AppState,
    user: &User,
    device_id: Option<String>,
) -> ApiResult<TokensResponse> {
    let session = Session {
        id: new_id(),
        user_id: user.id.clone(),
        device_id,
        created_at: now_ms(),
        revoked_at: None,
    };
    let refresh_token = tokens::new_refresh_token();
    state
        .store
        .create_session(&session, &refresh_token_record(state, &refresh_token))
        .await?;
    tokens_for(state, user, &session.id, refresh_token)
}

/// Validates and stores a new account; shared by `POST /v1/auth/register` and the
/// `tidings user create` command.
pub async fn create_account(
    store: &Arc<dyn Store>,
    hashing: &crate::hashing::HashPool,
    username: &str,
    password: &str,
    display_name: Option<String>,
) -> ApiResult<User> {
    let username = normalize_username(username)?;
    check_password(password)?;
    let display_name = crate::display_name::check(display_name.as_deref())?;
    let password = password.to_owned();
    let password_hash = hashing
        .run(move || password::hash(&password))
        .await
        .ok_or_else(ApiError::internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            ApiError::internal()
        })?;
    store
        .create_user(NewUser {
            id: new_id(),
            username,
            display_name,
            password_hash,
            created_at: now_ms(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                ApiError::conflict("username_taken", "that username is taken")
            }
            other => other.into(),
        })
}

/// One token per attempt from this client address (register, login and refresh share
/// it). The address is the client behind a trusted proxy, not the proxy: keyed on the
/// proxy, one client's bad logins would lock everyone out.
async fn limit_attempts(state: &AppState, client: ClientAddr) -> ApiResult<()> {
    crate::state::rate_limit(&state.limits.auth, &client.0.to_string()).await
}

/// Create an account and log in.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = CredentialsRequest,
    responses((status = 201, body = TokensResponse), (status = 409, description = "username_taken"), (status = 422, description = "invalid, invalid_display_name"), (status = 429, description = "rate_limited")))]
pub async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(req): ApiJson<CredentialsRequest>,
) -> ApiResult<(StatusCode, Json<TokensResponse>)> {
    limit_attempts(&state, client).await?;
    check_device(&req.device_id)?;
    let user = create_account(
        &state.store,
        &state.hashing,
        &req.username,
        &req.password,
        req.display_name,
    )
    .await?;
    let tokens = open_session(&state, &user, req.device_id).await?;
    Ok((StatusCode::CREATED, Json(tokens)))
}

/// Log in: opens a session for one device.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = CredentialsRequest,
    responses((status = 200, body = TokensResponse), (status = 401, description = "invalid_credentials"), (status = 403, description = "account_disabled"), (status = 429, description = "rate_limited")))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(req): ApiJson<CredentialsRequest>,
) -> ApiResult<Json<TokensResponse>> {
    limit_attempts(&state, client).await?;
    check_device(&req.device_id)?;
    let wrong = || ApiError::unauthorized("invalid_credentials", "wrong username or password");
    if req.password.len() > PASSWORD_MAX {
        return Err(wrong());
    }
    let found = state
        .store
        .credentials(&req.username.trim().to_lowercase())
        .await?;
    // An unknown username costs the same hashing time as a wrong password.
    let hash = found.as_ref().map_or_else(
        || password::decoy_hash().to_owned(),
        |c| c.password_hash.clone(),
    );
    let password = req.password;
    let matches = hashing(&state, move || password::verify(&password, &hash)).await?;
    match found {
        // Only told after the password matched, so it reveals nothing to a guesser.
        Some(creds) if matches && creds.disabled => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "this account was disabled by an operator",
        )),
        Some(creds) if matches => Ok(Json(
            open_session(&state, &creds.user, req.device_id).await?,
        )),
        _ => Err(wrong()),
    }
}

/// Trade a refresh token for new tokens (the old refresh token is used up). Presenting
/// it again shortly after (`auth.refresh_grace_secs`), before using the new one, returns
/// the same new refresh token: a retry after a lost reply keeps its session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokensResponse), (status = 401, description = "invalid_token or token_reused")))]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokensResponse>> {
    limit_attempts(&state, client).await?;
    // Derived from the presented token, so a retry names the same successor as the
    // rotation whose reply was lost, and the store can recognise it by its hash.
    let new_token = state.keys.successor_refresh_token(&req.refresh_token);
    let rotation = state
        .store
        .rotate_refresh_token(
            &tokens::refresh_token_hash(&req.refresh_token),
            &refresh_token_record(&state, &new_token),
            now_ms(),
            state.refresh_grace_ms,
        )
        .await?;
    let session = match rotation {
        Rotation::Rotated(session) => session,
        Rotation::Replayed(session) => {
            tracing::info!(session = %session.id, "refresh token presented again within the grace window; same successor returned");
            session
        }
        Rotation::Invalid => {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "unknown, expired or revoked refresh token; log in again",
            ))
        }
        Rotation::Reused(session) => {
            tracing::warn!(session = %session.id, user = %session.user_id, "refresh token reused; session revoked");
            return Err(ApiError::unauthorized(
                "token_reused",
                "this refresh token was already used, so the session was ended; log in again",
            ));
        }
    };
    // Disabling revokes the sessions, but a session opened by a login racing the
    // disable is only refused here (the check also covers the account's status).
    if !state.store.session_active(&session.id).await? {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "this session has ended or the account was disabled; log in again",
        ));
    }
    let user =
        state.store.user(&session.user_id).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid_token", "this account no longer exists")
        })?;
    Ok(Json(tokens_for(&state, &user, &session.id, new_token)?))
}

/// Ends the caller's session: its refresh tokens stop working at once, and so do its
/// access tokens, which every verifier checks against the session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "the session ended")), security(("bearer" = [])))]
pub async fn logout(State(state): State<AppState>, auth: AuthUser) -> ApiResult<StatusCode> {
    state
        .store
        .revoke_session(&auth.session_id, now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
