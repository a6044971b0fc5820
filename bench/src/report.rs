//! The report: markdown, the raw numbers as JSON, and SVG plots.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::load::StepResult;

#[derive(Default)]
pub struct Report {
    pub title: String,
    pub command: String,
    pub machine: Vec<(String, String)>,
    /// One line per headline number, shown above the scenario sections.
    pub summary: Vec<String>,
    pub sections: Vec<String>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
    pub json: serde_json::Map<String, serde_json::Value>,
    pub tidings_steps: Vec<StepResult>,
    pub mosquitto_steps: Vec<StepResult>,
    pub p99_limit_ms: f64,
}

fn cmd_out(cmd: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let o = c.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// The repository this crate lives in (for the commit and the results folder).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn short_commit() -> String {
    let dir = repo_dir();
    let mut c = cmd_out("git", &["rev-parse", "--short", "HEAD"], Some(&dir))
        .unwrap_or_else(|| "nocommit".into());
    if cmd_out(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        Some(&dir),
    )
    .is_some_and(|s| !s.is_empty())
    {
        c.push_str("-dirty");
    }
    c
}

/// UTC date and time from the system clock (no date crate needed for this).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            tod / 3600,
            tod % 3600 / 60,
            tod % 60
        ),
    )
}

pub fn machine_info(server: &Path, mosquitto: Option<&str>) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let (_, when) = utc_now();
    let mut v = vec![
        ("date".into(), when),
        ("commit".into(), short_commit()),
        ("nproc".into(), nproc),
        ("CPU".into(), cpu),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("load average at start".into(), crate::procs::loadavg()),
        (
            "rustc".into(),
            cmd_out("rustc", &["--version"], None).unwrap_or_else(|| "unknown".into()),
        ),
        ("server binary".into(), server.display().to_string()),
    ];
    if let Some(m) = mosquitto {
        v.push(("peer".into(), m.to_owned()));
    }
    v
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = format!("# {}\n\n", self.title);
        s.push_str(&format!("Command: `{}`\n\n", self.command));
        s.push_str("| machine | |\n|---|---|\n");
        for (k, v) in &self.machine {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        s.push('\n');
        if !self.summary.is_empty() {
            s.push_str("## Summary\n\n");
            for l in &self.summary {
                s.push_str(&format!("- {l}\n"));
            }
            s.push('\n');
        }
        if !self.failures.is_empty() {
            s.push_str("## Failures\n\n");
            for f in &self.failures {
                s.push_str(&format!("- {f}\n"));
            }
            s.push('\n');
        }
        for sec in &self.sections {
            s.push_str(sec);
            s.push('\n');
        }
        if !self.notes.is_empty() {
            s.push_str("## Method notes\n\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    /// Writes report.md, results.json and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("report.md"), self.render())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&serde_json::Value::Object(self.json.clone()))?,
        )?;
        if !self.tidings_steps.is_empty() || !self.mosquitto_steps.is_empty() {
            plot_latency(
                &dir.join("latency.svg"),
                &self.tidings_steps,
                &self.mosquitto_steps,
                self.p99_limit_ms,
            )?;
            plot_cpu(
                &dir.join("cpu.svg"),
                &self.tidings_steps,
                &self.mosquitto_steps,
            )?;
        }
        Ok(())
    }
}

/// Copies every file of `from` into a fresh `to` (a plain copy: no symlinks in git).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn sorted(steps: &[StepResult]) -> Vec<&StepResult> {
    let mut v: Vec<&StepResult> = steps.iter().collect();
    v.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    v
}

fn plot_latency(path: &Path, t: &[StepResult], m: &[StepResult], limit_ms: f64) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let xmax = t
        .iter()
        .chain(m)
        .map(|s| s.offered_rate)
        .fold(1.0, f64::max)
        * 1.05;
    let ymax = t.iter().chain(m).map(|s| s.p999_ms).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency vs offered rate (open loop, pairs)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (0.05f64..ymax).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (msg/s)")
        .y_desc("latency (ms, log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    type Pick = fn(&StepResult) -> f64;
    let series: [(&str, &[StepResult], Pick, RGBColor); 6] = [
        ("Tidings p50", t, |s| s.p50_ms, RGBColor(31, 119, 180)),
        ("Tidings p99", t, |s| s.p99_ms, RGBColor(14, 60, 140)),
        ("Tidings p99.9", t, |s| s.p999_ms, RGBColor(5, 20, 80)),
        ("Mosquitto p50", m, |s| s.p50_ms, RGBColor(255, 127, 14)),
        ("Mosquitto p99", m, |s| s.p99_ms, RGBColor(214, 39, 40)),
        ("Mosquitto p99.9", m, |s| s.p999_ms, RGBColor(140, 20, 20)),
    ];
    for (name, steps, pick, color) in series {
        if steps.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = sorted(steps)
            .into_iter()
            .map(|s| (s.offered_rate, pick(s).max(0.05)))
            .collect();
        // Mosquitto dashed, Tidings solid: the two servers read apart at a glance.
        if name.starts_with("Mosquitto") {
            chart
                .draw_series(DashedLineSeries::new(
                    pts.clone(),
                    6,
                    4,
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if limit_ms < ymax {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, limit_ms), (xmax, limit_ms)],
                3,
                3,
                grey.stroke_width(1),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("p99 limit {limit_ms} ms"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn plot_cpu(path: &Path, t: &[StepResult], m: &[StepResult]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let xmax = t
        .iter()
        .chain(m)
        .map(|s| s.offered_rate)
        .fold(1.0, f64::max)
        * 1.05;
    let ymax = t
        .iter()
        .chain(m)
        .map(|s| s.server_cpu_us_per_msg)
        .fold(1.0, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Server CPU per message vs offered rate", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (0.5f64..ymax).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (msg/s)")
        .y_desc("server CPU per message (µs, log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, steps, color) in [
        ("Tidings", t, RGBColor(31, 119, 180)),
        ("Mosquitto", m, RGBColor(255, 127, 14)),
    ] {
        if steps.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = sorted(steps)
            .into_iter()
            .map(|s| (s.offered_rate, s.server_cpu_us_per_msg.max(0.5)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Formats a number of milliseconds for a table.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// 12345.6 → "12,346".
pub fn int(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}
