//! Reconnecting the way a phone on a bad network needs it, against a real server:
//! live traffic and the outbox first (catching up over a slow HTTP link must not hold
//! them back), a backoff that keeps growing while a broker accepts and drops at once,
//! and no call waiting on a token refresh that hangs.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::recorder::{client_with, Recorder};
use common::Server;
use tidings_core::sdk::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn client(
    http: String,
    broker: String,
    dir: &std::path::Path,
    device: &str,
) -> (Client, Arc<Recorder>) {
    client_with(ClientConfig::new(
        http,
        broker,
        dir.to_string_lossy(),
        device,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_and_the_outbox_go_first_while_catching_up_is_slow() {
    let server = Server::start();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _) = client(
        server.http(),
        server.mqtt(),
        alice_dir.path(),
        "alice-phone",
    );
    let (bob, bob_rec) = client(server.http(), server.mqtt(), bob_dir.path(), "bob-phone");
    alice.register("alice", "alice-password").await.unwrap();
    let b = bob.register("bob", "bob-password").await.unwrap();
    bob.connect().await.unwrap();
    bob_rec.state(ConnectionState::Connected).await;
    // Several conversations, so catching up has a list and member lists to fetch.
    let mut convs = Vec::new();
    for i in 0..4 {
        let c = alice
            .create_conversation("group", Some(format!("g{i}")), vec![b.user_id.clone()])
            .await
            .unwrap();
        convs.push(c.id);
    }
    // Missed while offline (to sync), and queued while offline (to send).
    bob.send_text(&convs[0], "missed", None, vec![])
        .await
        .unwrap();
    bob_rec.message("missed").await;
    alice
        .send_text(&convs[1], "queued", None, vec![])
        .await
        .unwrap();
    alice.shutdown();

    // The same device again, its HTTP now behind a link that holds every request 1.5 s.
    let (slow_http, _) =
        common::proxy::slow(server.http_port, 1 << 20, Duration::from_millis(1500)).await;
    let (alice, alice_rec) = client(
        format!("http://127.0.0.1:{slow_http}"),
        server.mqtt(),
        alice_dir.path(),
        "alice-phone",
    );
    let start = Instant::now();
    alice.connect().await.unwrap();
    alice_rec.state(ConnectionState::Connected).await;
    let connected = start.elapsed();
    bob_rec.message("queued").await;
    let queued_out = start.elapsed();
    bob.send_text(&convs[2], "live", None, vec![])
        .await
        .unwrap();
    let live_sent = Instant::now();
    alice_rec.message("live").await;
    let live_in = live_sent.elapsed();
    // Catching up still happens, in the background, and says so.
    alice_rec.message("missed").await;
    let synced = start.elapsed();
    let historical = |body: &str| {
        alice_rec.all().iter().find_map(|e| match e {
            ClientEvent::Message {
                message,
                historical,
            } if message.body == body => Some(*historical),
            _ => None,
        })
    };
    assert_eq!(historical("missed"), Some(true));
    assert_eq!(historical("live"), Some(false));
    eprintln!(
        "connected {connected:?}, queued delivered {queued_out:?}, live in {live_in:?}, synced {synced:?}"
    );
    assert!(
        connected < Duration::from_millis(1200),
        "Connected after {connected:?}"
    );
    assert!(
        queued_out < Duration::from_millis(1200),
        "the outbox went out after {queued_out:?}"
    );
    assert!(
        live_in < Duration::from_millis(1000),
        "a live message took {live_in:?}"
    );
    // Control: the slow link was really in the way of catching up.
    assert!(
        synced >= Duration::from_millis(1500),
        "sync took only {synced:?}"
    );
    alice.shutdown();
    bob.shutdown();
}

/// An MQTT listener that accepts every CONNECT with CONNACK 0 and hangs up at once,
/// counting the connections.
async fn accept_and_drop() -> (u16, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // The CONNECT packet (type 1): answer CONNACK, session not present, 0.
                if let Ok(n) = sock.read(&mut buf).await {
                    if n > 0 && buf[0] >> 4 == 1 {
                        let _ = sock.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_accepts_and_drops_gets_a_growing_backoff() {
    let server = Server::start();
    let (broker, connections) = accept_and_drop().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, rec) = client(
        server.http(),
        format!("mqtt://127.0.0.1:{broker}"),
        dir.path(),
        "alice-phone",
    );
    alice.register("alice", "alice-password").await.unwrap();
    alice.connect().await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = connections.load(Ordering::SeqCst);
    // 250 ms doubling with jitter in [d/2, d]: at most 6 attempts in 6 s. Resetting on
    // CONNACK (the old behaviour) made 25-50.
    assert!(n >= 3, "it must keep trying: {n} connections");
    assert!(
        n <= 7,
        "{n} connections in 6 s: the backoff was reset by CONNACK"
    );
    assert!(rec.all().iter().any(|e| matches!(
        e,
        ClientEvent::ConnectionState {
            state: ConnectionState::WaitingToRetry
        }
    )));
    alice.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_a_message_does_not_wait_for_a_hanging_token_refresh() {
    // Access tokens live 1 s, inside the SDK's refresh margin: every use refreshes.
    let server = Server::start_with_env(&[("TIDINGS_AUTH_ACCESS_TTL_SECS", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = client(server.http(), server.mqtt(), dir.path(), "alice-phone");
    alice.register("alice", "alice-password").await.unwrap();
    let conv = alice
        .create_conversation("room", Some("r".into()), vec![])
        .await
        .unwrap();
    alice.shutdown();

    // Now the HTTP side accepts connections and never answers: the refresh hangs.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = blackhole.accept().await {
            keep.lock().unwrap().push(sock);
        }
    });
    let (alice, _) = client(
        format!("http://127.0.0.1:{port}"),
        server.mqtt(),
        dir.path(),
        "alice-phone",
    );
    alice.connect().await.unwrap();
    // The connection loop is now inside the refresh request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the SDK never tried to refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let queued = tokio::time::timeout(
        Duration::from_secs(2),
        alice.send_text(&conv.id, "while refreshing", None, vec![]),
    )
    .await;
    assert!(
        matches!(queued, Ok(Ok(_))),
        "send_text waited on the refresh: {queued:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(alice.pending().unwrap().len(), 1);
    alice.shutdown();
}
