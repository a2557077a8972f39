//! The publish quota of a worker without Redis: each credential's GCRA state in this process.
//!
//! The arithmetic is the domain's [`PublishRate`], the same the Redis quota runs in its script,
//! so `--publish-rate` means the same on both buses; only where the count lives differs. Here it
//! lives in one worker's memory: with `--bus memory` every worker is on its own anyway.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use fanout_domain::{PublishQuota, PublishRate, QuotaDecision, QuotaError, RateOutcome};

/// Credentials tracked before the first sweep of the idle ones.
const FIRST_SWEEP_AT: usize = 1024;

/// Each credential's theoretical arrival time, on a monotonic clock local to this quota.
pub struct MemoryQuota {
    rate: PublishRate,
    started: Instant,
    /// Held for one decision: no await, no I/O.
    state: Mutex<QuotaState>,
}

struct QuotaState {
    /// Microseconds since `started`.
    tats: HashMap<String, u64>,
    /// When the map reaches this size, credentials whose TAT is past (as good as never seen) are
    /// swept out; then the threshold doubles from what is left, so sweeps stay amortised O(1)
    /// and the map holds about twice the credentials active within the last burst.
    sweep_at: usize,
}

impl MemoryQuota {
    /// `rate` publishes per second per credential (a burst of `rate`), counted in this process
    /// only: each worker keeps its own count.
    pub fn new(rate: NonZeroU32) -> Self {
        Self {
            rate: PublishRate::per_second(rate),
            started: Instant::now(),
            state: Mutex::new(QuotaState {
                tats: HashMap::new(),
                sweep_at: FIRST_SWEEP_AT,
            }),
        }
    }

    fn decide(&self, credential: &str) -> QuotaDecision {
        let now_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Every update is one insert: a poisoned lock still holds consistent state.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = self
            .rate
            .decide(state.tats.get(credential).copied(), now_us);
        if let RateOutcome::Allowed { tat_us } = outcome {
            if let Some(tat) = state.tats.get_mut(credential) {
                *tat = tat_us;
            } else {
                if state.tats.len() >= state.sweep_at {
                    state.tats.retain(|_, tat| *tat > now_us);
                    state.sweep_at = (state.tats.len() * 2).max(FIRST_SWEEP_AT);
                }
                state.tats.insert(credential.to_owned(), tat_us);
            }
        }
        outcome.decision()
    }
}

#[async_trait]
impl PublishQuota for MemoryQuota {
    async fn check(&self, credential: &str) -> Result<QuotaDecision, QuotaError> {
        Ok(self.decide(credential))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_credential_has_its_own_burst() {
        let quota = MemoryQuota::new(NonZeroU32::MIN.saturating_add(2));
        let allowed = |name| {
            (0..10)
                .filter(|_| quota.decide(name) == QuotaDecision::Allowed)
                .count()
        };
        assert_eq!(allowed("a"), 3);
        assert_eq!(allowed("b"), 3);
        assert!(matches!(
            quota.decide("a"),
            QuotaDecision::Limited { retry_after } if !retry_after.is_zero()
        ));
    }

    #[test]
    fn idle_credentials_are_swept_once_the_map_is_large() {
        let quota = MemoryQuota::new(NonZeroU32::MAX);
        for n in 0..FIRST_SWEEP_AT * 3 {
            assert_eq!(quota.decide(&format!("c{n}")), QuotaDecision::Allowed);
        }
        let state = quota.state.lock().unwrap_or_else(PoisonError::into_inner);
        // At u32::MAX per second a TAT is 1 µs ahead: nearly every earlier credential is idle.
        assert!(
            state.tats.len() < FIRST_SWEEP_AT * 2,
            "{}",
            state.tats.len()
        );
    }
}
