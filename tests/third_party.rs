//! Tidings with an MQTT client we did not write: PyPI's paho-mqtt, over TCP and over
//! WebSocket, speaking the JSON protocol of docs/PROTOCOL.md and nothing else.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

async fn paho_chat(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let ws_port: u16 = server
        .ws_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("websocket port");
    let config = json!({
        "host": "127.0.0.1",
        "mqtt_port": server.mqtt_port,
        "ws_port": ws_port,
        "conv": conv,
        "alice": { "id": alice.id, "token": alice.access },
        "bob": { "id": bob.id, "token": bob.access },
    });
    // A client that opens a WebSocket socket and never speaks must not block the others
    // (rumqttd's own handshake has no timeout; the gate in front of it does).
    let _silent = std::net::TcpStream::connect(("127.0.0.1", ws_port)).expect("silent socket");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_chat.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (scripts/test.sh checks for paho-mqtt)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
            panic!(
                "paho printed {stdout:?}, stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        out.status.success() && result["ok"] == true,
        "paho chat failed: {result}\n{}",
        server.logs()
    );
    assert_eq!(result["bob_got"]["body"], "hello from paho over websocket");
    assert_eq!(result["alice_got"]["sender"], bob.id.as_str());
    assert_eq!(result["alice_ack"]["seq"], 1);
}

#[tokio::test]
async fn paho_clients_chat_over_tcp_and_websocket_on_sqlite() {
    paho_chat(Db::Sqlite).await;
}

#[tokio::test]
async fn paho_clients_chat_over_tcp_and_websocket_on_postgres() {
    paho_chat(Db::Postgres).await;
}
