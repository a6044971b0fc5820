//! The auth/ACL hooks an external MQTT broker calls (issue 12), through the real binary:
//! every dialect (EMQX 5, VerneMQ, RabbitMQ, rmqtt / EMQX 4) with its documented request
//! and reply shapes, for an allowed, a denied and a malformed question. Fixtures follow
//! the brokers' documentation (emqx-docs `access-control/authn/http.md` and
//! `authz/http.md`, vmq-docs `plugindevelopment/webhookplugins.md`, rabbitmq-server
//! `deps/rabbitmq_auth_backend_http/README.md`, rmqtt-auth-http's README); rmqtt itself
//! calls them in the multi-node test.

mod common;

use common::*;
use serde_json::{json, Value};

const NODE_USER: &str = "tidings-node";
const NODE_SECRET: &str = "node-secret-node-secret-node-secret-0123";

fn hook_env() -> Vec<(String, String)> {
    vec![
        ("TIDINGS_HOOKS_ENABLED".into(), "true".into()),
        ("TIDINGS_HOOKS_NODE_USERNAME".into(), NODE_USER.into()),
        ("TIDINGS_HOOKS_NODE_SECRET".into(), NODE_SECRET.into()),
        (
            "TIDINGS_HOOKS_PRESENCE_OFFLINE_GRACE_MS".into(),
            GRACE.as_millis().to_string(),
        ),
    ]
}

/// The offline grace of presence from broker events, short for the tests.
const GRACE: std::time::Duration = std::time::Duration::from_millis(300);

async fn start(db: Db) -> Server {
    let mut opts = Options::new(db);
    opts.env = hook_env();
    Server::start_with(opts).await
}

/// Alice and Bob share a group; Bob and Carol share another Alice is not in.
struct World {
    alice: Account,
    bob: Account,
    shared: String,
    private: String,
}

async fn world(server: &Server) -> World {
    let alice = register(server, "alice").await;
    let bob = register(server, "bob").await;
    let carol = register(server, "carol").await;
    let shared = conversation(server, &alice, "group", &[&bob]).await;
    let private = conversation(server, &bob, "group", &[&carol]).await;
    World {
        alice,
        bob,
        shared,
        private,
    }
}

fn client_id(account: &Account) -> String {
    format!("{}:phone", account.id)
}

async fn post_json(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .expect("hook request")
}

async fn post_raw(
    server: &Server,
    path: &str,
    content_type: &str,
    body: &str,
) -> reqwest::Response {
    client()
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("hook request")
}

async fn json_of(res: reqwest::Response) -> Value {
    assert_eq!(res.status(), 200, "hooks always answer 200");
    res.json().await.expect("JSON reply")
}

async fn text_of(res: reqwest::Response) -> String {
    assert_eq!(res.status(), 200, "hooks always answer 200");
    res.text().await.expect("text reply")
}

// --- EMQX 5 ---------------------------------------------------------------------------

async fn emqx_authn(server: &Server, clientid: &str, username: &str, password: &str) -> Value {
    json_of(
        post_json(
            server,
            "/v1/hooks/emqx/authn",
            &json!({ "clientid": clientid, "username": username, "password": password }),
        )
        .await,
    )
    .await
}

async fn emqx_authz(server: &Server, body: Value) -> Value {
    json_of(post_json(server, "/v1/hooks/emqx/authz", &body).await).await
}

fn emqx_access(who: &Account, action: &str, topic: &str, qos: &str, retain: &str) -> Value {
    json!({ "clientid": client_id(who), "username": who.id, "action": action,
            "topic": topic, "qos": qos, "retain": retain, "peerhost": "127.0.0.1" })
}

async fn emqx_allows_members_and_denies_everyone_else(db: Db) {
    let server = start(db).await;
    let w = world(&server).await;
    let (alice, bob) = (&w.alice, &w.bob);

    // authn: allow, deny, node superuser, malformed.
    let allow = json!({ "result": "allow", "is_superuser": false });
    let deny = json!({ "result": "deny", "is_superuser": false });
    assert_eq!(
        emqx_authn(&server, &client_id(alice), &alice.id, &alice.access).await,
        allow
    );
    assert_eq!(
        emqx_authn(&server, &client_id(alice), &alice.id, "not-a-token").await,
        deny
    );
    assert_eq!(
        emqx_authn(&server, &client_id(bob), &alice.id, &alice.access).await,
        deny,
        "another user's client id"
    );
    assert_eq!(
        emqx_authn(&server, &client_id(bob), &bob.id, &alice.access).await,
        deny,
        "another user's token"
    );
    assert_eq!(
        emqx_authn(&server, "worker-1", NODE_USER, NODE_SECRET).await,
        json!({ "result": "allow", "is_superuser": true })
    );
    assert_eq!(
        emqx_authn(&server, "worker-1", NODE_USER, "guess").await,
        deny
    );
    for malformed in ["{not json", r#"{"clientid":"x"}"#, "[]", ""] {
        let res = post_raw(
            &server,
            "/v1/hooks/emqx/authn",
            "application/json",
            malformed,
        )
        .await;
        assert_eq!(json_of(res).await["result"], "deny", "{malformed:?}");
    }

    // authz: bob has not connected through the hook yet, so he has no rights at all.
    assert_eq!(
        emqx_authn(&server, &client_id(bob), &bob.id, &bob.access).await,
        allow
    );
    let allow = json!({ "result": "allow" });
    let deny = json!({ "result": "deny" });
    for topic in [
        format!("u/{}/in", alice.id),
        format!("c/{}/m", w.shared),
        format!("c/{}/t/+", w.shared),
        format!("u/{}/p", bob.id),
    ] {
        let q = emqx_access(alice, "subscribe", &topic, "0", "false");
        assert_eq!(emqx_authz(&server, q).await, allow, "{topic}");
    }
    for topic in [
        format!("u/{}/in", bob.id),
        format!("c/{}/m", w.private),
        "u/+/in".to_string(),
        "#".to_string(),
        format!("u/{}/out", alice.id),
    ] {
        let q = emqx_access(alice, "subscribe", &topic, "0", "false");
        assert_eq!(emqx_authz(&server, q).await, deny, "{topic}");
    }
    let own_out = format!("u/{}/out", alice.id);
    assert_eq!(
        emqx_authz(
            &server,
            emqx_access(alice, "publish", &own_out, "1", "false")
        )
        .await,
        allow
    );
    assert_eq!(
        emqx_authz(
            &server,
            emqx_access(alice, "publish", &own_out, "1", "true")
        )
        .await,
        deny,
        "no retained publishes"
    );
    let bobs_out = format!("u/{}/out", bob.id);
    assert_eq!(
        emqx_authz(
            &server,
            emqx_access(alice, "publish", &bobs_out, "1", "false")
        )
        .await,
        deny
    );
    // qos/retain as JSON numbers and booleans (an unquoted template) read the same.
    let q = json!({ "clientid": client_id(alice), "username": alice.id, "action": "publish",
                    "topic": own_out, "qos": 1, "retain": false });
    assert_eq!(emqx_authz(&server, q).await, allow);
    // The node identity may do anything, the shared subscription included.
    let q = json!({ "clientid": "worker-1", "username": NODE_USER, "action": "subscribe",
                    "topic": "$share/tidings/u/+/out", "qos": "1", "retain": "false" });
    assert_eq!(emqx_authz(&server, q).await, allow);
    // Malformed: no qos on a publish, an unknown action, not JSON.
    let q = json!({ "clientid": client_id(alice), "username": alice.id, "action": "publish", "topic": own_out });
    assert_eq!(emqx_authz(&server, q).await, deny);
    assert_eq!(
        emqx_authz(&server, emqx_access(alice, "all", &own_out, "1", "false")).await,
        deny
    );
    let res = post_raw(&server, "/v1/hooks/emqx/authz", "application/json", "{").await;
    assert_eq!(json_of(res).await, deny);
    // A client id that never authenticated here has no rights, whatever its username.
    let stranger = json!({ "clientid": format!("{}:tablet", alice.id), "username": alice.id,
                           "action": "subscribe", "topic": format!("u/{}/in", alice.id), "qos": "0", "retain": "false" });
    assert_eq!(emqx_authz(&server, stranger).await, deny);

    // A logout ends the client's rights at the very next decision.
    let res = client()
        .post(server.url("/v1/auth/logout"))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), 204);
    let q = emqx_access(
        alice,
        "subscribe",
        &format!("u/{}/in", alice.id),
        "0",
        "false",
    );
    assert_eq!(emqx_authz(&server, q).await, deny, "after logout");
    assert_eq!(
        emqx_authn(&server, &client_id(alice), &alice.id, &alice.access).await["result"],
        "deny"
    );
}

// --- VerneMQ --------------------------------------------------------------------------

async fn vernemq(server: &Server, hook: &str, body: &Value) -> Value {
    let res = client()
        .post(server.url(&format!(
            "/v1/hooks/vernemq/{}",
            hook.trim_end_matches("_m5")
        )))
        .header("vernemq-hook", hook)
        .json(body)
        .send()
        .await
        .expect("hook request");
    json_of(res).await
}

async fn vernemq_speaks_ok_not_allowed_and_per_topic_refusals(db: Db) {
    let server = start(db).await;
    let w = world(&server).await;
    let alice = &w.alice;
    let ok = json!({ "result": "ok" });
    let not_allowed = json!({ "result": { "error": "not_allowed" } });

    let register = |password: &str| {
        json!({ "peer_addr": "127.0.0.1", "peer_port": 8888, "username": alice.id,
                "password": password, "mountpoint": "", "client_id": client_id(alice),
                "clean_session": true })
    };
    assert_eq!(
        vernemq(&server, "auth_on_register", &register(&alice.access)).await,
        ok
    );
    assert_eq!(
        vernemq(&server, "auth_on_register", &register("wrong")).await,
        not_allowed
    );
    let mut mounted = register(&alice.access);
    mounted["mountpoint"] = json!("tenant-a");
    assert_eq!(
        vernemq(&server, "auth_on_register", &mounted).await,
        not_allowed,
        "mountpoints refused"
    );
    let mut m5 = register(&alice.access);
    m5["properties"] = json!({});
    assert_eq!(vernemq(&server, "auth_on_register_m5", &m5).await, ok);
    let no_password =
        json!({ "username": alice.id, "client_id": client_id(alice), "mountpoint": "" });
    assert_eq!(
        vernemq(&server, "auth_on_register", &no_password).await,
        not_allowed
    );

    let own = format!("u/{}/in", alice.id);
    let foreign = format!("c/{}/m", w.private);
    let subscribe = |topics: Value| json!({ "client_id": client_id(alice), "mountpoint": "", "username": alice.id, "topics": topics });
    let both_allowed = subscribe(
        json!([{ "topic": own, "qos": 1 }, { "topic": format!("c/{}/m", w.shared), "qos": 0 }]),
    );
    assert_eq!(
        vernemq(&server, "auth_on_subscribe", &both_allowed).await,
        ok
    );
    let mixed = subscribe(json!([{ "topic": own, "qos": 1 }, { "topic": foreign, "qos": 1 }]));
    assert_eq!(
        vernemq(&server, "auth_on_subscribe", &mixed).await,
        json!({ "result": "ok", "topics": [{ "topic": own, "qos": 1 }, { "topic": foreign, "qos": 128 }] })
    );
    assert_eq!(
        vernemq(&server, "auth_on_subscribe_m5", &mixed).await["topics"][1]["qos"],
        135,
        "MQTT 5's not-authorized code"
    );
    let bad = json!({ "client_id": client_id(alice), "username": alice.id, "topics": "u/x/in" });
    assert_eq!(
        vernemq(&server, "auth_on_subscribe", &bad).await,
        not_allowed
    );

    let publish = |topic: &str, retain: bool| {
        json!({ "username": alice.id, "client_id": client_id(alice), "mountpoint": "", "qos": 1,
                "topic": topic, "payload": "eyJvcCI6InNlbmQifQ==", "retain": retain })
    };
    assert_eq!(
        vernemq(
            &server,
            "auth_on_publish",
            &publish(&format!("u/{}/out", alice.id), false)
        )
        .await,
        ok
    );
    assert_eq!(
        vernemq(
            &server,
            "auth_on_publish",
            &publish(&format!("u/{}/out", alice.id), true)
        )
        .await,
        not_allowed
    );
    assert_eq!(
        vernemq(
            &server,
            "auth_on_publish",
            &publish(&format!("u/{}/out", w.bob.id), false)
        )
        .await,
        not_allowed
    );
    let res = post_raw(
        &server,
        "/v1/hooks/vernemq/auth_on_publish",
        "application/json",
        "{\"topic\":",
    )
    .await;
    assert_eq!(json_of(res).await, not_allowed);
}

// --- RabbitMQ -------------------------------------------------------------------------

/// RabbitMQ asks by GET (its default) or by a form POST; both must answer alike.
async fn rabbit(server: &Server, path: &str, fields: &[(&str, &str)]) -> String {
    let form = serde_urlencoded::to_string(fields).expect("form");
    let by_post =
        text_of(post_raw(server, path, "application/x-www-form-urlencoded", &form).await).await;
    let res = client()
        .get(server.url(&format!("{path}?{form}")))
        .send()
        .await
        .expect("hook request");
    let by_get = text_of(res).await;
    assert_eq!(by_post, by_get, "{path} {fields:?}");
    by_post
}

async fn rabbitmq_answers_allow_or_deny_in_text(db: Db) {
    let server = start(db).await;
    let w = world(&server).await;
    let alice = &w.alice;
    let cid = client_id(alice);

    let user_path = "/v1/hooks/rabbitmq/user";
    assert_eq!(
        rabbit(
            &server,
            user_path,
            &[
                ("username", &alice.id),
                ("password", &alice.access),
                ("vhost", "/"),
                ("client_id", &cid)
            ]
        )
        .await,
        "allow"
    );
    assert_eq!(
        rabbit(
            &server,
            user_path,
            &[
                ("username", &alice.id),
                ("password", "nope"),
                ("vhost", "/"),
                ("client_id", &cid)
            ]
        )
        .await,
        "deny"
    );
    assert_eq!(
        rabbit(
            &server,
            user_path,
            &[
                ("username", &alice.id),
                ("password", &alice.access),
                ("vhost", "/")
            ]
        )
        .await,
        "deny",
        "a user needs their client id"
    );
    assert_eq!(
        rabbit(
            &server,
            user_path,
            &[
                ("username", NODE_USER),
                ("password", NODE_SECRET),
                ("vhost", "/")
            ]
        )
        .await,
        "allow"
    );
    assert_eq!(
        rabbit(&server, user_path, &[("username", &alice.id)]).await,
        "deny",
        "malformed"
    );

    let vhost_path = "/v1/hooks/rabbitmq/vhost";
    assert_eq!(
        rabbit(
            &server,
            vhost_path,
            &[("username", &alice.id), ("vhost", "/"), ("ip", "127.0.0.1")]
        )
        .await,
        "allow"
    );
    assert_eq!(
        rabbit(
            &server,
            vhost_path,
            &[
                ("username", &alice.id),
                ("vhost", "other"),
                ("ip", "127.0.0.1")
            ]
        )
        .await,
        "deny"
    );

    let resource_path = "/v1/hooks/rabbitmq/resource";
    let resource = |resource: &'static str, name: String, permission: &'static str| {
        vec![
            ("username", alice.id.clone()),
            ("vhost", "/".to_string()),
            ("resource", resource.to_string()),
            ("name", name),
            ("permission", permission.to_string()),
        ]
    };
    let ask = |fields: Vec<(&'static str, String)>| {
        let server = &server;
        async move {
            let borrowed: Vec<(&str, &str)> =
                fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            rabbit(server, resource_path, &borrowed).await
        }
    };
    assert_eq!(
        ask(resource("exchange", "amq.topic".into(), "write")).await,
        "allow"
    );
    assert_eq!(
        ask(resource(
            "queue",
            format!("mqtt-subscription-{cid}qos1"),
            "configure"
        ))
        .await,
        "allow"
    );
    assert_eq!(
        ask(resource(
            "queue",
            format!("mqtt-subscription-{}qos1", client_id(&w.bob)),
            "read"
        ))
        .await,
        "deny",
        "another user's queue"
    );
    assert_eq!(
        ask(resource("exchange", "amq.direct".into(), "write")).await,
        "deny"
    );

    let topic_path = "/v1/hooks/rabbitmq/topic";
    let topic = |permission: &'static str, routing_key: String| {
        let server = &server;
        let alice_id = alice.id.clone();
        let cid = cid.clone();
        async move {
            rabbit(
                server,
                topic_path,
                &[
                    ("username", &alice_id),
                    ("vhost", "/"),
                    ("resource", "topic"),
                    ("name", "amq.topic"),
                    ("permission", permission),
                    ("routing_key", &routing_key),
                    ("variable_map.client_id", &cid),
                ],
            )
            .await
        }
    };
    // (user_path above recorded Alice's client id, so topic_path can find her session.)
    assert_eq!(topic("read", format!("u.{}.in", alice.id)).await, "allow");
    assert_eq!(topic("read", format!("c.{}.t.*", w.shared)).await, "allow");
    assert_eq!(topic("read", format!("u.{}.in", w.bob.id)).await, "deny");
    assert_eq!(topic("read", "u.*.in".into()).await, "deny");
    assert_eq!(topic("write", format!("u.{}.out", alice.id)).await, "allow");
    assert_eq!(topic("write", format!("u.{}.out", w.bob.id)).await, "deny");
    assert_eq!(
        topic("configure", format!("u.{}.out", alice.id)).await,
        "deny",
        "malformed permission"
    );
}

// --- rmqtt / EMQX 4 -------------------------------------------------------------------

async fn rmqtt_answers_json_even_for_garbage(db: Db) {
    let server = start(db).await;
    let w = world(&server).await;
    let alice = &w.alice;
    let cid = client_id(alice);
    let form = |fields: &[(&str, &str)]| serde_urlencoded::to_string(fields).expect("form");
    let ask = |path: &'static str, body: String| {
        let server = &server;
        async move {
            json_of(post_raw(server, path, "application/x-www-form-urlencoded", &body).await).await
        }
    };

    let auth = "/v1/hooks/rmqtt/auth";
    assert_eq!(
        ask(
            auth,
            form(&[
                ("username", &alice.id),
                ("clientid", &cid),
                ("password", &alice.access),
                ("ipaddress", "127.0.0.1")
            ])
        )
        .await,
        json!({ "result": "allow", "superuser": false })
    );
    assert_eq!(
        ask(
            auth,
            form(&[
                ("username", &alice.id),
                ("clientid", &cid),
                ("password", "x")
            ])
        )
        .await,
        json!({ "result": "deny", "superuser": false })
    );
    assert_eq!(
        ask(
            auth,
            form(&[
                ("username", NODE_USER),
                ("clientid", "worker-2"),
                ("password", NODE_SECRET)
            ])
        )
        .await,
        json!({ "result": "allow", "superuser": true })
    );
    // rmqtt reads an empty 2xx body as "allow": garbage must still get JSON "deny".
    assert_eq!(ask(auth, String::new()).await["result"], "deny");
    assert_eq!(ask(auth, "%%%".into()).await["result"], "deny");
    // The same questions as JSON.
    let res = post_json(
        &server,
        auth,
        &json!({ "username": alice.id, "clientid": cid, "password": alice.access }),
    )
    .await;
    assert_eq!(json_of(res).await["result"], "allow");

    let acl = "/v1/hooks/rmqtt/acl";
    let access = |access: &str, topic: String| {
        form(&[
            ("access", access),
            ("username", &alice.id),
            ("clientid", &cid),
            ("ipaddr", "127.0.0.1"),
            ("topic", &topic),
        ])
    };
    assert_eq!(
        ask(acl, access("1", format!("u/{}/in", alice.id))).await,
        json!({ "result": "allow" })
    );
    assert_eq!(
        ask(acl, access("1", format!("c/{}/m", w.private))).await,
        json!({ "result": "deny" })
    );
    assert_eq!(
        ask(acl, access("2", format!("u/{}/out", alice.id))).await,
        json!({ "result": "allow" })
    );
    assert_eq!(
        ask(acl, access("2", format!("u/{}/out", w.bob.id))).await,
        json!({ "result": "deny" })
    );
    assert_eq!(
        ask(acl, access("3", format!("u/{}/in", alice.id))).await,
        json!({ "result": "deny" }),
        "unknown access"
    );
    assert_eq!(ask(acl, String::new()).await, json!({ "result": "deny" }));
    // GET with a query string (EMQX 4's default method).
    let res = client()
        .get(server.url(&format!(
            "{acl}?{}",
            access("1", format!("u/{}/in", alice.id))
        )))
        .send()
        .await
        .expect("hook request");
    assert_eq!(json_of(res).await["result"], "allow");
}

// --- device credentials ----------------------------------------------------------------

async fn create_device(server: &Server, owner: &Account, body: Value) -> String {
    let res = client()
        .post(server.url("/v1/me/devices"))
        .bearer_auth(&owner.access)
        .json(&body)
        .send()
        .await
        .expect("create device");
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.expect("json");
    body["secret"].as_str().expect("secret").to_owned()
}

async fn device_credential_grants_limit_the_hook_acl(db: Db) {
    let server = start(db).await;
    let w = world(&server).await;
    let alice = &w.alice;
    let elsewhere = conversation(&server, alice, "group", &[&w.bob]).await;
    let send_only = create_device(
        &server,
        alice,
        json!({ "name": "sensor", "mode": "send_only" }),
    )
    .await;
    let reader = create_device(
        &server,
        alice,
        json!({ "name": "panel", "mode": "receive_only", "conversations": [w.shared] }),
    )
    .await;
    let (sensor_id, panel_id) = (
        format!("{}:sensor", alice.id),
        format!("{}:panel", alice.id),
    );
    let authn = |clientid: String, password: String| {
        let server = &server;
        let alice_id = alice.id.clone();
        async move { emqx_authn(server, &clientid, &alice_id, &password).await["result"].clone() }
    };
    assert_eq!(authn(sensor_id.clone(), send_only.clone()).await, "allow");
    assert_eq!(authn(panel_id.clone(), reader.clone()).await, "allow");
    assert_eq!(authn(panel_id.clone(), "tdk_forged".into()).await, "deny");

    let authz = |clientid: &str, action: &str, topic: String| json!({ "clientid": clientid, "username": alice.id, "action": action, "topic": topic, "qos": "0", "retain": "false" });
    let result = |v: Value| v["result"].as_str().unwrap_or_default().to_owned();
    // Send-only: commands yes, reading no.
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&sensor_id, "publish", format!("u/{}/out", alice.id))
            )
            .await
        ),
        "allow"
    );
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&sensor_id, "subscribe", format!("c/{}/m", w.shared))
            )
            .await
        ),
        "deny"
    );
    // Receive-only on one conversation: that one yes, another of Alice's no, typing no,
    // and not the inbox, which carries every conversation's events unfiltered.
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&panel_id, "subscribe", format!("c/{}/m", w.shared))
            )
            .await
        ),
        "allow"
    );
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&panel_id, "subscribe", format!("c/{elsewhere}/m"))
            )
            .await
        ),
        "deny"
    );
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(
                    &panel_id,
                    "publish",
                    format!("c/{}/t/{}", w.shared, alice.id)
                )
            )
            .await
        ),
        "deny"
    );

    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&panel_id, "subscribe", format!("u/{}/in", alice.id))
            )
            .await
        ),
        "deny"
    );
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&sensor_id, "subscribe", format!("u/{}/in", alice.id))
            )
            .await
        ),
        "deny",
        "send-only reads nothing"
    );
    // Commands through an external broker cannot be checked against the credential
    // that sent them, so a receive-only one publishes none.
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&panel_id, "publish", format!("u/{}/out", alice.id))
            )
            .await
        ),
        "deny"
    );
    // A full credential reads the inbox.
    let full = create_device(&server, alice, json!({ "name": "bot" })).await;
    let bot_id = format!("{}:bot", alice.id);
    assert_eq!(authn(bot_id.clone(), full).await, "allow");
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&bot_id, "subscribe", format!("u/{}/in", alice.id))
            )
            .await
        ),
        "allow"
    );

    // Revoking the credential ends its rights at the next decision.
    let res = client()
        .get(server.url("/v1/me/devices"))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("list");
    let list: Value = res.json().await.expect("json");
    let panel = list["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == "panel"))
        .and_then(|d| d["id"].as_str())
        .expect("the panel credential")
        .to_owned();
    let res = client()
        .delete(server.url(&format!("/v1/me/devices/{panel}")))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("revoke");
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        result(
            emqx_authz(
                &server,
                authz(&panel_id, "subscribe", format!("c/{}/m", w.shared))
            )
            .await
        ),
        "deny"
    );
    assert_eq!(authn(panel_id, reader).await, "deny");
}

on_both_databases!(
    emqx_allows_members_and_denies_everyone_else,
    vernemq_speaks_ok_not_allowed_and_per_topic_refusals,
    rabbitmq_answers_allow_or_deny_in_text,
    rmqtt_answers_json_even_for_garbage,
    device_credential_grants_limit_the_hook_acl,
);

// --- where the hooks are served ---------------------------------------------------------

#[tokio::test]
async fn hooks_are_off_unless_enabled() {
    let server = Server::start(Db::Sqlite).await;
    let res = post_json(&server, "/v1/hooks/emqx/authn", &json!({})).await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn hooks_can_live_on_an_internal_listener_only() {
    let port = free_port();
    let mut opts = Options::new(Db::Sqlite);
    opts.env = hook_env();
    opts.env
        .push(("TIDINGS_HOOKS_LISTEN".into(), format!("127.0.0.1:{port}")));
    let server = Server::start_with(opts).await;
    let alice = register(&server, "alice").await;
    let question =
        json!({ "clientid": client_id(&alice), "username": alice.id, "password": alice.access });
    let public = post_json(&server, "/v1/hooks/emqx/authn", &question).await;
    assert_eq!(public.status(), 404, "not on the public listener");
    let res = client()
        .post(format!("http://127.0.0.1:{port}/v1/hooks/emqx/authn"))
        .json(&question)
        .send()
        .await
        .expect("internal hook");
    assert_eq!(json_of(res).await["result"], "allow");
    let res = client()
        .get(format!("http://127.0.0.1:{port}/v1/me"))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("internal listener");
    assert_eq!(
        res.status(),
        404,
        "the internal listener serves the hooks alone"
    );
}

// --- client events (presence behind an external broker) ------------------------------

/// EMQX's webhook (`client.connected` / `client.disconnected`) and VerneMQ's
/// (`on_register` / `on_client_offline`, told apart by the `vernemq-hook` header) move
/// a user's presence; rmqtt's web-hook does the same live in tests/multi_node_rmqtt.rs.
/// On PostgreSQL, the only backend that keeps the cross-node count. The presence is
/// published through this node's hub, where a real MQTT subscriber of the embedded
/// front door sees it. Controls: a second client of the same user changes nothing, an
/// unknown client id and a malformed event are answered and change nothing.
#[tokio::test]
async fn client_events_move_presence() {
    let server = start(Db::Postgres).await;
    let w = world(&server).await;
    let topic = format!("u/{}/p", w.alice.id);
    let mut watcher = common::mqtt::Mqtt::connect(&server, &w.bob, "watcher").await;
    watcher.subscribe(&topic).await;
    let wait = std::time::Duration::from_millis(700);

    // The auth hook records which session each client id connected with.
    for device in ["phone", "laptop"] {
        let id = format!("{}:{device}", w.alice.id);
        let reply = emqx_authn(&server, &id, &w.alice.id, &w.alice.access).await;
        assert_eq!(reply["result"], "allow", "{reply}");
    }
    let phone = client_id(&w.alice);
    let laptop = format!("{}:laptop", w.alice.id);
    let emqx = |event: &str, clientid: &str| json!({ "event": event, "clientid": clientid, "username": "ignored", "connected_at": 0 });

    // Noise first: an unknown client and a malformed body.
    let ok = json_of(
        post_json(
            &server,
            "/v1/hooks/emqx/events",
            &emqx("client.connected", "nobody:x"),
        )
        .await,
    )
    .await;
    assert_eq!(ok, json!({}));
    json_of(post_raw(&server, "/v1/hooks/emqx/events", "application/json", "{").await).await;
    assert_eq!(
        watcher.next_json(&topic, wait).await,
        None,
        "noise moved presence"
    );

    json_of(
        post_json(
            &server,
            "/v1/hooks/emqx/events",
            &emqx("client.connected", &phone),
        )
        .await,
    )
    .await;
    let online = watcher.expect(&topic, "alice online", |_| true).await;
    assert_eq!(online["online"], true, "{online}");

    // VerneMQ: the laptop registers (she is online already), then both go.
    let vernemq = |hook: &str, id: &str| {
        client()
            .post(server.url("/v1/hooks/vernemq/events"))
            .header("vernemq-hook", hook)
            .json(&json!({ "client_id": id, "mountpoint": "" }))
            .send()
    };
    let reply = json_of(vernemq("on_register", &laptop).await.expect("hook")).await;
    assert_eq!(reply["result"], "ok");
    json_of(
        post_json(
            &server,
            "/v1/hooks/emqx/events",
            &emqx("client.disconnected", &phone),
        )
        .await,
    )
    .await;
    assert_eq!(
        watcher.next_json(&topic, wait).await,
        None,
        "offline while the laptop is connected"
    );
    json_of(vernemq("on_client_offline", &laptop).await.expect("hook")).await;
    let offline = watcher.expect(&topic, "alice offline", |_| true).await;
    assert_eq!(offline["online"], false, "{offline}");
}

/// A server on `db` with the usual world, and Bob (who shares a conversation with
/// Alice) following her presence topic.
async fn alice_watched_by_bob(db: Db) -> (Server, World, common::mqtt::Mqtt) {
    let server = start(db).await;
    let w = world(&server).await;
    let mut watcher = common::mqtt::Mqtt::connect(&server, &w.bob, "watcher").await;
    watcher.subscribe(&format!("u/{}/p", w.alice.id)).await;
    (server, w, watcher)
}

/// rmqtt's auth hook admits `clientid` for `who` (recording its session, as CONNECT
/// does), so its client events count for them.
async fn rmqtt_admit(server: &Server, who: &Account, clientid: &str) {
    let form = serde_urlencoded::to_string([
        ("username", who.id.as_str()),
        ("clientid", clientid),
        ("password", who.access.as_str()),
    ])
    .expect("form");
    let reply = json_of(
        post_raw(
            server,
            "/v1/hooks/rmqtt/auth",
            "application/x-www-form-urlencoded",
            &form,
        )
        .await,
    )
    .await;
    assert_eq!(reply["result"], "allow", "{reply}");
}

/// An rmqtt web-hook event as the broker posts it, with the broker's time `at`.
async fn rmqtt_event(server: &Server, action: &str, clientid: &str, at: i64) {
    let time = if action == "client_connected" {
        "connected_at"
    } else {
        "disconnected_at"
    };
    let body = json!({ "action": action, "clientid": clientid, "node": 1, time: at });
    let reply = json_of(post_json(server, "/v1/hooks/rmqtt/events", &body).await).await;
    assert_eq!(reply, json!({}));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The race that made tests/multi_node_rmqtt.rs's presence flaky: two broker nodes post
/// their events in any order. Alice's phone is on broker node 1; her laptop connects on
/// node 2, then the phone drops, but node 1's disconnect is posted before node 2's
/// connect. She was connected throughout, so a watcher sees nothing: no "offline", and
/// no second "online". When the laptop goes and a new phone connection comes back
/// within the grace (`hooks.presence_offline_grace_ms`, short here), nothing either.
/// When her last device goes and stays gone, "offline" comes once, no sooner than the
/// grace, with the last disconnect as her last-seen time; a reconnect after that is
/// "online" again.
#[tokio::test]
async fn out_of_order_broker_events_do_not_flicker_presence() {
    let (server, w, mut watcher) = alice_watched_by_bob(Db::Postgres).await;
    let topic = format!("u/{}/p", w.alice.id);
    let phone = client_id(&w.alice);
    let laptop = format!("{}:laptop", w.alice.id);
    rmqtt_admit(&server, &w.alice, &phone).await;
    rmqtt_admit(&server, &w.alice, &laptop).await;
    let quiet = GRACE * 3;

    let t0 = now_ms();
    rmqtt_event(&server, "client_connected", &phone, t0).await;
    let online = watcher.expect(&topic, "alice online", |_| true).await;
    assert_eq!(online["online"], true, "{online}");

    // The laptop connected (t0+100) before the phone dropped (t0+200); the events
    // arrive the other way round.
    rmqtt_event(&server, "client_disconnected", &phone, t0 + 200).await;
    rmqtt_event(&server, "client_connected", &laptop, t0 + 100).await;
    assert_eq!(
        watcher.next_json(&topic, quiet).await,
        None,
        "presence changed while the laptop was connected"
    );

    // The laptop goes, and the phone is back within the grace: still nothing.
    rmqtt_event(&server, "client_disconnected", &laptop, t0 + 300).await;
    rmqtt_event(&server, "client_connected", &phone, t0 + 350).await;
    assert_eq!(
        watcher.next_json(&topic, quiet).await,
        None,
        "presence changed for a reconnect within the grace"
    );

    // The phone goes for good: "offline" once, after the grace.
    let gone = std::time::Instant::now();
    rmqtt_event(&server, "client_disconnected", &phone, t0 + 500).await;
    let offline = watcher.expect(&topic, "alice offline", |_| true).await;
    assert!(
        gone.elapsed() >= GRACE,
        "offline after {:?}, before the grace",
        gone.elapsed()
    );
    assert_eq!(offline["online"], false, "{offline}");
    assert_eq!(offline["last_seen"], t0 + 500, "{offline}");
    assert_eq!(
        watcher.next_json(&topic, quiet).await,
        None,
        "a second presence change after the offline"
    );

    // Control: back after the grace is "online" again.
    rmqtt_event(&server, "client_connected", &laptop, t0 + 600).await;
    let again = watcher.expect(&topic, "alice online again", |_| true).await;
    assert_eq!(again["online"], true, "{again}");
}

/// SQLite keeps no cross-node presence: a client event is answered (200, `{}`) and
/// counted as an error in the log, and nothing is published.
#[tokio::test]
async fn sqlite_answers_client_events_and_publishes_nothing() {
    let (server, w, mut watcher) = alice_watched_by_bob(Db::Sqlite).await;
    let topic = format!("u/{}/p", w.alice.id);
    let phone = client_id(&w.alice);
    rmqtt_admit(&server, &w.alice, &phone).await;
    rmqtt_event(&server, "client_connected", &phone, now_ms()).await;
    rmqtt_event(&server, "client_disconnected", &phone, now_ms()).await;
    assert_eq!(watcher.next_json(&topic, GRACE * 3).await, None);
}
