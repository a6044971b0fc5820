//! The device examples run against a live server, as their README promises:
//! examples/device.py (paho-mqtt) and examples/device.sh (mosquitto-clients) each use
//! only a device credential, send, receive, and catch up after being offline.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use serde_json::json;

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command to its end off the async runtime; fails the test if it does.
async fn run(mut cmd: Command) -> Output {
    let out = tokio::task::spawn_blocking(move || {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run the example")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "example failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn the_python_device_sends_receives_and_catches_up() {
    let server = Server::start(Db::Sqlite).await;
    let alice = register(&server, "alice").await;
    let owner = register(&server, "sensor").await;
    let conv = conversation(&server, &alice, "group", &[&owner]).await;
    let (_, dev) = device_credential(&server, &owner, json!({"name": "python"})).await;
    let mut a = Mqtt::connect(&server, &alice, "phone").await;
    let inbox = format!("u/{}/in", alice.id);
    a.subscribe(&inbox).await;
    let state = tempfile::tempdir().expect("tempdir");
    let state_file = state.path().join("state.json");
    let device = |send: Option<&str>, seconds: &str| {
        let mut cmd = Command::new("python3");
        cmd.arg(example("device.py"))
            .args(["--port", &server.mqtt_port.to_string(), "--conv", &conv])
            .args(["--seconds", seconds, "--state"])
            .arg(&state_file)
            .env("TIDINGS_USER", &owner.id)
            .env("TIDINGS_SECRET", &dev.access);
        if let Some(body) = send {
            cmd.args(["--send", body]);
        }
        cmd
    };

    // Online: it sends, and prints what alice answers.
    let running = tokio::spawn(run(device(Some("hello from python"), "4")));
    a.expect(&inbox, "the device's message", |v| {
        v["body"] == "hello from python"
    })
    .await;
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &json!({"op": "send", "id": "a1", "conv": conv, "body": "hi python"}),
    )
    .await;
    let out = running.await.expect("join");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("message {conv} {} hi python", alice.id)),
        "{printed}"
    );

    // Offline: alice writes twice; the next run catches up with `sync` from its state.
    for (i, body) in ["while offline 1", "while offline 2"].iter().enumerate() {
        a.publish_json(
            &format!("u/{}/out", alice.id),
            &json!({"op": "send", "id": format!("b{i}"), "conv": conv, "body": body}),
        )
        .await;
        a.expect(&inbox, "ack", |v| {
            v["type"] == "ack" && v["re"] == format!("b{i}")
        })
        .await;
    }
    let out = run(device(None, "1")).await;
    let printed = String::from_utf8_lossy(&out.stdout);
    let caught: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("while offline"))
        .collect();
    assert_eq!(caught.len(), 2, "{printed}");
    assert!(
        !printed.contains("hi python"),
        "what it saw before is not replayed: {printed}"
    );
}

#[tokio::test]
async fn the_shell_recipe_sends_and_catches_up() {
    let server = Server::start(Db::Sqlite).await;
    let alice = register(&server, "alice").await;
    let owner = register(&server, "sensor").await;
    let conv = conversation(&server, &alice, "group", &[&owner]).await;
    let (_, dev) = device_credential(&server, &owner, json!({"name": "shell"})).await;
    let mut a = Mqtt::connect(&server, &alice, "phone").await;
    let inbox = format!("u/{}/in", alice.id);
    a.subscribe(&inbox).await;
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &json!({"op": "send", "id": "a1", "conv": conv, "body": "before the shell"}),
    )
    .await;
    a.expect(&inbox, "ack", |v| v["type"] == "ack").await;

    let mut cmd = Command::new("bash");
    cmd.arg(example("device.sh"))
        .arg("hello from the shell")
        .env("TIDINGS_MQTT_PORT", server.mqtt_port.to_string())
        .env("TIDINGS_USER", &owner.id)
        .env("TIDINGS_SECRET", &dev.access)
        .env("CONV", &conv)
        .env("WAIT", "3");
    let shell = tokio::spawn(run(cmd));
    a.expect(&inbox, "the shell's message", |v| {
        v["body"] == "hello from the shell"
    })
    .await;
    let out = tokio::time::timeout(Duration::from_secs(30), shell)
        .await
        .expect("the recipe ends")
        .expect("join");
    let printed = String::from_utf8_lossy(&out.stdout);
    // The catch-up page (the first line) holds what alice wrote before it ran.
    let page: serde_json::Value =
        serde_json::from_str(printed.lines().next().unwrap_or("")).expect("a sync page");
    assert_eq!(page["type"], "sync", "{printed}");
    assert!(
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["body"] == "before the shell"),
        "{printed}"
    );
    // Its listener saw its own message delivered.
    assert!(printed.contains("hello from the shell"), "{printed}");
}
