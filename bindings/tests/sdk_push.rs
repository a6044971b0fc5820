//! `register_push` / `unregister_push` from the Rust SDK against a real server with a
//! push gateway configured: the registration lands on the server (seen through the
//! REST API as another session of the same user), refusals come back as typed errors,
//! and unregistering twice is fine.

mod common;

use common::Server;
use serde_json::{json, Value};
use tidings_core::sdk::*;

async fn targets(server: &Server, username: &str, password: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/v1/auth/login", server.http()))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["access_token"].as_str().expect("access_token");
    let list: Value = http
        .get(format!("{}/v1/me/push", server.http()))
        .bearer_auth(token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    list["targets"].as_array().cloned().unwrap_or_default()
}

fn registration(platform: PushPlatform) -> PushRegistration {
    PushRegistration {
        platform,
        token: "pushkey-1".into(),
        app_id: "chat.tidings.test".into(),
        webpush_p256dh: None,
        webpush_auth: None,
        lang: Some("en-GB".into()),
        full_text: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_registers_and_unregisters_push() {
    // Nothing listens there: registration needs the gateway configured, not reachable.
    let server = Server::start_with_env(&[(
        "TIDINGS_PUSH_GATEWAY_URL",
        "http://127.0.0.1:9/_matrix/push/v1/notify",
    )]);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::new(
        ClientConfig::new(
            server.http(),
            server.mqtt(),
            dir.path().to_string_lossy(),
            "phone",
        ),
        tokio::runtime::Handle::current(),
    )
    .expect("client");
    client
        .register("pushy", "pushy-password")
        .await
        .expect("register");

    client
        .register_push(registration(PushPlatform::Gateway))
        .await
        .expect("register_push");
    let list = targets(&server, "pushy", "pushy-password").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["platform"], "gateway");
    assert_eq!(list[0]["full_text"], true);
    assert_eq!(list[0]["lang"], "en-GB");

    // APNs is not configured on this server: a typed server error, not a panic.
    match client.register_push(registration(PushPlatform::Apns)).await {
        Err(SdkError::Server { status: 422, .. }) => {}
        other => panic!("expected 422, got {other:?}"),
    }
    // Web Push without the subscription keys is refused before anything is sent.
    match client
        .register_push(registration(PushPlatform::Webpush))
        .await
    {
        Err(SdkError::InvalidArgument { .. }) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    client.unregister_push().await.expect("unregister_push");
    client
        .unregister_push()
        .await
        .expect("unregister_push again");
    assert!(targets(&server, "pushy", "pushy-password").await.is_empty());
}
