//! tidings-rest: the HTTP API, built like axum's examples: an [`AppState`] of shared
//! handles, one router module per resource under [`routes`], extractors that turn a
//! bearer token into the caller's identity ([`extract::AuthUser`]) and a JSON body into
//! a typed value with typed errors ([`extract::ApiJson`]), and one error type
//! ([`error::ApiError`]) that renders every failure as
//! `{"error":{"code":"…","message":"…"}}` with the right status. Per-address limits key
//! on [`client_addr::ClientAddr`], which believes `X-Forwarded-For` only from
//! configured proxies.

pub mod client_addr;
pub mod display_name;
pub mod error;
pub mod extract;
pub mod hashing;
mod http_metrics;
pub mod openapi;
pub mod routes;
mod state;
pub mod uploads;

pub use state::{rate_limit, ApiLimits, AppState, PushRegistration, ReadinessProbe, TargetCheck};

use axum::extract::DefaultBodyLimit;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use tidings_core::protocol::limits::MAX_HTTP_JSON_BYTES;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// The whole HTTP API, and its OpenAPI document (also served at `/v1/openapi.json`).
/// The broker hooks are part of it when `state.hooks` enables them without a listener
/// of their own (see [`hooks_router`]); the document lists them either way, so an
/// operator finds every route in one place.
pub fn router_and_document(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (hooks, hooks_document) = routes::hooks::router().split_for_parts();
    let (mut router, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::health::router())
        .merge(routes::auth::router())
        .merge(routes::me::router())
        .merge(routes::devices::router())
        .merge(routes::push::router())
        .merge(routes::conversations::router())
        .merge(routes::invitations::router())
        .merge(routes::messages::router())
        .merge(routes::sync::router())
        .merge(routes::search::router())
        .merge(routes::uploads::router())
        .split_for_parts();
    document.merge(hooks_document);
    if state.hooks.enabled && state.hooks.listen.is_none() {
        router = router.merge(hooks);
    }
    let json = Arc::new(document.clone());
    let router = router
        .route(
            "/v1/openapi.json",
            get(move || async move { Json(json.as_ref().clone()) }),
        )
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_HTTP_JSON_BYTES))
        .layer(axum::middleware::from_fn(http_metrics::track))
        .layer(TraceLayer::new_for_http())
        .with_state(state);
    (router, document)
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    router_and_document(state).0
}

/// The broker hooks alone, for their own internal listener: `Some` when `state.hooks`
/// enables them with `listen` set.
pub fn hooks_router(state: AppState) -> Option<Router> {
    if !(state.hooks.enabled && state.hooks.listen.is_some()) {
        return None;
    }
    let (router, _) = routes::hooks::router().split_for_parts();
    Some(
        router
            .fallback(|| async { error::ApiError::not_found("no such route") })
            .layer(DefaultBodyLimit::max(MAX_HTTP_JSON_BYTES))
            .layer(axum::middleware::from_fn(http_metrics::track))
            .layer(TraceLayer::new_for_http())
            .with_state(state),
    )
}
