//! Where a message's time goes inside the server, per load step: the Prometheus
//! histograms of the server's `/metrics`, read before and after the step.
//!
//! The generator sees only the whole trip (sender → server → receiver). The server
//! times three parts of it (see `broker/src/worker/mod.rs`):
//! - `tidings_command_queue_seconds`: the front door reading a command until the
//!   worker takes it into a batch;
//! - `tidings_store_batch_seconds`: that batch's transaction (one sample per batch);
//! - `tidings_command_seconds`: the front door reading it until its answer, PUBACK and
//!   deliveries are handed to the connections' writers (queue + batch + replier).
//!
//! What the end-to-end latency has beyond `tidings_command_seconds` is spent in the
//! sockets, the kernel, the connection writers and the generator.
//!
//! On SQLite two more hold the one writer and so delay the batches queued behind them:
//! `tidings_store_writer_checkpoint_seconds` (the WAL checkpoint the writer finishes
//! after a batch, inside that batch's time) and `tidings_search_index_chunk_seconds`
//! (a transaction moving queued messages into the search index).

use std::collections::BTreeMap;

use serde::Serialize;

pub const QUEUE: &str = "tidings_command_queue_seconds";
pub const STORE_BATCH: &str = "tidings_store_batch_seconds";
pub const IN_SERVER: &str = "tidings_command_seconds";
/// What else holds the single SQLite writer, delaying the batches behind it.
pub const WRITER_CHECKPOINT: &str = "tidings_store_writer_checkpoint_seconds";
pub const SEARCH_INDEX_CHUNK: &str = "tidings_search_index_chunk_seconds";

/// The histograms this module reads.
pub const STAGES: [&str; 5] = [
    QUEUE,
    STORE_BATCH,
    IN_SERVER,
    WRITER_CHECKPOINT,
    SEARCH_INDEX_CHUNK,
];

/// Cumulative bucket counts of one histogram: upper bound (seconds) → samples ≤ it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

/// Every [`STAGES`] histogram of one scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape(BTreeMap<&'static str, Buckets>);

/// One stage over one step: samples, and quantiles in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct StageLatency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Scrape {
    /// Parses the Prometheus text format, keeping the `_bucket` lines of [`STAGES`].
    pub fn parse(text: &str) -> Scrape {
        let mut found: BTreeMap<&'static str, Buckets> = BTreeMap::new();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some(name) = STAGES.iter().copied().find(|n| {
                series
                    .strip_prefix(n)
                    .is_some_and(|rest| rest.starts_with("_bucket{"))
            }) else {
                continue;
            };
            let Some(le) = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            };
            let Ok(count) = value.trim().parse::<f64>() else {
                continue;
            };
            found.entry(name).or_default().0.push((bound, count));
        }
        for buckets in found.values_mut() {
            buckets.0.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Scrape(found)
    }

    /// Reads `{http}/metrics`; an empty scrape when the server does not answer (the
    /// report then shows no stages rather than failing the step).
    pub async fn fetch(http: &str) -> Scrape {
        match reqwest::get(format!("{http}/metrics")).await {
            Ok(res) => Scrape::parse(&res.text().await.unwrap_or_default()),
            Err(_) => Scrape::default(),
        }
    }

    /// Each stage's latency between `self` (before) and `after`, for the stages with
    /// samples in between.
    pub fn until(&self, after: &Scrape) -> BTreeMap<String, StageLatency> {
        let mut out = BTreeMap::new();
        for (name, late) in &after.0 {
            let early = self.0.get(name).cloned().unwrap_or_default();
            if let Some(stage) = late.minus(&early).latency() {
                out.insert((*name).to_owned(), stage);
            }
        }
        out
    }
}

impl Buckets {
    /// The samples recorded between two scrapes (a restarted server starts from 0,
    /// so a count never goes below it).
    fn minus(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(bound, count)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(b, _)| b == bound)
                        .map_or(0.0, |(_, c)| *c);
                    (*bound, (count - before).max(0.0))
                })
                .collect(),
        )
    }

    /// The `q` quantile as Prometheus's `histogram_quantile` computes it: linear
    /// within the bucket it falls in; the highest finite bound if it falls in `+Inf`.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &self.0 {
            if count >= rank {
                if bound.is_infinite() {
                    return Some(lower.0);
                }
                let within = count - lower.1;
                let share = if within > 0.0 {
                    (rank - lower.1) / within
                } else {
                    1.0
                };
                return Some(lower.0 + (bound - lower.0) * share);
            }
            lower = (bound, count);
        }
        Some(lower.0)
    }

    fn latency(&self) -> Option<StageLatency> {
        let samples = self.0.last()?.1;
        Some(StageLatency {
            samples: samples as u64,
            p50_ms: self.quantile(0.5)? * 1e3,
            p99_ms: self.quantile(0.99)? * 1e3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(samples: &[(&str, f64)]) -> String {
        samples
            .iter()
            .map(|(le, c)| format!("tidings_command_seconds_bucket{{le=\"{le}\"}} {c}\n"))
            .collect::<String>()
            + "tidings_command_seconds_sum 1.5\ntidings_command_seconds_count 100\n\
               tidings_worker_batch_size{quantile=\"0.5\"} 6\n"
    }

    #[test]
    fn quantiles_come_from_the_buckets_filled_between_two_scrapes() {
        let before = Scrape::parse(&text(&[
            ("0.001", 10.0),
            ("0.01", 10.0),
            ("0.1", 10.0),
            ("+Inf", 10.0),
        ]));
        // 100 more samples: 50 up to 1 ms, 40 in (1, 10] ms, 10 in (10, 100] ms.
        let after = Scrape::parse(&text(&[
            ("0.001", 60.0),
            ("0.01", 100.0),
            ("0.1", 110.0),
            ("+Inf", 110.0),
        ]));
        let stages = before.until(&after);
        let stage = &stages["tidings_command_seconds"];
        assert_eq!(stage.samples, 100);
        // Rank 50 is the top of the first bucket: 1 ms.
        assert!((stage.p50_ms - 1.0).abs() < 1e-9, "{}", stage.p50_ms);
        // Rank 99 is 9 of the 10 samples into (10, 100] ms: 10 + 0.9 × 90 = 91 ms.
        assert!((stage.p99_ms - 91.0).abs() < 1e-9, "{}", stage.p99_ms);
        // Only the stages that had samples.
        assert_eq!(stages.len(), 1);
    }

    #[test]
    fn a_quantile_in_the_open_bucket_is_the_highest_bound() {
        let after = Scrape::parse(&text(&[("0.001", 1.0), ("0.01", 1.0), ("+Inf", 100.0)]));
        let stage = &Scrape::default().until(&after)["tidings_command_seconds"];
        assert!((stage.p99_ms - 10.0).abs() < 1e-9, "{}", stage.p99_ms);
    }
}
