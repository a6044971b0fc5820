//! Tidings with MQTT clients we did not write: PyPI's paho-mqtt (over TCP and over
//! WebSocket, speaking the JSON protocol of docs/PROTOCOL.md and nothing else), and
//! paho-mqtt, MQTT.js and Debian's mosquitto_sub reading CONNACK refusal codes.

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
    // (each handshake runs in its own task, under the CONNECT deadline).
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

/// Runs a command to completion and returns its stdout, stderr and exit status.
async fn run(mut cmd: Command) -> (String, String, std::process::ExitStatus) {
    let what = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/test.sh installs the clients)"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status,
    )
}

fn last_json(stdout: &str, stderr: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("no JSON result: {stdout:?} / {stderr}"))
}

#[tokio::test]
async fn refused_connects_get_connack_codes_in_paho_mqttjs_and_mosquitto_sub() {
    let server = Server::start(Db::Sqlite).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let expired = {
        use tidings_auth::{AccessClaims, TokenKeys};
        let keys = TokenKeys::new(TEST_JWT_SECRET.as_bytes(), 900, 3600).expect("keys");
        let sid = keys.verify_access(&alice.access).expect("valid").sid;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        keys.sign(&AccessClaims {
            sub: alice.id.clone(),
            sid,
            iat: now - 7200,
            exp: now - 3600,
            iss: "tidings".into(),
        })
        .expect("sign")
    };
    // (what, client id, username, password, 3.1.1 code, MQTT 5 reason code)
    let cases = [
        (
            "bad token",
            format!("{}:x", alice.id),
            alice.id.clone(),
            "not-a-jwt".to_string(),
            4,
            0x86,
        ),
        (
            "expired token",
            format!("{}:x", alice.id),
            alice.id.clone(),
            expired,
            4,
            0x86,
        ),
        (
            "foreign client id",
            format!("{}:x", bob.id),
            alice.id.clone(),
            alice.access.clone(),
            5,
            0x87,
        ),
    ];
    let port = server.mqtt_port.to_string();
    let paho = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/connack_paho.py");
    let mqttjs = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/connack_mqttjs.js"
    );
    for (what, client_id, user, password, v3_code, v5_code) in &cases {
        // paho-mqtt, 3.1.1 and 5. paho reports a 3.1.1 refusal as its MQTT 5
        // equivalent (4 -> 0x86, 5 -> 0x87).
        for version in ["311", "5"] {
            let mut cmd = Command::new("python3");
            cmd.args([paho, "127.0.0.1", &port, client_id, user, password, version]);
            let (stdout, stderr, _) = run(cmd).await;
            let got = last_json(&stdout, &stderr);
            assert_eq!(got["rc"], *v5_code, "paho {version}, {what}: {got}");
        }
        // MQTT.js, 3.1.1 and 5: the error carries the raw return / reason code.
        for (version, code) in [("4", *v3_code), ("5", *v5_code)] {
            let mut cmd = Command::new("node");
            cmd.args([
                mqttjs,
                &format!("mqtt://127.0.0.1:{port}"),
                client_id,
                user,
                password,
                version,
            ]);
            let (stdout, stderr, _) = run(cmd).await;
            let got = last_json(&stdout, &stderr);
            assert_eq!(got["rc"], code, "MQTT.js v{version}, {what}: {got}");
        }
        // mosquitto_sub names the refusal and gives up instead of retrying forever.
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            client_id,
            "-u",
            user,
            "-P",
            password,
        ])
        .args(["-t", "u/x/in", "-C", "1", "-W", "10", "-V", "mqttv311"]);
        let (stdout, stderr, status) = run(cmd).await;
        let text = format!("{stdout}{stderr}").to_lowercase();
        let expected = if *v3_code == 4 {
            "bad user name or password"
        } else {
            "not authorised"
        };
        assert!(!status.success(), "mosquitto_sub, {what}: accepted");
        assert!(text.contains(expected), "mosquitto_sub, {what}: {text}");
    }
    // Positive control: the same clients with good credentials are accepted.
    let good_id = format!("{}:third", alice.id);
    let mut cmd = Command::new("python3");
    cmd.args([
        paho,
        "127.0.0.1",
        &port,
        &good_id,
        &alice.id,
        &alice.access,
        "5",
    ]);
    let (stdout, stderr, _) = run(cmd).await;
    assert_eq!(last_json(&stdout, &stderr)["rc"], 0);
    let mut cmd = Command::new("node");
    cmd.args([
        mqttjs,
        &format!("mqtt://127.0.0.1:{port}"),
        &good_id,
        &alice.id,
        &alice.access,
        "4",
    ]);
    let (stdout, stderr, _) = run(cmd).await;
    assert_eq!(last_json(&stdout, &stderr)["rc"], 0);
}
