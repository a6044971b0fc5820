//! The processes under test: a fresh Tidings and a fresh Mosquitto, both children of
//! this process on free loopback ports, and what /proc says about them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A loopback port nobody listens on right now. rumqttd cannot bind port 0, so MQTT
/// ports are picked this way (and the start retried if someone takes it meanwhile).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// 10,000 connections need 10,000 descriptors on each side; the children inherit this.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// CPU time and memory of one process, from /proc/{pid}/stat and /proc/{pid}/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of all threads, in seconds.
    pub cpu_secs: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The parts of VmRSS: the heap and other private memory, and mapped files (the
    /// binary and its libraries; SQLite's database file too when `mmap_size` maps it:
    /// those pages are the page cache, shared and reclaimable, not memory the server
    /// allocated).
    pub anon_kib: u64,
    pub file_kib: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may contain spaces; the fields we want come after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) and stime (15) are at
    // indices 11 and 12 here.
    let utime: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_secs: (utime + stime) / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        anon_kib: kib("RssAnon:"),
        file_kib: kib("RssFile:"),
    })
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5), so a peak measured
/// afterwards belongs to the window that follows rather than to the whole run.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU seconds this process (the load generator) has used so far.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes only into the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Waits until `pid` uses less than 5% of a core over 300 ms (at most `max`), so the
/// next measurement does not pay for the previous one's backlog.
pub async fn quiesce(pid: u32, max: Duration) {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        let Ok(a) = sample(pid) else { return };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(b) = sample(pid) else { return };
        if b.cpu_secs - a.cpu_secs < 0.015 {
            return;
        }
    }
}

/// Keeps the last lines a child printed, for error messages.
#[derive(Clone, Default)]
struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= 200 {
            q.pop_front();
        }
        q.push_back(line);
    }
    fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

fn pipe_lines(child: &mut Child, tail: &LogTail, tx: std::sync::mpsc::Sender<String>) {
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
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
    .collect();
    for stream in streams {
        let (tail, tx) = (tail.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                tail.push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
}

fn terminate(child: &mut Child, grace: Duration) {
    // SAFETY: kill(2) with a pid we own.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Where the `tidings` binary is: `--server`, else next to this executable (cargo puts
/// both in target/release or target/debug).
pub fn find_server(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        bail!("--server {}: no such file", p.display());
    }
    let me = std::env::current_exe().context("where is this executable")?;
    let dir = me.parent().context("executable has no directory")?;
    // Integration tests run from target/*/deps; the binaries are one level up.
    for d in [dir.to_owned(), dir.join("..")] {
        let candidate = d.join("tidings");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let profile = if dir.ends_with("release") {
        "--release "
    } else {
        ""
    };
    bail!(
        "no tidings binary next to {} — build it with `cargo build {profile}-p tidings` (or pass --server PATH)",
        me.display()
    )
}

pub struct TidingsOptions {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub jwt_secret: String,
    /// More `TIDINGS_*` settings (the `nodes` scenario's external-broker mode).
    pub extra_env: Vec<(String, String)>,
    /// Whether the node opens its own MQTT listener (not in external-broker mode,
    /// where devices connect to the broker).
    pub mqtt_listener: bool,
}

/// A running Tidings, killed on drop.
pub struct Tidings {
    child: Option<Child>,
    pub pid: u32,
    pub http: String,
    pub mqtt_port: u16,
    logs: LogTail,
}

impl Tidings {
    pub fn start(opts: &TidingsOptions) -> Result<Tidings> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            match Self::try_start(opts, port) {
                Ok(t) => return Ok(t),
                Err(logs) if logs.contains("could not listen") => last = logs,
                Err(logs) => bail!("tidings did not start:\n{logs}"),
            }
        }
        bail!("tidings did not start after 5 ports:\n{last}")
    }

    fn try_start(opts: &TidingsOptions, mqtt_port: u16) -> Result<Tidings, String> {
        /// The server's per-user send limit during the bench (see below).
        const SEND_PER_SECOND: u32 = 1000;
        let mut cmd = Command::new(&opts.binary);
        cmd.arg("serve")
            .env_remove("RUST_LOG")
            .env("TIDINGS_DATA_DIR", &opts.data_dir)
            .env("TIDINGS_HTTP_LISTEN", "127.0.0.1:0")
            .env("TIDINGS_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"))
            .env("TIDINGS_MQTT_WS_LISTEN", "127.0.0.1:0")
            .env("TIDINGS_AUTH_JWT_SECRET", &opts.jwt_secret)
            // Tokens from registration must outlive a whole run (default 15 min).
            .env("TIDINGS_AUTH_ACCESS_TTL_SECS", "7200")
            // The idle scenario holds 10,000 devices plus the others' connections.
            .env("TIDINGS_MQTT_MAX_CONNECTIONS", "30000")
            // The default per-user send budget (10/s, burst 30) is for people; the
            // bench's senders are load generators (15k msg/s over 1,000 pairs is 15/s
            // each; the fan-out sender is an announcement bot). Raised through config,
            // as an operator would for such accounts, so the limiter is not what is
            // measured.
            .env(
                "TIDINGS_LIMITS_SEND_PER_SECOND",
                SEND_PER_SECOND.to_string(),
            )
            .env("TIDINGS_LIMITS_SEND_BURST", SEND_PER_SECOND.to_string())
            // Per-connection log lines would cost the server CPU we are measuring.
            .env("TIDINGS_LOG_FILTER", "warn,tidings=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &opts.database_url {
            cmd.env("TIDINGS_DATABASE_URL", url);
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", opts.binary.display()))?;
        let logs = LogTail::default();
        let (tx, rx) = std::sync::mpsc::channel();
        pipe_lines(&mut child, &logs, tx);
        let pid = child.id();
        let mut t = Tidings {
            child: Some(child),
            pid,
            http: String::new(),
            mqtt_port,
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if line.contains("http listening") {
                        if let Some(addr) = line
                            .split("addr=")
                            .nth(1)
                            .and_then(|r| r.split_whitespace().next())
                        {
                            t.http = format!("http://{addr}");
                            if !opts.mqtt_listener || wait_tcp(mqtt_port, Duration::from_secs(10)) {
                                return Ok(t);
                            }
                            return Err(format!("MQTT port not open:\n{}", t.logs.text()));
                        }
                    }
                }
                Err(_) => {
                    if let Some(status) = t.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
                    {
                        t.child = None;
                        return Err(format!("exited with {status}:\n{}", t.logs.text()));
                    }
                }
            }
        }
        Err(format!("not up within 60 s:\n{}", t.logs.text()))
    }

    pub fn logs(&self) -> String {
        self.logs.text()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(15));
        }
    }
}

impl Drop for Tidings {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_tcp(port: u16, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The peer: Debian's Mosquitto with a generated minimal config.
pub struct Mosquitto {
    child: Option<Child>,
    pub pid: u32,
    pub port: u16,
    _dir: tempfile::TempDir,
    logs: LogTail,
}

/// Mosquitto's path, installing it with apt under `--install`.
pub fn find_mosquitto(install: bool) -> Result<PathBuf> {
    let path = PathBuf::from(MOSQUITTO);
    if path.is_file() {
        return Ok(path);
    }
    if install {
        eprintln!("installing mosquitto: apt-get install -y mosquitto");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "mosquitto"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok && path.is_file() {
            return Ok(path);
        }
        bail!("apt-get install -y mosquitto failed (try `apt-get update` first)");
    }
    bail!("{MOSQUITTO} is missing: install it with `apt-get install -y mosquitto` (or run with --install)")
}

pub fn mosquitto_version(path: &Path) -> String {
    Command::new(path)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.lines()
                .find(|l| l.contains("version"))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "mosquitto (version unknown)".into())
}

impl Mosquitto {
    pub fn start(binary: &Path) -> Result<Mosquitto> {
        Self::start_with(binary, "")
    }

    /// [`Mosquitto::start`] with more configuration lines.
    pub fn start_with(binary: &Path, extra: &str) -> Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf)?;
        // Minimal and comparable to Tidings' delivery: no persistence, no auth, and
        // queues large enough that Mosquitto never drops for lack of room.
        writeln!(
            f,
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 1000000\nmax_inflight_messages 0\n\
             log_dest stderr\nlog_type error\nlog_type warning\n{extra}"
        )?;
        drop(f);
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let logs = LogTail::default();
        let (tx, _rx) = std::sync::mpsc::channel();
        pipe_lines(&mut child, &logs, tx);
        let pid = child.id();
        let mut m = Mosquitto {
            child: Some(child),
            pid,
            port,
            _dir: dir,
            logs,
        };
        if !wait_tcp(port, Duration::from_secs(10)) {
            let logs = m.logs.text();
            m.stop();
            bail!("mosquitto did not listen on {port}:\n{logs}");
        }
        Ok(m)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU seconds the whole machine has spent busy (all cores, /proc/stat), to tell how
/// much of a step's CPU went to processes outside the benchmark.
pub fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    busy / clock_ticks()
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
