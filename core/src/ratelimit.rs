//! A per-key token bucket: `burst` tokens, refilled continuously. The worker caps how
//! fast one user can post over MQTT, the REST API how fast one user can post over HTTP
//! and how fast one address can try passwords. Pure logic (time is passed in), so it
//! is exact to test.

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
        Self::per_minute(burst, per_second * 60)
    }

    pub fn per_minute(burst: u32, per_minute: u32) -> Self {
        RateLimiter {
            burst: f64::from(burst),
            per_ms: f64::from(per_minute) / 60_000.0,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now_ms`; false when the bucket is empty.
    pub fn allow(&mut self, key: &str, now_ms: i64) -> bool {
        self.check(key, now_ms).is_ok()
    }

    /// Takes one token, or says how many milliseconds until one is available.
    pub fn check(&mut self, key: &str, now_ms: i64) -> Result<(), u64> {
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
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_ms).ceil() as u64)
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
        assert_eq!(r.check("a", 100), Err(100), "says when to retry");
        let mut m = RateLimiter::per_minute(1, 30);
        assert!(m.allow("ip", 0));
        assert_eq!(m.check("ip", 0), Err(2000));
    }
}
