//! The OpenAPI document: valid OpenAPI 3 (checked by PyPI's openapi-spec-validator, a
//! validator we did not write), and in step with the router in both directions.

mod common;

use std::collections::BTreeSet;
use std::io::Write;

use common::*;
use serde_json::Value;

/// Every operation the API must offer. Routes are registered from their documentation
/// (utoipa-axum), so a route missing here but served would still be documented; this
/// list catches the opposite, an operation dropped by accident.
const EXPECTED: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/auth/register"),
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/logout"),
    ("get", "/v1/me"),
    ("delete", "/v1/me"),
    ("patch", "/v1/me"),
    ("get", "/v1/me/blocks"),
    ("put", "/v1/me/blocks/{user_id}"),
    ("get", "/v1/me/devices"),
    ("post", "/v1/me/devices"),
    ("delete", "/v1/me/devices/{id}"),
    ("delete", "/v1/me/blocks/{user_id}"),
    ("get", "/v1/me/unread"),
    ("get", "/v1/me/devices"),
    ("post", "/v1/me/devices"),
    ("delete", "/v1/me/devices/{id}"),
    ("get", "/v1/me/push"),
    ("put", "/v1/me/push"),
    ("delete", "/v1/me/push"),
    ("get", "/v1/me/push/settings"),
    ("put", "/v1/me/push/settings"),
    ("post", "/v1/conversations"),
    ("get", "/v1/conversations"),
    ("get", "/v1/conversations/{id}"),
    ("patch", "/v1/conversations/{id}"),
    ("get", "/v1/conversations/{id}/members"),
    ("post", "/v1/conversations/{id}/members"),
    ("delete", "/v1/conversations/{id}/members/{user_id}"),
    ("put", "/v1/conversations/{id}/members/{user_id}/role"),
    ("post", "/v1/conversations/{id}/leave"),
    ("post", "/v1/conversations/{id}/join"),
    ("patch", "/v1/conversations/{id}/membership"),
    ("get", "/v1/conversations/{id}/messages"),
    ("post", "/v1/conversations/{id}/messages"),
    ("get", "/v1/rooms"),
    ("get", "/v1/invitations"),
    ("post", "/v1/invitations/{id}/accept"),
    ("post", "/v1/invitations/{id}/decline"),
    ("get", "/v1/sync"),
    ("get", "/v1/search"),
    ("get", "/v1/users"),
    ("post", "/v1/uploads"),
    ("get", "/v1/attachments/{id}"),
    ("post", "/v1/hooks/emqx/authn"),
    ("post", "/v1/hooks/emqx/authz"),
    ("post", "/v1/hooks/vernemq/auth_on_register"),
    ("post", "/v1/hooks/vernemq/auth_on_subscribe"),
    ("post", "/v1/hooks/vernemq/auth_on_publish"),
    ("get", "/v1/hooks/rabbitmq/user"),
    ("post", "/v1/hooks/rabbitmq/user"),
    ("get", "/v1/hooks/rabbitmq/vhost"),
    ("post", "/v1/hooks/rabbitmq/vhost"),
    ("get", "/v1/hooks/rabbitmq/resource"),
    ("post", "/v1/hooks/rabbitmq/resource"),
    ("get", "/v1/hooks/rabbitmq/topic"),
    ("post", "/v1/hooks/rabbitmq/topic"),
    ("get", "/v1/hooks/rmqtt/auth"),
    ("post", "/v1/hooks/rmqtt/auth"),
    ("get", "/v1/hooks/rmqtt/acl"),
    ("post", "/v1/hooks/rmqtt/acl"),
    ("post", "/v1/hooks/emqx/events"),
    ("post", "/v1/hooks/vernemq/events"),
    ("post", "/v1/hooks/rmqtt/events"),
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[tokio::test]
async fn the_document_is_valid_and_matches_the_router() {
    // The broker hooks are listed whether or not they are served; served here, so the
    // check below that every documented operation is routed covers them too.
    let mut opts = Options::new(Db::Sqlite);
    opts.env = vec![("TIDINGS_HOOKS_ENABLED".into(), "true".into())];
    let server = Server::start_with(opts).await;
    let doc: Value = client()
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );

    // Valid per openapi-spec-validator.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(doc.to_string().as_bytes()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("python3 with openapi-spec-validator (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected, "documented operations");

    // Every documented operation is served: never the router's fallback, never 405.
    let me = register(&server, "prober").await;
    for (method, path) in &documented {
        let concrete = path.replace("{id}", &me.id).replace("{user_id}", &me.id);
        let res = client()
            .request(
                method.to_uppercase().parse().unwrap(),
                server.url(&concrete),
            )
            .bearer_auth(&me.access)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path} is documented but not routed");
        assert!(
            !body.contains("no such route"),
            "{method} {path} fell through to the fallback"
        );
    }
}
