//! Second copies of one published message, which Redis can deliver to a worker.
//!
//! On a Redis Cluster, `SPUBLISH` hands a message to the master's own subscribers at once and
//! to the other nodes of its shard over the cluster bus a moment later. A master frozen in that
//! moment (a VM paused, `docker pause`, a long fork) and let go after its replica was promoted
//! sends the message on then, and the promoted replica hands it to its subscribers: the same
//! workers, again, seconds late and after newer messages.
//!
//! A message a publisher numbered and stamped (`seq` and `published_at_us` not 0: every
//! worker's publishes) is unique by its bytes, so a second copy of the very same bytes on the
//! same channel is a copy. Only copies are dropped: a message differing in any byte is
//! delivered, so no other message can ever stop one from being delivered, and outside messages
//! without a `seq` or a time (which may repeat on purpose) are never checked.
//!
//! The memory is bounded twice: what arrived in the last [`WINDOW`], at most [`CAPACITY`]
//! messages. A copy later than both is delivered (and reaches clients out of order).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use fanout_domain::Channel;

/// How long a message's fingerprint is kept.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Most fingerprints kept (16 B each, twice: about 4 MiB at most with the set's overhead).
pub(crate) const CAPACITY: usize = 65_536;

/// The fingerprints of the messages that arrived recently.
pub(crate) struct RecentMessages {
    /// Two independent keyed hashes make a 128-bit fingerprint: a false match is out of reach
    /// by chance, and the keys are this process's own, so it cannot be aimed at.
    keys: (RandomState, RandomState),
    seen: HashSet<u128>,
    arrivals: VecDeque<(Instant, u128)>,
    window: Duration,
    capacity: usize,
}

impl RecentMessages {
    pub(crate) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            seen: HashSet::new(),
            arrivals: VecDeque::new(),
            window,
            capacity,
        }
    }

    /// Whether this is the first copy of `payload` on `channel` within the bounds, remembering
    /// it when it is.
    pub(crate) fn first_copy(&mut self, channel: Channel, payload: &[u8], now: Instant) -> bool {
        while let Some(&(at, fingerprint)) = self.arrivals.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.forget_oldest(fingerprint);
        }
        let fingerprint = self.fingerprint(channel, payload);
        if self.seen.contains(&fingerprint) {
            return false;
        }
        if self.arrivals.len() >= self.capacity {
            if let Some(&(_, oldest)) = self.arrivals.front() {
                self.forget_oldest(oldest);
            }
        }
        self.seen.insert(fingerprint);
        self.arrivals.push_back((now, fingerprint));
        true
    }

    fn forget_oldest(&mut self, fingerprint: u128) {
        self.arrivals.pop_front();
        self.seen.remove(&fingerprint);
    }

    fn fingerprint(&self, channel: Channel, payload: &[u8]) -> u128 {
        let one = |key: &RandomState| key.hash_one((channel.name(), payload));
        (u128::from(one(&self.keys.0)) << 64) | u128::from(one(&self.keys.1))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const M: Channel = Channel::Metrics;

    #[test]
    fn a_second_copy_is_caught_and_a_different_message_is_not() {
        let mut recent = RecentMessages::new(WINDOW, CAPACITY);
        let now = Instant::now();
        assert!(recent.first_copy(M, b"one", now));
        assert!(recent.first_copy(M, b"two", now));
        assert!(!recent.first_copy(M, b"one", now));
        assert!(!recent.first_copy(M, b"one", now), "a third copy too");
        assert!(
            recent.first_copy(Channel::Alerts, b"one", now),
            "another channel"
        );
    }

    #[test]
    fn a_copy_after_the_window_or_beyond_the_capacity_is_not_caught() {
        let now = Instant::now();
        let mut recent = RecentMessages::new(Duration::from_secs(1), 100);
        assert!(recent.first_copy(M, b"old", now));
        assert!(recent.first_copy(M, b"old", now + Duration::from_secs(1)));
        let mut recent = RecentMessages::new(WINDOW, 2);
        for message in [&b"a"[..], b"b", b"c"] {
            assert!(recent.first_copy(M, message, now));
        }
        assert!(recent.first_copy(M, b"a", now), "the oldest made room");
        assert!(!recent.first_copy(M, b"a", now));
        assert!(!recent.first_copy(M, b"c", now), "c is among the last two");
    }

    /// One step of the model test: a message (one of a few, so copies are frequent) arrives
    /// after some time.
    fn arrivals() -> impl Strategy<Value = Vec<(u8, u16)>> {
        proptest::collection::vec((0u8..6, 0u16..400), 1..200)
    }

    proptest! {
        /// Against a naive reference: a message is a copy exactly when the same bytes arrived
        /// within the window and among the last `capacity` first copies.
        #[test]
        fn matches_a_reference_model(steps in arrivals(), capacity in 1usize..8) {
            let window = Duration::from_millis(1_000);
            let start = Instant::now();
            let mut recent = RecentMessages::new(window, capacity);
            let mut kept: Vec<(Duration, u8)> = Vec::new();
            let mut elapsed = Duration::ZERO;
            for (message, after_ms) in steps {
                elapsed += Duration::from_millis(u64::from(after_ms));
                kept.retain(|(at, _)| elapsed - *at < window);
                let expected = !kept.iter().any(|(_, m)| *m == message);
                if expected {
                    if kept.len() >= capacity {
                        kept.remove(0);
                    }
                    kept.push((elapsed, message));
                }
                prop_assert_eq!(recent.first_copy(M, &[message], start + elapsed), expected);
            }
        }
    }
}
