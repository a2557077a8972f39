//! The worker's dedicated Pub/Sub connection and the listener that keeps it alive.
//!
//! One task per subscription runs `connect → SUBSCRIBE → catch up → listen` in a loop. Any error
//! (connect refused, stream ended, a `PING` unanswered within the command timeout, the alert log
//! unreadable) ends the session; the task records it, waits a short jittered delay (or until the
//! publisher finds Redis answering) and starts again. Only dropping the
//! [`fanout_domain::Subscription`] stops it, so the listener never dies silently.
//!
//! Alerts go through the domain's [`AlertFeed`]: the log, read on the session's own connection,
//! is the only source of alert ids, so no message on the channel can stall or reorder them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fanout_domain::{
    AlertFeed, AlertLog, BusStatus, BusSubscriber, Caught, Channel, LocalDelivery, SubscriberState,
    Subscription,
};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::connect::hedged;
use crate::inbox::{ConnectionLog, Inbox, SessionError, LOG_INTERVAL, MIN_PONG_WAIT};
use crate::log::LogKeys;
use crate::master::Resolver;
use crate::sharded::ShardedListener;
use crate::status::{RateLimitedLog, SharedStatus};
use crate::RedisConfig;

/// A worker's Pub/Sub subscriber: one dedicated connection per subscription (never a pooled
/// one), re-established after any error until the [`fanout_domain::Subscription`] is dropped.
/// Made by [`crate::RedisBus::new`], which shares its status with the publisher.
pub struct RedisSubscriber {
    config: RedisConfig,
    resolver: Arc<Resolver>,
    status: Arc<SharedStatus>,
}

impl RedisSubscriber {
    pub(crate) fn new(
        config: RedisConfig,
        resolver: Arc<Resolver>,
        status: Arc<SharedStatus>,
    ) -> Self {
        Self {
            config,
            resolver,
            status,
        }
    }
}

/// Cancels the listener when the subscription is dropped, and marks the subscriber idle.
struct ListenerGuard {
    cancel: CancellationToken,
    status: Arc<SharedStatus>,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.status.end_subscription(&self.cancel);
    }
}

#[async_trait]
impl BusSubscriber for RedisSubscriber {
    async fn subscribe(&self, delivery: Arc<dyn LocalDelivery>) -> Subscription {
        let cancel = CancellationToken::new();
        self.status.set_state(SubscriberState::Connecting);
        if let Some(cluster) = &self.config.cluster {
            let listener = ShardedListener::new(
                self.config.clone(),
                cluster,
                Arc::clone(&self.status),
                delivery,
                cancel.clone(),
            );
            tokio::spawn(listener.run());
            // Every channel subscribed, or a first attempt failed: either way the listener goes
            // on by itself.
            let _ = tokio::time::timeout(
                self.config.command_timeout,
                self.status
                    .until(|state| state != SubscriberState::Connecting),
            )
            .await;
        } else {
            let (first_outcome, outcome) = oneshot::channel();
            let listener = Listener {
                keys: LogKeys::new(&self.config.alert_log_key),
                config: self.config.clone(),
                resolver: Arc::clone(&self.resolver),
                inbox: Inbox::new(Arc::clone(&self.status), delivery),
                status: Arc::clone(&self.status),
                feed: None,
                recovering: false,
                cancel: cancel.clone(),
            };
            tokio::spawn(listener.run(cancel.clone(), first_outcome));
            // Either the first SUBSCRIBE was confirmed or the first attempt failed; in both cases
            // the listener goes on by itself.
            let _ = outcome.await;
        }
        Subscription::new(ListenerGuard {
            cancel,
            status: Arc::clone(&self.status),
        })
    }

    fn status(&self) -> BusStatus {
        self.status.snapshot()
    }

    async fn until_live(&self) {
        self.status
            .until(|state| state == SubscriberState::Subscribed)
            .await;
    }
}

struct Listener {
    config: RedisConfig,
    /// Where the master is (asked at every session start).
    resolver: Arc<Resolver>,
    keys: LogKeys,
    status: Arc<SharedStatus>,
    inbox: Inbox,
    /// This worker's place in the alert log; started at the log's head before the first
    /// SUBSCRIBE, so nothing published from then on can fall between the log and the channel.
    feed: Option<AlertFeed>,
    /// A session was lost: reaching `subscribed` again is a recovery (counted in `reconnects`).
    recovering: bool,
    /// Cancelled when the subscription is dropped: from then on the listener changes no state
    /// (`SharedStatus::change_as_listener`).
    cancel: CancellationToken,
}

impl Listener {
    async fn run(mut self, cancel: CancellationToken, first_outcome: oneshot::Sender<()>) {
        let mut first_outcome = Some(first_outcome);
        let mut attempt: u32 = 0;
        let mut attempts_log = RateLimitedLog::new(LOG_INTERVAL);
        loop {
            let session = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                session = self.session(&mut first_outcome) => session,
            };
            let Err(error) = session;
            if cancel.is_cancelled() {
                // Dropped meanwhile: the status is the next subscription's now, not this one's.
                return;
            }
            if let Some(signal) = first_outcome.take() {
                let _ = signal.send(());
            }
            let delay = if error.was_subscribed {
                attempt = 0;
                self.recovering = true;
                tracing::warn!(
                    error = %error.message,
                    retry_in_ms = 0,
                    "Redis subscriber lost its connection; reconnecting"
                );
                // The first retry comes at once: most losses are a restart or a failover.
                Duration::ZERO
            } else {
                let failed = self.status.attempt_failed();
                let delay = self.config.backoff.delay(attempt);
                let retry_in_ms = delay.as_millis() as u64;
                tracing::debug!(error = %error.message, attempt, retry_in_ms, "Redis subscriber attempt failed");
                if let Some(suppressed) = attempts_log.allow(Instant::now()) {
                    tracing::warn!(
                        error = %error.message,
                        attempt,
                        retry_in_ms,
                        failed_attempts_total = failed,
                        suppressed,
                        "Redis subscriber cannot connect; retrying"
                    );
                }
                attempt = attempt.saturating_add(1);
                delay
            };
            if !self
                .status
                .change_as_listener(&cancel, |status| status.set_error(error.message))
            {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                // The publisher found Redis answering first.
                _ = self.status.redis_answered.notified() => {}
            }
            if !self.status.change_as_listener(&cancel, |status| {
                status.set_state(SubscriberState::Connecting);
            }) {
                return;
            }
        }
    }

    /// One connection's life: returns only with the error that ended it.
    async fn session(
        &mut self,
        first_outcome: &mut Option<oneshot::Sender<()>>,
    ) -> Result<std::convert::Infallible, SessionError> {
        let timeout = self.config.command_timeout;
        // With Sentinel, each session asks for the master anew: a reconnect follows a failover.
        let master = tokio::time::timeout(timeout, self.resolver.master())
            .await
            .map_err(|_| {
                SessionError::before(format!("finding the master took longer than {timeout:?}"))
            })?
            .map_err(SessionError::before)?;
        let address = master.addr().to_string();
        let client = redis::Client::open(master).map_err(SessionError::before)?;
        let pubsub = tokio::time::timeout(timeout, hedged(|| client.get_async_pubsub()))
            .await
            .map_err(|_| SessionError::before(format!("connect took longer than {timeout:?}")))?
            .map_err(SessionError::before)?;
        let log = ConnectionLog::connect(client, self.keys.clone(), timeout)
            .await
            .map_err(SessionError::before)?;
        if self.feed.is_none() {
            let head = log.head().await.map_err(SessionError::before)?;
            self.feed = Some(AlertFeed::new(head));
        }
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
        tokio::time::timeout(timeout, sink.subscribe(&channels))
            .await
            .map_err(|_| SessionError::before(format!("SUBSCRIBE took longer than {timeout:?}")))?
            .map_err(SessionError::before)?;
        // Live messages queue up on the subscription while the missed alerts are delivered; the
        // feed recognises their live copies.
        let caught = match self.feed.as_mut() {
            Some(feed) => feed
                .catch_up(&log, self.inbox.delivery.as_ref())
                .await
                .map_err(SessionError::before)?,
            None => Caught {
                delivered: 0,
                complete: true,
            },
        };
        if let Some(feed) = self.feed.as_ref() {
            self.inbox.report_gap(caught, feed);
        }
        // Not once the subscription is dropped: a publisher in flight would take this late
        // `subscribed` for a new session, and refuse its metric for nothing.
        let subscribed = self.status.change_as_listener(&self.cancel, |status| {
            status.set_master(address.clone());
            status.subscribed_again();
        });
        if !subscribed {
            return Err(SessionError::before("the subscription was dropped"));
        }
        if std::mem::take(&mut self.recovering) {
            self.status.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let status = self.status.snapshot();
        tracing::info!(
            channels = ?channels,
            master = %address,
            replayed = caught.delivered,
            reconnects = status.reconnects,
            failed_attempts = status.failed_attempts,
            "Redis subscriber subscribed"
        );
        if let Some(signal) = first_outcome.take() {
            let _ = signal.send(());
        }
        // A hang is noticed within the command timeout: a PING at most `ping_interval` after the
        // last answer, and its PONG awaited for the rest of the timeout.
        let pong_wait = timeout
            .saturating_sub(self.config.ping_interval)
            .max(MIN_PONG_WAIT);
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // With Sentinel: `+switch-master` from a sentinel says at once that another master was
        // promoted (a master that was only paused still answers, as a master, after that); the
        // PING-time question to the sentinels covers a sentinel connection that was lost.
        let mut switches = self.resolver.switch_events(pong_wait).await;
        loop {
            let named = tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(SessionError::after("the connection closed"));
                    };
                    let name = message.get_channel_name();
                    self.inbox
                        .handle(Channel::from_name(name), name, message.get_payload_bytes(), self.feed.as_mut(), &log)
                        .await
                        .map_err(SessionError::after)?;
                    continue;
                }
                switched = next_switch(&mut switches) => match switched {
                    Some(named) => named,
                    None => {
                        switches = None;
                        continue;
                    }
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(pong_wait, sink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(SessionError::after(format!("PING failed: {error}"))),
                        Err(_) => return Err(SessionError::after(format!("no PONG within {pong_wait:?}: Redis hangs or the link is cut"))),
                    }
                    match tokio::time::timeout(pong_wait, self.resolver.named_master()).await {
                        Ok(Some(named)) => named,
                        _ => continue,
                    }
                }
            };
            if named == address {
                continue;
            }
            let reason = format!("the sentinels name {named} as master, not {address}: following");
            // Publishers stop counting on this session first; then everything published on it
            // before a last PING is delivered, so that a 202 given while it was live is not lost
            // with it.
            if !self
                .status
                .change_as_listener(&self.cancel, |status| status.set_error(reason.clone()))
            {
                return Err(SessionError::before("the subscription was dropped"));
            }
            if let Ok(Ok(_)) = tokio::time::timeout(pong_wait, sink.ping::<redis::Value>()).await {
                while let Some(Some(message)) = stream.next().now_or_never() {
                    let name = message.get_channel_name();
                    self.inbox
                        .handle(
                            Channel::from_name(name),
                            name,
                            message.get_payload_bytes(),
                            self.feed.as_mut(),
                            &log,
                        )
                        .await
                        .map_err(SessionError::after)?;
                }
            }
            return Err(SessionError::after(reason));
        }
    }
}

/// The next master a sentinel announced with `+switch-master`; `None` when the sentinel
/// connection ended; never, without Sentinel.
async fn next_switch(switches: &mut Option<crate::master::SwitchEvents>) -> Option<String> {
    match switches {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}
