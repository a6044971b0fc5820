//! tidings-rest: the HTTP API, built like axum's examples: an [`AppState`] of shared
//! handles, one router module per resource under [`routes`], extractors that turn a
//! bearer token into the caller's identity ([`extract::AuthUser`]) and a JSON body into
//! a typed value with typed errors ([`extract::ApiJson`]), and one error type
//! ([`error::ApiError`]) that renders every failure as
//! `{"error":{"code":"…","message":"…"}}` with the right status.

pub mod error;
pub mod extract;
pub mod routes;
mod state;
pub mod uploads;

pub use state::AppState;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tidings_core::protocol::limits::MAX_HTTP_JSON_BYTES;
use tower_http::trace::TraceLayer;

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(routes::health::router())
        .nest("/v1/auth", routes::auth::router())
        .nest("/v1/me", routes::me::router())
        .nest("/v1/conversations", routes::conversations::router())
        .nest("/v1/sync", routes::sync::router())
        .merge(routes::uploads::router())
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_HTTP_JSON_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
