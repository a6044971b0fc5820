//! tidings-bench: issue 9's benchmark harness.
//!
//! One command starts a fresh Tidings (temp data dir, SQLite unless `--db`) and a
//! fresh Mosquitto as children on free loopback ports, prepares accounts, drives
//! open-loop load from one tokio runtime, reads the servers' CPU and memory from
//! /proc, and writes `bench/results/<date>-<commit>/report.md` with SVG plots.

mod accounts;
mod load;
mod mqtt;
mod procs;
mod report;
mod scenarios;
mod server_stages;
mod store_bench;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::mqtt::ClientKind;

#[derive(Parser, Debug)]
#[command(
    name = "tidings-bench",
    about = "Benchmarks Tidings (and Mosquitto as a reference) on loopback"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    #[command(flatten)]
    pub opts: Opts,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Every scenario below, in one run, one report.
    All,
    /// A ≤ 20 s check that the harness measures something (used by the test suite).
    Smoke,
    /// Sender/receiver pairs in direct conversations, Tidings and Mosquitto.
    Pairs,
    /// What the generator's two MQTT clients cost per message (against Mosquitto).
    Clients,
    /// One sender into a large group.
    Fanout,
    /// Many connected, subscribed, idle devices: RSS per connection, connects/s.
    Idle,
    /// Concurrent password logins: logins/s and peak RSS.
    Logins,
    /// Store::write_batch and history pages through tidings-store directly.
    Store,
    /// CPU per message with few and with many extra idle users connected.
    Users,
    /// Two Tidings nodes vs one behind the same external broker (Mosquitto), on
    /// PostgreSQL (`--db`, required): the pairs load, a ratio on one machine. Not part
    /// of `all` (it needs PostgreSQL).
    Nodes,
}

#[derive(Args, Debug, Clone)]
pub struct Opts {
    /// The tidings binary (default: next to this executable).
    #[arg(long, global = true)]
    pub server: Option<PathBuf>,
    /// Install Mosquitto with apt-get when it is missing.
    #[arg(long, global = true)]
    pub install: bool,
    /// Run the server on this PostgreSQL database instead of a fresh SQLite file.
    #[arg(long, global = true)]
    pub db: Option<String>,
    /// The `store` scenario on this (empty) PostgreSQL database instead of SQLite.
    #[arg(long, global = true)]
    pub pg_url: Option<String>,
    /// Results root; the report goes to <out>/<date>-<commit>/ and <out>/latest/.
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// Write the report into exactly this directory (no date folder, no latest copy).
    #[arg(long, global = true)]
    pub out_exact: Option<PathBuf>,
    /// The generator's MQTT client.
    #[arg(long, global = true, value_enum, default_value = "raw")]
    pub client: ClientKind,
    /// Seconds per load step.
    #[arg(long, global = true, default_value_t = 8.0)]
    pub duration: f64,
    /// Sender/receiver pairs.
    #[arg(long, global = true, default_value_t = 1000)]
    pub pairs: usize,
    /// Offered rates (msg/s) of the pairs steps, ascending.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,15000,20000"
    )]
    pub rates: Vec<f64>,
    /// Bisection steps between the last passing and the first failing rate.
    #[arg(long, global = true, default_value_t = 2)]
    pub refine: u32,
    /// A step passes when p99 is below this and nothing is lost.
    #[arg(long, global = true, default_value_t = 50.0)]
    pub p99_limit_ms: f64,
    /// Keep offering higher rates after a failed step (default: stop, since a
    /// saturated server's backlog would only lengthen the run).
    #[arg(long, global = true)]
    pub keep_going: bool,
    /// Rate of the `clients` comparison (msg/s, against Mosquitto).
    #[arg(long, global = true, default_value_t = 5000.0)]
    pub clients_rate: f64,
    /// Group size of the fan-out scenario, sender included (the server allows 1000).
    #[arg(long, global = true, default_value_t = 1000)]
    pub fanout_members: usize,
    /// Messages per second the fan-out sender offers (the bench raises the server's
    /// per-user send limit to 1,000/s; its default is 10/s). The last step offers more
    /// than 50,000 deliveries/s (55 × 999), the target: at 50 msg/s a 1,000-member
    /// group offers only 49,950, so the target could not be shown passed.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "10,25,50,55"
    )]
    pub fanout_rates: Vec<f64>,
    /// Connected idle devices of the `idle` scenario.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub idle: usize,
    /// Upper bound on the `idle` connect phase (seconds).
    #[arg(long, global = true, default_value_t = 120.0)]
    pub idle_max_seconds: f64,
    /// Concurrent logins of the `logins` scenario.
    #[arg(long, global = true, default_value_t = 500)]
    pub logins: usize,
    /// Messages in the table the `store` scenario pages through.
    #[arg(long, global = true, default_value_t = 10_000_000)]
    pub history_messages: u64,
    /// Upper bound on building the history table (seconds); the report gives the
    /// count reached.
    #[arg(long, global = true, default_value_t = 150.0)]
    pub history_max_seconds: f64,
    /// Seconds per batch size in the `store` throughput part.
    #[arg(long, global = true, default_value_t = 3.0)]
    pub store_seconds: f64,
    /// Offered rate of the `users` scenario (msg/s).
    #[arg(long, global = true, default_value_t = 2000.0)]
    pub users_rate: f64,
    /// Extra idle users connected in the `users` scenario: first run, second run.
    #[arg(long, global = true, value_delimiter = ',', default_value = "100,5000")]
    pub users_idle: Vec<usize>,
    /// Registrations in flight while preparing accounts.
    #[arg(long, global = true, default_value_t = 8)]
    pub register_concurrency: usize,
}

fn main() {
    let cli = Cli::parse();
    // One runtime on one thread: the generator never takes more than one of the two
    // cores from the servers it measures, and its own CPU is reported per message.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let code = match rt.block_on(scenarios::run(cli)) {
        Ok(ok) => {
            eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("tidings-bench: {e:#}");
            1
        }
    };
    // Dropping the runtime would wait for thousands of connection tasks; exit now
    // (the children were stopped before `run` returned).
    std::process::exit(code);
}

/// Used by the scenarios to log progress on stderr.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { eprintln!("[bench] {}", format!($($t)*)) };
}
