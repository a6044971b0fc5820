//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations.
//!
//! Routes are registered through utoipa-axum's `OpenApiRouter`, which takes each route's
//! path and method *from* its annotation: a handler cannot be served without being
//! documented, so the document lists every route by construction.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidings",
        description = "Self-hosted real-time messaging. Live traffic is MQTT (see docs/PROTOCOL.md); \
                       this API serves accounts, conversations, history, sync, search and uploads. \
                       Errors are {\"error\":{\"code\",\"message\"}}."
    ),
    modifiers(&BearerAuth),
    paths(openapi_json),
    tags(
        (name = "auth"), (name = "account"), (name = "devices"), (name = "push"), (name = "conversations"), (name = "messages"),
        (name = "sync"), (name = "search"), (name = "uploads"), (name = "health"), (name = "meta"),
        (name = "hooks", description = "Auth/ACL hooks an external MQTT broker calls (multi-node mode): served only when hooks.enabled, on hooks.listen when that is set (see docs/DEPLOY.md)")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "the OpenAPI 3 document")))]
pub async fn openapi_json() {}
