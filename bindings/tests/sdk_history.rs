//! History through the SDK against a real server: pages carry reactions and reply
//! previews, live messages and reactions update the cache, and with the server gone the
//! cache pages backwards correctly: it continues where the last page ended and stops at
//! a gap (messages it never saw) instead of skipping over it or repeating the newest page.
//! (Before, `history` dropped reactions, previews and `has_more`, and offline it gave the
//! newest cached page whatever `before` said.)

mod common;

use common::recorder::client;
use common::Server;
use serde_json::{json, Value};
use tidings_core::sdk::*;

/// Posts a message over HTTP; returns (id, seq).
async fn post(
    server: &Server,
    token: &str,
    conv: &str,
    body: &str,
    reply_to: Option<&str>,
) -> (String, u64) {
    let res = reqwest::Client::new()
        .post(format!(
            "{}/v1/conversations/{conv}/messages",
            server.http()
        ))
        .bearer_auth(token)
        .json(&json!({"client_msg_id": format!("h-{body}"), "body": body, "reply_to": reply_to}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status().as_u16(), 201, "sending {body}");
    let m: Value = res.json().await.expect("message");
    (
        m["id"].as_str().expect("id").to_owned(),
        m["seq"].as_u64().expect("seq"),
    )
}

fn bodies(page: &HistoryPage) -> Vec<String> {
    page.messages.iter().map(|m| m.body.clone()).collect()
}

fn named(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_online_and_offline_with_reactions_replies_and_gaps() {
    let mut server = Server::start_with_env(&[
        ("TIDINGS_LIMITS_SEND_BURST", "100000"),
        ("TIDINGS_LIMITS_SEND_PER_SECOND", "100000"),
    ]);
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, alice_rec) = client(&server, alice_dir.path(), "alice-phone");
    let (bob, _) = client(&server, bob_dir.path(), "bob-phone");
    alice.register("alice", "alice-password").await.unwrap();
    let b = bob.register("bob", "bob-password").await.unwrap();
    alice.connect().await.unwrap();
    bob.connect().await.unwrap();
    alice_rec.state(ConnectionState::Connected).await;
    let conv = alice
        .create_conversation("group", Some("history".into()), vec![b.user_id.clone()])
        .await
        .unwrap();

    // m1..m120 from bob; m110 replies to m100.
    let bob_token = server.access_token("bob", "bob-password").await;
    let mut ids = vec![String::new()];
    let mut seqs = vec![0u64];
    for i in 1..=120u32 {
        let reply = (i == 110).then(|| ids[100].clone());
        let (id, seq) = post(
            &server,
            &bob_token,
            &conv.id,
            &format!("m{i}"),
            reply.as_deref(),
        )
        .await;
        ids.push(id);
        seqs.push(seq);
    }
    bob.react(&ids[100], "👍", true).await.unwrap();
    alice.react(&ids[100], "🎉", true).await.unwrap();
    alice_rec
        .wait_for("both reactions", |evs| {
            let n = evs
                .iter()
                .filter(|e| matches!(e, ClientEvent::Reaction { reaction } if reaction.message_id == ids[100]))
                .count();
            (n == 2).then_some(())
        })
        .await;

    // A new device of alice's starts at the current inbox position (no replay), so its
    // cache holds only what it pages in or is sent from now on.
    alice.shutdown();
    let tablet_dir = tempfile::tempdir().unwrap();
    let (alice, alice_rec) = client(&server, tablet_dir.path(), "alice-tablet");
    alice.login("alice", "alice-password").await.unwrap();
    alice.connect().await.unwrap();
    alice_rec.state(ConnectionState::Connected).await;

    // Online: the newest page, one older, and the oldest ten.
    let newest = alice.history(&conv.id, None, 50).await.unwrap();
    assert!(!newest.from_cache && newest.has_more && !newest.gap);
    assert_eq!(bodies(&newest), named(71..=120));
    let m100 = newest.messages.iter().find(|m| m.body == "m100").unwrap();
    let mut counts = m100.reactions.clone();
    counts.sort_by(|a, b| a.emoji.cmp(&b.emoji));
    assert_eq!(
        counts,
        vec![
            ReactionCount {
                emoji: "🎉".into(),
                count: 1,
                me: true
            },
            ReactionCount {
                emoji: "👍".into(),
                count: 1,
                me: false
            },
        ]
    );
    let m110 = newest.messages.iter().find(|m| m.body == "m110").unwrap();
    let preview = m110.reply_preview.as_ref().expect("m110 quotes m100");
    assert_eq!(
        (preview.id.as_str(), preview.body.as_str()),
        (ids[100].as_str(), "m100")
    );
    let older = alice.history(&conv.id, Some(seqs[71]), 50).await.unwrap();
    assert_eq!(bodies(&older), named(21..=70));
    assert!(older.has_more);
    let oldest = alice.history(&conv.id, Some(seqs[11]), 50).await.unwrap();
    assert_eq!(bodies(&oldest).last().map(String::as_str), Some("m10"));
    assert!(
        !oldest.has_more,
        "nothing before m1 but the group's own notices"
    );
    assert!(bodies(&oldest).ends_with(&named(1..=10)));

    // Live: a reply and a reaction reach alice's cache through MQTT.
    bob.send_text(&conv.id, "m121", Some(ids[120].clone()), vec![])
        .await
        .unwrap();
    let live = alice_rec.message("m121").await;
    assert_eq!(
        live.reply_preview.as_ref().map(|p| p.body.as_str()),
        Some("m120"),
        "a live reply is previewed from the cache"
    );
    bob.react(&live.id, "👍", true).await.unwrap();
    let counts = alice_rec
        .wait_for("the live reaction's counts", |evs| {
            evs.iter().find_map(|e| match e {
                ClientEvent::Reaction { reaction } if reaction.message_id == live.id => {
                    reaction.counts.clone()
                }
                _ => None,
            })
        })
        .await;
    assert_eq!(
        counts,
        vec![ReactionCount {
            emoji: "👍".into(),
            count: 1,
            me: false
        }]
    );

    // Offline: every page comes from the cache and continues where the last one ended.
    server.stop();
    let a = alice.history(&conv.id, None, 50).await.unwrap();
    assert!(a.from_cache && a.has_more && !a.gap, "{a:?}");
    assert_eq!(
        bodies(&a),
        named(72..=121),
        "the newest page includes the live message"
    );
    let live_cached = a.messages.last().unwrap();
    assert_eq!(
        live_cached.reactions, counts,
        "the live reaction was cached"
    );
    assert_eq!(
        a.messages
            .iter()
            .find(|m| m.body == "m100")
            .unwrap()
            .reactions
            .len(),
        2,
        "counts from the history page were cached"
    );
    let b_page = alice.history(&conv.id, Some(seqs[72]), 50).await.unwrap();
    assert_eq!(bodies(&b_page), named(22..=71));
    assert!(b_page.from_cache && b_page.has_more && !b_page.gap);
    // m11..m20 were never fetched: the page stops at the gap.
    let c = alice.history(&conv.id, Some(seqs[22]), 50).await.unwrap();
    assert_eq!(bodies(&c), named(21..=21));
    assert!(c.from_cache && c.gap && c.has_more, "{c:?}");
    let below_gap = alice.history(&conv.id, Some(seqs[21]), 50).await.unwrap();
    assert!(below_gap.messages.is_empty() && below_gap.gap);
    let d = alice.history(&conv.id, Some(seqs[11]), 50).await.unwrap();
    assert!(bodies(&d).ends_with(&named(1..=10)));
    assert!(d.from_cache && !d.has_more && !d.gap, "{d:?}");

    // Back online, the gap is filled; offline again, paging runs straight through it.
    server.start_again();
    let filled = alice.history(&conv.id, Some(seqs[21]), 10).await.unwrap();
    assert!(!filled.from_cache);
    assert_eq!(bodies(&filled), named(11..=20));
    server.stop();
    let through = alice.history(&conv.id, Some(seqs[22]), 50).await.unwrap();
    assert!(
        through.from_cache && !through.gap && !through.has_more,
        "{through:?}"
    );
    assert!(bodies(&through).ends_with(&named(1..=21)));

    alice.shutdown();
    bob.shutdown();
}
