//! The SDK scenario in Rust, against a real server: two clients log in, exchange
//! messages, see receipts and typing; one goes offline and queues two messages, the
//! server restarts, the client reconnects and both arrive exactly once. Plus: a client
//! "killed" with messages in its outbox is replaced by a new one on the same data path,
//! which delivers them once.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::recorder::{client_with, Recorder};
use common::Server;
use tidings_core::sdk::*;

/// Every client of the scenario goes through the TLS proxy (HTTPS + MQTT over TLS)
/// and trusts only the run's throwaway CA.
fn client(server: &Server, dir: &std::path::Path, device: &str) -> (Client, Arc<Recorder>) {
    client_with(config(server, dir, device))
}

fn config(server: &Server, dir: &std::path::Path, device: &str) -> ClientConfig {
    ClientConfig {
        pinned_ca_pem: Some(server.ca_pem()),
        ..ClientConfig::new(
            server.https(),
            server.mqtts(),
            dir.to_string_lossy(),
            device,
        )
    }
}

async fn wait_message(rec: &Recorder, body: &str) -> Message {
    rec.message(body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_chat_and_offline_messages_survive_a_server_restart() {
    let mut server = Server::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, rec_a) = client(&server, dir_a.path(), "alice-phone");
    let (bob, rec_b) = client(&server, dir_b.path(), "bob-phone");
    let sa = alice
        .register("alice", "alice-password")
        .await
        .expect("register alice");
    let sb = bob
        .register("bob", "bob-password")
        .await
        .expect("register bob");
    // Logging in again works too (the session is replaced).
    bob.login("bob", "bob-password").await.expect("login bob");
    assert_eq!(bob.session().await.unwrap().user_id, sb.user_id);

    alice.connect().await.unwrap();
    bob.connect().await.unwrap();
    rec_a.state(ConnectionState::Connected).await;
    rec_b.state(ConnectionState::Connected).await;

    let conv = alice
        .create_conversation("direct", None, vec![sb.user_id.clone()])
        .await
        .expect("create conversation");
    rec_b
        .wait_for("conversation event", |evs| {
            evs.iter().find(|e| matches!(e, ClientEvent::Conversation { conversation } if conversation.id == conv.id)).map(|_| ())
        })
        .await;

    // Messages both ways, with reply_to and mentions.
    let cid = alice
        .send_text(&conv.id, "hello bob", None, vec![sb.user_id.clone()])
        .await
        .unwrap();
    let got = wait_message(&rec_b, "hello bob").await;
    assert_eq!(got.sender, sa.user_id);
    assert_eq!(got.client_msg_id, cid);
    assert_eq!(got.mentions, vec![sb.user_id.clone()]);
    // Read receipt (before replying: sending moves the sender's own read marker).
    bob.mark_read(&conv.id, got.seq).await.unwrap();
    let receipt = rec_a
        .wait_for("read receipt", |evs| {
            evs.iter().find_map(|e| match e {
                ClientEvent::Receipt { receipt } if receipt.user_id == sb.user_id => {
                    Some(receipt.clone())
                }
                _ => None,
            })
        })
        .await;
    assert_eq!(receipt.kind, ReceiptKind::Read);
    assert_eq!(receipt.seq, got.seq);

    bob.send_text(&conv.id, "hi alice", Some(got.id.clone()), vec![])
        .await
        .unwrap();
    let reply = wait_message(&rec_a, "hi alice").await;
    assert_eq!(reply.reply_to.as_deref(), Some(got.id.as_str()));
    rec_a
        .wait_for("sent event", |evs| {
            evs.iter()
                .find(|e| matches!(e, ClientEvent::Sent { client_id, .. } if *client_id == cid))
                .map(|_| ())
        })
        .await;
    assert!(alice.pending().unwrap().is_empty());

    // Typing (ephemeral; repeated until alice's typing subscription is in place).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        bob.set_typing(&conv.id, true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = rec_a.all().iter().any(|e| {
            matches!(e, ClientEvent::Typing { user_id, typing: true, conversation_id } if *user_id == sb.user_id && *conversation_id == conv.id)
        });
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "alice never saw bob typing");
    }

    // Reactions and edits reach the other side.
    alice.react(&reply.id, "👍", true).await.unwrap();
    rec_b
        .wait_for("reaction", |evs| {
            evs.iter().find(|e| matches!(e, ClientEvent::Reaction { reaction } if reaction.emoji == "👍" && reaction.added)).map(|_| ())
        })
        .await;
    alice.edit(&got.id, "hello bob (edited)").await.unwrap();
    rec_b
        .wait_for("edit", |evs| {
            evs.iter().find(|e| matches!(e, ClientEvent::MessageUpdated { message } if message.body == "hello bob (edited)")).map(|_| ())
        })
        .await;

    // An attachment: uploaded over HTTP, then sent through the outbox.
    let png =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89".to_vec();
    alice
        .send_attachment(
            &conv.id,
            png,
            "image/png",
            Some("dot.png".into()),
            "a picture",
        )
        .await
        .expect("send attachment");
    let pic = wait_message(&rec_b, "a picture").await;
    assert_eq!(pic.kind, "image");
    let att = pic.attachment.expect("attachment");
    assert_eq!(att.mime, "image/png");

    // A deleted message, and presence of the other member.
    let extra = alice
        .send_text(&conv.id, "to be deleted", None, vec![])
        .await
        .unwrap();
    let doomed = wait_message(&rec_b, "to be deleted").await;
    assert_eq!(doomed.client_msg_id, extra);
    alice.delete(&doomed.id).await.unwrap();
    rec_b
        .wait_for("deletion", |evs| {
            evs.iter()
                .any(|e| matches!(e, ClientEvent::MessageDeleted { message_id, .. } if *message_id == doomed.id))
                .then_some(())
        })
        .await;
    rec_b
        .wait_for("alice's presence", |evs| {
            evs.iter()
                .any(|e| matches!(e, ClientEvent::Presence { user_id, online: true, .. } if *user_id == sa.user_id))
                .then_some(())
        })
        .await;

    // History, search, members and the cache.
    let history = alice.history(&conv.id, None, 50).await.unwrap().messages;
    assert_eq!(history.len(), 4);
    assert!(history[3].deleted && history[3].body.is_empty());
    let members = alice.members(&conv.id).await.unwrap();
    assert_eq!(members.len(), 2);
    let convs = bob.conversations().await.unwrap();
    assert!(convs.iter().any(|c| c.id == conv.id));
    assert!(!bob.cached_messages(&conv.id, 10).unwrap().is_empty());
    let found = alice.search("alice", None).await.unwrap();
    assert!(found.iter().any(|m| m.body == "hi alice"), "{found:?}");

    // Bob goes offline and queues two messages; the server restarts meanwhile.
    bob.disconnect();
    let q1 = bob
        .send_text(&conv.id, "queued one", None, vec![])
        .await
        .unwrap();
    let q2 = bob
        .send_text(&conv.id, "queued two", None, vec![])
        .await
        .unwrap();
    assert_eq!(bob.pending().unwrap(), vec![q1.clone(), q2.clone()]);
    tokio::task::block_in_place(|| server.restart());
    // Alice writes while bob is away: bob gets it through sync from his last inbox seq.
    rec_a.state(ConnectionState::Connected).await;
    alice
        .send_text(&conv.id, "while you were away", None, vec![])
        .await
        .unwrap();
    rec_a
        .wait_for("own message stored", |evs| {
            evs.iter()
                .any(|e| matches!(e, ClientEvent::Message { message, .. } if message.body == "while you were away"))
                .then_some(())
        })
        .await;
    let seen_before = bob.last_inbox_seq().unwrap();
    bob.connect().await.unwrap();
    wait_message(&rec_b, "while you were away").await;
    // The position moves right after the event is applied (never before: a crash in
    // between must not skip it).
    rec_b
        .wait_for("the inbox position to move", |_| {
            (bob.last_inbox_seq().unwrap() > seen_before).then_some(())
        })
        .await;
    wait_message(&rec_a, "queued one").await;
    wait_message(&rec_a, "queued two").await;
    rec_b
        .wait_for("outbox drained", |_| {
            bob.pending().unwrap().is_empty().then_some(())
        })
        .await;
    // Give any duplicate a chance to show up, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rec_a.messages_with_body("queued one").len(), 1);
    assert_eq!(rec_a.messages_with_body("queued two").len(), 1);
    let history = alice.history(&conv.id, None, 50).await.unwrap().messages;
    let bodies: Vec<&str> = history.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies.iter().filter(|b| b.starts_with("queued")).count(),
        2,
        "stored once each: {bodies:?}"
    );
    assert_eq!(
        history
            .iter()
            .find(|m| m.body == "queued one")
            .unwrap()
            .client_msg_id,
        q1
    );
    // Alice reconnected by herself (backoff) and is connected again.
    rec_a.state(ConnectionState::Connected).await;
    assert!(rec_a.all().iter().any(|e| matches!(
        e,
        ClientEvent::ConnectionState {
            state: ConnectionState::WaitingToRetry
        }
    )));

    alice.shutdown();
    bob.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_s_outbox_is_delivered_once_by_the_next_instance() {
    let mut server = Server::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, rec_a) = client(&server, dir_a.path(), "alice-1");
    alice.register("alice2", "alice-password").await.unwrap();
    let (bob, _) = client(&server, dir_b.path(), "bob-1");
    let sb = bob.register("bob2", "bob-password").await.unwrap();
    let conv = bob
        .create_conversation(
            "group",
            Some("g".into()),
            vec![alice.session().await.unwrap().user_id],
        )
        .await
        .unwrap();
    alice.connect().await.unwrap();
    rec_a.state(ConnectionState::Connected).await;

    // Bob's first app instance writes two messages while the server is down, and dies.
    tokio::task::block_in_place(|| server.stop());
    bob.send_text(&conv.id, "from the dead 1", None, vec![])
        .await
        .unwrap();
    bob.send_text(&conv.id, "from the dead 2", None, vec![])
        .await
        .unwrap();
    bob.shutdown();
    drop(bob);
    tokio::task::block_in_place(|| server.start_again());

    // A new instance on the same data path: logged in already, outbox intact.
    let (bob2, rec_b2) = client(&server, dir_b.path(), "bob-1");
    assert_eq!(bob2.session().await.unwrap().user_id, sb.user_id);
    assert_eq!(bob2.pending().unwrap().len(), 2);
    assert!(bob2
        .cached_conversations()
        .unwrap()
        .iter()
        .any(|c| c.id == conv.id));
    bob2.connect().await.unwrap();
    rec_b2.state(ConnectionState::Connected).await;
    wait_message(&rec_a, "from the dead 1").await;
    wait_message(&rec_a, "from the dead 2").await;
    rec_b2
        .wait_for("outbox drained", |_| {
            bob2.pending().unwrap().is_empty().then_some(())
        })
        .await;
    // A third instance finds nothing to send; nothing arrives twice.
    bob2.shutdown();
    drop(bob2);
    let (bob3, rec_b3) = client(&server, dir_b.path(), "bob-1");
    assert!(bob3.pending().unwrap().is_empty());
    bob3.connect().await.unwrap();
    rec_b3.state(ConnectionState::Connected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rec_a.messages_with_body("from the dead 1").len(), 1);
    assert_eq!(rec_a.messages_with_body("from the dead 2").len(), 1);
    let history = alice.history(&conv.id, None, 50).await.unwrap().messages;
    assert_eq!(history.len(), 2, "{history:?}");
    bob3.shutdown();
    alice.shutdown();
}

#[tokio::test]
async fn bad_configuration_and_arguments_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ClientConfig::new(
        "http://127.0.0.1:1",
        "mqtt://127.0.0.1:1",
        dir.path().to_string_lossy(),
        "dev",
    );
    cfg.keep_alive_secs = 0; // rumqttc would panic on a sub-second keep-alive
    assert!(matches!(
        Client::new(cfg.clone(), tokio::runtime::Handle::current()),
        Err(SdkError::Config { .. })
    ));
    cfg.keep_alive_secs = 30;
    cfg.device_id = "has:colon".into();
    assert!(matches!(
        Client::new(cfg.clone(), tokio::runtime::Handle::current()),
        Err(SdkError::Config { .. })
    ));
    cfg.device_id = "dev".into();
    let c = Client::new(cfg, tokio::runtime::Handle::current()).unwrap();
    assert_eq!(
        c.send_text("x", "hi", None, vec![]).await,
        Err(SdkError::NotLoggedIn)
    );
    assert!(matches!(c.connect().await, Err(SdkError::NotLoggedIn)));
    assert!(matches!(
        c.login("nobody", "password1").await,
        Err(SdkError::Network { .. })
    ));
}

/// Tokens from elsewhere, with an access token the broker refuses: the refused CONNECTs
/// look like network failures, so after two the SDK asks the REST API, refreshes, and
/// connects with the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_access_token_is_refreshed_inside() {
    let server = Server::start();
    let res: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/auth/register", server.http()))
        .json(&serde_json::json!({"username": "carol", "password": "carol-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = res["user"]["id"].as_str().unwrap();
    let refresh = res["refresh_token"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (carol, rec) = client(&server, dir.path(), "carol-1");
    carol
        .use_tokens(user, "carol", "not-a-valid-jwt", refresh, 900)
        .await
        .unwrap();
    carol.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;
    assert!(
        rec.all().iter().any(|e| matches!(
            e,
            ClientEvent::ConnectionState {
                state: ConnectionState::WaitingToRetry
            }
        )),
        "the first CONNECT must have been refused"
    );
    let conv = carol
        .create_conversation("group", Some("solo".into()), vec![])
        .await
        .unwrap();
    let id = carol
        .send_text(&conv.id, "still here", None, vec![])
        .await
        .unwrap();
    rec.wait_for("ack", |evs| {
        evs.iter()
            .find(|e| matches!(e, ClientEvent::Sent { client_id, .. } if *client_id == id))
            .map(|_| ())
    })
    .await;
    carol.shutdown();
}

/// A gap in the inbox sequence (an event lost on the QoS 0 inbox) makes the client sync
/// from the last seq it applied: the lost event arrives through `GET /v1/sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_inbox_sequence_triggers_a_sync() {
    let server = Server::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, rec_a) = client(&server, dir_a.path(), "alice-gap");
    let (bob, rec_b) = client(&server, dir_b.path(), "bob-gap");
    alice.register("alice3", "alice-password").await.unwrap();
    let sb = bob.register("bob3", "bob-password").await.unwrap();
    let conv = alice
        .create_conversation("direct", None, vec![sb.user_id])
        .await
        .unwrap();
    alice.connect().await.unwrap();
    bob.connect().await.unwrap();
    rec_a.state(ConnectionState::Connected).await;
    rec_b.state(ConnectionState::Connected).await;
    alice
        .send_text(&conv.id, "lost one", None, vec![])
        .await
        .unwrap();
    wait_message(&rec_b, "lost one").await;
    let seen = bob.last_inbox_seq().unwrap();
    // Pretend "lost one" never reached bob: his store forgets it.
    let file = dir_b.path().join("tidings-sdk.sqlite3");
    tidings_core::sdk::local::LocalStore::open(dir_b.path(), &file)
        .unwrap()
        .set_last_iseq(seen - 1)
        .unwrap();
    alice
        .send_text(&conv.id, "after the gap", None, vec![])
        .await
        .unwrap();
    wait_message(&rec_b, "after the gap").await;
    rec_b
        .wait_for("the lost event, synced", |evs| {
            let n = evs
                .iter()
                .filter(
                    |e| matches!(e, ClientEvent::Message { message, .. } if message.body == "lost one"),
                )
                .count();
            (n == 2).then_some(())
        })
        .await;
    assert_eq!(bob.last_inbox_seq().unwrap(), seen + 1);
    assert_eq!(rec_b.messages_with_body("after the gap").len(), 1);
    alice.shutdown();
    bob.shutdown();
}

/// A server whose certificate the client does not trust (another CA pinned, or no pin:
/// the public roots) is a typed `Tls` error on every HTTP call and a `TlsFailed` state
/// with a `tls` event on MQTT, never the cache served as if the network were down. The
/// same data path with the right CA pinned works (the positive control), and its cache
/// is full, so a fallback to it would have been visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_typed_tls_error_not_the_cache() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = client(&server, dir.path(), "alice-tls");
    alice.register("alice-tls", "alice-password").await.unwrap();
    let conv = alice
        .create_conversation("group", Some("pinned".into()), vec![])
        .await
        .unwrap();
    assert_eq!(alice.conversations().await.unwrap().len(), 1);
    alice.history(&conv.id, None, 50).await.unwrap();
    alice.shutdown();
    drop(alice);

    let other_ca = common::tls::TestPki::mint().ca_pem;
    for (what, pin, broker) in [
        ("another CA pinned", Some(other_ca.clone()), server.mqtts()),
        ("another CA pinned, wss", Some(other_ca), server.wss()),
        ("no pin", None, server.mqtts()),
    ] {
        let cfg = ClientConfig {
            pinned_ca_pem: pin,
            broker_url: broker,
            ..config(&server, dir.path(), "alice-tls")
        };
        let c = Client::new(cfg, tokio::runtime::Handle::current()).unwrap();
        let rec = Arc::new(Recorder::default());
        c.set_listener(rec.clone());
        assert!(c.session().await.is_some(), "{what}: the session is stored");
        assert_eq!(c.cached_conversations().unwrap().len(), 1, "{what}");
        let err = c.conversations().await;
        assert!(matches!(err, Err(SdkError::Tls { .. })), "{what}: {err:?}");
        let err = c.history(&conv.id, None, 50).await;
        assert!(matches!(err, Err(SdkError::Tls { .. })), "{what}: {err:?}");
        let err = c.login("alice-tls", "alice-password").await;
        assert!(matches!(err, Err(SdkError::Tls { .. })), "{what}: {err:?}");
        c.connect().await.unwrap();
        rec.wait_for("TlsFailed and a tls event", |evs| {
            let failed = evs.iter().any(|e| {
                matches!(
                    e,
                    ClientEvent::ConnectionState {
                        state: ConnectionState::TlsFailed
                    }
                )
            });
            let event = evs
                .iter()
                .any(|e| matches!(e, ClientEvent::Error { code, .. } if code == "tls"));
            (failed && event).then_some(())
        })
        .await;
        assert!(
            !rec.all().iter().any(|e| matches!(
                e,
                ClientEvent::ConnectionState {
                    state: ConnectionState::Connected
                }
            )),
            "{what}: connected through an untrusted certificate"
        );
        c.shutdown();
    }

    // An https:// URL at a port that speaks plain HTTP is a TLS error too.
    let plain = ClientConfig {
        http_url: format!("https://127.0.0.1:{}", server.http_port),
        ..config(&server, dir.path(), "alice-tls")
    };
    let c = Client::new(plain, tokio::runtime::Handle::current()).unwrap();
    let err = c.conversations().await;
    assert!(matches!(err, Err(SdkError::Tls { .. })), "{err:?}");
    c.shutdown();

    // Positive control: the right CA on the same data path.
    let (again, rec) = client(&server, dir.path(), "alice-tls");
    assert_eq!(again.conversations().await.unwrap().len(), 1);
    again.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;
    again.shutdown();
}
