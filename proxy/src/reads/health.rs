//! Whether new is answering: one failed connection under load is not an outage, a connect
//! that keeps failing is, once the answers stop. While new is down, reads go straight to
//! legacy without trying it, until `reads.retry_after_ms` has passed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// New is not tried again before this instant (µs since epoch).
    down_until: AtomicU64,
    /// When new last answered a round trip (µs since epoch).
    answered_at: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn is_down(&self) -> bool {
        self.now() < self.down_until.load(Relaxed)
    }

    /// New answered a round trip.
    pub fn answered(&self) {
        self.answered_at.store(self.now().max(1), Relaxed);
    }

    /// After a connection to new failed: reads skip new for `retry_after`, unless new
    /// answered on another connection within that time. Returns whether new is now
    /// considered down.
    pub fn failed(&self, retry_after: Duration) -> bool {
        let now = self.now();
        let window = retry_after.as_micros() as u64;
        let answered = self.answered_at.load(Relaxed);
        if answered > 0 && now.saturating_sub(answered) < window {
            return false;
        }
        self.down_until.store(now + window, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_connect_is_an_outage_only_when_new_has_stopped_answering() {
        let health = Health::default();
        let window = Duration::from_secs(60);
        health.answered();
        assert!(!health.failed(window), "new answered just now");
        assert!(!health.is_down());
        let never = Health::default();
        assert!(never.failed(window), "never answered");
        assert!(never.is_down());
    }
}
