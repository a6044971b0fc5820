//! The app's logger receives the SDK's log lines at the level it asked for: connection
//! states at `info`, failed commands at `warn`, nothing below the level, nothing after
//! `clear_logger`, and a logger that throws does not stop the SDK. (One test: the
//! logger is process-wide.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use tidings_core::sdk::*;

#[derive(Default)]
struct Lines(Mutex<Vec<(LogLevel, String, String)>>);

impl TidingsLogger for Lines {
    fn log(&self, level: LogLevel, target: String, message: String) {
        self.0.lock().unwrap().push((level, target, message));
    }
}

impl Lines {
    fn all(&self) -> Vec<(LogLevel, String, String)> {
        self.0.lock().unwrap().clone()
    }
    async fn wait_for(&self, what: &str, f: impl Fn(&(LogLevel, String, String)) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.all().iter().any(&f) {
            assert!(
                Instant::now() < deadline,
                "no log line {what}: {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Throws;

impl TidingsLogger for Throws {
    fn log(&self, _: LogLevel, _: String, _: String) {
        panic!("the app's logger failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_logger_gets_sdk_lines_at_its_level() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (client, rec) = common::recorder::client(&server, dir.path(), "phone");

    let info = Arc::new(Lines::default());
    set_logger(info.clone(), LogLevel::Info).unwrap();
    client.register("alice", "alice-password").await.unwrap();
    client.connect().await.unwrap();
    info.wait_for("for Connected at info", |(level, target, message)| {
        *level == LogLevel::Info
            && target.starts_with("tidings_core::sdk")
            && message.contains("connection state")
            && message.contains("Connected")
    })
    .await;
    assert!(
        info.all().iter().all(|(l, _, _)| *l <= LogLevel::Info),
        "nothing below info: {:#?}",
        info.all()
    );

    // A command the server refuses is a warning with its code.
    let stranger = tidings_core::protocol::ids::new_id();
    let id = client
        .send_text(&stranger, "into the void", None, vec![])
        .await
        .unwrap();
    info.wait_for("for the refused send at warn", |(level, _, message)| {
        *level == LogLevel::Warn && message.contains(&id) && message.contains("not_found")
    })
    .await;

    // A stricter logger replaces it: info lines stop, on both.
    let warn = Arc::new(Lines::default());
    set_logger(warn.clone(), LogLevel::Warn).unwrap();
    let before = info.all().len();
    client.disconnect();
    client.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        info.all().len(),
        before,
        "the replaced logger got more lines"
    );
    assert!(
        warn.all().iter().all(|(l, _, _)| *l <= LogLevel::Warn),
        "{:#?}",
        warn.all()
    );
    // Control: the warn logger does get warnings.
    client
        .send_text(&stranger, "again", None, vec![])
        .await
        .unwrap();
    warn.wait_for("for the second refused send", |(level, _, _)| {
        *level == LogLevel::Warn
    })
    .await;

    // A logger that throws: the SDK carries on.
    set_logger(Arc::new(Throws), LogLevel::Trace).unwrap();
    rec.clear();
    client.disconnect();
    client.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;

    clear_logger();
    let quiet = Arc::new(Lines::default());
    set_logger(quiet.clone(), LogLevel::Info).unwrap();
    clear_logger();
    client.disconnect();
    client.connect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(quiet.all().is_empty(), "{:#?}", quiet.all());
    client.shutdown();
}
