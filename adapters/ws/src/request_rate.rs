//! The limit on a connection's `subscribe`/`unsubscribe` requests: at most
//! [`MAX_REQUESTS_PER_SECOND`] carried out in any one-second span, wherever it starts
//! (PROTOCOL.md). Each request can move the client between groups and take a snapshot under the
//! registry's lock, so a client cannot make the hot path wait by sending them without end.
//!
//! A window that restarts each second would let twice the limit through across its edge (20
//! at 0.9 s and 20 more at 1.05 s): the times of the requests carried out in the last second are
//! kept instead, at most the limit of them, and none for a client that sends no request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most requests a connection may have carried out in any one second.
pub(crate) const MAX_REQUESTS_PER_SECOND: usize = 20;

const SPAN: Duration = Duration::from_secs(1);

/// When each request carried out within the last second was.
#[derive(Debug, Default)]
pub(crate) struct RequestRate {
    carried_out: VecDeque<Instant>,
}

impl RequestRate {
    /// Whether a request that came at `now` may be carried out (then it counts from `now`).
    /// `now` never goes back: it is read from a monotonic clock for each request in turn.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        while self
            .carried_out
            .front()
            .is_some_and(|&at| now.duration_since(at) >= SPAN)
        {
            self.carried_out.pop_front();
        }
        if self.carried_out.len() >= MAX_REQUESTS_PER_SECOND {
            return false;
        }
        self.carried_out.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn twice_the_limit_across_a_second_boundary_is_refused() {
        let start = Instant::now();
        let mut rate = RequestRate::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let first: usize = (0..20).filter(|_| rate.allow(at(900))).count();
        let second: usize = (0..20).filter(|_| rate.allow(at(1050))).count();
        assert_eq!((first, second), (20, 0));
        // A second after the first twenty, there is room again.
        assert!(rate.allow(at(1900)));
    }

    #[test]
    fn a_client_that_sends_no_request_holds_no_memory() {
        assert_eq!(RequestRate::default().carried_out.capacity(), 0);
    }

    proptest! {
        /// Against the rule itself: a request is carried out exactly when fewer than the limit
        /// of those carried out before it came less than a second earlier; and no one-second
        /// span, wherever it starts, holds more than the limit.
        #[test]
        fn decides_as_the_rule_says(gaps in prop::collection::vec(0u64..120, 1..400)) {
            let start = Instant::now();
            let mut rate = RequestRate::default();
            let mut carried: Vec<u64> = Vec::new();
            let mut now = 0;
            for gap in gaps {
                now += gap;
                let within = carried.iter().filter(|&&at| now - at < 1000).count();
                let expected = within < MAX_REQUESTS_PER_SECOND;
                prop_assert_eq!(rate.allow(start + Duration::from_millis(now)), expected, "at {} ms", now);
                if expected {
                    carried.push(now);
                }
            }
            for (i, &from) in carried.iter().enumerate() {
                let in_span = carried[i..].iter().take_while(|&&at| at - from < 1000).count();
                prop_assert!(in_span <= MAX_REQUESTS_PER_SECOND, "{} from {} ms", in_span, from);
            }
        }
    }
}
