//! A per-key token bucket: `burst` tokens, refilled at `per_second`. Used by the
//! worker to cap how fast one user can post, edit and react.

use std::collections::HashMap;

pub struct RateLimiter {
    burst: f64,
    per_ms: f64,
    buckets: HashMap<String, (f64, i64)>,
}

/// Past this many tracked keys, full buckets are forgotten (they carry no state).
const PRUNE_AT: usize = 100_000;

impl RateLimiter {
    pub fn new(burst: u32, per_second: u32) -> Self {
        RateLimiter {
            burst: f64::from(burst),
            per_ms: f64::from(per_second) / 1000.0,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now_ms`; false when the bucket is empty.
    pub fn allow(&mut self, key: &str, now_ms: i64) -> bool {
        if self.buckets.len() > PRUNE_AT {
            let (burst, per_ms) = (self.burst, self.per_ms);
            self.buckets
                .retain(|_, (tokens, at)| *tokens + (now_ms - *at) as f64 * per_ms < burst);
        }
        let (tokens, at) = self
            .buckets
            .entry(key.to_owned())
            .or_insert((self.burst, now_ms));
        *tokens = (*tokens + (now_ms - *at).max(0) as f64 * self.per_ms).min(self.burst);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;

    #[test]
    fn bursts_then_refills() {
        let mut r = RateLimiter::new(3, 10);
        assert!((0..3).all(|_| r.allow("a", 0)));
        assert!(!r.allow("a", 0));
        assert!(r.allow("b", 0), "keys are independent");
        assert!(!r.allow("a", 50));
        assert!(r.allow("a", 100), "one token per 100 ms at 10/s");
    }
}
