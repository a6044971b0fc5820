//! The scenarios and the run that strings them together.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::accounts::{self, Account, AddressPool, Seeded};
use crate::load::{self, LoadSet, Recorder, Sender, StepResult, Watched};
use crate::mqtt::{self, ClientKind, OnPublish, Spec};
use crate::procs::{self, Mosquitto, Tidings, TidingsOptions};
use crate::report::{self, int, ms, Report};
use crate::server_stages::{self, Scrape};
use crate::{say, Cli, Cmd, Opts};

const CONNECT_CONCURRENCY: usize = 100;
const QUIESCE: Duration = Duration::from_secs(30);
const IDLE_IN_FLIGHT: usize = 200;

struct Ctx {
    opts: Opts,
    server_bin: Option<PathBuf>,
    _data: tempfile::TempDir,
    db_url: String,
    secret: String,
    tidings: Option<Tidings>,
    mosquitto_bin: Option<PathBuf>,
    mosquitto: Option<Mosquitto>,
    pool: Arc<AddressPool>,
    accounts: Vec<Account>,
    directs: Vec<String>,
    seeded: Vec<Seeded>,
    report: Report,
}

impl Ctx {
    fn tidings(&self) -> Result<&Tidings> {
        self.tidings.as_ref().context("tidings is not running")
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.opts.duration.max(0.5))
    }

    fn mosquitto(&mut self) -> Result<&Mosquitto> {
        if self.mosquitto.is_none() {
            let bin = self
                .mosquitto_bin
                .clone()
                .context("mosquitto was not looked for")?;
            self.mosquitto = Some(Mosquitto::start(&bin)?);
        }
        self.mosquitto.as_ref().context("mosquitto")
    }

    /// At least `n` registered accounts (registration is argon2-heavy: done once per
    /// run, concurrently, and reused by every scenario).
    async fn ensure_accounts(&mut self, n: usize) -> Result<()> {
        if self.accounts.len() >= n {
            return Ok(());
        }
        let http = self.tidings()?.http.clone();
        let names: Vec<String> = (self.accounts.len()..n)
            .map(|i| format!("bench{i}"))
            .collect();
        let count = names.len();
        say!("registering {count} users over HTTP");
        let t0 = Instant::now();
        let mut got =
            accounts::register_all(&http, &self.pool, names, self.opts.register_concurrency)
                .await?;
        let secs = t0.elapsed().as_secs_f64();
        say!("registered {count} users in {secs:.1} s");
        self.report.notes.push(format!(
            "Preparation: registered {count} users over `POST /v1/auth/register` in {secs:.1} s \
             ({:.1}/s, {} in flight; argon2id on the server), before any timed part.",
            count as f64 / secs,
            self.opts.register_concurrency
        ));
        self.accounts.append(&mut got);
        Ok(())
    }

    /// Direct conversations for the first `n` pairs of accounts.
    async fn ensure_directs(&mut self, n: usize) -> Result<()> {
        self.ensure_accounts(2 * n).await?;
        if self.directs.len() >= n {
            return Ok(());
        }
        let http = self.tidings()?.http.clone();
        let from = self.directs.len();
        let t0 = Instant::now();
        let mut got = accounts::create_directs(&http, &self.accounts[2 * from..2 * n], 16).await?;
        say!(
            "created {} direct conversations in {:.1} s",
            got.len(),
            t0.elapsed().as_secs_f64()
        );
        self.directs.append(&mut got);
        Ok(())
    }
}

fn noop() -> OnPublish {
    Arc::new(|_: &str, _: &[u8]| {})
}

/// Tidings pairs: receiver `2i+1` subscribed to its inbox, sender `2i` subscribed to
/// its own (where its `ack`/`error` replies arrive, as every device does).
async fn tidings_pairs(ctx: &Ctx, n: usize, device: &str) -> Result<LoadSet> {
    tidings_pairs_on(ctx, ctx.tidings()?.mqtt_port, n, device).await
}

/// The same pairs, connected to `port`: Tidings' own listener, or the external broker
/// in front of Tidings nodes.
async fn tidings_pairs_on(ctx: &Ctx, port: u16, n: usize, device: &str) -> Result<LoadSet> {
    let rec = Recorder::new();
    let mut rspecs = Vec::with_capacity(n);
    let mut sspecs = Vec::with_capacity(n);
    for i in 0..n {
        let (s, r) = (&ctx.accounts[2 * i], &ctx.accounts[2 * i + 1]);
        let rr = rec.clone();
        rspecs.push((
            Spec {
                client_id: format!("{}:{device}r", r.id),
                login: Some((r.id.clone(), r.access.clone())),
                subscribe: Some(format!("u/{}/in", r.id)),
            },
            Arc::new(move |_: &str, p: &[u8]| rr.on_delivery(p)) as OnPublish,
        ));
        let rs = rec.clone();
        sspecs.push((
            Spec {
                client_id: format!("{}:{device}s", s.id),
                login: Some((s.id.clone(), s.access.clone())),
                subscribe: Some(format!("u/{}/in", s.id)),
            },
            Arc::new(move |_: &str, p: &[u8]| rs.on_sender_inbox(p)) as OnPublish,
        ));
    }
    let kind = ctx.opts.client;
    let receivers = load::connect_many(kind, port, rspecs, CONNECT_CONCURRENCY).await?;
    let sconns = load::connect_many(kind, port, sspecs, CONNECT_CONCURRENCY).await?;
    let senders = sconns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| Sender::Tidings {
            conn,
            topic: format!("u/{}/out", ctx.accounts[2 * i].id),
            conv: ctx.directs[i].clone(),
        })
        .collect();
    Ok(LoadSet {
        senders,
        receivers,
        fan: 1,
        rec,
    })
}

/// Mosquitto pairs: the same generator, the sender publishing QoS 1 on a topic its
/// receiver subscribed to. No accounts, no storage: the floor a broker costs.
async fn mosquitto_pairs(port: u16, n: usize, kind: ClientKind) -> Result<LoadSet> {
    let rec = Recorder::new();
    let rspecs = (0..n)
        .map(|i| {
            let rr = rec.clone();
            (
                Spec {
                    client_id: format!("r{i}"),
                    login: None,
                    subscribe: Some(format!("bench/p{i}")),
                },
                Arc::new(move |_: &str, p: &[u8]| rr.on_delivery(p)) as OnPublish,
            )
        })
        .collect();
    let sspecs = (0..n)
        .map(|i| {
            (
                Spec {
                    client_id: format!("s{i}"),
                    login: None,
                    subscribe: None,
                },
                noop(),
            )
        })
        .collect();
    let receivers = load::connect_many(kind, port, rspecs, CONNECT_CONCURRENCY).await?;
    let sconns = load::connect_many(kind, port, sspecs, CONNECT_CONCURRENCY).await?;
    let senders = sconns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| Sender::Raw {
            conn,
            topic: format!("bench/p{i}"),
        })
        .collect();
    Ok(LoadSet {
        senders,
        receivers,
        fan: 1,
        rec,
    })
}

fn log_step(label: &str, s: &StepResult) {
    say!(
        "{label} {:>6} msg/s: recv {}/{} p50 {} p99 {} p99.9 {} ms, errors {}, server {:.1} µs/msg ({:.0}% CPU), gen {:.1} µs/msg, others {:.2} cores",
        s.offered_rate,
        s.received,
        s.expected,
        ms(s.p50_ms),
        ms(s.p99_ms),
        ms(s.p999_ms),
        s.errors,
        s.server_cpu_us_per_msg,
        s.server_cpu_util * 100.0,
        s.gen_cpu_us_per_msg,
        s.other_cpu_util
    );
}

/// Offers the configured rates in order, stopping at the first failure unless
/// `--keep-going`, then bisects between the last pass and the first failure.
/// Returns every step and the highest passing rate.
async fn step_search(
    opts: &Opts,
    set: &LoadSet,
    pids: &[u32],
    label: &str,
    metrics: Option<&str>,
) -> Result<(Vec<StepResult>, Option<f64>, bool)> {
    let dur = Duration::from_secs_f64(opts.duration.max(0.5));
    let step = |rate: f64| measured_step(set, rate, dur, pids, metrics);
    let quiesce = || async {
        for pid in pids {
            procs::quiesce(*pid, QUIESCE).await;
        }
    };
    let mut steps = Vec::new();
    let mut pass: Option<f64> = None;
    let mut fail: Option<f64> = None;
    for &rate in &opts.rates {
        quiesce().await;
        let s = step(rate).await?;
        log_step(label, &s);
        let ok = s.passes(opts.p99_limit_ms);
        steps.push(s);
        if ok {
            if fail.is_none() {
                pass = Some(rate);
            }
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
            if !opts.keep_going {
                break;
            }
        }
    }
    let all_passed = fail.is_none();
    if let Some(f) = fail {
        let mut lo = pass.unwrap_or(0.0);
        let mut hi = f;
        for _ in 0..opts.refine {
            let mid = ((lo + hi) / 2.0 / 50.0).round() * 50.0;
            if mid <= lo || mid >= hi {
                break;
            }
            quiesce().await;
            let s = step(mid).await?;
            log_step(label, &s);
            if s.passes(opts.p99_limit_ms) {
                lo = mid;
                pass = Some(mid);
            } else {
                hi = mid;
            }
            steps.push(s);
        }
    }
    quiesce().await;
    Ok((steps, pass, all_passed))
}

/// The Tidings steps' latency split by the server's own histograms (see
/// [`crate::server_stages`]); empty when no step has them.
fn stages_table(steps: &[StepResult]) -> String {
    if steps.iter().all(|s| s.server_stages.is_empty()) {
        return String::new();
    }
    let mut t = String::from(
        "\n### Where a message's time goes (Tidings, from the server's `/metrics`)\n\n\
         The server's histograms over each step, read before and after it (quantiles \
         interpolated within buckets, as Prometheus's `histogram_quantile`). *queue*: the \
         front door reading a command until the worker takes it into a batch; *store \
         batch*: the batch's transaction (one sample per batch); *in server*: reading the \
         command until its PUBACK, `ack` and deliveries are handed to the connections' \
         writers. The end-to-end time beyond *in server* is the sockets' (both ways), the \
         connection writers' and the generator's.\n\n\
         | offered msg/s | end-to-end p50 ms | p99 | in server p50 | p99 | queue p50 | p99 \
         | store batch p50 | p99 | batches |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let cell = |s: &StepResult, name: &str| {
        s.server_stages.get(name).map_or_else(
            || "| – | – ".to_owned(),
            |l| format!("| {} | {} ", ms(l.p50_ms), ms(l.p99_ms)),
        )
    };
    for s in steps {
        let batches = s
            .server_stages
            .get(server_stages::STORE_BATCH)
            .map_or_else(|| "–".to_owned(), |l| int(l.samples as f64));
        t.push_str(&format!(
            "| {} | {} | {} {}{}{}| {batches} |\n",
            int(s.offered_rate),
            ms(s.p50_ms),
            ms(s.p99_ms),
            cell(s, server_stages::IN_SERVER),
            cell(s, server_stages::QUEUE),
            cell(s, server_stages::STORE_BATCH),
        ));
    }
    let held = [
        server_stages::WRITER_CHECKPOINT,
        server_stages::SEARCH_INDEX_CHUNK,
    ];
    if steps
        .iter()
        .any(|s| held.iter().any(|h| s.server_stages.contains_key(*h)))
    {
        t.push_str(
            "\nWhat else held SQLite's one writer during the step (batches queued behind it \
             waited): the WAL checkpoint the writer finishes after a batch (within that \
             batch's time; see `store/src/sqlite/checkpointer.rs`) and the search index's \
             transactions (`store/src/sqlite/search_index.rs`).\n\n\
             | offered msg/s | writer checkpoints | p50 ms | p99 | search index chunks | p50 ms | p99 |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in steps {
            let cols: String = held
                .iter()
                .map(|h| match s.server_stages.get(*h) {
                    Some(l) => format!(
                        "| {} | {} | {} ",
                        int(l.samples as f64),
                        ms(l.p50_ms),
                        ms(l.p99_ms)
                    ),
                    None => "| 0 | – | – ".to_owned(),
                })
                .collect();
            t.push_str(&format!("| {} {cols}|\n", int(s.offered_rate)));
        }
    }
    t
}

/// One load step, with the server's latency histograms over it when `metrics` is the
/// server's HTTP address (it serves `/metrics`).
async fn measured_step(
    set: &LoadSet,
    rate: f64,
    duration: Duration,
    pids: &[u32],
    metrics: Option<&str>,
) -> Result<StepResult> {
    let watched = Watched { servers: pids };
    let Some(http) = metrics else {
        return load::run_step(set, rate, duration, watched).await;
    };
    let before = Scrape::fetch(http).await;
    let mut s = load::run_step(set, rate, duration, watched).await?;
    s.server_stages = before.until(&Scrape::fetch(http).await);
    Ok(s)
}

fn max_rate_text(pass: Option<f64>, all_passed: bool) -> String {
    match (pass, all_passed) {
        (Some(r), true) => format!("≥ {} msg/s (every offered rate passed)", int(r)),
        (Some(r), false) => format!("{} msg/s", int(r)),
        (None, _) => "below the lowest rate tried".into(),
    }
}

async fn scenario_pairs(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.pairs;
    ctx.ensure_directs(n).await?;
    let t = ctx.tidings()?;
    let (pid, http) = (t.pid, t.http.clone());
    say!("pairs: connecting {n} Tidings pairs");
    let set = tidings_pairs(ctx, n, "p").await?;
    let (t_steps, t_max, t_all) =
        step_search(&ctx.opts, &set, &[pid], "tidings  ", Some(&http)).await?;
    let (acks, errors) = (
        set.rec.acks.load(Ordering::Relaxed),
        set.rec.errors.load(Ordering::Relaxed),
    );
    let first_error = set
        .rec
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    set.close();
    procs::quiesce(pid, QUIESCE).await;

    let mport = ctx.mosquitto()?.port;
    let mpid = ctx.mosquitto()?.pid;
    say!("pairs: connecting {n} Mosquitto pairs");
    let mset = mosquitto_pairs(mport, n, ctx.opts.client).await?;
    let (m_steps, m_max, m_all) = step_search(&ctx.opts, &mset, &[mpid], "mosquitto", None).await?;
    mset.close();

    let mut rates: Vec<f64> = t_steps
        .iter()
        .chain(&m_steps)
        .map(|s| s.offered_rate)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let mut s = format!(
        "## pairs: {n} sender/receiver pairs, 64-byte bodies, QoS 1 sends, {} s per step\n\n\
         Latency is receive time at the receiver minus the message's scheduled send time \
         (open loop). A step passes with p99 < {} ms and nothing lost. CPU is the server \
         process's utime+stime over the step (sending and draining) divided by messages \
         delivered; `gen` is the load generator's own CPU per message.\n\n\
         | offered msg/s | Tidings p50 ms | p99 | p99.9 | lost | errors | server µs/msg | server CPU | gen µs/msg \
         | Mosquitto p50 ms | p99 | p99.9 | lost | server µs/msg | gen µs/msg | CPU/msg Tidings ÷ Mosquitto |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ctx.opts.duration, ctx.opts.p99_limit_ms
    );
    for r in &rates {
        let t = t_steps.iter().find(|x| x.offered_rate == *r);
        let m = m_steps.iter().find(|x| x.offered_rate == *r);
        let tcols = t.map_or_else(
            || "| – | – | – | – | – | – | – | – ".to_owned(),
            |t| {
                format!(
                    "| {} | {} | {} | {} | {} | {:.0} | {:.0}% | {:.1} ",
                    ms(t.p50_ms),
                    ms(t.p99_ms),
                    ms(t.p999_ms),
                    int(t.lost as f64),
                    int(t.errors as f64),
                    t.server_cpu_us_per_msg,
                    t.server_cpu_util * 100.0,
                    t.gen_cpu_us_per_msg
                )
            },
        );
        let mcols = m.map_or_else(
            || "| – | – | – | – | – | – ".to_owned(),
            |m| {
                format!(
                    "| {} | {} | {} | {} | {:.1} | {:.1} ",
                    ms(m.p50_ms),
                    ms(m.p99_ms),
                    ms(m.p999_ms),
                    int(m.lost as f64),
                    m.server_cpu_us_per_msg,
                    m.gen_cpu_us_per_msg
                )
            },
        );
        let ratio = match (t, m) {
            (Some(t), Some(m)) if m.server_cpu_us_per_msg > 0.0 => {
                format!("{:.1}×", t.server_cpu_us_per_msg / m.server_cpu_us_per_msg)
            }
            _ => "–".into(),
        };
        s.push_str(&format!("| {} {tcols}{mcols}| {ratio} |\n", int(*r)));
    }
    let ratio_max = match (t_max, m_max) {
        (Some(t), Some(m)) if m > 0.0 => format!(
            "{:.2}{}",
            t / m,
            if m_all {
                " (an upper bound: Mosquitto passed every rate offered)"
            } else {
                ""
            }
        ),
        _ => "–".into(),
    };
    // CPU ratio at the rates both ran and both passed (a saturated server's CPU per
    // message says more about queueing than about cost).
    let both: Vec<f64> = t_steps
        .iter()
        .filter(|t| t.passes(ctx.opts.p99_limit_ms))
        .filter_map(|t| {
            m_steps
                .iter()
                .find(|m| m.offered_rate == t.offered_rate && m.server_cpu_us_per_msg > 0.0)
                .map(|m| t.server_cpu_us_per_msg / m.server_cpu_us_per_msg)
        })
        .collect();
    let cpu_ratio = if both.is_empty() {
        "–".to_owned()
    } else {
        format!("{:.1}×", both.iter().sum::<f64>() / both.len() as f64)
    };
    s.push_str(&format!(
        "\n- Max rate with p99 < {} ms and nothing lost: **Tidings {}**, Mosquitto {}; \
         ratio Tidings/Mosquitto {ratio_max}.\n\
         - CPU per message, Tidings ÷ Mosquitto, averaged over the rates where Tidings passed: **{cpu_ratio}**.\n\
         - Tidings senders got {} `ack` and {} `error` replies{}.\n",
        ctx.opts.p99_limit_ms,
        max_rate_text(t_max, t_all),
        max_rate_text(m_max, m_all),
        int(acks as f64),
        int(errors as f64),
        first_error
            .map(|e| format!(" (first error: `{}`)", e.chars().take(200).collect::<String>()))
            .unwrap_or_default()
    ));
    // What bounded the peer: if Mosquitto itself was far from a core when it first
    // failed, the limit was the machine (generator, other load), not the broker.
    if let Some(f) = m_steps
        .iter()
        .filter(|x| !x.passes(ctx.opts.p99_limit_ms))
        .min_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate))
    {
        if f.server_cpu_util < 0.8 {
            s.push_str(&format!(
                "- At {} msg/s, where Mosquitto first failed, it used only {:.2} cores (the generator {:.2}, \
                 other processes {:.2}): that limit is the machine's, not Mosquitto's, so the max-rate ratio \
                 overstates Tidings.\n",
                int(f.offered_rate),
                f.server_cpu_util,
                f.gen_cpu_util,
                f.other_cpu_util
            ));
        }
    }
    s.push_str(&stages_table(&t_steps));
    ctx.report.summary.push(format!(
        "pairs ({n}): Tidings max {} with p99 < {} ms and nothing lost; Mosquitto {}. \
         Tidings uses {cpu_ratio} Mosquitto's CPU per message.",
        max_rate_text(t_max, t_all),
        ctx.opts.p99_limit_ms,
        max_rate_text(m_max, m_all)
    ));
    let other = t_steps
        .iter()
        .chain(&m_steps)
        .map(|x| x.other_cpu_util)
        .fold(0.0, f64::max);
    s.push_str(&format!(
        "- Other processes on the machine (outside server, peer and generator) used at most \
         {other:.2} cores during any of these steps.\n"
    ));
    s.push_str("\n![latency percentiles vs offered rate](latency.svg)\n\n![server CPU per message vs offered rate](cpu.svg)\n");
    ctx.report.json.insert(
        "pairs".into(),
        json!({
            "pairs": n, "tidings": t_steps, "mosquitto": m_steps,
            "tidings_max_rate": t_max, "mosquitto_max_rate": m_max,
            "mosquitto_passed_all": m_all, "cpu_ratio_mean": both,
        }),
    );
    ctx.report.tidings_steps = t_steps;
    ctx.report.mosquitto_steps = m_steps;
    ctx.report.sections.push(s);
    Ok(())
}

async fn scenario_clients(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.pairs;
    let rate = ctx.opts.clients_rate;
    let dur = ctx.duration();
    let port = ctx.mosquitto()?.port;
    let pid = ctx.mosquitto()?.pid;
    let mut s = format!(
        "## clients: the generator's CPU per message, {n} pairs against Mosquitto at {} msg/s\n\n\
         | client | generator µs/msg | Mosquitto µs/msg | p50 ms | p99 ms | lost |\n|---|---:|---:|---:|---:|---:|\n",
        int(rate)
    );
    let mut rows = Vec::new();
    for kind in [ClientKind::Raw, ClientKind::Rumqttc] {
        let set = mosquitto_pairs(port, n, kind).await?;
        procs::quiesce(pid, QUIESCE).await;
        let r = load::run_step(&set, rate, dur, Watched { servers: &[pid] }).await?;
        log_step(&format!("{kind:?}"), &r);
        set.close();
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {} | {} | {} |\n",
            match kind {
                ClientKind::Raw => "raw (tokio TcpStream + mqttbytes)",
                ClientKind::Rumqttc => "rumqttc EventLoop",
            },
            r.gen_cpu_us_per_msg,
            r.server_cpu_us_per_msg,
            ms(r.p50_ms),
            ms(r.p99_ms),
            int(r.lost as f64)
        ));
        rows.push((format!("{kind:?}"), r));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let [(_, raw), (_, rq)] = rows.as_slice() {
        s.push_str(&format!(
            "\nThe {} client costs less ({:.1} vs {:.1} µs per message); this run's other scenarios used `--client {}`.\n",
            if raw.gen_cpu_us_per_msg <= rq.gen_cpu_us_per_msg { "raw" } else { "rumqttc" },
            raw.gen_cpu_us_per_msg.min(rq.gen_cpu_us_per_msg),
            raw.gen_cpu_us_per_msg.max(rq.gen_cpu_us_per_msg),
            match ctx.opts.client {
                ClientKind::Raw => "raw",
                ClientKind::Rumqttc => "rumqttc",
            }
        ));
    }
    ctx.report.json.insert(
        "clients".into(),
        json!(rows
            .iter()
            .map(|(k, r)| json!({"client": k, "step": r}))
            .collect::<Vec<_>>()),
    );
    ctx.report.sections.push(s);
    Ok(())
}

async fn scenario_fanout(ctx: &mut Ctx) -> Result<()> {
    let members = ctx.opts.fanout_members.max(2);
    ctx.ensure_accounts(members).await?;
    let t = ctx.tidings()?;
    let (http, port, pid) = (t.http.clone(), t.mqtt_port, t.pid);
    let owner = ctx.accounts[0].clone();
    let others: Vec<&str> = ctx.accounts[1..members]
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let conv = accounts::create_conversation(&client, &http, &owner, "group", &others).await?;
    say!("fanout: group of {members} created; connecting");
    let rec = Recorder::new();
    let specs = ctx.accounts[1..members]
        .iter()
        .map(|a| {
            let rr = rec.clone();
            (
                Spec {
                    client_id: format!("{}:fo", a.id),
                    login: Some((a.id.clone(), a.access.clone())),
                    subscribe: Some(format!("u/{}/in", a.id)),
                },
                Arc::new(move |_: &str, p: &[u8]| rr.on_delivery(p)) as OnPublish,
            )
        })
        .collect();
    let receivers = load::connect_many(ctx.opts.client, port, specs, CONNECT_CONCURRENCY).await?;
    let rs = rec.clone();
    let sender = mqtt::connect(
        ctx.opts.client,
        port,
        Spec {
            client_id: format!("{}:fos", owner.id),
            login: Some((owner.id.clone(), owner.access.clone())),
            subscribe: Some(format!("u/{}/in", owner.id)),
        },
        Arc::new(move |_: &str, p: &[u8]| rs.on_sender_inbox(p)),
    )
    .await?;
    let set = LoadSet {
        senders: vec![Sender::Tidings {
            conn: Arc::new(sender),
            topic: format!("u/{}/out", owner.id),
            conv,
        }],
        receivers,
        fan: (members - 1) as u64,
        rec,
    };
    let mut s = format!(
        "## fanout: one sender into a {members}-member group, {} s per step\n\n\
         Each message is one `message` event to each of the {} other members' inboxes \
         (and the sender's own). The bench raises the per-user send limit (default 10/s) \
         to 1,000/s so one sender can offer these rates.\n\n\
         | msg/s | deliveries/s offered | delivered/s | p50 ms | p99 | p99.9 | lost deliveries | errors | server µs/delivery | server CPU |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ctx.opts.duration,
        members - 1
    );
    let mut steps = Vec::new();
    for &r in &ctx.opts.fanout_rates {
        procs::quiesce(pid, QUIESCE).await;
        let st = measured_step(&set, r, ctx.duration(), &[pid], Some(&http)).await?;
        log_step("fanout", &st);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0}% |\n",
            r,
            int(r * set.fan as f64),
            int(st.delivered_rate),
            ms(st.p50_ms),
            ms(st.p99_ms),
            ms(st.p999_ms),
            int(st.lost as f64),
            int(st.errors as f64),
            st.server_cpu_us_per_msg / set.fan as f64,
            st.server_cpu_util * 100.0
        ));
        steps.push(st);
    }
    set.close();
    procs::quiesce(pid, QUIESCE).await;
    s.push_str(&stages_table(&steps));
    s.push_str(
        "\nHere the end-to-end percentiles are over deliveries (each message makes one per \
         member) and the server's over messages (*in server*, *queue*) and batches, so \
         they do not compare percentile by percentile: a message is *in server* until \
         its last delivery is handed over.\n",
    );
    if let Some(top) = steps.last() {
        ctx.report.summary.push(format!(
            "fanout ({members} members): at {} msg/s, {} deliveries/s with p99 {} ms, {} lost; {:.0} µs server CPU per delivery.",
            top.offered_rate,
            int(top.delivered_rate),
            ms(top.p99_ms),
            int(top.lost as f64),
            top.server_cpu_us_per_msg / set.fan as f64
        ));
    }
    ctx.report
        .json
        .insert("fanout".into(), json!({"members": members, "steps": steps}));
    ctx.report.sections.push(s);
    Ok(())
}

fn idle_specs(seeded: &[Seeded], device: &str) -> Vec<(Spec, OnPublish)> {
    seeded
        .iter()
        .map(|u| {
            (
                Spec {
                    client_id: format!("{}:{device}", u.id),
                    login: Some((u.id.clone(), u.access.clone())),
                    subscribe: Some(format!("u/{}/in", u.id)),
                },
                noop(),
            )
        })
        .collect()
}

async fn scenario_users(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.pairs;
    ctx.ensure_directs(n).await?;
    let t = ctx.tidings()?;
    let (port, pid) = (t.mqtt_port, t.pid);
    let set = tidings_pairs(ctx, n, "u").await?;
    let mut idle = Vec::new();
    let mut rows = Vec::new();
    let mut s = format!(
        "## users: CPU per message at {} msg/s ({n} pairs) with extra idle users connected\n\n\
         | extra idle users | server µs/msg | server CPU | p50 ms | p99 | lost | RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|\n",
        int(ctx.opts.users_rate)
    );
    for &k in &ctx.opts.users_idle {
        if k > ctx.seeded.len() {
            bail!("{k} idle users asked for, {} seeded", ctx.seeded.len());
        }
        if k > idle.len() {
            let specs = idle_specs(&ctx.seeded[idle.len()..k], "ui");
            let mut more = load::connect_many(ctx.opts.client, port, specs, 200).await?;
            idle.append(&mut more);
        }
        procs::quiesce(pid, QUIESCE).await;
        let st = load::run_step(
            &set,
            ctx.opts.users_rate,
            ctx.duration(),
            Watched { servers: &[pid] },
        )
        .await?;
        log_step(&format!("users+{k}"), &st);
        s.push_str(&format!(
            "| {} | {:.1} | {:.0}% | {} | {} | {} | {:.0} |\n",
            int(k as f64),
            st.server_cpu_us_per_msg,
            st.server_cpu_util * 100.0,
            ms(st.p50_ms),
            ms(st.p99_ms),
            int(st.lost as f64),
            st.server_rss_kib as f64 / 1024.0
        ));
        rows.push((k, st));
    }
    set.close();
    for c in &idle {
        c.close();
    }
    if let (Some((a, lo)), Some((b, hi))) = (rows.first(), rows.last()) {
        if rows.len() > 1 && lo.server_cpu_us_per_msg > 0.0 {
            ctx.report.summary.push(format!(
                "users: at {} msg/s, CPU per message with {} extra idle users is {:.2}× that with {} (p99 {} ms vs {} ms).",
                int(ctx.opts.users_rate),
                int(*b as f64),
                hi.server_cpu_us_per_msg / lo.server_cpu_us_per_msg,
                int(*a as f64),
                ms(hi.p99_ms),
                ms(lo.p99_ms)
            ));
            s.push_str(&format!(
                "\nCPU per message with {} extra users ÷ with {}: **{:.2}**.\n",
                int(*b as f64),
                int(*a as f64),
                hi.server_cpu_us_per_msg / lo.server_cpu_us_per_msg
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    procs::quiesce(pid, QUIESCE).await;
    ctx.report.json.insert(
        "users".into(),
        json!(rows
            .iter()
            .map(|(k, st)| json!({"idle": k, "step": st}))
            .collect::<Vec<_>>()),
    );
    ctx.report.sections.push(s);
    Ok(())
}

/// How the bench starts its Tidings server (on the prepared database and secret).
fn server_options(ctx: &Ctx, binary: PathBuf) -> TidingsOptions {
    TidingsOptions {
        binary,
        data_dir: ctx._data.path().join("data"),
        database_url: Some(ctx.db_url.clone()),
        jwt_secret: ctx.secret.clone(),
        extra_env: Vec::new(),
        mqtt_listener: true,
    }
}

/// Replaces the running server with a fresh process on the same database.
fn restart_tidings(ctx: &mut Ctx) -> Result<()> {
    let Some(bin) = ctx.server_bin.clone() else {
        return Ok(());
    };
    if let Some(t) = ctx.tidings.as_mut() {
        t.stop();
    }
    say!("restarting {}", bin.display());
    ctx.tidings = Some(Tidings::start(&server_options(ctx, bin))?);
    Ok(())
}

async fn scenario_idle(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.idle;
    if n > ctx.seeded.len() {
        bail!("{n} idle devices asked for, {} seeded", ctx.seeded.len());
    }
    // A fresh process: on the one the earlier scenarios used, connections reuse the heap
    // their clients freed (5,000 extra users in `users`), and the RSS delta then
    // understates what a connection costs (3.2 KiB in reports before 2026-12-07, against
    // 10.7 KiB measured on a fresh server, linear from 2,500 to 10,000 connections).
    restart_tidings(ctx)?;
    let t = ctx.tidings()?;
    let (port, pid) = (t.mqtt_port, t.pid);
    procs::quiesce(pid, QUIESCE).await;
    let before = procs::sample(pid)?;
    let dropped0 = mqtt::DROPPED.load(Ordering::Relaxed);
    let specs = idle_specs(&ctx.seeded[..n], "idle");
    say!("idle: connecting {n} devices");
    let bound = Duration::from_secs_f64(ctx.opts.idle_max_seconds.max(1.0));
    let c = load::connect_all(ctx.opts.client, port, specs, IDLE_IN_FLIGHT, bound).await;
    let (conns, secs) = (c.conns, c.seconds);
    let ok = conns.len();
    let connected = procs::sample(pid)?;
    // Let the server settle (presence, device rows) before reading its RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    procs::quiesce(pid, QUIESCE).await;
    let after = procs::sample(pid)?;
    let dropped = mqtt::DROPPED.load(Ordering::Relaxed) - dropped0;
    for c in &conns {
        c.close();
    }
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    procs::quiesce(pid, QUIESCE).await;
    let closed = procs::sample(pid)?;
    let okf = ok.max(1) as f64;
    let per_conn_kib = (after.rss_kib as f64 - before.rss_kib as f64) / okf;
    let cpu_per_connect_us = (connected.cpu_secs - before.cpu_secs) * 1e6 / okf;
    say!(
        "idle: {ok} of {n} in {secs:.1} s ({:.0}/s), {per_conn_kib:.1} KiB RSS each, {} failed",
        ok as f64 / secs,
        c.failed
    );
    let mut s = format!(
        "## idle: {} connected, subscribed devices (each `u/{{me}}/in`)\n\n\
         | devices asked | connected | failed | connect time s | connects/s | server CPU µs/connect | RSS before MiB | RSS connected MiB | RSS per connection KiB | dropped later | RSS after close MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {secs:.1} | {} | {cpu_per_connect_us:.0} | {:.0} | {:.0} | {per_conn_kib:.1} | {dropped} | {:.0} |\n\n",
        int(n as f64),
        int(n as f64),
        int(ok as f64),
        int(c.failed as f64),
        int(ok as f64 / secs),
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0,
        closed.rss_kib as f64 / 1024.0,
    );
    ctx.report.summary.push(format!(
        "idle: {} of {} devices connected in {secs:.0} s ({} connects/s, slowing as the count grows), \
         {per_conn_kib:.1} KiB RSS per connection, {} failed.",
        int(ok as f64),
        int(n as f64),
        int(ok as f64 / secs),
        int(c.failed as f64)
    ));
    if let Some(e) = &c.first_error {
        s.push_str(&format!("First failure: `{e}`.\n\n"));
    }
    if !c.milestones.is_empty() {
        s.push_str("Connect rate as the count grows:\n\n| connections | at s | connects/s in the last 1,000 |\n|---:|---:|---:|\n");
        let mut prev = (0usize, 0f64);
        for &(k, t) in &c.milestones {
            s.push_str(&format!(
                "| {} | {t:.1} | {} |\n",
                int(k as f64),
                int((k - prev.0) as f64 / (t - prev.1).max(1e-3))
            ));
            prev = (k, t);
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "Each device is its own user with its own session and access token (CONNECT, CONNACK, \
         SUBSCRIBE, SUBACK; {IDLE_IN_FLIGHT} handshakes in flight, each given 30 s, the whole \
         connect phase bounded to {:.0} s). The users and sessions were written through \
         `tidings-store` before the server started and the tokens signed with the server's \
         configured secret (see Method notes).\n",
        bound.as_secs_f64()
    ));
    ctx.report.json.insert(
        "idle".into(),
        json!({
            "devices": n, "connected": ok, "failed": c.failed, "first_error": c.first_error,
            "seconds": secs, "connects_per_sec": ok as f64 / secs, "milestones": c.milestones,
            "rss_before_kib": before.rss_kib, "rss_connected_kib": after.rss_kib,
            "rss_after_close_kib": closed.rss_kib, "rss_per_conn_kib": per_conn_kib,
            "cpu_per_connect_us": cpu_per_connect_us, "dropped": dropped,
        }),
    );
    ctx.report.sections.push(s);
    Ok(())
}

async fn scenario_logins(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.logins;
    ctx.ensure_accounts(n).await?;
    let t = ctx.tidings()?;
    let (http, pid) = (t.http.clone(), t.pid);
    procs::quiesce(pid, QUIESCE).await;
    let reset = procs::reset_peak_rss(pid);
    let before = procs::sample(pid)?;
    // One client per 15 logins, each on its own source address (the per-address
    // limit), all requests started at once.
    let mut clients = Vec::new();
    for _ in 0..n.div_ceil(15) {
        clients.push(ctx.pool.client()?);
    }
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for (i, a) in ctx.accounts[..n].iter().enumerate() {
        let (c, a, http) = (clients[i / 15].clone(), a.clone(), http.clone());
        set.spawn(async move {
            let t = Instant::now();
            let ok = accounts::login(&c, &http, &a).await.unwrap_or(false);
            (ok, t.elapsed())
        });
    }
    let mut lat = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(r) = set.join_next().await {
        let (good, d) = r?;
        if good {
            ok += 1;
            lat.saturating_record(d.as_micros().max(1) as u64);
        } else {
            failed += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = procs::sample(pid)?;
    let q = |x: f64| lat.value_at_quantile(x) as f64 / 1000.0;
    say!(
        "logins: {ok} ok, {failed} failed in {secs:.1} s, peak RSS {} MiB",
        after.hwm_kib / 1024
    );
    let s = format!(
        "## logins: {n} concurrent password logins (`POST /v1/auth/login`)\n\n\
         | logins | ok | failed | seconds | logins/s | p50 ms | p99 ms | server CPU s | RSS before MiB | peak RSS (VmHWM) MiB | peak − before MiB | RSS after: anonymous MiB | RSS after: mapped files MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {n} | {ok} | {failed} | {secs:.1} | {:.1} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n\n\
         {} The server has run the scenarios before this one. \"Mapped files\" are the \
         binary and its libraries (SQLite's file is not memory-mapped since d582c88).\n",
        ok as f64 / secs,
        ms(q(0.5)),
        ms(q(0.99)),
        after.cpu_secs - before.cpu_secs,
        before.rss_kib as f64 / 1024.0,
        after.hwm_kib as f64 / 1024.0,
        (after.hwm_kib as f64 - before.rss_kib as f64) / 1024.0,
        after.anon_kib as f64 / 1024.0,
        after.file_kib as f64 / 1024.0,
        if reset {
            "VmHWM was reset (`/proc/PID/clear_refs` = 5) just before the logins, so the peak is theirs."
        } else {
            "VmHWM could not be reset: the peak is since the server started."
        }
    );
    ctx.report.json.insert(
        "logins".into(),
        json!({"logins": n, "ok": ok, "failed": failed, "seconds": secs,
               "per_sec": ok as f64 / secs, "p50_ms": q(0.5), "p99_ms": q(0.99),
               "rss_before_kib": before.rss_kib, "hwm_kib": after.hwm_kib, "hwm_reset": reset,
               "rss_anon_kib": after.anon_kib, "rss_file_kib": after.file_kib}),
    );
    ctx.report.summary.push(format!(
        "logins: {n} concurrent logins at {:.1}/s (p99 {} ms); server peak RSS {:.1} GiB ({:+.1} GiB); after them {:.0} MiB anonymous + {:.0} MiB mapped files.",
        ok as f64 / secs,
        ms(q(0.99)),
        after.hwm_kib as f64 / 1_048_576.0,
        (after.hwm_kib as f64 - before.rss_kib as f64) / 1_048_576.0,
        after.anon_kib as f64 / 1024.0,
        after.file_kib as f64 / 1024.0
    ));
    ctx.report.sections.push(s);
    if failed > 0 {
        bail!("{failed} of {n} logins failed");
    }
    Ok(())
}

async fn scenario_store(ctx: &mut Ctx) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = match &ctx.opts.pg_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", dir.path().join("store.db").display()),
    };
    say!(
        "store: write_batch and a {}-message history table",
        int(ctx.opts.history_messages as f64)
    );
    let r = crate::store_bench::run(
        &url,
        ctx.opts.history_messages,
        &[1, 16, crate::store_bench::WORKER_MAX_BATCH],
        Duration::from_secs_f64(ctx.opts.store_seconds.max(0.5)),
        Duration::from_secs_f64(ctx.opts.history_max_seconds.max(1.0)),
    )
    .await?;
    let mut s = format!(
        "## store: `Store::write_batch` and history pages ({}, through `tidings-store`, no server)\n\n\
         | batch size | messages | seconds | messages/s | batch p99 ms | CPU µs/msg |\n|---:|---:|---:|---:|---:|---:|\n",
        r.backend
    );
    for b in &r.batches {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {:.1} |\n",
            b.batch,
            int(b.messages as f64),
            b.seconds,
            int(b.per_sec),
            ms(b.batch_p99_ms),
            b.cpu_us_per_msg
        ));
    }
    s.push_str(&format!(
        "\nEach send is a direct-conversation message: one `messages` row and two `inbox_events` \
         rows (both members). Batch 256 is the realtime worker's largest batch. CPU is the bench \
         process's own (the store runs in it{}): steadier than messages/s, which also counts \
         waiting on the checkpoints' fsync.\n\n\
         History: **{} messages**{} in {} conversations (table built by {} at {} msg/s in {:.0} s); \
         {} random pages of {} (`SeqPage::Before` a random seq): p50 {} ms, **p99 {} ms**, p99.9 {} ms.{}\n",
        if r.backend == "Sqlite" {
            ""
        } else {
            "; not the database server's"
        },
        int(r.history_messages as f64),
        if r.history_messages < r.history_requested {
            format!(
                " ({} asked for; the build stopped at its {:.0} s bound)",
                int(r.history_requested as f64),
                ctx.opts.history_max_seconds
            )
        } else {
            String::new()
        },
        r.conversations,
        r.build_method,
        int(r.build_per_sec),
        r.build_seconds,
        int(r.queries as f64),
        r.page_limit,
        ms(r.page_p50_ms),
        ms(r.page_p99_ms),
        ms(r.page_p999_ms),
        if r.build_method == "bulk SQL" {
            " Bulk SQL writes the `messages` rows `write_batch` would (same columns, rowids, \
             indexes and seqs) but not their inbox rows or search index, which history \
             pages don't read: `write_batch` would need about 13 minutes for 10M."
        } else {
            ""
        }
    ));
    if let Some(b) = r.batches.last() {
        ctx.report.summary.push(format!(
            "store ({}): {} messages/s through `write_batch` in batches of {}; history page p99 {} ms over {} messages.",
            r.backend,
            int(b.per_sec),
            b.batch,
            ms(r.page_p99_ms),
            int(r.history_messages as f64)
        ));
    }
    ctx.report.json.insert("store".into(), json!(r));
    ctx.report.sections.push(s);
    Ok(())
}

/// Waits until a node's `/readyz` answers 200 (in external-broker mode: connected and
/// subscribed to its share of the commands).
async fn wait_ready(http: &str, logs: impl Fn() -> String) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = client
            .get(format!("{http}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("a Tidings node was not ready within 30 s:\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tidings_messages_stored_total` of one node (to show both nodes took a share).
async fn stored_total(http: &str) -> f64 {
    let Ok(res) = reqwest::get(format!("{http}/metrics")).await else {
        return 0.0;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("tidings_messages_stored_total"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// Issue 12's "two nodes vs one, same machine": the pairs load through Mosquitto (one
/// broker, `$share` round robin) in front of one Tidings node on PostgreSQL, then the
/// same connected devices with a second node joining the share group. The same
/// offered rates; CPU is the Tidings processes' (summed for two). A ratio on one
/// machine, not a scaling claim: both nodes, the broker, PostgreSQL and the generator
/// share its cores.
async fn scenario_nodes(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.pairs;
    if !(ctx.db_url.starts_with("postgres:") || ctx.db_url.starts_with("postgresql:")) {
        bail!(
            "nodes needs PostgreSQL, which the nodes share: pass --db postgres://USER@HOST/DB \
             (an empty database)"
        );
    }
    ctx.ensure_directs(n).await?;
    // The embedded-mode server only prepared the accounts; the nodes take its place.
    if let Some(t) = ctx.tidings.as_mut() {
        t.stop();
    }
    // A broker of its own: between the nodes and the devices every message crosses
    // it four times in small packets, so Nagle is off (`set_tcp_nodelay`, off by
    // default in Mosquitto), as a deployment in front of Tidings would have it.
    let mosquitto_bin = ctx
        .mosquitto_bin
        .clone()
        .context("mosquitto was not looked for")?;
    let broker = Mosquitto::start_with(&mosquitto_bin, "set_tcp_nodelay true")?;
    let broker_port = broker.port;
    let bin = ctx.server_bin.clone().context("no tidings binary")?;
    let node_options = |i: usize| TidingsOptions {
        binary: bin.clone(),
        data_dir: ctx._data.path().join(format!("node{i}")),
        database_url: Some(ctx.db_url.clone()),
        jwt_secret: ctx.secret.clone(),
        extra_env: vec![
            ("TIDINGS_BROKER_MODE".into(), "external".into()),
            (
                "TIDINGS_BROKER_ADDRS".into(),
                format!("127.0.0.1:{broker_port}"),
            ),
            (
                "TIDINGS_BROKER_CLIENT_ID".into(),
                format!("tidings-bench-node{i}"),
            ),
        ],
        mqtt_listener: false,
    };
    say!("nodes: starting node 1 behind Mosquitto on {broker_port}");
    let mut one = Tidings::start(&node_options(1))?;
    wait_ready(&one.http, || one.logs()).await?;
    say!("nodes: connecting {n} pairs to the broker");
    let set = tidings_pairs_on(ctx, broker_port, n, "n").await?;
    let (one_steps, one_max, one_all) =
        step_search(&ctx.opts, &set, &[one.pid], "1 node ", None).await?;
    let one_stored = stored_total(&one.http).await;

    say!("nodes: starting node 2");
    let mut two = Tidings::start(&node_options(2))?;
    wait_ready(&two.http, || two.logs()).await?;
    let (two_steps, two_max, two_all) =
        step_search(&ctx.opts, &set, &[one.pid, two.pid], "2 nodes", None).await?;
    let (a, b) = (
        stored_total(&one.http).await - one_stored,
        stored_total(&two.http).await,
    );
    let (acks, errors) = (
        set.rec.acks.load(Ordering::Relaxed),
        set.rec.errors.load(Ordering::Relaxed),
    );
    set.close();
    one.stop();
    two.stop();
    if b == 0.0 {
        bail!("node 2 stored nothing: the broker did not share the commands");
    }

    let mut rates: Vec<f64> = one_steps
        .iter()
        .chain(&two_steps)
        .map(|s| s.offered_rate)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let mut s = format!(
        "## nodes: one Tidings node vs two behind one broker, {n} pairs, {} s per step\n\n\
         Mosquitto (Debian, no auth) is the external broker; each node takes \
         `$share/tidings/u/+/out` and publishes acks and deliveries back through it; both \
         nodes share one PostgreSQL database (`--db`), rate limits included. The same \
         connected devices and offered rates for both runs. Server CPU = the Tidings \
         processes (both, summed, for two nodes) per delivered message; Mosquitto and \
         PostgreSQL are in the machine's other load, not in it. A step passes with \
         p99 < {} ms and nothing lost.\n\n\
         | offered msg/s | 1 node delivered/s | p50 ms | p99 | lost | µs/msg | CPU \
         | 2 nodes delivered/s | p50 ms | p99 | lost | µs/msg | CPU | CPU/msg 2 ÷ 1 |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ctx.opts.duration, ctx.opts.p99_limit_ms
    );
    let cols = |x: Option<&StepResult>| {
        x.map_or_else(
            || "| – | – | – | – | – | – ".to_owned(),
            |t| {
                format!(
                    "| {} | {} | {} | {} | {:.0} | {:.0}% ",
                    int(t.delivered_rate),
                    ms(t.p50_ms),
                    ms(t.p99_ms),
                    int(t.lost as f64),
                    t.server_cpu_us_per_msg,
                    t.server_cpu_util * 100.0
                )
            },
        )
    };
    for r in &rates {
        let o = one_steps.iter().find(|x| x.offered_rate == *r);
        let t = two_steps.iter().find(|x| x.offered_rate == *r);
        let ratio = match (o, t) {
            (Some(o), Some(t)) if o.server_cpu_us_per_msg > 0.0 => {
                format!("{:.2}×", t.server_cpu_us_per_msg / o.server_cpu_us_per_msg)
            }
            _ => "–".into(),
        };
        s.push_str(&format!(
            "| {} {}{}| {ratio} |\n",
            int(*r),
            cols(o),
            cols(t)
        ));
    }
    let ratio_max = match (one_max, two_max) {
        (Some(o), Some(t)) if o > 0.0 => format!(
            "{:.2}{}",
            t / o,
            if two_all {
                " (a lower bound: two nodes passed every rate offered)"
            } else {
                ""
            }
        ),
        _ => "–".into(),
    };
    s.push_str(&format!(
        "\n- Max rate with p99 < {} ms and nothing lost: **1 node {}**, **2 nodes {}**; ratio 2 ÷ 1: **{ratio_max}**.\n\
         - With two nodes, node 1 stored {} messages and node 2 {} (the broker's share split).\n\
         - Senders got {} `ack` and {} `error` replies over both runs.\n",
        ctx.opts.p99_limit_ms,
        max_rate_text(one_max, one_all),
        max_rate_text(two_max, two_all),
        int(a),
        int(b),
        int(acks as f64),
        int(errors as f64),
    ));
    ctx.report.summary.push(format!(
        "nodes: max rate 1 node {}, 2 nodes {} (ratio {ratio_max}), same machine",
        max_rate_text(one_max, one_all),
        max_rate_text(two_max, two_all)
    ));
    ctx.report.json.insert(
        "nodes".into(),
        json!({ "one": one_steps, "two": two_steps, "one_max": one_max, "two_max": two_max }),
    );
    ctx.report.sections.push(s);
    Ok(())
}

fn scenario_name(c: Cmd) -> &'static str {
    match c {
        Cmd::All => "all",
        Cmd::Smoke => "smoke",
        Cmd::Pairs => "pairs",
        Cmd::Clients => "clients",
        Cmd::Fanout => "fanout",
        Cmd::Idle => "idle",
        Cmd::Logins => "logins",
        Cmd::Store => "store",
        Cmd::Users => "users",
        Cmd::Nodes => "nodes",
    }
}

/// The whole run. Ok(true) when every scenario succeeded (and, for `smoke`, measured).
pub async fn run(cli: Cli) -> Result<bool> {
    let mut opts = cli.opts;
    let cmd = cli.cmd;
    let plan: Vec<Cmd> = match cmd {
        Cmd::All => vec![
            Cmd::Pairs,
            Cmd::Clients,
            Cmd::Fanout,
            Cmd::Users,
            Cmd::Idle,
            Cmd::Logins,
            Cmd::Store,
        ],
        Cmd::Smoke => {
            // Small enough for a debug server inside 20 s.
            opts.pairs = 20;
            opts.rates = vec![200.0];
            opts.duration = 3.0;
            opts.refine = 0;
            opts.register_concurrency = 8;
            vec![Cmd::Pairs]
        }
        c => vec![c],
    };
    let nofile = procs::raise_nofile_limit();
    let needs_server = plan.iter().any(|c| *c != Cmd::Store);
    let needs_peer = plan
        .iter()
        .any(|c| matches!(c, Cmd::Pairs | Cmd::Clients | Cmd::Nodes));
    // The nodes share a database: without PostgreSQL there is nothing to measure, and
    // saying so now beats registering users first.
    if plan.contains(&Cmd::Nodes)
        && !opts
            .db
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres:") || u.starts_with("postgresql:"))
    {
        bail!("nodes needs PostgreSQL, which the nodes share: pass --db postgres://USER@HOST/DB (an empty database)");
    }
    // Look for both before doing anything slow, so a missing one fails at once.
    let server_bin = if needs_server {
        Some(procs::find_server(opts.server.as_deref())?)
    } else {
        None
    };
    let mosquitto_bin = if needs_peer {
        Some(procs::find_mosquitto(opts.install)?)
    } else {
        None
    };
    let seeded_needed = plan
        .iter()
        .map(|c| match c {
            Cmd::Idle => opts.idle,
            Cmd::Users => opts.users_idle.iter().copied().max().unwrap_or(0),
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    if seeded_needed + 2 * opts.pairs + 100 > nofile as usize {
        say!("warning: open-file limit {nofile} may be too low for this run");
    }

    let data = tempfile::tempdir()?;
    let db_url = opts
        .db
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data.path().join("tidings.db").display()));
    let secret = format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new());
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        argv.push(scenario_name(cmd).into());
    }
    let mut ctx = Ctx {
        report: Report {
            title: format!("Tidings benchmark: {}", scenario_name(cmd)),
            command: format!("cargo run -p tidings-bench --release -- {}", argv.join(" ")),
            machine: report::machine_info(
                server_bin.as_deref().unwrap_or(std::path::Path::new("-")),
                mosquitto_bin
                    .as_deref()
                    .map(procs::mosquitto_version)
                    .as_deref(),
            ),
            ..Default::default()
        },
        opts,
        server_bin,
        _data: data,
        db_url,
        secret,
        tidings: None,
        mosquitto_bin,
        mosquitto: None,
        pool: Arc::new(AddressPool::new()),
        accounts: Vec::new(),
        directs: Vec::new(),
        seeded: Vec::new(),
    };
    ctx.report.notes.extend(method_notes(&ctx.opts));
    ctx.report.p99_limit_ms = ctx.opts.p99_limit_ms;

    if seeded_needed > 0 {
        say!("seeding {seeded_needed} users with sessions through tidings-store");
        let t0 = Instant::now();
        ctx.seeded = accounts::seed_users(&ctx.db_url, &ctx.secret, "idle", seeded_needed).await?;
        ctx.report.notes.push(format!(
            "Preparation: seeded {} users + sessions through `tidings-store` in {:.1} s and signed \
             their access tokens with the server's `TIDINGS_AUTH_JWT_SECRET` (HS256, `sub` = user, \
             `sid` = the live session), before the server started. Registering them over HTTP \
             would have cost {} argon2id hashes; the server checks such a token exactly as one \
             it issued (signature, issuer, expiry, live session).",
            int(seeded_needed as f64),
            t0.elapsed().as_secs_f64(),
            int(seeded_needed as f64)
        ));
    }
    if let Some(bin) = &ctx.server_bin {
        say!("starting {}", bin.display());
        ctx.tidings = Some(Tidings::start(&server_options(&ctx, bin.clone()))?);
    }

    let started = Instant::now();
    for c in &plan {
        if *c == Cmd::Store {
            // The store scenario needs the cores to itself.
            if let Some(t) = ctx.tidings.as_mut() {
                t.stop();
            }
            if let Some(m) = ctx.mosquitto.as_mut() {
                m.stop();
            }
        }
        let t0 = Instant::now();
        say!("== {}", scenario_name(*c));
        let r = match c {
            Cmd::Pairs => scenario_pairs(&mut ctx).await,
            Cmd::Clients => scenario_clients(&mut ctx).await,
            Cmd::Fanout => scenario_fanout(&mut ctx).await,
            Cmd::Users => scenario_users(&mut ctx).await,
            Cmd::Idle => scenario_idle(&mut ctx).await,
            Cmd::Logins => scenario_logins(&mut ctx).await,
            Cmd::Store => scenario_store(&mut ctx).await,
            Cmd::Nodes => scenario_nodes(&mut ctx).await,
            Cmd::All | Cmd::Smoke => Ok(()),
        };
        let secs = t0.elapsed().as_secs_f64();
        say!("== {} took {secs:.0} s", scenario_name(*c));
        if let Err(e) = r {
            let logs = ctx.tidings.as_ref().map(|t| t.logs()).unwrap_or_default();
            say!("{} failed: {e:#}", scenario_name(*c));
            if !logs.is_empty() {
                say!("server log tail:\n{logs}");
            }
            ctx.report
                .failures
                .push(format!("`{}`: {e:#}", scenario_name(*c)));
        }
    }
    let total = started.elapsed().as_secs_f64();
    ctx.report.notes.push(format!(
        "Wall time of the scenarios: {total:.0} s (plus preparation before them)."
    ));
    if let Some(t) = ctx.tidings.as_mut() {
        t.stop();
    }
    if let Some(m) = ctx.mosquitto.as_mut() {
        m.stop();
    }
    let dropped = mqtt::DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        ctx.report.notes.push(format!(
            "{dropped} generator connections were closed by a server during the run."
        ));
    }

    // Where the report goes.
    let (date, _) = report::utc_now();
    let dir = match (&ctx.opts.out_exact, &ctx.opts.out, cmd) {
        (Some(d), _, _) => d.clone(),
        (None, root, Cmd::Smoke) => root
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("tidings-bench-smoke-{}", std::process::id())),
        (None, root, _) => root
            .clone()
            .unwrap_or_else(|| report::repo_dir().join("bench").join("results"))
            .join(format!("{date}-{}", report::short_commit())),
    };
    ctx.report.write(&dir)?;
    if ctx.opts.out_exact.is_none() && cmd != Cmd::Smoke {
        if let Some(parent) = dir.parent() {
            report::copy_dir(&dir, &parent.join("latest"))?;
        }
    }
    say!("report: {}", dir.join("report.md").display());

    let mut ok = ctx.report.failures.is_empty();
    if cmd == Cmd::Smoke {
        let got = |steps: &[StepResult]| steps.iter().map(|s| s.received).sum::<u64>();
        let t = got(&ctx.report.tidings_steps);
        let m = got(&ctx.report.mosquitto_steps);
        let written = dir.join("report.md").is_file();
        say!("smoke: Tidings delivered {t}, Mosquitto delivered {m}, report written: {written}");
        ok = ok && t > 0 && m > 0 && written;
    }
    Ok(ok)
}

fn method_notes(o: &Opts) -> Vec<String> {
    let mut notes = vec![];
    if o.db.is_some() {
        notes.push(
            "The server ran on PostgreSQL (`--db`): the database server's own processes are not \
             in the server CPU columns; they show up in the other-processes figure."
                .to_owned(),
        );
    }
    notes.extend([
        "Open loop: message k of a step is scheduled at start + k/rate before the step begins, \
         and latency = receive time − scheduled time, so a stall delays (and counts) every \
         message scheduled during it; no coordinated omission. Timer wake-ups are 1 ms, so \
         up to ~1 ms of generator lateness is included."
            .into(),
        "One current-thread tokio runtime drives all connections: the generator never uses more \
         than one of the machine's cores; its CPU per message is reported next to the server's."
            .into(),
        "Server CPU = utime+stime of the server process (all threads) from /proc/PID/stat over \
         the step, from the first send until the last message arrived (or 2 s without \
         progress); RSS and VmHWM from /proc/PID/status."
            .into(),
        format!(
            "Tidings senders subscribe to their own inbox (where `ack` and `error` replies \
             arrive), as a device must; receivers subscribe to theirs. Tidings publishes at QoS 0; \
             the Mosquitto receivers subscribe at QoS 0 too, so both deliver at most once. \
             Mosquitto runs with `persistence false`, no auth, `max_queued_messages 1000000`. \
             Generator client: `{:?}`.",
            o.client
        ),
        "Lost = messages scheduled in the step that did not reach their receiver(s) before the \
         drain ended (all arrived, 2 s without progress, or max(step, 5 s) after sending). \
         `errors` are `error` replies to senders (e.g. `rate_limited`, `unavailable`)."
            .into(),
        "The server limits auth attempts per client address (20, then 30/min). Registration and \
         login traffic is spread over loopback source addresses 127.1.x.y (15 attempts each), \
         as many real clients would be; every address is on this machine."
            .into(),
        "Each run starts a fresh Tidings (temporary data directory; SQLite unless `--db`) with \
         `TIDINGS_LOG_FILTER=warn,tidings=info`, `TIDINGS_MQTT_MAX_CONNECTIONS=30000`, \
         `TIDINGS_AUTH_ACCESS_TTL_SECS=7200` (tokens outlive the run) and \
         `TIDINGS_LIMITS_SEND_PER_SECOND`/`_BURST=1000` (the senders are load generators, \
         not people), and a fresh Mosquitto."
            .into(),
    ]);
    notes
}
