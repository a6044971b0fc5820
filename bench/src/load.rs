//! Open-loop load: every message has a scheduled send time fixed before the run
//! (message k at start + k / rate), and latency is receive time minus that scheduled
//! time. A closed loop (send the next message when the previous one is answered)
//! would slow down exactly when the server stalls and hide the stall from the
//! percentiles ("coordinated omission"); here a stall delays every message scheduled
//! during it, and each of them counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::mqtt::{self, ClientKind, Conn, OnPublish, Spec};
use crate::procs;

/// Body bytes of every message, as in the issue.
pub const BODY_LEN: usize = 64;
const MAX_STEPS: usize = 256;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since this process's epoch; send and receive share the clock.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The 64-byte body: `B{step}.{scheduled ns}.` padded with `x`.
pub fn body(step: usize, sched_ns: u64) -> String {
    let mut s = format!("B{step:03}.{sched_ns:020}.");
    while s.len() < BODY_LEN {
        s.push('x');
    }
    s
}

/// (step, scheduled ns) from a payload holding a body anywhere in it.
fn parse_marker(payload: &[u8]) -> Option<(usize, u64)> {
    let start = if payload.first() == Some(&b'B') {
        0
    } else {
        const KEY: &[u8] = b"\"body\":\"B";
        payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len() - 1
    };
    let rest = payload.get(start + 1..start + 1 + 3 + 1 + 20)?;
    let step = std::str::from_utf8(rest.get(0..3)?).ok()?.parse().ok()?;
    let ns = std::str::from_utf8(rest.get(4..24)?).ok()?.parse().ok()?;
    Some((step, ns))
}

struct StepSlot {
    hist: Mutex<Histogram<u64>>,
    received: AtomicU64,
    /// When the last delivery of the step arrived (ns since the epoch).
    last_ns: AtomicU64,
}

/// Where receivers record: one histogram (microseconds) and count per step, so a late
/// message of an earlier step never lands in a later one.
pub struct Recorder {
    slots: Vec<StepSlot>,
    next: AtomicU64,
    /// `error` replies seen by Tidings senders (rate_limited, unavailable, ...).
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub acks: AtomicU64,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        let slots = (0..MAX_STEPS)
            .map(|_| StepSlot {
                hist: Mutex::new(
                    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
                        // The bounds above are constants that hdrhistogram accepts.
                        unreachable!("valid histogram bounds")
                    }),
                ),
                received: AtomicU64::new(0),
                last_ns: AtomicU64::new(0),
            })
            .collect();
        Arc::new(Recorder {
            slots,
            next: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            acks: AtomicU64::new(0),
        })
    }

    fn new_step(&self) -> usize {
        (self.next.fetch_add(1, Ordering::Relaxed) as usize) % MAX_STEPS
    }

    /// A receiver got a payload: record it if it carries a marker.
    pub fn on_delivery(&self, payload: &[u8]) {
        let now = now_ns();
        let Some((step, sched)) = parse_marker(payload) else {
            return;
        };
        let Some(slot) = self.slots.get(step) else {
            return;
        };
        let us = now.saturating_sub(sched) / 1000;
        slot.hist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(us.max(1));
        slot.received.fetch_add(1, Ordering::Relaxed);
        slot.last_ns.fetch_max(now, Ordering::Relaxed);
    }

    /// A Tidings sender got a reply on its inbox.
    pub fn on_sender_inbox(&self, payload: &[u8]) {
        const ERR: &[u8] = b"\"type\":\"error\"";
        const ACK: &[u8] = b"\"type\":\"ack\"";
        if payload.windows(ERR.len()).any(|w| w == ERR) {
            if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                *self.first_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(String::from_utf8_lossy(payload).into_owned());
            }
        } else if payload.windows(ACK.len()).any(|w| w == ACK) {
            self.acks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a sender turns a body into a PUBLISH.
#[derive(Clone)]
pub enum Sender {
    /// A Tidings `send` command on `u/{me}/out`.
    Tidings {
        conn: Arc<Conn>,
        topic: String,
        conv: String,
    },
    /// A raw publish of the body on a topic the receiver subscribed to.
    Raw { conn: Arc<Conn>, topic: String },
}

impl Sender {
    fn send(&self, body: &str) -> bool {
        match self {
            Sender::Tidings { conn, topic, conv } => {
                let payload = format!(
                    r#"{{"op":"send","id":"{}","conv":"{conv}","body":"{body}"}}"#,
                    ulid::Ulid::new()
                );
                conn.publish(topic, Bytes::from(payload), true)
            }
            Sender::Raw { conn, topic } => {
                conn.publish(topic, Bytes::copy_from_slice(body.as_bytes()), true)
            }
        }
    }
}

/// Everything connected for one load: senders, receivers, and how many deliveries one
/// message makes (1 for pairs, group size − 1 for fan-out).
pub struct LoadSet {
    pub senders: Vec<Sender>,
    pub receivers: Vec<Arc<Conn>>,
    pub fan: u64,
    pub rec: Arc<Recorder>,
}

impl LoadSet {
    pub fn close(&self) {
        for s in &self.senders {
            match s {
                Sender::Tidings { conn, .. } | Sender::Raw { conn, .. } => conn.close(),
            }
        }
        for r in &self.receivers {
            r.close();
        }
    }
}

/// What a batch of connects achieved.
pub struct Connected {
    /// In the order of the specs that succeeded.
    pub conns: Vec<Arc<Conn>>,
    pub failed: usize,
    pub first_error: Option<String>,
    /// (connections so far, seconds since the first attempt) every 1,000 successes.
    pub milestones: Vec<(usize, f64)>,
    pub seconds: f64,
}

/// Connects `specs` with at most `concurrency` handshakes in flight and keeps going
/// past failures; attempts not started by `deadline` count as failed.
pub async fn connect_all(
    kind: ClientKind,
    port: u16,
    specs: Vec<(Spec, OnPublish)>,
    concurrency: usize,
    deadline: Duration,
) -> Connected {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let n = specs.len();
    let t0 = Instant::now();
    for (i, (spec, cb)) in specs.into_iter().enumerate() {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await?;
            if t0.elapsed() > deadline {
                anyhow::bail!("not attempted: the {deadline:?} bound passed");
            }
            let c = mqtt::connect(kind, port, spec, cb).await?;
            anyhow::Ok((i, c))
        });
    }
    let mut out: Vec<Option<Arc<Conn>>> = (0..n).map(|_| None).collect();
    let (mut done, mut failed) = (0usize, 0usize);
    let mut first_error = None;
    let mut milestones = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|x| x) {
            Ok((i, c)) => {
                out[i] = Some(Arc::new(c));
                done += 1;
                if done.is_multiple_of(1000) {
                    let secs = t0.elapsed().as_secs_f64();
                    milestones.push((done, secs));
                    if done.is_multiple_of(2000) {
                        crate::say!("  {done}/{n} connected in {secs:.1} s");
                    }
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Connected {
        conns: out.into_iter().flatten().collect(),
        failed,
        first_error,
        milestones,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// Like [`connect_all`], but every connection must succeed.
pub async fn connect_many(
    kind: ClientKind,
    port: u16,
    specs: Vec<(Spec, OnPublish)>,
    concurrency: usize,
) -> Result<Vec<Arc<Conn>>> {
    let c = connect_all(kind, port, specs, concurrency, Duration::from_secs(600)).await;
    if c.failed > 0 {
        for conn in &c.conns {
            conn.close();
        }
        anyhow::bail!(
            "{} of {} connections failed; first: {}",
            c.failed,
            c.failed + c.conns.len(),
            c.first_error.unwrap_or_default()
        );
    }
    Ok(c.conns)
}

/// Which processes' CPU a step charges (several for several Tidings nodes; their CPU
/// and RSS are summed).
#[derive(Clone, Copy)]
pub struct Watched<'a> {
    pub servers: &'a [u32],
}

fn sample_all(pids: &[u32]) -> Result<procs::ProcSample> {
    let mut sum = procs::ProcSample::default();
    for pid in pids {
        let s = procs::sample(*pid)?;
        sum.cpu_secs += s.cpu_secs;
        sum.rss_kib += s.rss_kib;
        sum.hwm_kib += s.hwm_kib;
    }
    Ok(sum)
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepResult {
    pub offered_rate: f64,
    pub seconds: f64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Deliveries per second, from the first scheduled send to the last delivery.
    pub delivered_rate: f64,
    pub server_cpu_secs: f64,
    pub server_cpu_us_per_msg: f64,
    pub server_cpu_util: f64,
    pub gen_cpu_us_per_msg: f64,
    /// The generator's CPU over the step, in cores.
    pub gen_cpu_util: f64,
    /// Busy CPU of everything else on the machine during the step (cores), to flag
    /// steps that shared the machine with other work.
    pub other_cpu_util: f64,
    pub server_rss_kib: u64,
    /// The server's own latency histograms over the step, by metric name (Tidings in
    /// embedded mode only; see [`crate::server_stages`]).
    pub server_stages: std::collections::BTreeMap<String, crate::server_stages::StageLatency>,
}

impl StepResult {
    pub fn passes(&self, p99_limit_ms: f64) -> bool {
        self.lost == 0 && self.received > 0 && self.p99_ms < p99_limit_ms
    }
}

/// Runs one open-loop step at `rate` messages per second for `duration`, then waits
/// for the stragglers (until all arrived, 2 s without progress, or the drain bound).
pub async fn run_step(
    set: &LoadSet,
    rate: f64,
    duration: Duration,
    watched: Watched<'_>,
) -> Result<StepResult> {
    let step = set.rec.new_step();
    let slot = &set.rec.slots[step];
    slot.hist.lock().unwrap_or_else(|e| e.into_inner()).reset();
    slot.received.store(0, Ordering::Relaxed);
    slot.last_ns.store(0, Ordering::Relaxed);
    let errors0 = set.rec.errors.load(Ordering::Relaxed);

    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval_ns = 1e9 / rate;
    let cpu0 = sample_all(watched.servers)?;
    let gen0 = procs::self_cpu_secs();
    let busy0 = procs::machine_busy_secs();
    let start = Instant::now() + Duration::from_millis(20);
    let start_ns = start.duration_since(epoch()).as_nanos() as u64;
    let mut sent = 0u64;
    let mut k = 0u64;
    let n = set.senders.len().max(1) as u64;
    while k < total {
        let sched = start_ns + (k as f64 * interval_ns) as u64;
        let now = now_ns();
        if sched > now {
            tokio::time::sleep(Duration::from_nanos(sched - now)).await;
            continue;
        }
        // Everything due by now goes out in this wake-up, each with its own schedule.
        while k < total {
            let sched = start_ns + (k as f64 * interval_ns) as u64;
            if sched > now {
                break;
            }
            let sender = &set.senders[(k % n) as usize];
            if sender.send(&body(step, sched)) {
                sent += 1;
            }
            k += 1;
        }
    }
    let send_end = Instant::now();
    let expected = total * set.fan;
    let drain_max = duration.max(Duration::from_secs(5));
    let mut last = slot.received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = slot.received.load(Ordering::Relaxed);
        if got >= expected {
            break;
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        }
        if last_change.elapsed() > Duration::from_secs(2) || send_end.elapsed() > drain_max {
            break;
        }
    }
    let end = Instant::now();
    let cpu1 = sample_all(watched.servers)?;
    let gen1 = procs::self_cpu_secs();
    let busy1 = procs::machine_busy_secs();
    let received = slot.received.load(Ordering::Relaxed);
    let hist = slot.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let window = end.duration_since(start).as_secs_f64();
    let msgs = received.max(1) as f64 / set.fan as f64;
    let server_cpu = cpu1.cpu_secs - cpu0.cpu_secs;
    Ok(StepResult {
        offered_rate: rate,
        seconds: duration.as_secs_f64(),
        sent,
        expected,
        received,
        lost: expected.saturating_sub(received),
        errors: set.rec.errors.load(Ordering::Relaxed) - errors0,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        delivered_rate: received as f64
            / (slot
                .last_ns
                .load(Ordering::Relaxed)
                .saturating_sub(start_ns) as f64
                / 1e9)
                .max(1e-3),
        server_cpu_secs: server_cpu,
        server_cpu_us_per_msg: server_cpu * 1e6 / msgs,
        server_cpu_util: server_cpu / window,
        gen_cpu_us_per_msg: (gen1 - gen0) * 1e6 / msgs,
        gen_cpu_util: (gen1 - gen0) / window,
        other_cpu_util: ((busy1 - busy0) - server_cpu - (gen1 - gen0)).max(0.0) / window,
        server_rss_kib: cpu1.rss_kib,
        server_stages: Default::default(),
    })
}
