//! The SDK calls around chatting, against a real server: people search, members and
//! roles, invitations, mute, rooms, unread counts that stay current in the cache,
//! attachment downloads (and refusals for outsiders), attachments queued offline, and
//! aborting: an upload in progress stops sending and sends no message.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::recorder::{client, client_with, wait_until, Recorder};
use common::Server;
use tidings_core::sdk::ffi::TidingsClient;
use tidings_core::sdk::*;

fn config(server: &Server, http: String, dir: &std::path::Path, device: &str) -> ClientConfig {
    ClientConfig::new(http, server.mqtt(), dir.to_string_lossy(), device)
}

fn role_of(members: &[Member], user: &str) -> Option<String> {
    members
        .iter()
        .find(|m| m.user_id == user)
        .map(|m| m.role.clone())
}

fn cached(client: &Client, conv: &str) -> Conversation {
    client
        .cached_conversations()
        .unwrap()
        .into_iter()
        .find(|c| c.id == conv)
        .expect("cached conversation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_around_chat_work_against_the_server() {
    let server = Server::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, alice_rec) = client(&server, dirs[0].path(), "alice-phone");
    let (bob, bob_rec) = client(&server, dirs[1].path(), "bob-phone");
    let (carol, _) = client(&server, dirs[2].path(), "carol-phone");
    let a = alice.register("alice", "alice-password").await.unwrap();
    let b = bob.register("bob", "bob-password").await.unwrap();
    let c = carol.register("carol", "carol-password").await.unwrap();
    alice.connect().await.unwrap();
    bob.connect().await.unwrap();
    alice_rec.state(ConnectionState::Connected).await;
    bob_rec.state(ConnectionState::Connected).await;

    // People search.
    let found = alice.search_users("bo", 10).await.unwrap();
    assert!(
        found
            .iter()
            .any(|u| u.id == b.user_id && u.username == "bob"),
        "{found:?}"
    );
    assert!(!found.iter().any(|u| u.id == c.user_id));
    assert!(matches!(
        alice.search_users("  ", 10).await,
        Err(SdkError::InvalidArgument { .. })
    ));

    // Members and roles.
    let group = alice
        .create_conversation("group", Some("calls".into()), vec![b.user_id.clone()])
        .await
        .unwrap();
    let members = alice
        .add_members(&group.id, vec![c.user_id.clone()], None)
        .await
        .unwrap();
    assert_eq!(role_of(&members, &c.user_id).as_deref(), Some("member"));
    alice
        .set_role(&group.id, &c.user_id, "admin")
        .await
        .unwrap();
    let members = alice.members(&group.id).await.unwrap();
    assert_eq!(role_of(&members, &c.user_id).as_deref(), Some("admin"));
    assert!(matches!(
        alice.set_role(&group.id, &c.user_id, "emperor").await,
        Err(SdkError::InvalidArgument { .. })
    ));
    // Bob is a plain member: the server refuses him, with its code.
    let refused = bob.remove_member(&group.id, &c.user_id).await.unwrap_err();
    assert!(
        matches!(refused, SdkError::Server { ref code, .. } if code == "forbidden"),
        "{refused:?}"
    );
    alice.remove_member(&group.id, &c.user_id).await.unwrap();
    assert_eq!(
        role_of(&alice.members(&group.id).await.unwrap(), &c.user_id),
        None
    );

    // Invitations: carol lets nobody add her, so alice's add becomes an invitation,
    // which reaches her live too.
    let (carol_live, carol_rec) = client(&server, dirs[2].path(), "carol-phone");
    drop(carol);
    let carol = carol_live;
    carol.connect().await.unwrap();
    carol_rec.state(ConnectionState::Connected).await;
    let carol_token = server.access_token("carol", "carol-password").await;
    let res = reqwest::Client::new()
        .patch(format!("{}/v1/me", server.http()))
        .bearer_auth(&carol_token)
        .json(&serde_json::json!({"group_adds": "nobody"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    alice
        .add_members(&group.id, vec![c.user_id.clone()], None)
        .await
        .unwrap();
    let invitations = carol.invitations().await.unwrap();
    let invitation = invitations
        .iter()
        .find(|i| i.conversation_id == group.id)
        .expect("an invitation");
    assert_eq!(invitation.invited_by, a.user_id);
    let live = carol_rec
        .wait_for("the invitation event", |evs| {
            evs.iter().find_map(|e| match e {
                ClientEvent::Invitation { invitation } => Some(invitation.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(
        (
            live.id.as_str(),
            live.conversation_id.as_str(),
            live.name.as_deref()
        ),
        (invitation.id.as_str(), group.id.as_str(), Some("calls"))
    );
    carol.answer_invitation(&invitation.id, true).await.unwrap();
    assert!(role_of(&alice.members(&group.id).await.unwrap(), &c.user_id).is_some());
    assert!(carol.invitations().await.unwrap().is_empty());

    // Unread counts: the cached summary follows live messages and alice's own reads.
    alice.conversations().await.unwrap();
    assert_eq!(cached(&alice, &group.id).unread, 0);
    for i in 0..3 {
        bob.send_text(&group.id, &format!("unread {i}"), None, vec![])
            .await
            .unwrap();
    }
    let last = alice_rec.message("unread 2").await;
    assert_eq!(cached(&alice, &group.id).unread, 3);
    assert_eq!(
        alice.unread_total().await.unwrap(),
        UnreadTotal {
            messages: 3,
            conversations: 1
        }
    );
    alice.mark_read(&group.id, last.seq).await.unwrap();
    alice_rec
        .wait_for("alice's own read receipt", |evs| {
            evs.iter()
                .any(|e| matches!(e, ClientEvent::Receipt { receipt } if receipt.user_id == a.user_id && receipt.seq == last.seq))
                .then_some(())
        })
        .await;
    assert_eq!(cached(&alice, &group.id).unread, 0);
    assert_eq!(alice.unread_total().await.unwrap().messages, 0);

    // Mute: cached, and a muted conversation is not in the badge.
    alice
        .set_conversation_flags(&group.id, Some(true), None)
        .await
        .unwrap();
    let conv = cached(&alice, &group.id);
    assert!(conv.muted && !conv.archived);
    bob.send_text(&group.id, "while muted", None, vec![])
        .await
        .unwrap();
    alice_rec.message("while muted").await;
    assert_eq!(alice.unread_total().await.unwrap().messages, 0);
    alice.conversations().await.unwrap();
    assert!(
        cached(&alice, &group.id).muted,
        "a list fetch keeps the flag"
    );

    // Rooms: listed with their size, and joined.
    let room = alice
        .create_conversation("room", Some("lobby".into()), vec![])
        .await
        .unwrap();
    let rooms = carol.rooms(None, 50).await.unwrap();
    let listed = rooms
        .iter()
        .find(|r| r.conversation.id == room.id)
        .expect("the room is listed");
    assert_eq!(listed.member_count, 1);
    carol.join_room(&room.id).await.unwrap();
    assert!(carol
        .cached_conversations()
        .unwrap()
        .iter()
        .any(|c| c.id == room.id));
    assert_eq!(
        carol
            .rooms(None, 50)
            .await
            .unwrap()
            .iter()
            .find(|r| r.conversation.id == room.id)
            .map(|r| r.member_count),
        Some(2)
    );

    // Attachments: a member downloads the bytes; an image loader gets URL + header;
    // someone outside the conversation is refused.
    let bytes: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    alice
        .send_attachment(
            &group.id,
            bytes.clone(),
            "text/plain",
            Some("notes.txt".into()),
            "a file",
        )
        .await
        .unwrap();
    let with_file = bob_rec.message("a file").await;
    let attachment = with_file
        .attachment
        .expect("the message carries the attachment");
    assert_eq!(
        bob.download_attachment(&attachment.id).await.unwrap(),
        bytes
    );
    let req = bob.attachment_request(&attachment.id).await.unwrap();
    let fetched = reqwest::Client::new()
        .get(&req.url)
        .header("authorization", &req.authorization)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), bytes);
    let dave_dir = tempfile::tempdir().unwrap();
    let (dave, _) = client(&server, dave_dir.path(), "dave-phone");
    dave.register("dave", "dave-password").await.unwrap();
    let outsider = dave.download_attachment(&attachment.id).await.unwrap_err();
    assert!(
        matches!(outsider, SdkError::Server { status, .. } if status == 404 || status == 403),
        "{outsider:?}"
    );

    alice.shutdown();
    bob.shutdown();
    carol.shutdown();
    dave.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_upload_stops_sending_and_sends_no_message() {
    let server = Server::start();
    let (proxy, sent) =
        common::proxy::slow(server.http_port, 64 * 1024, Duration::from_millis(50)).await;
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Alice's app goes through the FFI object, as Swift and Kotlin do, over a slow link.
    let alice = TidingsClient::new(config(
        &server,
        format!("http://127.0.0.1:{proxy}"),
        alice_dir.path(),
        "alice-phone",
    ))
    .unwrap();
    let (bob, bob_rec) = client(&server, bob_dir.path(), "bob-phone");
    let b = bob.register("bob", "bob-password").await.unwrap();
    alice
        .register("alice".into(), "alice-password".into())
        .await
        .unwrap();
    alice.connect().await.unwrap();
    bob.connect().await.unwrap();
    bob_rec.state(ConnectionState::Connected).await;
    let conv = alice
        .create_conversation("direct".into(), None, vec![b.user_id.clone()])
        .await
        .unwrap();

    // 20 MiB at ~1.3 MB/s would take ~16 s. Queueing returns at once; the upload
    // runs in the background and the app gives up on it after 1 s.
    let file = vec![b'x'; 20 * 1024 * 1024];
    let before = sent.load(Ordering::SeqCst);
    let queued = tokio::time::timeout(
        Duration::from_secs(2),
        alice.send_attachment(
            conv.id.clone(),
            file,
            "text/plain".into(),
            Some("big.txt".into()),
            "the big file".into(),
        ),
    )
    .await
    .expect("queueing does not wait for the upload")
    .unwrap();
    let pending = alice.pending_messages().unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].attachment_file.is_some() && pending[0].attachment_id.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_cancel = sent.load(Ordering::SeqCst) - before;
    // Control: the upload was really on the wire when it was aborted.
    assert!(at_cancel > 200_000, "only {at_cancel} bytes went up");
    assert!(alice.abort_pending(queued.clone()).unwrap());

    // Aborted: after what the sockets had already buffered drains, the uplink goes
    // quiet. A detached task would keep it busy until all 20 MiB were through.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = sent.load(Ordering::SeqCst);
    let mut quiet = 0;
    while quiet < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "still uploading 10 s after the cancel ({} bytes so far)",
            last - before
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = sent.load(Ordering::SeqCst);
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
    assert!(
        last - before < 10 * 1024 * 1024,
        "{} bytes went up",
        last - before
    );
    // And nothing was queued or sent.
    assert!(alice.pending().unwrap().is_empty());
    assert!(!bob_rec.got_message("the big file"));
    // Nothing stored, and the half-received file was thrown away.
    let uploads = server.dir.path().join("data").join("uploads");
    let entries = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir).map_or(vec![], |d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
    };
    let stored: Vec<String> = entries(&uploads)
        .into_iter()
        .filter(|n| n != ".incoming")
        .collect();
    assert!(stored.is_empty(), "stored uploads: {stored:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !entries(&uploads.join(".incoming")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a staged upload stayed: {:?}",
            entries(&uploads.join(".incoming"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Control: the same object still works for the next call on the same link.
    alice
        .send_text(conv.id.clone(), "after the cancel".into(), None, vec![])
        .await
        .unwrap();
    bob_rec.message("after the cancel").await;
    alice.shutdown();
    bob.shutdown();
}

/// Registers alice and bob, connects bob, and opens their direct conversation.
async fn alice_and_bob(
    alice: &Client,
    bob: &Client,
    bob_rec: &Recorder,
) -> (Conversation, SessionInfo) {
    alice.register("alice", "alice-password").await.unwrap();
    let b = bob.register("bob", "bob-password").await.unwrap();
    bob.connect().await.unwrap();
    bob_rec.state(ConnectionState::Connected).await;
    let conv = alice
        .create_conversation("direct", None, vec![b.user_id.clone()])
        .await
        .unwrap();
    (conv, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_listed_with_content_and_editable_until_they_go_out() {
    let server = Server::start();
    // Alice's MQTT link holds every packet 1 s, so a published message stays unacked
    // for a while.
    let (slow_mqtt, _) =
        common::proxy::slow(server.mqtt_port, 1 << 16, Duration::from_millis(1000)).await;
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _) = client_with(ClientConfig::new(
        server.http(),
        format!("mqtt://127.0.0.1:{slow_mqtt}"),
        alice_dir.path().to_string_lossy(),
        "alice-phone",
    ));
    let (bob, bob_rec) = client(&server, bob_dir.path(), "bob-phone");
    let (conv, b) = alice_and_bob(&alice, &bob, &bob_rec).await;

    // Offline: queued with their content, in order, and editable.
    let first = alice
        .send_text(&conv.id, "first draft", None, vec![])
        .await
        .unwrap();
    let second = alice
        .send_text(&conv.id, "second", None, vec![b.user_id.clone()])
        .await
        .unwrap();
    let pending = alice.pending_messages().unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|p| (p.client_id.as_str(), p.body.as_str(), p.sent))
            .collect::<Vec<_>>(),
        vec![
            (first.as_str(), "first draft", false),
            (second.as_str(), "second", false)
        ]
    );
    assert_eq!(pending[1].mentions, vec![b.user_id.clone()]);
    alice.edit_pending(&first, "first, edited").unwrap();
    assert!(matches!(
        alice.edit_pending(&first, ""),
        Err(SdkError::InvalidArgument { .. })
    ));
    assert!(matches!(
        alice.edit_pending("nope", "x"),
        Err(SdkError::InvalidArgument { ref code, .. }) if code == "not_found"
    ));

    // Online: once handed to the network it can no longer be edited.
    alice.connect().await.unwrap();
    wait_until("the first message to go out", || {
        alice
            .pending_messages()
            .unwrap()
            .iter()
            .any(|p| p.client_id == first && p.sent)
    })
    .await;
    let late = alice.edit_pending(&first, "too late");
    assert!(
        matches!(late, Err(SdkError::InvalidArgument { ref code, .. }) if code == "already_sent"),
        "{late:?}"
    );
    // Bob gets the edited text, never the draft or the late edit.
    let got = bob_rec.message("first, edited").await;
    assert_eq!(got.client_msg_id, first);
    bob_rec.message("second").await;
    assert!(!bob_rec.got_message("first draft") && !bob_rec.got_message("too late"));
    wait_until("the outbox to drain", || {
        alice.pending_messages().unwrap().is_empty()
    })
    .await;
    alice.shutdown();
    bob.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_queue_offline_and_a_refused_file_is_reported_once() {
    let server = Server::start();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, alice_rec) = client(&server, alice_dir.path(), "alice-phone");
    let (bob, bob_rec) = client(&server, bob_dir.path(), "bob-phone");
    let (conv, _) = alice_and_bob(&alice, &bob, &bob_rec).await;

    // Not connected: both queue, in order, with a text message between them.
    let notes: Vec<u8> = b"meeting notes\n".repeat(500);
    let good = alice
        .send_attachment(
            &conv.id,
            notes.clone(),
            "text/plain",
            Some("notes.txt".into()),
            "notes",
        )
        .await
        .unwrap();
    alice
        .send_text(&conv.id, "after the notes", None, vec![])
        .await
        .unwrap();
    let bad = alice
        .send_attachment(
            &conv.id,
            vec![1, 2, 3],
            "application/x-unknown",
            None,
            "odd",
        )
        .await
        .unwrap();
    let pending = alice.pending_messages().unwrap();
    assert_eq!(pending.len(), 3);
    let file = pending[0]
        .attachment_file
        .clone()
        .expect("a local file for the preview");
    assert_eq!(std::fs::read(&file).unwrap(), notes);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a queued attachment is private");
    }

    alice.connect().await.unwrap();
    let with_file = bob_rec.message("notes").await;
    let attachment = with_file.attachment.expect("sent with its attachment");
    assert_eq!(
        bob.download_attachment(&attachment.id).await.unwrap(),
        notes
    );
    let next = bob_rec.message("after the notes").await;
    assert!(next.seq > with_file.seq, "the queue kept its order");
    let refused = alice_rec
        .wait_for("the refusal of the odd file", |evs| {
            evs.iter().find_map(|e| match e {
                ClientEvent::Error {
                    client_id: Some(id),
                    code,
                    ..
                } if *id == bad => Some(code.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(refused, "unsupported_type");
    wait_until("the outbox to drain", || {
        alice.pending_messages().unwrap().is_empty()
    })
    .await;
    assert!(
        !std::path::Path::new(&file).exists(),
        "the uploaded file was removed"
    );
    assert!(!bob_rec.got_message("odd"));
    assert!(alice.pending().unwrap().iter().all(|id| *id != good));
    alice.shutdown();
    bob.shutdown();
}
