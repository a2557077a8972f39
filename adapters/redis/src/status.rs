//! The subscriber's shared status, written by the listener task and read by health reports.
//!
//! Over 400 lines on purpose: one view of the subscriber's state that the listeners (single Redis
//! and Cluster) and the publisher share, and the unit tests of its transitions, kept together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fanout_domain::{BusStatus, SubscriberState};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::copies::{self, RecentMessages};
use crate::echoes::Echoes;
use crate::late::{self, LateMessages};

/// Redis Cluster: where one sharded channel is live (session 0: it is not).
#[derive(Clone, Debug, Default)]
pub(crate) struct ChannelLive {
    session: u64,
    master: Option<Arc<str>>,
}

/// The one view of the bus's health that the publisher and the subscriber of a worker share:
/// the publisher refuses while the subscriber is reconnecting (so a `202` means this worker's
/// clients will get the message), and wakes the subscriber when it finds Redis answering first.
pub(crate) struct SharedStatus {
    /// Changes a few times per outage; waiters (the publisher, clients waiting for `hello`)
    /// watch it.
    state: watch::Sender<SubscriberState>,
    last_error: Mutex<Option<String>>,
    /// The master the subscriber last subscribed on (`HOST:PORT`).
    master: Mutex<Option<String>>,
    /// Subscriber sessions that reached `subscribed` so far: a publisher that sees the same
    /// number, and `subscribed`, before and after its PUBLISH published while one session was
    /// live throughout.
    sessions: AtomicU64,
    /// See [`SharedStatus::idles`].
    idles: AtomicU64,
    /// Held for a listener's changes of the state and for the end of its subscription, so that
    /// a listener dropped meanwhile (its token cancelled under this lock) changes nothing after:
    /// a late `subscribed` of its would look like a new session to a publisher in flight.
    transitions: Mutex<()>,
    /// Redis Cluster: per sharded channel (see `ClusterChannels`), the number of the node
    /// session it is live on, 0 while it is not live. Empty without Cluster.
    channels: watch::Sender<Vec<ChannelLive>>,
    /// Publisher → subscriber: Redis answered; stop waiting out the backoff.
    pub(crate) redis_answered: Notify,
    /// Recoveries: subscribed again after losing the connection.
    pub(crate) reconnects: AtomicU64,
    /// Connection attempts that failed.
    pub(crate) failed_attempts: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) malformed: AtomicU64,
    /// Catch-ups that found alerts trimmed from the log, or the log reset.
    pub(crate) lost: AtomicU64,
    /// Live alerts whose id the log did not assign.
    pub(crate) foreign_ids: AtomicU64,
    /// Second copies of a message, dropped (see `copies`).
    pub(crate) duplicates: AtomicU64,
    /// What every session of this worker received lately: a copy can arrive on another session
    /// (a Cluster node's) than the first.
    pub(crate) recent: Mutex<RecentMessages>,
    /// Metrics that arrived after a newer one of the same publisher, dropped (see `late`).
    pub(crate) late: AtomicU64,
    /// Each publisher's newest stamp, for every session of this worker.
    pub(crate) newest: Mutex<LateMessages>,
    /// This worker's publishes waiting for their own subscriber to hand them on.
    pub(crate) echoes: Arc<Echoes>,
}

impl SharedStatus {
    /// `redis_timeout` bounds every publish: it sets how late a message must be to be dropped.
    pub(crate) fn new(redis_timeout: Duration) -> Self {
        Self {
            state: watch::Sender::new(SubscriberState::Idle),
            last_error: Mutex::new(None),
            master: Mutex::new(None),
            sessions: AtomicU64::new(0),
            idles: AtomicU64::new(0),
            transitions: Mutex::new(()),
            channels: watch::Sender::new(Vec::new()),
            redis_answered: Notify::new(),
            reconnects: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            received: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            foreign_ids: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            recent: Mutex::new(RecentMessages::new(copies::WINDOW, copies::CAPACITY)),
            late: AtomicU64::new(0),
            newest: Mutex::new(LateMessages::new(
                late::margin(redis_timeout),
                late::CAPACITY,
            )),
            echoes: Arc::new(Echoes::default()),
        }
    }

    /// One more connection attempt failed; the total so far.
    pub(crate) fn attempt_failed(&self) -> u64 {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn state(&self) -> SubscriberState {
        *self.state.borrow()
    }

    pub(crate) fn set_state(&self, state: SubscriberState) {
        self.state.send_replace(state);
        // Counted after the state is `idle`: a publisher that reads the count and then sees a
        // live session knows that session came after this idle spell.
        if state == SubscriberState::Idle {
            self.idles.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Makes `change` as the listener that `cancel` stops, unless its subscription was dropped
    /// (see `transitions`); whether it was made.
    pub(crate) fn change_as_listener(
        &self,
        cancel: &CancellationToken,
        change: impl FnOnce(&Self),
    ) -> bool {
        let _guard = self
            .transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cancel.is_cancelled() {
            return false;
        }
        change(self);
        true
    }

    /// The subscription is dropped (its last client left): its listener is stopped and the
    /// subscriber is idle, in one step for [`SharedStatus::change_as_listener`].
    pub(crate) fn end_subscription(&self, cancel: &CancellationToken) {
        let _guard = self
            .transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cancel.cancel();
        self.set_state(SubscriberState::Idle);
        // Redis Cluster: no channel is live on a dropped subscription's sessions; a publish that
        // took one for live would see the next subscription's session as a change. Cleared after
        // the idle spell is counted: a publish woken by the clearing sees the count changed.
        self.channels.send_if_modified(|live| {
            let was_live = live.iter().any(|channel| channel.session != 0);
            live.fill(ChannelLive::default());
            was_live
        });
    }

    /// How many times the subscriber went idle (its last client left): a publish that sees this
    /// change had no client of this worker connected all along, so none can miss it.
    pub(crate) fn idles(&self) -> u64 {
        self.idles.load(Ordering::SeqCst)
    }

    pub(crate) fn set_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.set_state(SubscriberState::Reconnecting);
    }

    /// A new session is subscribed.
    pub(crate) fn subscribed_again(&self) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        self.set_state(SubscriberState::Subscribed);
    }

    /// The live session, if one is: its number (see `sessions`).
    pub(crate) fn live_session(&self) -> Option<u64> {
        // The number and the state are two reads: read the number again, so that a new session
        // subscribing in between (number first, then `subscribed`) is not taken for the old one.
        loop {
            let session = self.sessions.load(Ordering::SeqCst);
            let subscribed = self.state() == SubscriberState::Subscribed;
            if self.sessions.load(Ordering::SeqCst) == session {
                return subscribed.then_some(session);
            }
        }
    }

    /// The master the subscriber listens on, while it is subscribed.
    pub(crate) fn live_master(&self) -> Option<String> {
        if self.state() != SubscriberState::Subscribed {
            return None;
        }
        self.master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_master(&self, master: String) {
        *self.master.lock().unwrap_or_else(PoisonError::into_inner) = Some(master);
    }

    /// Redis Cluster: a number for a new node session, never given before.
    pub(crate) fn next_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Redis Cluster: `count` sharded channels, none live yet.
    pub(crate) fn reset_channels(&self, count: usize) {
        self.channels
            .send_replace(vec![ChannelLive::default(); count]);
    }

    /// Redis Cluster: a new node session, number `session`, on `master`, is subscribed to
    /// `channels`. The worker is `subscribed` once every channel is.
    pub(crate) fn channels_live(&self, channels: &[usize], session: u64, master: &Arc<str>) {
        self.channels.send_modify(|live| {
            for &channel in channels {
                live[channel] = ChannelLive {
                    session,
                    master: Some(Arc::clone(master)),
                };
            }
        });
        if self.channels.borrow().iter().all(|live| live.session != 0) {
            self.set_state(SubscriberState::Subscribed);
        }
    }

    /// Redis Cluster: node session `session` ended; its channels are down unless another
    /// session took them over already. The worker is `reconnecting` while any is down.
    pub(crate) fn channels_down(&self, channels: &[usize], session: u64, error: String) {
        let mut changed = false;
        self.channels.send_if_modified(|live| {
            for &channel in channels {
                if live[channel].session == session {
                    live[channel] = ChannelLive::default();
                    changed = true;
                }
            }
            changed
        });
        // A subscriber that went idle (its last client left) stays idle.
        if changed && self.state() != SubscriberState::Idle {
            self.set_error(error);
        }
    }

    /// Redis Cluster: the session a sharded channel is live on, if it is, and its master. None
    /// while the subscriber is idle (a dropped subscription's channels, between its idle spell and
    /// their clearing, are not live).
    pub(crate) fn channel_live(&self, channel: usize) -> Option<(u64, Arc<str>)> {
        if self.state() == SubscriberState::Idle {
            return None;
        }
        let live = self.channels.borrow();
        let live = live.get(channel)?;
        Some((live.session, live.master.clone()?)).filter(|(session, _)| *session != 0)
    }

    /// Redis Cluster: resolves once the sharded channel is live.
    pub(crate) async fn until_channel_live(&self, channel: usize) {
        let mut live = self.channels.subscribe();
        let _ = live
            .wait_for(|live| live.get(channel).is_some_and(|live| live.session != 0))
            .await;
    }

    /// Resolves once subscriber session `session` is no longer the live one (it ended, or
    /// another took its place).
    pub(crate) async fn until_session_leaves(&self, session: u64) {
        let mut state = self.state.subscribe();
        // A new session announces itself with a `subscribed` sent after its number.
        let _ = state
            .wait_for(|state| {
                *state != SubscriberState::Subscribed
                    || self.sessions.load(Ordering::SeqCst) != session
            })
            .await;
    }

    /// Redis Cluster: resolves once the sharded channel is no longer live on `session`.
    pub(crate) async fn until_channel_leaves(&self, channel: usize, session: u64) {
        let mut live = self.channels.subscribe();
        let _ = live
            .wait_for(|live| live.get(channel).is_none_or(|live| live.session != session))
            .await;
    }

    /// Resolves once the state satisfies `ready`.
    pub(crate) async fn until(&self, ready: impl Fn(SubscriberState) -> bool) {
        let mut state = self.state.subscribe();
        // The sender lives as long as `self`, so the wait can only end with `ready` true.
        let _ = state.wait_for(|current| ready(*current)).await;
    }

    pub(crate) fn snapshot(&self) -> BusStatus {
        BusStatus {
            bus: "redis",
            state: self.state(),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            received: self.received.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            foreign_ids: self.foreign_ids.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            master: self
                .master
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
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

    /// A listener whose subscription was dropped changes nothing after, however late it gets
    /// to its `subscribed`: a publisher in flight would take it for a new session (a 503 for a
    /// metric no client could miss, seen once in ~15 runs of
    /// `promises::clients_coming_and_going_never_cost_a_publish_a_503`).
    #[test]
    fn a_dropped_listener_changes_no_state() {
        let status = SharedStatus::new(Duration::from_secs(2));
        let (old, new) = (CancellationToken::new(), CancellationToken::new());
        status.end_subscription(&old);
        assert!(old.is_cancelled());
        assert_eq!(status.state(), SubscriberState::Idle);
        let idles = status.idles();
        let late = status.change_as_listener(&old, SharedStatus::subscribed_again);
        assert!(!late, "the dropped listener changed the state");
        assert_eq!(status.state(), SubscriberState::Idle);
        assert_eq!(status.live_session(), None);
        // The next subscription's listener may.
        assert!(status.change_as_listener(&new, SharedStatus::subscribed_again));
        assert_eq!(status.live_session(), Some(1));
        assert_eq!(status.idles(), idles);
    }

    /// Redis Cluster: a dropped subscription leaves no channel live (a publish taking one for
    /// live would see the next subscription's session as a change: 113 of 1,000 metrics were
    /// refused so in `cluster_bus::clients_coming_and_going_on_a_cluster_never_cost_a_publish_a_503`),
    /// and none of its node sessions (child tokens) marks one live after.
    #[test]
    fn a_dropped_cluster_subscription_leaves_no_channel_live() {
        let status = SharedStatus::new(Duration::from_secs(2));
        status.reset_channels(2);
        let (listener, master) = (CancellationToken::new(), Arc::<str>::from("127.0.0.1:7000"));
        let (node, late_node) = (listener.child_token(), listener.child_token());
        assert!(status.change_as_listener(&node, |s| s.channels_live(&[0, 1], 1, &master)));
        assert_eq!(status.state(), SubscriberState::Subscribed);
        assert_eq!(status.channel_live(0).map(|(session, _)| session), Some(1));
        status.end_subscription(&listener);
        assert_eq!(status.state(), SubscriberState::Idle);
        assert_eq!(status.channel_live(0), None);
        assert_eq!(status.channel_live(1), None);
        let late = status.change_as_listener(&late_node, |s| s.channels_live(&[0, 1], 2, &master));
        assert!(
            !late,
            "a dropped subscription's node session marked channels live"
        );
        assert_eq!(status.channel_live(0), None);
        assert_eq!(status.state(), SubscriberState::Idle);
    }
}
