//! The publish quota (`--publish-rate`): how often one credential may publish, and the port that
//! keeps the count where every worker sees it.
//!
//! The rule is the generic cell rate algorithm (GCRA): a credential may publish `rate` times at
//! once (the burst), then once every `1/rate` seconds. Its whole state is one number per
//! credential, the *theoretical arrival time* (TAT), which lets an adapter keep it in one Redis
//! key updated by one atomic script, so that the quota means the same whichever worker a load
//! balancer picks. [`PublishRate`] is the arithmetic, pure (time comes in as an argument); the
//! adapters own the state and the clock.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;

/// What the quota says about one more publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaDecision {
    /// Within the quota: the publish may go ahead, and it has been counted.
    Allowed,
    /// Over the quota: the earliest a publish can be allowed again is after this long.
    Limited {
        /// How long to wait; never zero (the HTTP API rounds it up to whole seconds for
        /// `Retry-After`).
        retry_after: Duration,
    },
}

/// Why the quota could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QuotaError {
    /// Where the quota is kept cannot answer now (e.g. Redis is down); retrying later may work.
    #[error("publish quota unavailable: {reason}")]
    Unavailable {
        /// What failed, for the client's answer.
        reason: String,
        /// The error behind it (e.g. the Redis error), for logs.
        #[source]
        cause: Option<crate::Cause>,
    },
}

impl QuotaError {
    /// Unavailable because of `cause`, which stays the error's `source`.
    pub fn caused_by(
        reason: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            cause: Some(std::sync::Arc::new(cause)),
        }
    }

    /// Unavailable for `reason`, with no underlying error.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            cause: None,
        }
    }
}

/// Counts the publishes of each credential against `--publish-rate`.
#[async_trait]
pub trait PublishQuota: Send + Sync + 'static {
    /// Counts one publish by `credential` (a token's subject) if the quota allows it.
    async fn check(&self, credential: &str) -> Result<QuotaDecision, QuotaError>;
}

/// `rate` publishes per second with a burst of `rate`, as GCRA parameters in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRate {
    /// Time one publish uses up: `1/rate` seconds, rounded up so the rate is never exceeded.
    interval_us: u64,
    /// How far ahead of now the TAT may run after an allowed publish: `rate` intervals.
    burst_us: u64,
}

/// What [`PublishRate::decide`] decided, with the state to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    /// Allowed: store `tat_us` as the credential's new TAT.
    Allowed {
        /// The new TAT, in microseconds on the same clock as the `now_us` it was decided at.
        tat_us: u64,
    },
    /// Refused: the TAT is unchanged; allowed again `retry_after_us` from now.
    Limited {
        /// Microseconds from `now_us` until one more publish would be allowed; above 0.
        retry_after_us: u64,
    },
}

impl PublishRate {
    /// `rate` publishes per second, `rate` of them at once after a quiet second. The interval is
    /// rounded up to whole microseconds, so the rate is never exceeded.
    pub fn per_second(rate: NonZeroU32) -> Self {
        let interval_us = 1_000_000_u64.div_ceil(u64::from(rate.get()));
        Self {
            interval_us,
            burst_us: interval_us * u64::from(rate.get()),
        }
    }

    /// Microseconds one publish uses up.
    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// Microseconds of credit a credential may hold: the burst.
    pub fn burst_us(&self) -> u64 {
        self.burst_us
    }

    /// Decides one publish at `now_us`, given the credential's stored TAT (`None`: never
    /// published, or its TAT expired). A TAT in the past counts as now: idle time earns no more
    /// than the burst.
    pub fn decide(&self, tat_us: Option<u64>, now_us: u64) -> RateOutcome {
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        let new_tat = tat.saturating_add(self.interval_us);
        let ahead = new_tat - now_us;
        if ahead <= self.burst_us {
            RateOutcome::Allowed { tat_us: new_tat }
        } else {
            RateOutcome::Limited {
                retry_after_us: ahead - self.burst_us,
            }
        }
    }
}

impl RateOutcome {
    /// What the publisher is told, without the state to store.
    pub fn decision(&self) -> QuotaDecision {
        match *self {
            RateOutcome::Allowed { .. } => QuotaDecision::Allowed,
            RateOutcome::Limited { retry_after_us } => QuotaDecision::Limited {
                retry_after: Duration::from_micros(retry_after_us),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32) -> PublishRate {
        PublishRate::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
    }

    /// Runs `times` publishes at `now_us` from `tat`; returns how many were allowed and the TAT.
    fn publish_at(rate: &PublishRate, tat: &mut Option<u64>, now_us: u64, times: u32) -> u32 {
        let mut allowed = 0;
        for _ in 0..times {
            if let RateOutcome::Allowed { tat_us } = rate.decide(*tat, now_us) {
                *tat = Some(tat_us);
                allowed += 1;
            }
        }
        allowed
    }

    #[test]
    fn a_new_credential_gets_the_burst_at_once_and_no_more() {
        let five = rate(5);
        let mut tat = None;
        assert_eq!(publish_at(&five, &mut tat, 1_000_000, 20), 5);
    }

    #[test]
    fn after_the_burst_one_publish_per_interval() {
        let five = rate(5);
        let mut tat = None;
        let start = 10_000_000;
        publish_at(&five, &mut tat, start, 5);
        assert_eq!(
            five.decide(tat, start),
            RateOutcome::Limited {
                retry_after_us: 200_000
            }
        );
        assert_eq!(publish_at(&five, &mut tat, start + 199_999, 1), 0);
        assert_eq!(publish_at(&five, &mut tat, start + 200_000, 3), 1);
        // One second after the burst: 5 more intervals, so 5 publishes in all since the burst.
        assert_eq!(publish_at(&five, &mut tat, start + 1_000_000, 10), 4);
    }

    #[test]
    fn idle_time_earns_no_more_than_the_burst() {
        let five = rate(5);
        let mut tat = None;
        publish_at(&five, &mut tat, 0, 5);
        assert_eq!(publish_at(&five, &mut tat, 3_600_000_000, 20), 5);
    }

    #[test]
    fn the_retry_after_is_when_the_next_publish_is_allowed() {
        let two = rate(2);
        let mut tat = None;
        publish_at(&two, &mut tat, 0, 2);
        let RateOutcome::Limited { retry_after_us } = two.decide(tat, 100_000) else {
            panic!("the third publish at once must be limited");
        };
        assert_eq!(retry_after_us, 400_000);
        assert_eq!(
            publish_at(&two, &mut tat, 100_000 + retry_after_us - 1, 1),
            0
        );
        assert_eq!(publish_at(&two, &mut tat, 100_000 + retry_after_us, 1), 1);
    }

    #[test]
    fn the_interval_rounds_up_so_the_rate_is_never_exceeded() {
        let three = rate(3);
        assert_eq!(three.interval_us(), 333_334);
        assert!(three.interval_us() * 3 >= 1_000_000);
        let fastest = rate(u32::MAX);
        assert_eq!(fastest.interval_us(), 1);
    }

    #[test]
    fn over_any_window_at_most_burst_plus_rate_times_elapsed() {
        // Publishing as fast as possible (every 1 ms) for 3 s.
        let five = rate(5);
        let mut tat = None;
        let mut allowed = 0;
        for millisecond in 0..3000_u64 {
            allowed += publish_at(&five, &mut tat, millisecond * 1000, 1);
        }
        assert!(allowed <= 5 + 5 * 3, "{allowed}");
        assert!(allowed >= 5 + 5 * 3 - 1, "{allowed}");
    }

    #[test]
    fn limited_maps_to_a_retry_after_duration() {
        let outcome = RateOutcome::Limited {
            retry_after_us: 1_500_000,
        };
        assert_eq!(
            outcome.decision(),
            QuotaDecision::Limited {
                retry_after: Duration::from_millis(1500)
            }
        );
        assert_eq!(
            RateOutcome::Allowed { tat_us: 1 }.decision(),
            QuotaDecision::Allowed
        );
    }
}
