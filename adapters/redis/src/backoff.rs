//! Reconnect delays: exponential, capped, with full jitter so workers that lost Redis together do
//! not reconnect in lockstep.

use std::time::Duration;

use rand::Rng;

/// The delays between reconnect attempts: a ceiling doubling from `initial` up to `max`, and a
/// random delay in the top half of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay (the delay itself is between half of it and all of it).
    pub initial: Duration,
    /// The largest ceiling: no delay is ever longer.
    pub max: Duration,
}

impl Backoff {
    /// Delays doubling from `initial`, never longer than `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The ceiling for the `attempt`-th retry (0-based): `initial * 2^attempt`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A random delay between half the ceiling and the ceiling: jittered, yet never near zero,
    /// so a flapping server is not hammered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_and_stops_at_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings: Vec<u128> = (0..8).map(|a| backoff.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5));
        for attempt in 0..10 {
            let delay = backoff.delay(attempt);
            assert!(delay >= backoff.ceiling(attempt) / 2 && delay <= backoff.ceiling(attempt));
        }
    }
}
