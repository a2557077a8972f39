//! Jittered exponential backoff between reconnection attempts.
//!
//! The ceiling doubles with each failed attempt, from `initial` up to `max`; each delay is drawn
//! uniformly from the upper half of the ceiling ("equal jitter"), so clients that lost the same
//! worker at the same instant spread out instead of returning together, and yet no delay is
//! shorter than half the ceiling.

use std::time::Duration;

use rand::Rng;

/// The delays before successive reconnection attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// From `initial` (the ceiling after the first failure), doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        let half = ceiling_us / 2;
        Duration::from_micros(half + rng.random_range(0..=ceiling_us - half))
    }

    /// After a connection that worked: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn ceiling(&self) -> Duration {
        // 2^failures, saturating long before the shift could overflow.
        let factor = 1u32 << self.failures.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    /// 100 ms, doubling up to 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn delays_stay_within_the_upper_half_of_a_doubling_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(INITIAL, MAX);
        for ceiling_ms in [100, 200, 400, 800, 1600, 2000, 2000, 2000] {
            let delay = backoff.next_delay(&mut rng);
            let ceiling = Duration::from_millis(ceiling_ms);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }

    #[test]
    fn delays_are_jittered() {
        let mut rng = StdRng::seed_from_u64(11);
        let delays: Vec<Duration> = (0..20)
            .map(|_| Backoff::new(INITIAL, MAX).next_delay(&mut rng))
            .collect();
        assert!(
            delays.iter().any(|delay| *delay != delays[0]),
            "twenty first delays were all {:?}",
            delays[0]
        );
    }

    #[test]
    fn reset_starts_from_the_initial_ceiling_again() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(INITIAL, MAX);
        for _ in 0..10 {
            backoff.next_delay(&mut rng);
        }
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= INITIAL);
    }

    #[test]
    fn a_thousand_failures_never_exceed_the_cap() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut backoff = Backoff::new(INITIAL, MAX);
        assert!((0..1000).all(|_| backoff.next_delay(&mut rng) <= MAX));
    }
}
