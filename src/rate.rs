//! A token bucket: the per-connection rate limits of the MQTT edge (PUBLISH packets, paced by
//! pausing reads) and of the WebSocket bridge (signal frames, refused with an error frame).

use std::time::Duration;

use tokio::time::Instant;

/// Tokens refill at `rate` per second up to `burst`; a rate of 0 is unlimited.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens even when that overdraws the bucket; returns how long to pause
    /// until it is no longer overdrawn (back-pressure), if it is.
    pub fn take(&mut self, n: u32) -> Option<Duration> {
        if self.rate == 0.0 || n == 0 {
            return None;
        }
        self.refill();
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// Takes one token if there is one (refusal, not back-pressure).
    pub fn allow(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
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
    fn take_pauses_after_the_burst() {
        let mut b = TokenBucket::new(100, 10);
        assert_eq!(b.take(10), None);
        let wait = b.take(5).expect("an empty bucket waits");
        assert!(
            wait > Duration::from_millis(40) && wait <= Duration::from_millis(51),
            "{wait:?}"
        );
        let mut unlimited = TokenBucket::new(0, 1);
        assert_eq!(unlimited.take(1_000_000), None);
    }

    #[test]
    fn allow_refuses_once_the_burst_is_spent() {
        let mut b = TokenBucket::new(1, 2);
        assert!(b.allow());
        assert!(b.allow());
        assert!(!b.allow());
        assert!(TokenBucket::new(0, 1).allow());
    }
}
