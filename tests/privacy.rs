//! What one user may learn about others: conversations they are not in look exactly
//! like conversations that do not exist, over HTTP and MQTT, on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn call(server: &Server, who: &Account, method: Method, path: &str) -> (u16, Value) {
    let res = client()
        .request(method.clone(), server.url(path))
        .bearer_auth(&who.access)
        .header("content-type", "application/json")
        .body(match method {
            Method::GET | Method::DELETE => String::new(),
            _ => json!({
                "name": "x", "user_ids": [who.id], "role": "member", "archived": true,
                "client_msg_id": "probe", "body": "hello"
            })
            .to_string(),
        })
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Every route about one conversation, with `{id}` and `{user}` to fill in.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/conversations/{id}"),
    ("PATCH", "/v1/conversations/{id}"),
    ("GET", "/v1/conversations/{id}/members"),
    ("POST", "/v1/conversations/{id}/members"),
    ("PUT", "/v1/conversations/{id}/members/{user}/role"),
    ("POST", "/v1/conversations/{id}/leave"),
    ("POST", "/v1/conversations/{id}/join"),
    ("PATCH", "/v1/conversations/{id}/membership"),
    ("GET", "/v1/conversations/{id}/messages"),
    ("POST", "/v1/conversations/{id}/messages"),
    ("GET", "/v1/search?q=hello&conversation_id={id}"),
    // Last: the owner's control call removes bob.
    ("DELETE", "/v1/conversations/{id}/members/{user}"),
];

async fn hidden_and_missing_conversations_get_the_same_404_everywhere(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let eve = register(&server, "eve").await;
    let private = conversation(&server, &alice, "group", &[&bob]).await;
    let missing = ulid::Ulid::new().to_string();

    for (method, route) in ROUTES {
        let method: Method = method.parse().expect("method");
        let fill = |id: &str| route.replace("{id}", id).replace("{user}", &bob.id);
        let hidden = call(&server, &eve, method.clone(), &fill(&private)).await;
        let absent = call(&server, &eve, method.clone(), &fill(&missing)).await;
        assert_eq!(
            hidden.0, 404,
            "{method} {route} for an outsider: {hidden:?}"
        );
        assert_eq!(
            hidden, absent,
            "{method} {route}: hidden and missing differ"
        );
        // Positive control: the owner is not refused as if it did not exist (join is
        // 404 for every group: only rooms are joined).
        if !route.ends_with("/join") {
            let member = call(&server, &alice, method.clone(), &fill(&private)).await;
            assert_ne!(member.0, 404, "{method} {route} for the owner: {member:?}");
        }
    }

    // MQTT: send and read markers answer the same error event for both.
    let mut m = Mqtt::connect(&server, &eve, "phone").await;
    let inbox = format!("u/{}/in", eve.id);
    m.subscribe(&inbox).await;
    let out = format!("u/{}/out", eve.id);
    let mut errors = Vec::new();
    for (n, conv) in [&private, &missing].into_iter().enumerate() {
        for op in [
            json!({"op": "send", "id": format!("s{n}"), "conv": conv, "body": "let me in"}),
            json!({"op": "read", "id": format!("r{n}"), "conv": conv, "seq": 1}),
        ] {
            let re = op["id"].clone();
            m.publish_json(&out, &op).await;
            let mut e = m
                .expect(&inbox, "an error event", |v| {
                    v["type"] == "error" && v["re"] == re
                })
                .await;
            e.as_object_mut().expect("object").remove("re");
            errors.push(e);
        }
    }
    assert_eq!(errors[0]["code"], "not_found", "{errors:?}");
    assert_eq!(errors[0], errors[2], "send: hidden and missing differ");
    assert_eq!(errors[1], errors[3], "read: hidden and missing differ");
    // Positive control: the same send from a member is stored.
    let mut a = Mqtt::connect(&server, &alice, "phone").await;
    let alice_inbox = format!("u/{}/in", alice.id);
    a.subscribe(&alice_inbox).await;
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &json!({"op": "send", "id": "ok", "conv": private, "body": "hi"}),
    )
    .await;
    a.expect(&alice_inbox, "the ack", |v| {
        v["type"] == "ack" && v["re"] == "ok"
    })
    .await;
    assert!(m
        .drain(Duration::from_millis(300))
        .await
        .iter()
        .all(|(_, p)| { !String::from_utf8_lossy(p).contains("\"message\"") }));
}

async fn register_named(server: &Server, username: &str, display_name: &str) -> reqwest::Response {
    client()
        .post(server.url("/v1/auth/register"))
        .json(&json!({ "username": username, "password": "a-good-password", "display_name": display_name }))
        .send()
        .await
        .expect("register")
}

async fn display_names_are_nfc_and_spoofing_characters_are_refused(db: Db) {
    let server = Server::start(db).await;
    for (n, bad) in [
        "admin\u{202E}nimda",
        "bob\u{2066}x",
        "tab\there",
        "al\u{200B}ice",
        &"x".repeat(65),
    ]
    .into_iter()
    .enumerate()
    {
        let res = register_named(&server, &format!("spoof{n}"), bad).await;
        expect_error(res, 422, "invalid_display_name").await;
    }
    // Positive control, and the stored form: composed, trimmed, and 64 characters of a
    // script whose characters are 3 bytes each still fit.
    let res = register_named(&server, "renee", "  Rene\u{0301}e  ").await;
    assert_eq!(res.status(), 201);
    let renee = account_from(&res.json().await.expect("json"), "a-good-password");
    let me: Value = client()
        .get(server.url("/v1/me"))
        .bearer_auth(&renee.access)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["display_name"], "Ren\u{00E9}e");
    let found: Value = client()
        .get(server.url("/v1/users?q=ren\u{00E9}"))
        .bearer_auth(&renee.access)
        .send()
        .await
        .expect("users")
        .json()
        .await
        .expect("json");
    assert!(found.to_string().contains(&renee.id), "{found}");
    assert_eq!(
        register_named(&server, "kanji", &"語".repeat(64))
            .await
            .status(),
        201
    );
}

async fn patch_me(server: &Server, who: &Account, body: Value) -> (u16, Value) {
    let res = client()
        .patch(server.url("/v1/me"))
        .bearer_auth(&who.access)
        .json(&body)
        .send()
        .await
        .expect("PATCH /v1/me");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn presence_reaches_only_people_sharing_a_private_conversation(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;
    let room = conversation(&server, &alice, "room", &[]).await;
    let joined = client()
        .post(server.url(&format!("/v1/conversations/{room}/join")))
        .bearer_auth(&bob.access)
        .send()
        .await
        .expect("join");
    assert_eq!(joined.status(), 200);
    conversation(&server, &alice, "group", &[&carol]).await;
    let topic = format!("u/{}/p", alice.id);

    let mut b = Mqtt::connect(&server, &bob, "phone").await;
    assert!(
        !b.try_subscribe(&topic).await,
        "a shared public room shows no presence"
    );
    let mut c = Mqtt::connect(&server, &carol, "phone").await;
    assert!(c.try_subscribe(&topic).await, "a shared private group does");

    // Last seen is shown until alice hides it.
    let a = Mqtt::connect(&server, &alice, "phone").await;
    c.expect(&topic, "alice online", |v| v["online"] == true)
        .await;
    a.kill();
    let offline = c
        .expect(&topic, "alice offline", |v| v["online"] == false)
        .await;
    assert!(offline["last_seen"].is_i64(), "{offline}");

    let (status, me) = patch_me(&server, &alice, json!({"hide_last_seen": true})).await;
    assert_eq!(
        (status, me["hide_last_seen"].as_bool()),
        (200, Some(true)),
        "{me}"
    );
    let a = Mqtt::connect(&server, &alice, "laptop").await;
    c.expect(&topic, "alice online", |v| v["online"] == true)
        .await;
    a.kill();
    let offline = c
        .expect(&topic, "alice offline", |v| v["online"] == false)
        .await;
    assert!(offline.get("last_seen").is_none(), "hidden: {offline}");
}

async fn read_markers_of_others_are_hidden_in_public_rooms(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let room = conversation(&server, &alice, "room", &[]).await;
    let group = conversation(&server, &alice, "group", &[&bob]).await;
    let joined = client()
        .post(server.url(&format!("/v1/conversations/{room}/join")))
        .bearer_auth(&bob.access)
        .send()
        .await
        .expect("join");
    assert_eq!(joined.status(), 200);
    for (conv, path) in [
        (&room, "/members"),
        (&room, ""),
        (&group, "/members"),
        (&group, ""),
    ] {
        let body: Value = client()
            .get(server.url(&format!("/v1/conversations/{conv}{path}")))
            .bearer_auth(&alice.access)
            .send()
            .await
            .expect("members")
            .json()
            .await
            .expect("json");
        let members = if path.is_empty() {
            body["members"].clone()
        } else {
            body
        };
        let entry = |who: &Account| {
            members
                .as_array()
                .expect("members")
                .iter()
                .find(|m| m["user_id"] == who.id.as_str())
                .cloned()
                .unwrap_or_else(|| panic!("{} not in {members}", who.username))
        };
        assert!(
            entry(&alice)["read_seq"].is_u64(),
            "one's own markers always show"
        );
        if conv == &room {
            let b = entry(&bob);
            assert!(
                b.get("read_seq").is_none() && b.get("delivered_seq").is_none(),
                "{b}"
            );
        } else {
            assert!(
                entry(&bob)["read_seq"].is_u64(),
                "a private group shows them: {members}"
            );
        }
    }
}

async fn display_names_can_be_changed_with_the_same_rules(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let (status, me) = patch_me(&server, &alice, json!({"display_name": "Ali\u{0301}ce"})).await;
    assert_eq!(
        (status, me["display_name"].as_str()),
        (200, Some("Al\u{00ED}ce")),
        "{me}"
    );
    let res = client()
        .patch(server.url("/v1/me"))
        .bearer_auth(&alice.access)
        .json(&json!({"display_name": "evil\u{202E}gpj.exe"}))
        .send()
        .await
        .expect("PATCH");
    expect_error(res, 422, "invalid_display_name").await;
    let (_, me) = patch_me(&server, &alice, json!({"display_name": ""})).await;
    assert!(me.get("display_name").is_none(), "{me}");
}

async fn send_rest(server: &Server, who: &Account, conv: &str, id: &str) -> reqwest::Response {
    client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&who.access)
        .json(&json!({"client_msg_id": id, "body": "hello"}))
        .send()
        .await
        .expect("send")
}

async fn set_block(server: &Server, who: &Account, other: &Account, on: bool) -> u16 {
    let req = if on {
        client().put(server.url(&format!("/v1/me/blocks/{}", other.id)))
    } else {
        client().delete(server.url(&format!("/v1/me/blocks/{}", other.id)))
    };
    req.bearer_auth(&who.access)
        .send()
        .await
        .expect("block")
        .status()
        .as_u16()
}

async fn blocking_stops_direct_messages_typing_and_presence(db: Db) {
    let database_url = match db {
        Db::Postgres => Some(fresh_pg_database().await),
        Db::Sqlite => None,
    };
    let options = || Options {
        database_url: database_url.clone(),
        ..Options::new(db)
    };
    let mut server = Server::start_with(options()).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;
    let dm = conversation(&server, &bob, "direct", &[&alice]).await;
    let group = conversation(&server, &alice, "group", &[&bob, &carol]).await;

    assert_eq!(set_block(&server, &alice, &bob, true).await, 204);
    assert_eq!(
        set_block(&server, &alice, &bob, true).await,
        204,
        "idempotent"
    );
    let res = client()
        .put(server.url(&format!("/v1/me/blocks/{}", alice.id)))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap();
    expect_error(res, 422, "invalid").await;
    let res = client()
        .put(server.url(&format!("/v1/me/blocks/{}", ulid::Ulid::new())))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;
    let list: Value = client()
        .get(server.url("/v1/me/blocks"))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["user_ids"], json!([bob.id]));

    // Sends into the direct conversation: refused over HTTP and MQTT alike.
    expect_error(send_rest(&server, &bob, &dm, "h1").await, 403, "forbidden").await;
    let mut b = Mqtt::connect(&server, &bob, "phone").await;
    let bob_inbox = format!("u/{}/in", bob.id);
    b.subscribe(&bob_inbox).await;
    b.publish_json(
        &format!("u/{}/out", bob.id),
        &json!({"op": "send", "id": "m1", "conv": dm, "body": "hi"}),
    )
    .await;
    let e = b
        .expect(&bob_inbox, "the refusal", |v| {
            v["type"] == "error" && v["re"] == "m1"
        })
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    // A new direct conversation cannot be opened either.
    let res = client()
        .post(server.url("/v1/conversations"))
        .bearer_auth(&bob.access)
        .json(&json!({"kind": "direct", "members": [alice.id]}))
        .send()
        .await
        .unwrap();
    expect_error(res, 403, "forbidden").await;
    // Positive controls: the group still works for bob, the direct one for carol.
    assert_eq!(send_rest(&server, &bob, &group, "g1").await.status(), 201);
    let carol_dm = conversation(&server, &carol, "direct", &[&alice]).await;
    assert_eq!(
        send_rest(&server, &carol, &carol_dm, "c1").await.status(),
        201
    );
    b.publish_json(
        &format!("u/{}/out", bob.id),
        &json!({"op": "send", "id": "m2", "conv": group, "body": "hi all"}),
    )
    .await;
    b.expect(&bob_inbox, "the ack", |v| {
        v["type"] == "ack" && v["re"] == "m2"
    })
    .await;
    let history: Value = client()
        .get(server.url(&format!("/v1/conversations/{dm}/messages")))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(0),
        "nothing from bob stored: {history}"
    );

    // Typing and presence: alice no longer sees bob's, still sees carol's.
    let mut a = Mqtt::connect(&server, &alice, "phone").await;
    a.subscribe(&format!("c/{group}/t/+")).await;
    assert!(
        !a.try_subscribe(&format!("u/{}/p", bob.id)).await,
        "bob's presence is hidden from alice"
    );
    assert!(a.try_subscribe(&format!("u/{}/p", carol.id)).await);
    let c = Mqtt::connect(&server, &carol, "phone").await;
    b.publish(
        &format!("c/{group}/t/{}", bob.id),
        br#"{"typing":true}"#.to_vec(),
    )
    .await;
    c.publish(
        &format!("c/{group}/t/{}", carol.id),
        br#"{"typing":true}"#.to_vec(),
    )
    .await;
    let seen = a.drain(Duration::from_millis(800)).await;
    let typists: Vec<&str> = seen
        .iter()
        .filter(|(t, _)| t.contains("/t/"))
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        typists,
        vec![format!("c/{group}/t/{}", carol.id)],
        "{seen:?}"
    );
    drop((a, b, c));

    // Blocks survive a restart (the index is seeded from the database).
    server.restart(&options());
    expect_error(send_rest(&server, &bob, &dm, "h2").await, 403, "forbidden").await;

    assert_eq!(set_block(&server, &alice, &bob, false).await, 204);
    assert_eq!(
        send_rest(&server, &bob, &dm, "h3").await.status(),
        201,
        "unblocked"
    );
}

async fn members_of(server: &Server, who: &Account, conv: &str) -> Vec<String> {
    let body: Value = client()
        .get(server.url(&format!("/v1/conversations/{conv}/members")))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    body.as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_str().expect("user_id").to_owned())
        .collect()
}

async fn invitations_of(server: &Server, who: &Account) -> Vec<Value> {
    let body: Value = client()
        .get(server.url("/v1/invitations"))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("invitations")
        .json()
        .await
        .expect("json");
    body["invitations"].as_array().expect("invitations").clone()
}

async fn who_may_add_me_turns_additions_into_invitations(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;
    let dave = register(&server, "dave").await;
    let (status, me) = patch_me(&server, &bob, json!({"group_adds": "nobody"})).await;
    assert_eq!(
        (status, me["group_adds"].as_str()),
        (200, Some("nobody")),
        "{me}"
    );
    assert_eq!(
        patch_me(&server, &carol, json!({"group_adds": "contacts"}))
            .await
            .0,
        200
    );
    assert_eq!(
        patch_me(&server, &dave, json!({"group_adds": "friends"}))
            .await
            .0,
        422
    );

    let group = conversation(&server, &alice, "group", &[&bob, &carol, &dave]).await;
    let mut members = members_of(&server, &alice, &group).await;
    members.sort();
    let mut expected = vec![alice.id.clone(), dave.id.clone()];
    expected.sort();
    assert_eq!(
        members, expected,
        "dave (everyone) is in; bob (nobody) and carol (no contact yet) are invited"
    );

    // The invitation is an inbox event, and listed.
    let events = sync(&server, &bob, 0).await;
    let event = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == "invitation")
        .cloned()
        .unwrap_or_else(|| panic!("no invitation event: {events}"));
    assert_eq!(
        (event["conv"].as_str(), event["by"].as_str()),
        (Some(group.as_str()), Some(alice.id.as_str()))
    );
    let listed = invitations_of(&server, &bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], event["id"]);

    let accept = |who: &Account, id: &str| {
        let (server, who, id) = (&server, who.clone(), id.to_owned());
        async move {
            client()
                .post(server.url(&format!("/v1/invitations/{id}/accept")))
                .bearer_auth(&who.access)
                .send()
                .await
                .expect("accept")
        }
    };
    // Only the invitee may accept it.
    expect_error(
        accept(&dave, event["id"].as_str().unwrap()).await,
        404,
        "not_found",
    )
    .await;
    let res = accept(&bob, event["id"].as_str().unwrap()).await;
    assert_eq!(res.status(), 200);
    assert!(
        members_of(&server, &alice, &group).await.contains(&bob.id),
        "bob joined"
    );
    expect_error(
        accept(&bob, event["id"].as_str().unwrap()).await,
        404,
        "not_found",
    )
    .await;

    let carols = invitations_of(&server, &carol).await;
    assert_eq!(carols.len(), 1);
    let declined = client()
        .post(server.url(&format!(
            "/v1/invitations/{}/decline",
            carols[0]["id"].as_str().unwrap()
        )))
        .bearer_auth(&carol.access)
        .send()
        .await
        .expect("decline");
    assert_eq!(declined.status(), 204);
    assert!(!members_of(&server, &alice, &group)
        .await
        .contains(&carol.id));
    assert!(invitations_of(&server, &carol).await.is_empty());

    // "contacts": once carol and alice share a direct conversation, alice adds her at once.
    conversation(&server, &carol, "direct", &[&alice]).await;
    let second = conversation(&server, &alice, "group", &[&carol]).await;
    assert!(members_of(&server, &alice, &second)
        .await
        .contains(&carol.id));

    // Adding members follows the same rule; a user who blocked the adder hears nothing.
    let third = conversation(&server, &alice, "group", &[]).await;
    let res = client()
        .put(server.url(&format!("/v1/me/blocks/{}", alice.id)))
        .bearer_auth(&dave.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let added = client()
        .post(server.url(&format!("/v1/conversations/{third}/members")))
        .bearer_auth(&alice.access)
        .json(&json!({"user_ids": [bob.id, dave.id, carol.id]}))
        .send()
        .await
        .expect("add");
    assert_eq!(added.status(), 200);
    let mut members = members_of(&server, &alice, &third).await;
    members.sort();
    let mut expected = vec![alice.id.clone(), carol.id.clone()];
    expected.sort();
    assert_eq!(members, expected);
    assert_eq!(
        invitations_of(&server, &bob).await.len(),
        1,
        "bob is invited again"
    );
    assert!(
        invitations_of(&server, &dave).await.is_empty(),
        "dave blocked alice"
    );
}

on_both_databases!(
    hidden_and_missing_conversations_get_the_same_404_everywhere,
    display_names_are_nfc_and_spoofing_characters_are_refused,
    presence_reaches_only_people_sharing_a_private_conversation,
    read_markers_of_others_are_hidden_in_public_rooms,
    display_names_can_be_changed_with_the_same_rules,
    blocking_stops_direct_messages_typing_and_presence,
    who_may_add_me_turns_additions_into_invitations,
);
