//! Metrics that arrive late: after a message of the same publisher stamped well after them.
//!
//! On a Redis Cluster, `SPUBLISH` answers the publisher before the master has written the
//! message to its subscribers and to the rest of its shard (over the cluster bus). A master
//! frozen in that instant (a VM paused, `docker pause`, a long fork) and let go after its replica
//! was promoted sends the message on then, and the promoted replica hands it to the workers'
//! new sessions seconds late, after newer messages: the only copy, so `copies` cannot tell.
//!
//! What tells it is the publisher's own clock. A worker stamps a message (`published_at_us`)
//! before publishing it and answers 503 when it is not acknowledged within its Redis timeout of
//! the stamp, so Redis runs a message it acknowledged within [`margin`] of its stamp. One Redis node hands messages on in the order it runs them; so if a
//! message of a publisher reaches a worker after one of the same publisher and channel stamped
//! more than [`margin`] later, it did not come the normal way: it is late, and delivering it
//! would put it after newer values. It is dropped and counted (`bus.late`). The publisher's own
//! worker answered it 503 (a publish is answered 202 only once the worker's own subscriber has
//! handed it to its clients; see `echoes`), so nothing acknowledged is lost at its clients.
//!
//! Only numbered metrics (`seq` and `published_at_us` not 0) are checked; alerts go by the
//! alert log's order. An outside message cannot silence a real publisher: a stamp further ahead
//! of this worker's clock than [`FUTURE`] is never taken as a publisher's newest, and a newest
//! stamp counts for [`HORIZON`] only. Workers' clocks must agree within `margin - FUTURE`
//! (`--redis-timeout`, 2 s by default): a worker whose clock is further behind than that could
//! have its metrics taken for late ones for a while after an outside message stamped "now".
//!
//! Memory is bounded: at most [`CAPACITY`] publishers (channel and origin) are followed; one
//! more is followed only once an older one has not been heard from for the horizon.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fanout_domain::Channel;

/// How long a publisher's newest stamp is held against the messages that follow it.
pub(crate) const HORIZON: Duration = Duration::from_secs(60);

/// How far ahead of this worker's clock a stamp may be and still count as a publisher's newest.
pub(crate) const FUTURE: Duration = Duration::from_secs(1);

/// Most publishers followed.
pub(crate) const CAPACITY: usize = 4_096;

/// How much older than a publisher's newest stamp a message must be to be late: the longest
/// from its stamp to Redis running a publish a worker acknowledges (the worker answers within
/// `--redis-timeout` of the stamp), and a second for clocks read apart.
pub(crate) fn margin(redis_timeout: Duration) -> Duration {
    redis_timeout + Duration::from_secs(1)
}

#[derive(Clone, Copy)]
struct Newest {
    stamp_us: u64,
    /// When it arrived.
    at: Instant,
}

/// Each publisher's newest stamp seen lately, per channel.
pub(crate) struct LateMessages {
    /// Per channel, per origin.
    newest: HashMap<Channel, HashMap<Box<str>, Newest>>,
    margin_us: u64,
    capacity: usize,
}

impl LateMessages {
    pub(crate) fn new(margin: Duration, capacity: usize) -> Self {
        Self {
            newest: HashMap::new(),
            margin_us: u64::try_from(margin.as_micros()).unwrap_or(u64::MAX),
            capacity,
        }
    }

    /// Whether the message `origin` stamped `stamp_us` on `channel` is late; `Err` carries how
    /// much older than that publisher's newest stamp it is. `now_us` is this worker's clock,
    /// `now` the arrival instant. A publisher's newest stamp is the highest of its messages that
    /// were not late, since it was last silent (nothing that was not late) for the horizon.
    pub(crate) fn check(
        &mut self,
        channel: Channel,
        origin: &str,
        stamp_us: u64,
        now_us: u64,
        now: Instant,
    ) -> Result<(), Duration> {
        let future_us = u64::try_from(FUTURE.as_micros()).unwrap_or(u64::MAX);
        if stamp_us > now_us.saturating_add(future_us) {
            // Never late (nothing newer can have been taken), and never taken as the newest.
            return Ok(());
        }
        if let Some(newest) = self
            .newest
            .get_mut(&channel)
            .and_then(|origins| origins.get_mut(origin))
        {
            if now.saturating_duration_since(newest.at) < HORIZON {
                if stamp_us.saturating_add(self.margin_us) < newest.stamp_us {
                    return Err(Duration::from_micros(newest.stamp_us - stamp_us));
                }
                newest.stamp_us = newest.stamp_us.max(stamp_us);
                newest.at = now;
                return Ok(());
            }
            *newest = Newest { stamp_us, at: now };
            return Ok(());
        }
        if self.followed() >= self.capacity {
            for origins in self.newest.values_mut() {
                origins.retain(|_, newest| now.saturating_duration_since(newest.at) < HORIZON);
            }
            if self.followed() >= self.capacity {
                return Ok(());
            }
        }
        self.newest
            .entry(channel)
            .or_default()
            .insert(Box::from(origin), Newest { stamp_us, at: now });
        Ok(())
    }

    /// Publishers followed, over every channel.
    fn followed(&self) -> usize {
        self.newest.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const M: Channel = Channel::Metrics;
    const NOW_US: u64 = 1_800_000_000_000_000;
    const SECOND: u64 = 1_000_000;

    fn late() -> LateMessages {
        LateMessages::new(Duration::from_secs(3), CAPACITY)
    }

    #[test]
    fn a_message_stamped_well_before_one_already_delivered_is_late() {
        let mut late = late();
        let now = Instant::now();
        assert_eq!(late.check(M, "w1", NOW_US, NOW_US, now), Ok(()));
        assert_eq!(
            late.check(M, "w1", NOW_US - 4 * SECOND, NOW_US, now),
            Err(Duration::from_secs(4))
        );
        assert_eq!(
            late.check(M, "w1", NOW_US - 2 * SECOND, NOW_US, now),
            Ok(()),
            "within the margin: concurrent publishes of one worker may swap places"
        );
        assert_eq!(
            late.check(M, "w2", NOW_US - 4 * SECOND, NOW_US, now),
            Ok(()),
            "another publisher"
        );
        assert_eq!(
            late.check(Channel::Alerts, "w1", NOW_US - 4 * SECOND, NOW_US, now),
            Ok(()),
            "another channel"
        );
    }

    #[test]
    fn a_stamp_from_the_future_never_silences_a_publisher() {
        let mut late = late();
        let now = Instant::now();
        assert_eq!(
            late.check(M, "w1", NOW_US + 3_600 * SECOND, NOW_US, now),
            Ok(())
        );
        assert_eq!(late.check(M, "w1", NOW_US, NOW_US, now), Ok(()));
        assert_eq!(
            late.check(M, "w1", NOW_US + SECOND, NOW_US, now),
            Ok(()),
            "within FUTURE it counts"
        );
        assert!(late
            .check(M, "w1", NOW_US - 3 * SECOND, NOW_US, now)
            .is_err());
    }

    #[test]
    fn a_newest_stamp_counts_while_its_publisher_is_heard_from() {
        let mut late = late();
        let now = Instant::now();
        assert_eq!(late.check(M, "w1", NOW_US, NOW_US, now), Ok(()));
        let later = now + HORIZON / 2;
        assert_eq!(late.check(M, "w1", NOW_US - SECOND, NOW_US, later), Ok(()));
        let later = later + HORIZON / 2;
        assert!(
            late.check(M, "w1", NOW_US - 10 * SECOND, NOW_US, later)
                .is_err(),
            "heard from within the horizon: the newest stamp still counts"
        );
        let silent = later + HORIZON;
        assert_eq!(
            late.check(M, "w1", NOW_US - 10 * SECOND, NOW_US, silent),
            Ok(())
        );
        assert!(
            late.check(M, "w1", NOW_US - 20 * SECOND, NOW_US, silent)
                .is_err(),
            "after a silence the first message after it is the newest"
        );
    }

    #[test]
    fn beyond_the_capacity_a_new_publisher_is_not_followed_until_an_old_one_expires() {
        let mut late = LateMessages::new(Duration::from_secs(3), 2);
        let now = Instant::now();
        for origin in ["a", "b", "c"] {
            assert_eq!(late.check(M, origin, NOW_US, NOW_US, now), Ok(()));
        }
        assert_eq!(
            late.check(M, "c", 0, NOW_US, now),
            Ok(()),
            "not followed: never taken for late"
        );
        assert!(late.check(M, "a", 0, NOW_US, now).is_err());
        let after = now + HORIZON;
        assert_eq!(late.check(M, "c", NOW_US, NOW_US, after), Ok(()));
        assert!(
            late.check(M, "c", 0, NOW_US, after).is_err(),
            "followed now"
        );
    }

    /// One step: a message of one of two publishers, stamped some seconds around now, arriving
    /// some seconds after the previous one.
    fn steps() -> impl Strategy<Value = Vec<(bool, i8, u8)>> {
        proptest::collection::vec((any::<bool>(), -12i8..12, 0u8..40), 1..100)
    }

    proptest! {
        /// Against a reference that keeps every arrival that was not late and reads the
        /// publisher's newest stamp off them: the highest stamp of its run of arrivals, each
        /// less than the horizon after the one before, the last less than the horizon ago.
        #[test]
        fn matches_a_reference_model(steps in steps()) {
            let margin = Duration::from_secs(3);
            let start = Instant::now();
            let mut late = LateMessages::new(margin, CAPACITY);
            // (publisher, stamp, arrival)
            let mut kept: Vec<(bool, u64, Duration)> = Vec::new();
            let mut elapsed = Duration::ZERO;
            for (publisher, offset_s, after_s) in steps {
                elapsed += Duration::from_secs(u64::from(after_s));
                let now_us = NOW_US + u64::try_from(elapsed.as_micros()).unwrap_or(0);
                let stamp_us = now_us.saturating_add_signed(i64::from(offset_s) * 1_000_000);
                let future = stamp_us > now_us + SECOND;
                let mut newest = None;
                let mut next_at = elapsed;
                for &(_, stamp, at) in kept.iter().rev().filter(|k| k.0 == publisher) {
                    if next_at - at >= HORIZON {
                        break;
                    }
                    newest = newest.max(Some(stamp));
                    next_at = at;
                }
                let expected_late =
                    !future && newest.is_some_and(|newest| stamp_us + 3 * SECOND < newest);
                let origin = if publisher { "a" } else { "b" };
                let got = late.check(M, origin, stamp_us, now_us, start + elapsed);
                prop_assert_eq!(got.is_err(), expected_late);
                if !expected_late && !future {
                    kept.push((publisher, stamp_us, elapsed));
                }
            }
        }
    }
}
