//! Retry with backoff: the one policy of every loop that waits out a failure (a broker
//! connection, a store commit). The pause starts at `first`, doubles after each failure up
//! to `max`, and starts over after a success. Plumbing: imports nothing of Cradle's.

use std::time::Duration;

/// A doubling pause between attempts.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, at most `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// Store writes: 50 ms doubling to 5 s.
    pub fn store() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// Broker connections: 100 ms doubling to 5 s.
    pub fn broker() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The pause the next failure waits.
    pub fn pause(&self) -> Duration {
        self.next
    }

    /// Waits the current pause, then doubles it (up to the maximum).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }

    /// After a success: the next failure waits the first pause again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn given_failures_the_pause_doubles_up_to_the_maximum_and_a_success_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(b.pause().as_millis());
            b.wait().await;
        }
        assert_eq!(seen, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.pause(), Duration::from_millis(100));
    }
}
