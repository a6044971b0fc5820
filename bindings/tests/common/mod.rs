//! A small harness for the SDK tests: starts the real `tidings` server binary on fixed
//! loopback ports (kept across restarts, since a client's config names them) with its
//! own SQLite data directory. The binary is the one `cargo test --workspace` builds
//! (target/debug/tidings), or `TIDINGS_SERVER_BIN`.
#![allow(dead_code)]

pub mod proxy;
pub mod recorder;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TEST_JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDINGS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/<test> -> target/debug/tidings
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("tidings"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "the server binary {} is missing: run `cargo build -p tidings` first (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Server {
    child: Option<Child>,
    pub http_port: u16,
    pub mqtt_port: u16,
    /// MQTT over WebSocket (plain; the proxy's `wss` port forwards here).
    pub ws_port: u16,
    /// The TLS-terminating proxy in front of the three ports (see `tls.rs`).
    pub proxy: Option<tls::TlsProxy>,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    /// Extra environment (configuration) for every start of this server.
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with_env(&[])
    }

    /// Starts with extra configuration, e.g. `("TIDINGS_AUTH_ACCESS_TTL_SECS", "2")`.
    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            child: None,
            http_port: 0,
            mqtt_port: 0,
            ws_port: 0,
            proxy: None,
            dir: tempfile::tempdir().expect("tempdir"),
            logs: Arc::default(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for attempt in 0..5 {
            s.http_port = free_port();
            s.mqtt_port = free_port();
            s.ws_port = free_port();
            match s.try_spawn() {
                Ok(()) => {
                    s.proxy = Some(tls::TlsProxy::start(s.http_port, s.mqtt_port, s.ws_port));
                    return s;
                }
                Err(logs) if attempt < 4 => eprintln!("retrying server start: {logs}"),
                Err(logs) => panic!("tidings did not start:\n{logs}"),
            }
        }
        unreachable!()
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The plain MQTT broker URL.
    pub fn mqtt(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }

    fn proxy(&self) -> &tls::TlsProxy {
        self.proxy
            .as_ref()
            .expect("the TLS proxy runs once the server started")
    }

    /// The HTTP API through the TLS proxy.
    pub fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.proxy().https_port)
    }

    /// MQTT over TLS through the proxy.
    pub fn mqtts(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.proxy().mqtts_port)
    }

    /// MQTT over secure WebSocket through the proxy (the server's WS listener).
    pub fn wss(&self) -> String {
        format!("wss://localhost:{}/mqtt", self.proxy().wss_port)
    }

    /// The PEM of the throwaway CA that signed the proxy's certificate.
    pub fn ca_pem(&self) -> String {
        self.proxy().pki.ca_pem.clone()
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        self.logs.lock().unwrap().clear();
        let mut child = Command::new(server_bin())
            .arg("serve")
            .env_remove("RUST_LOG")
            .env(
                "TIDINGS_HTTP_LISTEN",
                format!("127.0.0.1:{}", self.http_port),
            )
            .env(
                "TIDINGS_MQTT_LISTEN",
                format!("127.0.0.1:{}", self.mqtt_port),
            )
            .env(
                "TIDINGS_MQTT_WS_LISTEN",
                format!("127.0.0.1:{}", self.ws_port),
            )
            .env("TIDINGS_AUTH_JWT_SECRET", TEST_JWT_SECRET)
            .env("TIDINGS_LOG_FILTER", "info,tower_http=warn,rumqttd=warn")
            .env("TIDINGS_DATA_DIR", self.dir.path().join("data"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tidings");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let (tx, logs) = (tx.clone(), self.logs.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("TIDINGS_TEST_ECHO").is_some() {
                        eprintln!("[server] {line}");
                    }
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains("http listening") => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    if let Some(status) = self.child.as_mut().unwrap().try_wait().ok().flatten() {
                        self.child = None;
                        return Err(format!("exited with {status}:\n{}", self.logs()));
                    }
                }
            }
        }
        Err(format!("did not start within 60s:\n{}", self.logs()))
    }

    /// A fresh access token for `user`, from `POST /v1/auth/login`.
    pub async fn access_token(&self, user: &str, password: &str) -> String {
        let res: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v1/auth/login", self.http()))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
            .await
            .expect("login request")
            .json()
            .await
            .expect("login answer");
        res["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token for {user}: {res}"))
            .to_owned()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts again on the same ports and data (retrying while the ports are released).
    pub fn start_again(&mut self) {
        for attempt in 0..20 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(logs) if attempt < 19 => {
                    let _ = logs;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(logs) => panic!("tidings did not restart:\n{logs}"),
            }
        }
    }

    /// Runs the admin CLI (`tidings user …`, `tidings session …`) on this server's data.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(server_bin())
            .args(args)
            .env("TIDINGS_DATA_DIR", self.dir.path().join("data"))
            .env("TIDINGS_AUTH_JWT_SECRET", TEST_JWT_SECRET)
            .output()
            .expect("run the admin CLI");
        assert!(
            out.status.success(),
            "tidings {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// target/debug (the directory holding the server binary and the SDK's cdylib).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The SDK's shared library, as cargo built it for this test run: the copy in
/// target/debug/deps, since `cargo test` does not copy ("uplift") a dependency's cdylib
/// to target/debug (only `cargo build` does), so that one may be stale.
pub fn sdk_library() -> PathBuf {
    let name = if cfg!(target_os = "macos") {
        "libtidings_bindings.dylib"
    } else {
        "libtidings_bindings.so"
    };
    let lib = target_dir().join("deps").join(name);
    assert!(lib.exists(), "{} is missing", lib.display());
    lib
}

/// Generates bindings for `language` from the built library (uniffi library mode, with
/// the root uniffi.toml passed explicitly) into `out`.
pub fn generate(language: &str, out: &std::path::Path) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let status = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .args(["generate", "--library"])
        .arg(sdk_library())
        .args(["--no-format", "--language", language, "--config"])
        .arg(format!("{root}/uniffi.toml"))
        .arg("--out-dir")
        .arg(out)
        .status()
        .expect("run uniffi-bindgen");
    assert!(status.success(), "uniffi-bindgen {language} failed");
}

/// True when `tool` can run. In CI (CI=true) a missing tool fails the test instead of
/// skipping it: scripts/test.sh provisions every tool.
pub fn have_tool(tool: &str, version_arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{tool} is required in CI (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: {tool} is not installed (run scripts/test.sh to provision it)");
    }
    ok
}

/// Runs a scenario program that prints `RESTART` when it wants the server restarted
/// (answered with `OK` on its stdin) and a JSON result as its last stdout line. The
/// program talks TLS only, through the proxy: `TIDINGS_HTTP` (https), `TIDINGS_BROKER`
/// (`broker`: the server's `mqtts()` or `wss()`) and `TIDINGS_CA_PEM` (the pinned CA).
pub fn drive(mut cmd: Command, server: &mut Server, broker: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = cmd
        .env("TIDINGS_HTTP", server.https())
        .env("TIDINGS_BROKER", broker)
        .env("TIDINGS_CA_PEM", server.ca_pem())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scenario");
    let mut stdin = child.stdin.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut last = String::new();
    let mut all = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        eprintln!("[scenario] {line}");
        if line.trim() == "RESTART" {
            server.restart();
            writeln!(stdin, "OK").unwrap();
            stdin.flush().unwrap();
        } else if !line.trim().is_empty() {
            last = line.clone();
        }
        all.push(line);
    }
    let status = child.wait().expect("wait scenario");
    let stderr = err_thread.join().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
    assert!(
        status.success() && result["ok"] == true,
        "scenario failed ({status}): {result}\nstdout:\n{}\nstderr:\n{stderr}\nserver:\n{}",
        all.join("\n"),
        server.logs()
    );
    result
}
