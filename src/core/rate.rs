//! Token bucket for per-connection send rates, on the core's logical milliseconds.

/// Refills `rate_per_sec` tokens a second up to `burst`; each send takes one.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens scaled by 1000 so that refills at any rate stay in integers.
    milli_tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(burst: u32, now_ms: u64) -> Self {
        TokenBucket {
            milli_tokens: u64::from(burst) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, rate_per_sec: u32, burst: u32, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = u64::from(burst) * 1000;
        self.milli_tokens = (self.milli_tokens + elapsed_ms * u64::from(rate_per_sec)).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_at_rate() {
        let mut bucket = TokenBucket::new(3, 0);
        assert!((0..3).all(|_| bucket.take(10, 3, 0)));
        assert!(!bucket.take(10, 3, 0));
        assert!(!bucket.take(10, 3, 99));
        assert!(bucket.take(10, 3, 100));
        assert!(!bucket.take(10, 3, 100));
        // A long pause refills only up to the burst.
        assert!((0..3).all(|_| bucket.take(10, 3, 100_000)));
        assert!(!bucket.take(10, 3, 100_000));
    }
}
