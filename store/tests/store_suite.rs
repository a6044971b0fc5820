//! The store's behaviour, proven on SQLite and on PostgreSQL alike.

mod common;

use std::sync::Arc;

use tidings_core::protocol::event::EventBody;
use tidings_core::protocol::ids::new_id;
use tidings_core::protocol::ErrorCode;
use tidings_store::*;

async fn user(store: &Arc<dyn Store>, name: &str) -> User {
    store
        .create_user(NewUser {
            id: new_id(),
            username: name.into(),
            display_name: Some(format!("{name} display")),
            password_hash: "hash".into(),
            created_at: now_ms(),
        })
        .await
        .expect("create user")
}

async fn group(store: &Arc<dyn Store>, owner: &User, others: &[&User]) -> Conversation {
    let mut members = vec![(owner.id.clone(), Role::Owner)];
    members.extend(others.iter().map(|u| (u.id.clone(), Role::Member)));
    store
        .create_conversation(NewConversation {
            id: new_id(),
            kind: ConversationKind::Group,
            name: Some("team".into()),
            topic: None,
            created_by: owner.id.clone(),
            members,
            created_at: now_ms(),
        })
        .await
        .expect("create group")
        .conversation
}

fn send(conv: &Conversation, sender: &User, client_id: &str, body: &str) -> WriteOp {
    WriteOp::Send(NewMessage {
        id: new_id(),
        conv: conv.id.clone(),
        sender: sender.id.clone(),
        client_msg_id: client_id.into(),
        body: body.into(),
        reply_to: None,
        mentions: vec![],
        attachment: None,
        created_at: now_ms(),
    })
}

fn applied(outcome: &WriteOutcome) -> (&AckView, &Vec<Delivery>) {
    match outcome {
        WriteOutcome::Applied { ack, deliveries } => (ack, deliveries),
        other => panic!("expected Applied, got {other:?}"),
    }
}

fn rejected(outcome: &WriteOutcome) -> ErrorCode {
    match outcome {
        WriteOutcome::Rejected { code, .. } => *code,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

async fn usernames_are_unique_and_searchable(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    user(&store, "alicia").await;
    user(&store, "bob").await;
    let dup = store
        .create_user(NewUser {
            id: new_id(),
            username: "alice".into(),
            display_name: None,
            password_hash: "x".into(),
            created_at: now_ms(),
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert_eq!(store.user(&alice.id).await.unwrap(), Some(alice.clone()));
    let creds = store
        .credentials("alice")
        .await
        .unwrap()
        .expect("credentials");
    assert_eq!((creds.user, creds.password_hash.as_str()), (alice, "hash"));
    assert!(store.credentials("nobody").await.unwrap().is_none());
    let found: Vec<String> = store
        .search_users("ali", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(found, ["alice", "alicia"]);
    assert!(
        store.search_users("%", 10).await.unwrap().is_empty(),
        "LIKE wildcards are escaped"
    );
    assert_eq!(
        store.search_users("", 2).await.unwrap().len(),
        2,
        "limit applies"
    );
}

async fn refresh_tokens_rotate_once_and_reuse_revokes_the_session(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let now = now_ms();
    let session = Session {
        id: new_id(),
        user_id: alice.id.clone(),
        device_id: Some("phone".into()),
        created_at: now,
        revoked_at: None,
    };
    let token = |h: &str| NewRefreshToken {
        token_hash: h.into(),
        created_at: now,
        expires_at: now + 60_000,
    };
    store.create_session(&session, &token("t1")).await.unwrap();
    assert!(store.session_active(&session.id).await.unwrap());

    assert_eq!(
        store
            .rotate_refresh_token("t1", &token("t2"), now, 0)
            .await
            .unwrap(),
        Rotation::Rotated(session.clone())
    );
    assert!(matches!(
        store
            .rotate_refresh_token("t1", &token("t3"), now, 0)
            .await
            .unwrap(),
        Rotation::Reused(_)
    ));
    assert!(
        !store.session_active(&session.id).await.unwrap(),
        "reuse revokes the session"
    );
    assert_eq!(
        store
            .rotate_refresh_token("t2", &token("t4"), now, 0)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert_eq!(
        store
            .rotate_refresh_token("unknown", &token("t5"), now, 0)
            .await
            .unwrap(),
        Rotation::Invalid
    );

    let s2 = Session {
        id: new_id(),
        ..session.clone()
    };
    store
        .create_session(
            &s2,
            &NewRefreshToken {
                token_hash: "old".into(),
                created_at: now,
                expires_at: now - 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh_token("old", &token("t6"), now, 0)
            .await
            .unwrap(),
        Rotation::Invalid,
        "expired"
    );
    assert!(store
        .revoke_session_by_token("old", now)
        .await
        .unwrap()
        .is_some());
    assert!(
        store
            .revoke_session_by_token("old", now)
            .await
            .unwrap()
            .is_none(),
        "already revoked"
    );
    assert!(!store.session_active(&s2.id).await.unwrap());
}

async fn a_retried_rotation_within_the_grace_window_gets_the_same_successor(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let now = now_ms();
    const GRACE: i64 = 30_000;
    let token = |h: &str| NewRefreshToken {
        token_hash: h.into(),
        created_at: now,
        expires_at: now + 3_600_000,
    };
    let session = |first: &'static str| {
        let store = store.clone();
        let alice = alice.id.clone();
        async move {
            let s = Session {
                id: new_id(),
                user_id: alice,
                device_id: None,
                created_at: now,
                revoked_at: None,
            };
            store.create_session(&s, &token(first)).await.unwrap();
            s
        }
    };
    let rotate = |old: &'static str, new: &'static str, at: i64| {
        let store = store.clone();
        let new = token(new);
        async move {
            store
                .rotate_refresh_token(old, &new, at, GRACE)
                .await
                .unwrap()
        }
    };

    // A retry (twice, even) inside the window changes nothing and keeps the session.
    let s1 = session("a1").await;
    assert_eq!(rotate("a1", "a2", now).await, Rotation::Rotated(s1.clone()));
    for _ in 0..2 {
        assert_eq!(
            rotate("a1", "a2", now + GRACE - 1).await,
            Rotation::Replayed(s1.clone())
        );
    }
    assert!(store.session_active(&s1.id).await.unwrap());
    assert_eq!(
        rotate("a2", "a3", now + 1).await,
        Rotation::Rotated(s1.clone()),
        "the successor a retry was given still rotates"
    );

    // Once the successor was used, the client has moved on: a replay is theft.
    assert!(matches!(
        rotate("a1", "a2", now + 2).await,
        Rotation::Reused(_)
    ));
    assert!(!store.session_active(&s1.id).await.unwrap());
    assert_eq!(rotate("a3", "a4", now + 3).await, Rotation::Invalid);

    // The window is counted from the first use.
    let s2 = session("b1").await;
    assert_eq!(rotate("b1", "b2", now).await, Rotation::Rotated(s2.clone()));
    assert!(matches!(
        rotate("b1", "b2", now + GRACE).await,
        Rotation::Reused(_)
    ));
    assert!(!store.session_active(&s2.id).await.unwrap());

    // A successor that was never stored (another secret derived it) is no retry.
    let s3 = session("c1").await;
    assert_eq!(rotate("c1", "c2", now).await, Rotation::Rotated(s3.clone()));
    assert!(matches!(
        rotate("c1", "elsewhere", now + 1).await,
        Rotation::Reused(_)
    ));
    assert!(!store.session_active(&s3.id).await.unwrap());

    // Nor is another session's token, even a live unused one.
    let s4 = session("d1").await;
    let s5 = session("e1").await;
    assert_eq!(rotate("d1", "d2", now).await, Rotation::Rotated(s4.clone()));
    assert!(matches!(
        rotate("d1", "e1", now + 1).await,
        Rotation::Reused(_)
    ));
    assert!(store.session_active(&s5.id).await.unwrap());

    // A grace of 0 turns the window off.
    let s6 = session("f1").await;
    assert_eq!(
        store
            .rotate_refresh_token("f1", &token("f2"), now, 0)
            .await
            .unwrap(),
        Rotation::Rotated(s6.clone())
    );
    assert!(matches!(
        store
            .rotate_refresh_token("f1", &token("f2"), now, 0)
            .await
            .unwrap(),
        Rotation::Reused(_)
    ));
}

async fn direct_conversation_is_one_per_pair(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "alice").await, user(&store, "bob").await);
    let direct = |first: &User, second: &User| NewConversation {
        id: new_id(),
        kind: ConversationKind::Direct,
        name: None,
        topic: None,
        created_by: first.id.clone(),
        members: vec![
            (first.id.clone(), Role::Member),
            (second.id.clone(), Role::Member),
        ],
        created_at: now_ms(),
    };
    let first = store.create_conversation(direct(&a, &b)).await.unwrap();
    assert!(first.created);
    assert!(
        store.membership().is_member(&first.conversation.id, &b.id),
        "the ACL index learns at once"
    );
    assert_eq!(first.deliveries.len(), 2, "both members hear of it");
    let again = store.create_conversation(direct(&b, &a)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.conversation.id, first.conversation.id);
    let members = store.members(&first.conversation.id).await.unwrap();
    assert_eq!(members.len(), 2);
    let inbox = store.inbox_since(&a.id, 0, 10).await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(matches!(&inbox[0].body, EventBody::Conversation(c) if c.id == first.conversation.id));
    let pairs = store.all_memberships().await.unwrap();
    assert!(pairs.contains(&(first.conversation.id.clone(), b.id.clone())));
}

async fn a_batch_assigns_gap_free_seqs_and_fans_out_to_every_member(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&store, "alice").await,
        user(&store, "bob").await,
        user(&store, "carol").await,
    );
    let conv = group(&store, &a, &[&b, &c]).await;
    let ops: Vec<WriteOp> = (0..10)
        .map(|i| {
            send(
                &conv,
                [&a, &b, &c][i % 3],
                &format!("m{i}"),
                &format!("hello {i}"),
            )
        })
        .collect();
    let outcomes = store.write_batch(&ops).await.unwrap();
    assert_eq!(outcomes.len(), 10);
    for (i, outcome) in outcomes.iter().enumerate() {
        let (ack, deliveries) = applied(outcome);
        assert_eq!(ack.seq, Some(i as u64 + 1));
        let mut users: Vec<&str> = deliveries.iter().map(|d| d.user.as_str()).collect();
        users.sort();
        let mut expected = vec![a.id.as_str(), b.id.as_str(), c.id.as_str()];
        expected.sort();
        assert_eq!(users, expected);
    }
    // Each user's inbox: the conversation event (seq 1), then the ten messages (2..=11).
    for u in [&a, &b, &c] {
        let inbox = store.inbox_since(&u.id, 0, 100).await.unwrap();
        let seqs: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    }
    // The inbox replays exactly what was delivered.
    let delivered_to_b: Vec<(u64, EventBody)> = outcomes
        .iter()
        .flat_map(|o| {
            applied(o)
                .1
                .iter()
                .filter(|d| d.user == b.id)
                .map(|d| (d.seq, (*d.body).clone()))
        })
        .collect();
    let replayed: Vec<(u64, EventBody)> = store
        .inbox_since(&b.id, 1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.body))
        .collect();
    assert_eq!(replayed, delivered_to_b);

    let newest = store
        .history(
            &conv.id,
            SeqPage::Before {
                before: None,
                limit: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(newest.iter().map(|m| m.seq).collect::<Vec<_>>(), [10, 9, 8]);
    let older = store
        .history(
            &conv.id,
            SeqPage::Before {
                before: Some(8),
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(older.len(), 7);
    let after = store
        .history(
            &conv.id,
            SeqPage::After {
                after: 8,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), [9, 10]);
    assert_eq!(
        store
            .conversation(&conv.id)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        10
    );
}

async fn a_retried_send_is_stored_once(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "alice").await, user(&store, "bob").await);
    let conv = group(&store, &a, &[&b]).await;
    let first = store
        .write_batch(&[send(&conv, &a, "same", "hi")])
        .await
        .unwrap();
    let (ack, _) = applied(&first[0]);
    // Retried in a later batch, and twice within one batch.
    let retry = store
        .write_batch(&[
            send(&conv, &a, "same", "hi"),
            send(&conv, &a, "again", "x"),
            send(&conv, &a, "again", "x"),
        ])
        .await
        .unwrap();
    assert_eq!(retry[0], WriteOutcome::Unchanged { ack: ack.clone() });
    let (again_ack, _) = applied(&retry[1]);
    assert_eq!(
        retry[2],
        WriteOutcome::Unchanged {
            ack: again_ack.clone()
        }
    );
    // The same id reused for another conversation is refused, not silently acked.
    let elsewhere = group(&store, &a, &[]).await;
    let reuse = store
        .write_batch(&[send(&elsewhere, &a, "same", "hi")])
        .await
        .unwrap();
    assert_eq!(rejected(&reuse[0]), ErrorCode::Conflict);
    // The same client id from another sender is another message.
    let other = store
        .write_batch(&[send(&conv, &b, "same", "hi")])
        .await
        .unwrap();
    applied(&other[0]);
    let all = store
        .history(
            &conv.id,
            SeqPage::After {
                after: 0,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
}

async fn outsiders_and_unknown_conversations_are_refused(store: Arc<dyn Store>) {
    let (a, b, eve) = (
        user(&store, "alice").await,
        user(&store, "bob").await,
        user(&store, "eve").await,
    );
    let conv = group(&store, &a, &[&b]).await;
    let mut ghost = conv.clone();
    ghost.id = new_id();
    let outcomes = store
        .write_batch(&[
            send(&conv, &eve, "e1", "let me in"),
            send(&ghost, &a, "g1", "anyone?"),
            send(&conv, &a, "ok", "fine"),
            WriteOp::Marker {
                user: eve.id.clone(),
                conv: conv.id.clone(),
                kind: ReceiptKind::Read,
                seq: 1,
                at: now_ms(),
            },
        ])
        .await
        .unwrap();
    // An outsider is told exactly what a send to a conversation that does not exist
    // is told: conversation ids reveal nothing.
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(rejected(&outcomes[1]), ErrorCode::NotFound);
    let (ack, _) = applied(&outcomes[2]);
    assert_eq!(ack.seq, Some(1), "refused sends take no seq");
    assert_eq!(rejected(&outcomes[3]), ErrorCode::NotFound);
    let msg = ack.msg.clone().unwrap();
    let outcomes = store
        .write_batch(&[
            WriteOp::React {
                user: eve.id.clone(),
                msg: msg.clone(),
                emoji: "👍".into(),
                add: true,
                at: now_ms(),
            },
            WriteOp::Edit {
                user: eve.id.clone(),
                msg: msg.clone(),
                body: "pwned".into(),
                at: now_ms(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        rejected(&outcomes[0]),
        ErrorCode::NotFound,
        "outsiders learn nothing about the message"
    );
    assert_eq!(rejected(&outcomes[1]), ErrorCode::NotFound);
    assert!(store.inbox_since(&eve.id, 0, 10).await.unwrap().is_empty());
}

async fn only_the_sender_edits_or_deletes(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "alice").await, user(&store, "bob").await);
    let conv = group(&store, &a, &[&b]).await;
    let out = store
        .write_batch(&[send(&conv, &a, "m1", "helo")])
        .await
        .unwrap();
    let msg = applied(&out[0]).0.msg.clone().unwrap();
    let at = now_ms();
    let out = store
        .write_batch(&[
            WriteOp::Edit {
                user: b.id.clone(),
                msg: msg.clone(),
                body: "mine now".into(),
                at,
            },
            WriteOp::Edit {
                user: a.id.clone(),
                msg: msg.clone(),
                body: "hello".into(),
                at,
            },
            WriteOp::Edit {
                user: a.id.clone(),
                msg: msg.clone(),
                body: "hello".into(),
                at,
            },
            WriteOp::Delete {
                user: b.id.clone(),
                msg: msg.clone(),
                at,
            },
        ])
        .await
        .unwrap();
    assert_eq!(rejected(&out[0]), ErrorCode::Forbidden);
    let (_, deliveries) = applied(&out[1]);
    assert_eq!(deliveries.len(), 2);
    assert!(
        matches!(&*deliveries[0].body, EventBody::MessageUpdated(m) if m.body == "hello" && m.edited_at == Some(at))
    );
    assert!(
        matches!(out[2], WriteOutcome::Unchanged { .. }),
        "an identical edit changes nothing"
    );
    assert_eq!(rejected(&out[3]), ErrorCode::Forbidden);
    let stored = store.message(&msg).await.unwrap().unwrap();
    assert_eq!(
        (stored.body.as_str(), stored.edited_at),
        ("hello", Some(at))
    );

    let out = store
        .write_batch(&[WriteOp::Delete {
            user: a.id.clone(),
            msg: msg.clone(),
            at,
        }])
        .await
        .unwrap();
    let (_, deliveries) = applied(&out[0]);
    assert!(
        matches!(&*deliveries[0].body, EventBody::MessageUpdated(m) if m.deleted && m.body.is_empty())
    );
    let stored = store.message(&msg).await.unwrap().unwrap();
    assert!(stored.deleted && stored.body.is_empty());
    let out = store
        .write_batch(&[
            WriteOp::Edit {
                user: a.id.clone(),
                msg: msg.clone(),
                body: "undo".into(),
                at,
            },
            WriteOp::Delete {
                user: a.id.clone(),
                msg: msg.clone(),
                at,
            },
        ])
        .await
        .unwrap();
    assert_eq!(rejected(&out[0]), ErrorCode::Invalid);
    assert!(matches!(out[1], WriteOutcome::Unchanged { .. }));
}

async fn reactions_toggle_and_fan_out(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "alice").await, user(&store, "bob").await);
    let conv = group(&store, &a, &[&b]).await;
    let out = store
        .write_batch(&[send(&conv, &a, "m1", "lunch?")])
        .await
        .unwrap();
    let msg = applied(&out[0]).0.msg.clone().unwrap();
    let react = |u: &User, emoji: &str, add: bool| WriteOp::React {
        user: u.id.clone(),
        msg: msg.clone(),
        emoji: emoji.into(),
        add,
        at: now_ms(),
    };
    let out = store
        .write_batch(&[
            react(&b, "👍", true),
            react(&b, "👍", true),
            react(&a, "🎉", true),
            react(&a, "🎉", false),
            react(&a, "x", false),
        ])
        .await
        .unwrap();
    let (_, d) = applied(&out[0]);
    assert!(
        matches!(&*d[0].body, EventBody::Reaction(r) if r.added && r.emoji == "👍" && r.user == b.id)
    );
    assert!(matches!(out[1], WriteOutcome::Unchanged { .. }));
    applied(&out[2]);
    applied(&out[3]);
    assert!(matches!(out[4], WriteOutcome::Unchanged { .. }));
    assert_eq!(
        store.reactions(&msg).await.unwrap(),
        vec![(b.id.clone(), "👍".to_string())]
    );
}

async fn markers_only_move_forward(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "alice").await, user(&store, "bob").await);
    let conv = group(&store, &a, &[&b]).await;
    let ops: Vec<WriteOp> = (0..5)
        .map(|i| send(&conv, &a, &format!("m{i}"), "x"))
        .collect();
    store.write_batch(&ops).await.unwrap();
    let marker = |kind, seq| WriteOp::Marker {
        user: b.id.clone(),
        conv: conv.id.clone(),
        kind,
        seq,
        at: now_ms(),
    };
    let out = store
        .write_batch(&[
            marker(ReceiptKind::Delivered, 2),
            marker(ReceiptKind::Read, 4),
            marker(ReceiptKind::Read, 3),
            marker(ReceiptKind::Delivered, 99),
        ])
        .await
        .unwrap();
    let (_, d) = applied(&out[0]);
    assert_eq!(d.len(), 2, "the sender hears of the receipt");
    applied(&out[1]);
    assert!(
        matches!(out[2], WriteOutcome::Unchanged { .. }),
        "read markers never move back"
    );
    let (ack, _) = applied(&out[3]);
    assert_eq!(
        ack.seq,
        Some(5),
        "a marker is clamped to the newest message"
    );
    let m = store.member(&conv.id, &b.id).await.unwrap().unwrap();
    assert_eq!(
        (m.read_seq, m.delivered_seq),
        (4, 5),
        "reading implies delivery"
    );
}

async fn replies_mentions_and_attachments_are_checked(store: Arc<dyn Store>) {
    let (a, b, eve) = (
        user(&store, "alice").await,
        user(&store, "bob").await,
        user(&store, "eve").await,
    );
    let conv = group(&store, &a, &[&b]).await;
    let other = group(&store, &eve, &[]).await;
    let out = store
        .write_batch(&[send(&other, &eve, "secret", "elsewhere")])
        .await
        .unwrap();
    let foreign = applied(&out[0]).0.msg.clone().unwrap();
    let photo = Attachment {
        id: new_id(),
        uploader_id: a.id.clone(),
        storage_key: format!("k/{}", new_id()),
        mime: "image/png".into(),
        size: 1234,
        sha256: "00".into(),
        filename: Some("cat.png".into()),
        created_at: now_ms(),
        width: None,
        height: None,
    };
    store.insert_attachment(&photo).await.unwrap();
    assert_eq!(
        store.attachment(&photo.id).await.unwrap(),
        Some(photo.clone())
    );
    assert!(
        store
            .attachment_readable_by(&photo.id, &a.id)
            .await
            .unwrap(),
        "the uploader"
    );
    assert!(
        !store
            .attachment_readable_by(&photo.id, &b.id)
            .await
            .unwrap(),
        "not yet sent anywhere"
    );
    let with = |op: WriteOp, f: &dyn Fn(&mut NewMessage)| match op {
        WriteOp::Send(mut m) => {
            f(&mut m);
            WriteOp::Send(m)
        }
        other => other,
    };
    let out = store
        .write_batch(&[
            with(send(&conv, &a, "r1", "re"), &|m| {
                m.reply_to = Some(foreign.clone())
            }),
            with(send(&conv, &a, "p1", ""), &|m| {
                m.attachment = Some(photo.id.clone())
            }),
            with(send(&conv, &b, "p2", "stolen"), &|m| {
                m.attachment = Some(photo.id.clone())
            }),
            with(send(&conv, &a, "men", "hey @bob @eve"), &|m| {
                m.mentions = vec![b.id.clone(), eve.id.clone(), b.id.clone()]
            }),
        ])
        .await
        .unwrap();
    assert_eq!(rejected(&out[0]), ErrorCode::Invalid);
    let (ack, _) = applied(&out[1]);
    let stored = store
        .message(ack.msg.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.kind, MessageKind::Image);
    assert_eq!(
        stored
            .attachment
            .as_ref()
            .map(|x| (x.mime.as_str(), x.size)),
        Some(("image/png", 1234))
    );
    assert_eq!(
        rejected(&out[2]),
        ErrorCode::NotFound,
        "only the uploader may attach an upload"
    );
    let (ack, _) = applied(&out[3]);
    let stored = store
        .message(ack.msg.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.mentions,
        vec![b.id.clone()],
        "non-members and repeats are dropped"
    );
    let first = stored.id.clone();
    let out = store
        .write_batch(&[with(send(&conv, &b, "r2", "yes"), &|m| {
            m.reply_to = Some(first.clone())
        })])
        .await
        .unwrap();
    let (ack, _) = applied(&out[0]);
    assert_eq!(
        store
            .message(ack.msg.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap()
            .reply_to,
        Some(first)
    );
}

async fn large_fan_out_batches_stay_within_bind_limits(store: Arc<dyn Store>) {
    let owner = user(&store, "owner").await;
    let mut others = Vec::new();
    for i in 0..60 {
        others.push(user(&store, &format!("member{i:02}")).await);
    }
    let refs: Vec<&User> = others.iter().collect();
    let conv = group(&store, &owner, &refs).await;
    // 60 messages x 61 members = 3,660 inbox events in one transaction.
    let ops: Vec<WriteOp> = (0..60)
        .map(|i| send(&conv, &owner, &format!("b{i}"), "broadcast"))
        .collect();
    let out = store.write_batch(&ops).await.unwrap();
    assert!(out
        .iter()
        .all(|o| matches!(o, WriteOutcome::Applied { deliveries, .. } if deliveries.len() == 61)));
    let inbox = store.inbox_since(&others[59].id, 0, 1000).await.unwrap();
    assert_eq!(inbox.len(), 61);
}

async fn open_session(store: &Arc<dyn Store>, user: &User, hash: &str) -> Session {
    let now = now_ms();
    let session = Session {
        id: new_id(),
        user_id: user.id.clone(),
        device_id: None,
        created_at: now,
        revoked_at: None,
    };
    store
        .create_session(
            &session,
            &NewRefreshToken {
                token_hash: hash.into(),
                created_at: now,
                expires_at: now + 60_000,
            },
        )
        .await
        .expect("create session");
    session
}

/// Collects every session-ended announcement of the store's index.
fn announced_sessions(store: &Arc<dyn Store>) -> Arc<std::sync::Mutex<Vec<String>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    store.membership().watch(move |r| {
        if let Revocation::SessionEnded { session } = r {
            sink.lock().unwrap().push(session.clone());
        }
    });
    seen
}

async fn disabling_an_account_revokes_and_announces_its_sessions(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let s1 = open_session(&store, &alice, "a1").await;
    let s2 = open_session(&store, &alice, "a2").await;
    let sb = open_session(&store, &bob, "b1").await;
    let seen = announced_sessions(&store);
    let before = now_ms();

    assert!(store.set_disabled(&alice.id, true, now_ms()).await.unwrap());
    assert!(!store.session_active(&s1.id).await.unwrap());
    assert!(!store.session_active(&s2.id).await.unwrap());
    assert!(
        store.session_active(&sb.id).await.unwrap(),
        "others keep theirs"
    );
    let mut announced = seen.lock().unwrap().clone();
    announced.sort();
    let mut expected = vec![s1.id.clone(), s2.id.clone()];
    expected.sort();
    assert_eq!(announced, expected);
    let polled: Vec<String> = store
        .sessions_revoked_since(before)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(polled.contains(&s1.id) && polled.contains(&s2.id) && !polled.contains(&sb.id));
    assert_eq!(
        store
            .rotate_refresh_token(
                "a1",
                &NewRefreshToken {
                    token_hash: "a3".into(),
                    created_at: before,
                    expires_at: before + 60_000
                },
                now_ms(),
                30_000
            )
            .await
            .unwrap(),
        Rotation::Invalid,
        "a disabled account cannot refresh"
    );

    let creds = store.credentials("alice").await.unwrap().unwrap();
    assert!(creds.disabled);
    assert!(!store.credentials("bob").await.unwrap().unwrap().disabled);
    let record = store.find_account("alice").await.unwrap().unwrap();
    assert_eq!(record.status(), "disabled");
    assert_eq!(record.active_sessions, 0);
    assert_eq!(store.find_account(&alice.id).await.unwrap(), Some(record));

    // A session a racing login opened after the disable is dead all the same.
    let late = open_session(&store, &alice, "a4").await;
    assert!(!store.session_active(&late.id).await.unwrap());

    assert!(store
        .set_disabled(&alice.id, false, now_ms())
        .await
        .unwrap());
    assert_eq!(
        store.find_account("alice").await.unwrap().unwrap().status(),
        "active"
    );
    assert!(
        !store.session_active(&s1.id).await.unwrap(),
        "enabling revives no session"
    );
    assert!(store.session_active(&late.id).await.unwrap());
    assert!(!store
        .set_disabled("no-such-user", true, now_ms())
        .await
        .unwrap());

    let listed = store.list_accounts(None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    let page = store
        .list_accounts(Some(&listed[0].user.id), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].user.id, listed[1].user.id);
}

async fn a_password_reset_revokes_every_session(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let s1 = open_session(&store, &alice, "a1").await;
    assert!(store
        .set_password_hash(&alice.id, "new-hash", now_ms())
        .await
        .unwrap());
    assert!(!store.session_active(&s1.id).await.unwrap());
    assert_eq!(
        store
            .credentials("alice")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "new-hash"
    );
    let s2 = open_session(&store, &alice, "a2").await;
    let ended = store
        .revoke_user_sessions(&alice.id, now_ms())
        .await
        .unwrap();
    assert_eq!(ended, vec![s2.id.clone()]);
    let sessions = store.user_sessions(&alice.id).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.revoked_at.is_some()));
}

async fn deleting_an_account_erases_the_profile_and_leaves_conversations(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let conv = group(&store, &alice, &[&bob]).await;
    let out = store
        .write_batch(&[send(&conv, &bob, "c1", "hello from bob")])
        .await
        .unwrap();
    let (ack, _) = applied(&out[0]);
    let message_id = ack.msg.clone().expect("message id");
    let session = open_session(&store, &bob, "b1").await;
    let seen = announced_sessions(&store);

    let deliveries = store.delete_account(&bob.id, now_ms()).await.unwrap();
    assert!(
        deliveries
            .iter()
            .any(|d| d.user == alice.id
                && matches!(&*d.body, EventBody::Member(m) if m.user == bob.id)),
        "alice hears that bob left: {deliveries:?}"
    );
    assert_eq!(*seen.lock().unwrap(), vec![session.id.clone()]);
    assert!(!store.session_active(&session.id).await.unwrap());
    assert!(store.member(&conv.id, &bob.id).await.unwrap().is_none());
    assert!(!store.membership().is_member(&conv.id, &bob.id));
    assert!(store.credentials("bob").await.unwrap().is_none());
    assert!(store.search_users("bob", 10).await.unwrap().is_empty());
    assert!(store
        .existing_users(std::slice::from_ref(&bob.id))
        .await
        .unwrap()
        .is_empty());
    let record = store.find_account(&bob.id).await.unwrap().unwrap();
    assert_eq!(record.status(), "deleted");
    assert_eq!(record.user.username, format!("deleted-{}", bob.id));
    assert_eq!(record.user.display_name, None);
    assert!(store.find_account("bob").await.unwrap().is_none());
    let kept = store.message(&message_id).await.unwrap().unwrap();
    assert_eq!(
        kept.sender, bob.id,
        "messages stay, from the deleted account"
    );
    assert!(matches!(
        store.delete_account(&bob.id, now_ms()).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!store.set_disabled(&bob.id, true, now_ms()).await.unwrap());
    // The name is free again (and the new account is someone else).
    let bob2 = user(&store, "bob").await;
    assert_ne!(bob2.id, bob.id);
}

async fn upload(store: &Arc<dyn Store>, who: &User, size: u64, at: i64) -> Attachment {
    let id = new_id();
    let a = Attachment {
        id: id.clone(),
        uploader_id: who.id.clone(),
        storage_key: format!("{}/{id}", who.id),
        mime: "image/png".into(),
        size,
        sha256: "00".into(),
        filename: None,
        created_at: at,
        width: Some(640),
        height: Some(480),
    };
    store
        .insert_attachment(&a)
        .await
        .expect("insert attachment");
    a
}

async fn upload_usage_counts_bytes_and_files_in_their_windows(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let now = now_ms();
    let hour = 3_600_000;
    upload(&store, &alice, 100, now - 30 * hour).await; // outside both windows
    let day_old = upload(&store, &alice, 200, now - 2 * hour).await; // the day only
    let recent = upload(&store, &alice, 300, now - 1000).await;
    upload(&store, &alice, 400, now).await;
    upload(&store, &bob, 5000, now).await;
    let usage = store
        .upload_usage(&alice.id, now - 24 * hour, now - hour)
        .await
        .unwrap();
    assert_eq!(
        usage,
        UploadUsage {
            bytes: 900,
            files: 2,
            oldest_file_at: Some(recent.created_at),
            oldest_byte_at: Some(day_old.created_at),
        }
    );
    let nobody = user(&store, "carol").await;
    assert_eq!(
        store
            .upload_usage(&nobody.id, now - 24 * hour, now - hour)
            .await
            .unwrap(),
        UploadUsage::default()
    );
}

async fn the_sweeper_takes_only_old_uploads_no_message_carries(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let conv = group(&store, &alice, &[&bob]).await;
    let now = now_ms();
    let old_unsent = upload(&store, &alice, 10, now - 100_000).await;
    let old_sent = upload(&store, &alice, 10, now - 100_000).await;
    let old_sent_then_deleted = upload(&store, &alice, 10, now - 100_000).await;
    let fresh_unsent = upload(&store, &alice, 10, now).await;
    let with = |client: &str, a: &Attachment| {
        let WriteOp::Send(mut m) = send(&conv, &alice, client, "") else {
            unreachable!()
        };
        m.attachment = Some(a.id.clone());
        WriteOp::Send(m)
    };
    let out = store
        .write_batch(&[with("s1", &old_sent), with("s2", &old_sent_then_deleted)])
        .await
        .unwrap();
    let deleted_msg = applied(&out[1]).0.msg.clone().unwrap();
    let out = store
        .write_batch(&[WriteOp::Delete {
            user: alice.id.clone(),
            msg: deleted_msg,
            at: now,
        }])
        .await
        .unwrap();
    applied(&out[0]);

    let swept = store.sweep_unattached(now - 50_000, 100).await.unwrap();
    let mut ids: Vec<&str> = swept.iter().map(|a| a.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![old_unsent.id.as_str(), old_sent_then_deleted.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(store.attachment(&old_unsent.id).await.unwrap().is_none());
    assert!(
        store.attachment(&old_sent.id).await.unwrap().is_some(),
        "carried: kept"
    );
    assert!(
        store.attachment(&fresh_unsent.id).await.unwrap().is_some(),
        "in its grace period"
    );
    assert!(store
        .sweep_unattached(now - 50_000, 100)
        .await
        .unwrap()
        .is_empty());
}

/// Search finds a message as soon as it is stored, and only by its current text, both
/// while SQLite's indexer still has it queued and after it was indexed.
async fn search_sees_every_stored_message_by_its_current_text(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let conv = group(&store, &alice, &[&bob]).await;
    let hits = |q: &'static str| {
        let store = store.clone();
        let bob = bob.id.clone();
        async move {
            store
                .search_messages(&bob, q, None, 10, 0)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.body)
                .collect::<Vec<_>>()
        }
    };
    let stored = store
        .write_batch(&[
            send(&conv, &alice, "s1", "walrus sighting"),
            send(&conv, &alice, "s2", "pelican sighting"),
        ])
        .await
        .unwrap();
    let first = applied(&stored[0]).0.msg.clone().unwrap();
    let second = applied(&stored[1]).0.msg.clone().unwrap();
    // Edited and deleted before any search could have indexed them.
    let edit = |msg: &str, body: &str| WriteOp::Edit {
        user: alice.id.clone(),
        msg: msg.into(),
        body: body.into(),
        at: now_ms(),
    };
    store
        .write_batch(&[
            edit(&first, "narwhal sighting"),
            WriteOp::Delete {
                user: alice.id.clone(),
                msg: second.clone(),
                at: now_ms(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(hits("sighting").await, vec!["narwhal sighting"]);
    assert!(hits("walrus").await.is_empty(), "no earlier text");
    assert!(
        hits("pelican").await.is_empty(),
        "nothing of a deleted message"
    );
    // Now indexed: a later edit replaces the indexed text.
    store
        .write_batch(&[edit(&first, "orca sighting")])
        .await
        .unwrap();
    assert_eq!(hits("orca").await, vec!["orca sighting"]);
    assert!(hits("narwhal").await.is_empty(), "no earlier text");
    // Positive control: a message stored after all that is found at once.
    store
        .write_batch(&[send(&conv, &alice, "s3", "walrus again")])
        .await
        .unwrap();
    assert_eq!(hits("walrus").await, vec!["walrus again"]);
}

on_both_backends!(
    search_sees_every_stored_message_by_its_current_text,
    usernames_are_unique_and_searchable,
    refresh_tokens_rotate_once_and_reuse_revokes_the_session,
    a_retried_rotation_within_the_grace_window_gets_the_same_successor,
    direct_conversation_is_one_per_pair,
    a_batch_assigns_gap_free_seqs_and_fans_out_to_every_member,
    a_retried_send_is_stored_once,
    outsiders_and_unknown_conversations_are_refused,
    only_the_sender_edits_or_deletes,
    reactions_toggle_and_fan_out,
    markers_only_move_forward,
    replies_mentions_and_attachments_are_checked,
    large_fan_out_batches_stay_within_bind_limits,
    disabling_an_account_revokes_and_announces_its_sessions,
    a_password_reset_revokes_every_session,
    deleting_an_account_erases_the_profile_and_leaves_conversations,
    upload_usage_counts_bytes_and_files_in_their_windows,
    the_sweeper_takes_only_old_uploads_no_message_carries,
);

/// Shared token buckets (migration 0008): many charges of one key at once, as from
/// several nodes, never grant more than the bucket holds; a new key starts full; a
/// repeated key within one list is handed out in order. PostgreSQL only (SQLite says
/// Unsupported, checked too).
#[tokio::test]
async fn shared_rate_buckets_never_over_grant() {
    use tidings_store::ratelimit::Budget;
    let store = common::postgres().await;
    // 10 tokens, refilled at 1 per minute: nothing refills while the test runs.
    let budget = Arc::new(Budget::shared(store.clone(), "t", 10, 1));
    let charges = (0..8).map(|_| {
        let budget = budget.clone();
        tokio::spawn(async move { budget.take(&[("k", 3)]).await[0].0 })
    });
    let mut granted = 0;
    for charge in charges {
        granted += charge.await.unwrap();
    }
    assert_eq!(granted, 10, "24 asked of a bucket of 10");
    // Positive control: another key is untouched, and a list asking for one key twice
    // gets its tokens handed out in order.
    let got = budget.take(&[("other", 4), ("other", 9)]).await;
    assert_eq!((got[0].0, got[1].0), (4, 6), "{got:?}");
    let refused = budget.check("k").await;
    assert!(
        refused.is_err_and(|ms| ms > 0),
        "an empty bucket says when to retry"
    );

    let (sqlite, _dir) = common::sqlite().await;
    assert!(matches!(
        sqlite.take_rate_tokens(1.0, 1.0, &[("k".into(), 1)]).await,
        Err(tidings_store::StoreError::Unsupported(_))
    ));
}

/// Records what a store publishes, in the order it does.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(String, bool, Option<i64>)>>);

impl EventSink for Recorded {
    fn deliver(&self, _: &[Delivery]) {}
    fn presence(&self, user: &str, online: bool, last_seen: Option<i64>) {
        self.0
            .lock()
            .unwrap()
            .push((user.to_owned(), online, last_seen));
    }
}

impl Recorded {
    fn take(&self) -> Vec<(String, bool, Option<i64>)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A session for `user` and two broker client ids bound to it, as the auth hook does.
async fn broker_clients(store: &Arc<dyn Store>, user: &User) -> (String, String) {
    let session = Session {
        id: new_id(),
        user_id: user.id.clone(),
        device_id: None,
        created_at: now_ms(),
        revoked_at: None,
    };
    let token = NewRefreshToken {
        token_hash: new_id(),
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
    };
    store.create_session(&session, &token).await.unwrap();
    let phone = format!("{}:phone", user.id);
    let laptop = format!("{}:laptop", user.id);
    for id in [&phone, &laptop] {
        store
            .bind_mqtt_client(id, &session.id, now_ms())
            .await
            .unwrap();
    }
    (phone, laptop)
}

/// Presence from an external broker's events (migrations 0008, 0009) is decided
/// against what was last published: events in the wrong order (the phone's disconnect
/// before the connect of the laptop that preceded it) publish nothing, "offline" waits
/// for the grace and is published once, with the last disconnect as last seen; the
/// sweeper's query finds a grace nobody ended. PostgreSQL only (SQLite: Unsupported).
#[tokio::test]
async fn broker_presence_is_decided_against_what_was_published() {
    const HOUR: i64 = 3_600_000;
    let store = common::postgres().await;
    let alice = user(&store, "alice").await;
    let (phone, laptop) = broker_clients(&store, &alice).await;
    let sink = Recorded::default();
    let t = now_ms();
    let pending = BrokerPresence::OfflinePending {
        user: alice.id.clone(),
    };
    let unchanged = BrokerPresence::Unchanged {
        user: alice.id.clone(),
    };

    let first = store.broker_client_event(&phone, true, t, &sink).await;
    assert_eq!(
        first.unwrap(),
        BrokerPresence::Online {
            user: alice.id.clone()
        }
    );
    assert_eq!(sink.take(), [(alice.id.clone(), true, None)]);

    // Wrong order: nothing is published, and the grace ends with a laptop live.
    let gone = store
        .broker_client_event(&phone, false, t + 200, &sink)
        .await;
    assert_eq!(gone.unwrap(), pending);
    let back = store
        .broker_client_event(&laptop, true, t + 100, &sink)
        .await;
    assert_eq!(back.unwrap(), unchanged);
    let settled = store.settle_broker_presence(&alice.id, 0, &sink).await;
    assert_eq!(settled.unwrap(), PresenceSettled::Unchanged);
    assert_eq!(sink.take(), []);

    // The last one goes: within the grace nothing, after it "offline" once.
    let gone = store
        .broker_client_event(&laptop, false, t + 300, &sink)
        .await;
    assert_eq!(gone.unwrap(), pending);
    let early = store.settle_broker_presence(&alice.id, HOUR, &sink).await;
    assert!(
        matches!(early, Ok(PresenceSettled::Wait(ms)) if ms > 0 && ms <= HOUR),
        "{early:?}"
    );
    assert_eq!(sink.take(), []);
    let settled = store.settle_broker_presence(&alice.id, 0, &sink).await;
    assert_eq!(settled.unwrap(), PresenceSettled::Offline);
    assert_eq!(sink.take(), [(alice.id.clone(), false, Some(t + 300))]);
    let again = store.settle_broker_presence(&alice.id, 0, &sink).await;
    assert_eq!(again.unwrap(), PresenceSettled::Unchanged);
    // A late duplicate of a disconnect changes nothing either.
    let late = store
        .broker_client_event(&laptop, false, t + 250, &sink)
        .await;
    assert_eq!(late.unwrap(), unchanged);
    assert_eq!(sink.take(), []);

    // A grace nobody ends is found by the sweeper's query, and only once it is over.
    let online = store
        .broker_client_event(&phone, true, t + 400, &sink)
        .await;
    assert!(matches!(online, Ok(BrokerPresence::Online { .. })));
    let gone = store
        .broker_client_event(&phone, false, t + 500, &sink)
        .await;
    assert_eq!(gone.unwrap(), pending);
    assert_eq!(
        store.unsettled_broker_presence(HOUR, 10).await.unwrap(),
        Vec::<String>::new()
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        store.unsettled_broker_presence(1, 10).await.unwrap(),
        vec![alice.id.clone()]
    );

    let (sqlite, _dir) = common::sqlite().await;
    assert!(matches!(
        sqlite.broker_client_event(&phone, true, t, &sink).await,
        Err(StoreError::Unsupported(_))
    ));
}

/// Changes for one user are published in the order they were decided, even when
/// events race: each is published under the user's lock, so whatever order concurrent
/// events are applied in, what a watcher is told alternates online / offline, starts
/// with "online", and ends with what the rows say.
#[tokio::test]
async fn concurrent_broker_events_publish_alternating_presence() {
    let store = common::postgres().await;
    let alice = user(&store, "alice").await;
    let (phone, laptop) = broker_clients(&store, &alice).await;
    let sink = Arc::new(Recorded::default());
    let t = now_ms();
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let (store, sink, alice) = (store.clone(), sink.clone(), alice.id.clone());
        let client = if i % 2 == 0 {
            phone.clone()
        } else {
            laptop.clone()
        };
        tasks.push(tokio::spawn(async move {
            let up = (i / 2) % 2 == 0;
            store
                .broker_client_event(&client, up, t + i, sink.as_ref())
                .await
                .unwrap();
            store
                .settle_broker_presence(&alice, 0, sink.as_ref())
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Each client's latest event (t+38 the phone's, t+39 the laptop's) is a disconnect,
    // whatever order they were applied in: she ends offline.
    let told: Vec<bool> = sink
        .take()
        .into_iter()
        .map(|(_, online, _)| online)
        .collect();
    assert!(!told.is_empty());
    assert!(told[0], "{told:?}");
    assert!(told.windows(2).all(|w| w[0] != w[1]), "{told:?}");
    assert_eq!(told.last(), Some(&false), "{told:?}");
}

/// The SQLite write batch runs on a connection of its own (rusqlite, prepared
/// statements kept) while every other write uses the sqlx writer. Both must take turns:
/// write batches and other writes racing each other all succeed, and every message's
/// seq and every inbox's iseq stay gap-free. An in-memory database, which that second
/// connection could not see, is refused with a clear error.
#[tokio::test]
async fn sqlite_batches_and_other_writes_take_turns() {
    let refused = connect("sqlite::memory:").await;
    assert!(
        matches!(refused, Err(StoreError::UnsupportedUrl(_))),
        "an in-memory SQLite database was accepted"
    );

    let (store, _dir) = common::sqlite().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let conv = group(&store, &alice, &[&bob]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (batches, conv, alice) = (store.clone(), conv.clone(), alice.clone());
        tasks.spawn(async move {
            let ops: Vec<WriteOp> = (0..5)
                .map(|k| send(&conv, &alice, &format!("c{i}-{k}"), "hi"))
                .collect();
            let out = batches.write_batch(&ops).await.expect("write batch");
            assert!(out
                .iter()
                .all(|o| matches!(o, WriteOutcome::Applied { .. })));
        });
        let others = store.clone();
        tasks.spawn(async move {
            user(&others, &format!("racer{i}")).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a racing write failed");
    }
    let page = store
        .history(
            &conv.id,
            SeqPage::Before {
                before: None,
                limit: 200,
            },
        )
        .await
        .expect("history");
    let mut seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>(), "message seqs");
    let inbox = store.inbox_since(&bob.id, 0, 500).await.expect("sync");
    let iseqs: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
    assert_eq!(iseqs, (1..=iseqs.len() as u64).collect::<Vec<u64>>());
    assert!(iseqs.len() >= 100, "bob's inbox has {} events", iseqs.len());
}

/// The SQLite WAL is checkpointed off the write batch's thread (store/src/sqlite/
/// checkpointer.rs), and a checkpoint that never blocks the writer also never lets the
/// WAL start over on its own. Under writes that never pause, the WAL must still stay
/// small: every page written reaches the database file through the WAL, so a WAL that
/// never restarted would be at least as large as the database's growth, which this
/// test makes twice the bound.
#[tokio::test]
async fn sqlite_wal_stays_bounded_under_unbroken_writes() {
    const WAL_BOUND: u64 = 16 << 20;
    let (store, dir) = common::sqlite().await;
    let db = dir.path().join("tidings.db");
    let wal = dir.path().join("tidings.db-wal");
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let alice = user(&store, "alice").await;
    let mut convs = Vec::new();
    for i in 0..40 {
        let other = user(&store, &format!("peer{i:02}")).await;
        convs.push(group(&store, &alice, &[&other]).await);
    }
    let body = "x".repeat(2000);
    let start = size(&db);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (mut largest_wal, mut n) = (0u64, 0usize);
    while size(&db) < start + 2 * WAL_BOUND {
        assert!(
            std::time::Instant::now() < deadline,
            "the database grew only {} bytes in 120 s",
            size(&db) - start
        );
        let ops: Vec<WriteOp> = (0..64)
            .map(|k| {
                n += 1;
                send(&convs[n % convs.len()], &alice, &format!("m{n}-{k}"), &body)
            })
            .collect();
        let out = store.write_batch(&ops).await.expect("write batch");
        assert!(out
            .iter()
            .all(|o| matches!(o, WriteOutcome::Applied { .. })));
        largest_wal = largest_wal.max(size(&wal));
    }
    assert!(
        largest_wal <= WAL_BOUND,
        "the WAL reached {largest_wal} bytes while the database grew by {}",
        size(&db) - start
    );
}

/// SQLite keeps each conversation's messages side by side in the `messages` table
/// (migration 0011): a message's rowid is its conversation's `message_block` times 2^32
/// plus its seq, so a history page reads a few neighbouring table pages instead of one
/// page per message. Sends to two conversations, interleaved in every batch, must come
/// out as two runs of rowids, each in seq order, and history and search (which finds
/// messages by rowid) must still see every one of them.
#[tokio::test]
async fn sqlite_stores_each_conversations_messages_together() {
    let (store, dir) = common::sqlite().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let convs = [
        group(&store, &alice, &[&bob]).await,
        group(&store, &alice, &[&carol]).await,
    ];
    for batch in 0..3 {
        let ops: Vec<WriteOp> = (0..10)
            .map(|k| {
                let body = format!("heron{batch}x{k}");
                send(&convs[k % 2], &alice, &format!("b{batch}-{k}"), &body)
            })
            .collect();
        let out = store.write_batch(&ops).await.expect("write batch");
        assert!(out
            .iter()
            .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    }

    let db = rusqlite::Connection::open(dir.path().join("tidings.db")).expect("open");
    let block = |conv: &str| -> i64 {
        db.query_row(
            "SELECT message_block FROM conversations WHERE id = ?1",
            [conv],
            |r| r.get(0),
        )
        .expect("message_block")
    };
    let blocks = [block(&convs[0].id), block(&convs[1].id)];
    assert!(
        blocks[0] > 0 && blocks[1] > 0 && blocks[0] != blocks[1],
        "{blocks:?}"
    );
    let mut rows = db
        .prepare("SELECT rowid, conversation_id, seq FROM messages ORDER BY rowid")
        .expect("prepare");
    let rows: Vec<(i64, String, i64)> = rows
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 30);
    for (rowid, conv, seq) in &rows {
        let b = if *conv == convs[0].id {
            blocks[0]
        } else {
            blocks[1]
        };
        assert_eq!(*rowid, (b << 32) + seq, "message {seq} of {conv}");
    }
    // In rowid order: one conversation's 15 messages, seqs 1..=15, then the other's.
    let order: Vec<(&str, i64)> = rows.iter().map(|(_, c, s)| (c.as_str(), *s)).collect();
    let (first, second) = if blocks[0] < blocks[1] {
        (&convs[0].id, &convs[1].id)
    } else {
        (&convs[1].id, &convs[0].id)
    };
    let expected: Vec<(&str, i64)> = (1..=15)
        .map(|s| (first.as_str(), s))
        .chain((1..=15).map(|s| (second.as_str(), s)))
        .collect();
    assert_eq!(order, expected);

    let page = store
        .history(
            &convs[1].id,
            SeqPage::Before {
                before: Some(11),
                limit: 4,
            },
        )
        .await
        .expect("history");
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [10, 9, 8, 7]
    );
    assert_eq!(
        search_bodies(&store, &carol.id, "heron2x7").await,
        ["heron2x7"]
    );
}

/// The bodies of `user`'s first ten search hits for `query`.
async fn search_bodies(store: &Arc<dyn Store>, user: &str, query: &str) -> Vec<String> {
    store
        .search_messages(user, query, None, 10, 0)
        .await
        .expect("search")
        .into_iter()
        .map(|m| m.body)
        .collect()
}

/// Every message's `(id, rowid)` in an SQLite database file, in id order.
fn message_rowids(db: &rusqlite::Connection) -> Vec<(String, i64)> {
    db.prepare("SELECT id, rowid FROM messages ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Migration 0011 on a database that already holds messages: the old rows keep their
/// rowids (below 2^32, so the new layout never collides with them), the conversations
/// they belong to get a block, and history, search and new sends see old and new
/// messages alike.
#[tokio::test]
async fn sqlite_messages_stored_before_the_layout_migration_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tidings.db");
    let url = format!("sqlite://{}", path.display());
    {
        // The schema as it was before 0011, with rows written as the store then wrote
        // them (rowids in arrival order, two conversations interleaved).
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
            .expect("url")
            .create_if_missing(true);
        let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
            .await
            .expect("open");
        let mut before = sqlx::migrate!("../migrations/sqlite");
        let keep = before
            .migrations
            .iter()
            .filter(|m| m.version < 11)
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(keep.len(), 10, "migrations before 0011");
        before.migrations = keep.into();
        before.run(&mut db).await.expect("migrate to 0010");
        sqlx::Executor::execute(
            &mut db,
            "INSERT INTO users (id, username, password_hash, created_at) VALUES \
               ('U1', 'alice', 'x', 1), ('U2', 'bob', 'x', 1); \
             INSERT INTO conversations (id, kind, created_by, created_at, last_seq, \
               last_activity_at) VALUES ('C1', 'group', 'U1', 1, 2, 1), \
               ('C2', 'group', 'U1', 1, 2, 1); \
             INSERT INTO members (conversation_id, user_id, role, joined_at, handle) VALUES \
               ('C1', 'U1', 'owner', 1, 1), ('C1', 'U2', 'member', 1, 1), \
               ('C2', 'U1', 'owner', 1, 2), ('C2', 'U2', 'member', 1, 2); \
             INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, kind, \
               body, created_at) VALUES \
               ('M1', 'C1', 1, 'U1', 'k1', 'text', 'old osprey one', 1), \
               ('M2', 'C2', 1, 'U1', 'k2', 'text', 'old osprey two', 1), \
               ('M3', 'C1', 2, 'U1', 'k3', 'text', 'old osprey three', 1), \
               ('M4', 'C2', 2, 'U1', 'k4', 'text', 'old osprey four', 1);",
        )
        .await
        .expect("rows before 0011");
    }

    let store = connect(&url).await.expect("open and migrate");
    let ops: Vec<WriteOp> = (0..4)
        .map(|k| {
            WriteOp::Send(NewMessage {
                id: new_id(),
                conv: if k % 2 == 0 { "C1" } else { "C2" }.into(),
                sender: "U1".into(),
                client_msg_id: format!("new{k}"),
                body: format!("new osprey {k}"),
                reply_to: None,
                mentions: vec![],
                attachment: None,
                created_at: now_ms(),
            })
        })
        .collect();
    let out = store.write_batch(&ops).await.expect("write batch");
    assert!(out
        .iter()
        .all(|o| matches!(o, WriteOutcome::Applied { .. })));

    let page = store
        .history(
            "C1",
            SeqPage::Before {
                before: None,
                limit: 10,
            },
        )
        .await
        .expect("history");
    assert_eq!(
        page.iter()
            .map(|m| (m.seq, m.body.as_str()))
            .collect::<Vec<_>>(),
        [
            (4, "new osprey 2"),
            (3, "new osprey 0"),
            (2, "old osprey three"),
            (1, "old osprey one"),
        ]
    );
    let found = store
        .search_messages("U2", "osprey", None, 20, 0)
        .await
        .expect("search");
    assert_eq!(found.len(), 8, "{found:?}");

    let db = rusqlite::Connection::open(&path).expect("open");
    let mut rowids = message_rowids(&db);
    rowids.retain(|(id, _)| id.starts_with('M'));
    assert_eq!(
        rowids,
        [("M1", 1), ("M2", 2), ("M3", 3), ("M4", 4)].map(|(id, r)| (id.to_owned(), r))
    );
    let blocks: Vec<i64> = db
        .prepare("SELECT message_block FROM conversations ORDER BY id")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("blocks");
    assert_eq!(
        blocks,
        [1, 2],
        "blocks given to the conversations already there"
    );
}

/// docs/DEPLOY.md offers `VACUUM INTO` for an online SQLite backup. SQLite only
/// promises stable rowids for tables with an INTEGER PRIMARY KEY, which `messages` does
/// not have, yet both the search index (external content, by rowid) and the layout of
/// migration 0011 depend on them. So a backup made that way must keep every message's
/// rowid, and a store opened on it must find the messages by search.
#[tokio::test]
async fn sqlite_backup_by_vacuum_into_keeps_message_rowids() {
    let (store, dir) = common::sqlite().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let convs = [
        group(&store, &alice, &[&bob]).await,
        group(&store, &alice, &[&bob]).await,
    ];
    let ops: Vec<WriteOp> = (0..6)
        .map(|k| {
            send(
                &convs[k % 2],
                &alice,
                &format!("v{k}"),
                &format!("kestrel{k}"),
            )
        })
        .collect();
    store.write_batch(&ops).await.expect("write batch");
    // Indexed before the backup, so the copy's search index refers to rowids.
    assert_eq!(
        store
            .search_messages(&bob.id, "kestrel3", None, 10, 0)
            .await
            .expect("search")
            .len(),
        1
    );
    let live = rusqlite::Connection::open(dir.path().join("tidings.db")).expect("open");
    let backup_dir = tempfile::tempdir().expect("tempdir");
    let backup = backup_dir.path().join("tidings.db");
    live.execute("VACUUM INTO ?1", [backup.to_str().expect("utf-8 path")])
        .expect("VACUUM INTO");
    let copy = rusqlite::Connection::open(&backup).expect("open the backup");
    assert_eq!(message_rowids(&copy), message_rowids(&live));
    assert_eq!(message_rowids(&copy).len(), 6);

    let restored = connect(&format!("sqlite://{}", backup.display()))
        .await
        .expect("open the backup as a store");
    assert_eq!(
        search_bodies(&restored, &bob.id, "kestrel4").await,
        ["kestrel4"]
    );
}
