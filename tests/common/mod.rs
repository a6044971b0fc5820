//! The end-to-end harness: starts the real `tidings` binary as a child process on free
//! loopback ports, with its own data directory and either SQLite or a fresh PostgreSQL
//! database, and talks to it over real sockets.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod mqtt;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, Executor};

/// The JWT secret every test server signs with, so tests can mint tokens (expired ones).
pub const TEST_JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct Server {
    child: Option<Child>,
    pub http: String,
    /// MQTT over TCP, on loopback.
    pub mqtt_port: u16,
    /// MQTT over WebSocket, `host:port`.
    pub ws_addr: String,
    /// MQTT 5 over TCP, on loopback.
    pub v5_port: u16,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    logs: Arc<Mutex<Vec<String>>>,
    pub database_url: Option<String>,
}

/// How to start a server.
pub struct Options {
    pub db: Db,
    /// Working directory; data_dir is left to its default (./data) when set.
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub database_url: Option<String>,
}

impl Options {
    pub fn new(db: Db) -> Self {
        Options {
            db,
            cwd: None,
            env: vec![],
            database_url: None,
        }
    }
}

/// A new, empty database in the test PostgreSQL cluster (scripts/test.sh starts it).
pub async fn fresh_pg_database() -> String {
    let admin = std::env::var("TIDINGS_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("TIDINGS_TEST_PG_URL is not set: run the tests with scripts/test.sh, which starts a throwaway PostgreSQL")
    });
    let name = format!("e2e_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to test PostgreSQL");
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

impl Server {
    pub async fn start(db: Db) -> Server {
        Server::start_with(Options::new(db)).await
    }

    pub async fn start_with(mut opts: Options) -> Server {
        if opts.db == Db::Postgres && opts.database_url.is_none() {
            opts.database_url = Some(fresh_pg_database().await);
        }
        let (dir, data_dir) = match &opts.cwd {
            Some(cwd) => (None, cwd.join("data")),
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                let data = dir.path().join("data");
                (Some(dir), data)
            }
        };
        let mut server = Server {
            child: None,
            http: String::new(),
            mqtt_port: 0,
            ws_addr: String::new(),
            v5_port: 0,
            data_dir,
            _dir: dir,
            logs: Arc::new(Mutex::new(Vec::new())),
            database_url: opts.database_url.clone(),
        };
        server.spawn(&opts);
        server
    }

    /// Starts the binary. The MQTT port is picked free beforehand (tests and third-party
    /// clients need it before the server logs it), and the start retried if another
    /// process took it meanwhile.
    fn spawn(&mut self, opts: &Options) {
        for attempt in 0..5 {
            let port = free_port();
            match self.try_spawn(opts, port) {
                Ok(()) => return,
                Err(logs) if attempt < 4 && logs.contains("could not listen") => continue,
                Err(logs) => panic!("tidings did not start:\n{logs}"),
            }
        }
    }

    fn try_spawn(&mut self, opts: &Options, mqtt_port: u16) -> Result<(), String> {
        self.logs.lock().expect("log lock").clear();
        self.mqtt_port = mqtt_port;
        self.v5_port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.arg("serve")
            .env_remove("RUST_LOG")
            .env("TIDINGS_HTTP_LISTEN", "127.0.0.1:0")
            .env("TIDINGS_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"))
            .env("TIDINGS_MQTT_WS_LISTEN", "127.0.0.1:0")
            .env(
                "TIDINGS_MQTT_V5_LISTEN",
                format!("127.0.0.1:{}", self.v5_port),
            )
            .env("TIDINGS_AUTH_JWT_SECRET", TEST_JWT_SECRET)
            .env("TIDINGS_LOG_FILTER", "info,tower_http=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &opts.cwd {
            Some(cwd) => {
                cmd.current_dir(cwd);
            }
            None => {
                cmd.env("TIDINGS_DATA_DIR", &self.data_dir);
            }
        }
        if let Some(url) = &opts.database_url {
            cmd.env("TIDINGS_DATABASE_URL", url);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tidings");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (tx, logs) = (tx.clone(), self.logs.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("TIDINGS_TEST_ECHO").is_some() {
                        eprintln!("[server] {line}");
                    }
                    logs.lock().expect("log lock").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(addr) = field(&line, "mqtt websocket listening", "addr=") {
                        self.ws_addr = addr.to_owned();
                    }
                    if let Some(addr) = field(&line, "http listening", "addr=") {
                        self.http = format!("http://{addr}");
                        return Ok(());
                    }
                }
                Err(_) => {
                    if let Some(status) = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        self.child = None;
                        return Err(format!("exited with {status}:\n{}", self.logs()));
                    }
                }
            }
        }
        Err(format!("did not start within 60s:\n{}", self.logs()))
    }

    /// Everything the server printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    /// Whether the server prints `needle` within `within`. A client can see the effect
    /// of a logged event (a closed socket) before the line has come through the pipe.
    pub async fn logged(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.logs().contains(needle) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("server running");
        terminate(child, || self.logs())
    }

    /// Stops the server and starts it again on the same data directory and database.
    pub fn restart(&mut self, opts: &Options) {
        assert!(
            self.stop().success(),
            "clean exit expected:\n{}",
            self.logs()
        );
        self.spawn(opts);
    }

    /// Kills the server with SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the binary again on the same data directory and database (after `kill9`).
    pub fn start_again(&mut self, opts: &Options) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn(opts);
    }

    /// The server's process id, for sending it signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// A gauge or counter from `GET /metrics` (0 when the series is absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter(|(series, _)| *series == name || series.starts_with(&format!("{name}{{")))
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .sum()
    }

    /// Sends a signal by name (`TERM`, `INT`, …) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit on its own: its status, or `None`
    /// if it is still running (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("server running");
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `host:port` of the HTTP listener, for raw sockets.
    pub fn http_addr(&self) -> &str {
        self.http.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The value after `key` in a log line containing `marker`.
/// Sends SIGTERM to a server process and waits up to 20 s for it to exit; past that it
/// is killed and the test fails with `context()` (its logs, or why there are none).
pub fn terminate(mut child: Child, context: impl FnOnce() -> String) -> ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tidings ignored SIGTERM for 20s:\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value after `key` in a log line that contains `marker`.
pub fn field<'a>(line: &'a str, marker: &str, key: &str) -> Option<&'a str> {
    if !line.contains(marker) {
        return None;
    }
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A registered user with live tokens.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

pub async fn register(server: &Server, username: &str) -> Account {
    let password = format!("pw-{username}-123");
    let res = client()
        .post(server.url("/v1/auth/register"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .expect("register");
    assert_eq!(res.status(), 201, "register {username}");
    let body: Value = res.json().await.expect("json");
    account_from(&body, &password)
}

pub fn account_from(body: &Value, password: &str) -> Account {
    Account {
        id: body["user"]["id"].as_str().expect("user.id").to_owned(),
        username: body["user"]["username"]
            .as_str()
            .expect("user.username")
            .to_owned(),
        password: password.to_owned(),
        access: body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
        refresh: body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned(),
    }
}

/// Asserts an error response's status and code, and returns its body.
pub async fn expect_error(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status for expected {code}");
    let body: Value = res.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Logs in again as `account` for a given device, returning fresh tokens.
pub async fn login(server: &Server, account: &Account, device: &str) -> Account {
    let res = client()
        .post(server.url("/v1/auth/login"))
        .json(&json!({ "username": account.username, "password": account.password, "device_id": device }))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), 200);
    account_from(&res.json().await.expect("json"), &account.password)
}

/// Creates a conversation as `owner` with `members`; returns its id.
pub async fn conversation(
    server: &Server,
    owner: &Account,
    kind: &str,
    members: &[&Account],
) -> String {
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let res = client()
        .post(server.url("/v1/conversations"))
        .bearer_auth(&owner.access)
        .json(&json!({ "kind": kind, "name": "test", "members": ids }))
        .send()
        .await
        .expect("create conversation");
    assert!(
        res.status().is_success(),
        "create conversation: {}",
        res.status()
    );
    let body: Value = res.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

/// Creates a device credential for `owner`; returns (credential id, an Account whose
/// `access` is the secret, usable as MQTT password and REST bearer).
pub async fn device_credential(server: &Server, owner: &Account, body: Value) -> (String, Account) {
    let res = client()
        .post(server.url("/v1/me/devices"))
        .bearer_auth(&owner.access)
        .json(&body)
        .send()
        .await
        .expect("create device");
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.expect("json");
    let secret = v["secret"].as_str().expect("secret").to_owned();
    (
        v["id"].as_str().expect("id").to_owned(),
        Account {
            access: secret,
            ..owner.clone()
        },
    )
}

/// `GET /v1/sync?since=` as `account`.
pub async fn sync(server: &Server, account: &Account, since: u64) -> Value {
    let res = client()
        .get(server.url(&format!("/v1/sync?since={since}&limit=200")))
        .bearer_auth(&account.access)
        .send()
        .await
        .expect("sync");
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

/// Declares each listed `async fn(Db)` as a test on SQLite and one on PostgreSQL.
#[allow(unused_macros)] // not every test file runs on both databases
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name(super::Db::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { super::$name(super::Db::Postgres).await } )*
        }
    };
}
#[allow(unused_imports)] // not every test file runs on both databases
pub(crate) use on_both_databases;
