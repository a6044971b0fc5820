//! Runs `tidings-bench smoke` against the workspace's debug `tidings` binary, so
//! `cargo test --workspace` notices when the harness stops measuring anything.
//! It fails, never skips, when Mosquitto is missing (`apt-get install -y mosquitto`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// target/debug/tidings: the bench binary lives in the same directory
/// (`cargo test --workspace` builds the root package's binary there).
fn server_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_tidings-bench"));
    let dir = bench.parent().expect("bench binary has a directory");
    dir.join(format!("tidings{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn smoke_measures_something_and_writes_a_report() {
    assert!(
        std::path::Path::new("/usr/sbin/mosquitto").is_file(),
        "the benchmark smoke test needs Mosquitto: apt-get install -y mosquitto"
    );
    let server = server_binary();
    assert!(
        server.is_file(),
        "{} is missing: build it with `cargo build -p tidings` (cargo test --workspace does)",
        server.display()
    );
    let out = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .arg("smoke")
        .arg("--server")
        .arg(&server)
        .arg("--out-exact")
        .arg(out.path())
        .output()
        .expect("run tidings-bench smoke");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "smoke failed ({}):\n{stderr}",
        output.status
    );
    let report = std::fs::read_to_string(out.path().join("report.md")).expect("report.md written");
    assert!(report.contains("## pairs"), "{report}");
    // The server's own latency split, read from its /metrics histograms: a row with
    // numbers, not dashes, proves the histograms are exported and were scraped.
    let stages = report
        .lines()
        .skip_while(|l| !l.starts_with("### Where a message's time goes"))
        .find(|l| l.starts_with("| 200 |"))
        .unwrap_or_else(|| panic!("no server-stage row for 200 msg/s:\n{report}"));
    assert!(!stages.contains('–'), "stage without samples: {stages}");
    assert!(out.path().join("latency.svg").is_file());
    assert!(
        stderr.contains("smoke: Tidings delivered"),
        "no smoke summary:\n{stderr}"
    );
    // The smoke is meant to stay quick; a generous bound catches a run that hangs.
    assert!(
        elapsed < Duration::from_secs(60),
        "smoke took {elapsed:?}:\n{stderr}"
    );
}
