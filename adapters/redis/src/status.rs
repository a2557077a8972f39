//! The subscriber's shared status, written by the listener task and read by health reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fanout_domain::{BusStatus, SubscriberState};

pub(crate) struct SharedStatus {
    /// State and last error change together, a few times per outage: a plain mutex is enough.
    inner: Mutex<(SubscriberState, Option<String>)>,
    pub(crate) reconnects: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) malformed: AtomicU64,
    /// Replays that found alerts already trimmed from the log.
    pub(crate) lost: AtomicU64,
}

impl SharedStatus {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new((SubscriberState::Idle, None)),
            reconnects: AtomicU64::new(0),
            received: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_state(&self, state: SubscriberState) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).0 = state;
    }

    pub(crate) fn set_error(&self, error: String) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0 = SubscriberState::Reconnecting;
        inner.1 = Some(error);
    }

    pub(crate) fn snapshot(&self) -> BusStatus {
        let (state, last_error) = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        BusStatus {
            bus: "redis",
            state,
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error,
            received: self.received.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

/// Lets one warning through per interval and says how many were held back since.
pub(crate) struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_since_last)` when this event may be logged.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_log_line_per_interval_with_the_suppressed_count() {
        let mut log = RateLimitedLog::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.allow(start), Some(0));
        assert_eq!(log.allow(start + Duration::from_secs(1)), None);
        assert_eq!(log.allow(start + Duration::from_secs(2)), None);
        assert_eq!(log.allow(start + Duration::from_secs(11)), Some(2));
    }
}
