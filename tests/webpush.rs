//! Web Push end to end against npm `web-push-testing`, an independent implementation
//! of a push service that checks the VAPID token against the key the subscription was
//! made with and decrypts the `aes128gcm` body (scripts/test.sh installs it into
//! tests/clients/node_modules). Also: an expired subscription (410) is pruned, and
//! endpoints on private or loopback addresses are refused unless the config allows.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A VAPID key pair for these tests only (base64url, as `web-push generate-vapid-keys`
/// prints them).
const VAPID_PUBLIC: &str =
    "BI0JXSKwiRxOusZ3xLVemkpF-o5l7Luz5My-PP26ie5IomQ5cvAOu8lWiIY1Ldyt4mZ09TjnYgJh9Q-_qJ_Vrlc";
const VAPID_PRIVATE: &str = "th7oZKRUZXS3xQn6pURczq2lyFYTu-z7IKK-XDXywhE";
/// Keys of a subscription made up for registration checks (never pushed to).
const SOME_P256DH: &str =
    "BNrwTMeO2_ENVMneTe5X3Tgb96UZU1jSWeC7bwnp4CN6-ALyLForBjFK4J0BzgKoCeKJwtglV4H3icpHt9yyiy0";
const SOME_AUTH: &str = "j8pAsKnt7MIV5KY3F1h21A";

/// The `web-push-testing` server, killed on drop.
struct PushService {
    child: Child,
    base: String,
}

impl Drop for PushService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PushService {
    async fn start() -> PushService {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/node_modules/web-push-testing/src/bin/server.js"
        );
        assert!(
            std::path::Path::new(script).exists(),
            "{script} is missing: run scripts/test.sh, which installs npm web-push-testing"
        );
        let port = free_port();
        let child = Command::new("node")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node web-push-testing");
        let service = PushService {
            child,
            base: format!("http://localhost:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client().post(service.url("/status")).send().await {
                if r.status().is_success() {
                    return service;
                }
            }
            assert!(Instant::now() < deadline, "web-push-testing did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A new subscription for our VAPID key: (endpoint, keys, client hash).
    async fn subscribe(&self) -> (String, Value, String) {
        let res = client()
            .post(self.url("/subscribe"))
            .json(&json!({ "userVisibleOnly": "true", "applicationServerKey": VAPID_PUBLIC }))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.expect("json");
        let d = &body["data"];
        (
            d["endpoint"].as_str().expect("endpoint").to_owned(),
            d["keys"].clone(),
            d["clientHash"].as_str().expect("clientHash").to_owned(),
        )
    }

    /// The decrypted messages the subscription received.
    async fn messages(&self, hash: &str) -> Vec<Value> {
        let res = client()
            .post(self.url("/get-notifications"))
            .json(&json!({ "clientHash": hash }))
            .send()
            .await
            .expect("get-notifications");
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.expect("json");
        body["data"]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| serde_json::from_str(m.as_str().expect("text")).expect("a JSON push"))
            .collect()
    }

    async fn expire(&self, hash: &str) {
        let res = client()
            .post(self.url(&format!("/expire-subscription/{hash}")))
            .send()
            .await
            .expect("expire");
        assert_eq!(res.status(), 200);
    }
}

fn options(db: Db, allow_private: bool) -> Options {
    let mut opts = Options::new(db);
    opts.env = vec![
        ("TIDINGS_PUSH_VAPID_PUBLIC_KEY".into(), VAPID_PUBLIC.into()),
        (
            "TIDINGS_PUSH_VAPID_PRIVATE_KEY".into(),
            VAPID_PRIVATE.into(),
        ),
        (
            "TIDINGS_PUSH_VAPID_SUBJECT".into(),
            "mailto:ops@tidings.test".into(),
        ),
        (
            "TIDINGS_PUSH_ALLOW_PRIVATE_ENDPOINTS".into(),
            allow_private.to_string(),
        ),
        ("TIDINGS_PUSH_POLL_MS".into(), "50".into()),
    ];
    opts
}

async fn register_webpush(server: &Server, who: &Account, endpoint: &str, keys: &Value) -> u16 {
    client()
        .put(server.url("/v1/me/push"))
        .bearer_auth(&who.access)
        .json(&json!({
            "platform": "webpush", "token": endpoint, "app_id": "web",
            "data": { "keys": keys }, "full_text": true,
        }))
        .send()
        .await
        .expect("register")
        .status()
        .as_u16()
}

async fn send(server: &Server, who: &Account, conv: &str, id: &str, text: &str) -> Value {
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&who.access)
        .json(&json!({ "client_msg_id": id, "body": text }))
        .send()
        .await
        .expect("send");
    assert!(res.status().is_success());
    res.json().await.expect("json")
}

async fn webpush_arrives_decrypted_and_an_expired_subscription_is_pruned(db: Db) {
    let service = PushService::start().await;
    let server = Server::start_with(options(db, true)).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let browser = login(&server, &bob, "browser").await;
    let (endpoint, keys, hash) = service.subscribe().await;
    assert_eq!(
        register_webpush(&server, &browser, &endpoint, &keys).await,
        200
    );
    let conv = conversation(&server, &alice, "group", &[&bob]).await;

    let sent = send(&server, &alice, &conv, "m1", "hello over web push").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let messages = loop {
        let m = service.messages(&hash).await;
        if !m.is_empty() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no push arrived:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(messages.len(), 1);
    let n = &messages[0];
    assert_eq!(n["conversation"], conv.as_str());
    assert_eq!(n["event_id"], sent["id"]);
    assert_eq!(n["seq"], sent["seq"]);
    assert_eq!(n["body"], "hello over web push");
    assert_eq!(n["sender"], alice.id.as_str());
    assert_eq!(n["unread"], 1);

    // The browser unsubscribed: the service answers 410 and the target goes.
    service.expire(&hash).await;
    send(&server, &alice, &conv, "m2", "into the void").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = client()
            .get(server.url("/v1/me/push"))
            .bearer_auth(&bob.access)
            .send()
            .await
            .expect("list");
        let body: Value = res.json().await.expect("json");
        if body["targets"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired subscription kept:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.metric("tidings_push_tokens_pruned_total").await, 1.0);
    assert_eq!(server.metric("tidings_push_sent_total").await, 1.0);
}

async fn private_endpoints_and_bad_keys_are_refused(db: Db) {
    let server = Server::start_with(options(db, false)).await;
    let bob = register(&server, "bob").await;
    let keys = json!({ "p256dh": SOME_P256DH, "auth": SOME_AUTH });
    for endpoint in [
        "http://localhost:8090/notify/x",
        "https://localhost/notify/x",
        "https://127.0.0.1/x",
        "https://10.0.0.7/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://[fd00::1]/x",
        "http://push.example.com/x",
    ] {
        assert_eq!(
            register_webpush(&server, &bob, endpoint, &keys).await,
            422,
            "{endpoint}"
        );
    }
    let short = json!({ "p256dh": SOME_P256DH, "auth": "AAAA" });
    assert_eq!(
        register_webpush(&server, &bob, "https://push.example.com/x", &short).await,
        422
    );
    assert_eq!(
        register_webpush(&server, &bob, "https://push.example.com/x", &keys).await,
        200
    );
}

on_both_databases!(
    webpush_arrives_decrypted_and_an_expired_subscription_is_pruned,
    private_endpoints_and_bad_keys_are_refused,
);
