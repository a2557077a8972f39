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
    AlertFeed, AlertHistory, AlertLog, BusStatus, BusSubscriber, Caught, Channel, Envelope,
    HistoryError, LiveAlert, LocalDelivery, LogId, LogPosition, Payload, SubscriberState,
    Subscription,
};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::connect::hedged;
use crate::log::{LogKeys, ReadScript};
use crate::master::Resolver;
use crate::status::{RateLimitedLog, SharedStatus};
use crate::RedisConfig;

/// How often at most a malformed message, a foreign alert id or a failed reconnect attempt is
/// logged (the rest are counted).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    _cancel: DropGuard,
    status: Arc<SharedStatus>,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.status.set_state(SubscriberState::Idle);
    }
}

#[async_trait]
impl BusSubscriber for RedisSubscriber {
    async fn subscribe(&self, delivery: Arc<dyn LocalDelivery>) -> Subscription {
        let cancel = CancellationToken::new();
        let (first_outcome, outcome) = oneshot::channel();
        let listener = Listener {
            keys: LogKeys::new(&self.config.alert_log_key),
            config: self.config.clone(),
            resolver: Arc::clone(&self.resolver),
            status: Arc::clone(&self.status),
            delivery,
            malformed_log: RateLimitedLog::new(LOG_INTERVAL),
            foreign_log: RateLimitedLog::new(LOG_INTERVAL),
            feed: None,
            recovering: false,
        };
        self.status.set_state(SubscriberState::Connecting);
        tokio::spawn(listener.run(cancel.clone(), first_outcome));
        // Either the first SUBSCRIBE was confirmed or the first attempt failed; in both cases the
        // listener goes on by itself.
        let _ = outcome.await;
        Subscription::new(ListenerGuard {
            _cancel: cancel.drop_guard(),
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
    delivery: Arc<dyn LocalDelivery>,
    malformed_log: RateLimitedLog,
    foreign_log: RateLimitedLog,
    /// This worker's place in the alert log; started at the log's head before the first
    /// SUBSCRIBE, so nothing published from then on can fall between the log and the channel.
    feed: Option<AlertFeed>,
    /// A session was lost: reaching `subscribed` again is a recovery (counted in `reconnects`).
    recovering: bool,
}

impl Listener {
    async fn run(mut self, cancel: CancellationToken, first_outcome: oneshot::Sender<()>) {
        let mut first_outcome = Some(first_outcome);
        let mut attempt: u32 = 0;
        let mut attempts_log = RateLimitedLog::new(LOG_INTERVAL);
        loop {
            let session = tokio::select! {
                _ = cancel.cancelled() => return,
                session = self.session(&mut first_outcome) => session,
            };
            let Err(error) = session;
            if let Some(signal) = first_outcome.take() {
                let _ = signal.send(());
            }
            let delay = if error.was_subscribed {
                attempt = 0;
                self.recovering = true;
                tracing::warn!(error = %error.message, "Redis subscriber lost its connection; reconnecting");
                // The first retry comes at once: most losses are a restart or a failover.
                Duration::ZERO
            } else {
                let failed = self.status.failed_attempts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(error = %error.message, attempt, "Redis subscriber attempt failed");
                if let Some(suppressed) = attempts_log.allow(Instant::now()) {
                    tracing::warn!(
                        error = %error.message,
                        attempt,
                        failed_attempts_total = failed,
                        suppressed,
                        "Redis subscriber cannot connect; retrying"
                    );
                }
                let delay = self.config.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                delay
            };
            self.status.set_error(error.message);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                // The publisher found Redis answering first.
                _ = self.status.redis_answered.notified() => {}
            }
            self.status.set_state(SubscriberState::Connecting);
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
        let connection = tokio::time::timeout(
            timeout,
            hedged(|| client.get_multiplexed_async_connection()),
        )
        .await
        .map_err(|_| SessionError::before(format!("connect took longer than {timeout:?}")))?
        .map_err(SessionError::before)?;
        let log = ConnectionLog {
            connection,
            keys: self.keys.clone(),
            read: ReadScript::new(),
            timeout,
        };
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
                .catch_up(&log, self.delivery.as_ref())
                .await
                .map_err(SessionError::before)?,
            None => Caught {
                delivered: 0,
                complete: true,
            },
        };
        self.report_gap(caught);
        self.status.set_master(address.clone());
        self.status.subscribed_again();
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
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(SessionError::after("the connection closed"));
                    };
                    self.handle(message.get_channel_name(), message.get_payload_bytes(), &log)
                        .await
                        .map_err(SessionError::after)?;
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(pong_wait, sink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(SessionError::after(format!("PING failed: {error}"))),
                        Err(_) => return Err(SessionError::after(format!("no PONG within {pong_wait:?}: Redis hangs or the link is cut"))),
                    }
                    // With Sentinel: a master that was only paused still answers, as a master,
                    // after another was promoted; follow the sentinels, not the old connection.
                    let named = tokio::time::timeout(pong_wait, self.resolver.named_master()).await;
                    if let Ok(Some(named)) = named {
                        if named != address {
                            let reason = format!(
                                "the sentinels name {named} as master, not {address}: following"
                            );
                            // Publishers stop counting on this session first; then everything
                            // published on it before a last PING is delivered, so that a 202
                            // given while it was live is not lost with it.
                            self.status.set_error(reason.clone());
                            if let Ok(Ok(_)) = tokio::time::timeout(pong_wait, sink.ping::<redis::Value>()).await {
                                while let Some(Some(message)) = stream.next().now_or_never() {
                                    self.handle(message.get_channel_name(), message.get_payload_bytes(), &log)
                                        .await
                                        .map_err(SessionError::after)?;
                                }
                            }
                            return Err(SessionError::after(reason));
                        }
                    }
                }
            }
        }
    }

    /// Hands one channel message on; an error (the alert log unreadable) ends the session.
    async fn handle(
        &mut self,
        channel_name: &str,
        payload: &[u8],
        log: &ConnectionLog,
    ) -> Result<(), HistoryError> {
        let decoded = match Channel::from_name(channel_name) {
            Some(channel) => Envelope::from_json(channel, payload).map_err(|e| e.to_string()),
            None => Err(format!("message on unexpected channel {channel_name:?}")),
        };
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(reason) => {
                let total = self.status.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.malformed_log.allow(Instant::now()) {
                    tracing::warn!(
                        channel = channel_name,
                        %reason,
                        malformed_total = total,
                        suppressed,
                        "dropped a malformed message from Redis"
                    );
                }
                return Ok(());
            }
        };
        self.status.received.fetch_add(1, Ordering::Relaxed);
        let (Payload::Alert(_), Some(feed)) = (&envelope.payload, self.feed.as_mut()) else {
            self.delivery.deliver(&envelope);
            return Ok(());
        };
        let claimed = envelope.id;
        let handled = feed.on_live(envelope, log, self.delivery.as_ref()).await?;
        if let Some(caught) = handled.caught {
            self.report_gap(caught);
        }
        match handled.alert {
            LiveAlert::Logged | LiveAlert::Duplicate | LiveAlert::Unlogged => {}
            LiveAlert::Foreign => {
                let total = self.status.foreign_ids.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.foreign_log.allow(Instant::now()) {
                    tracing::warn!(
                        id = ?claimed.map(|id| id.to_string()),
                        foreign_ids_total = total,
                        suppressed,
                        "an alert on the channel carries an id the alert log did not assign: delivered without it"
                    );
                }
            }
        }
        Ok(())
    }

    fn report_gap(&self, caught: Caught) {
        if caught.complete {
            return;
        }
        self.status.lost.fetch_add(1, Ordering::Relaxed);
        let position = self.feed.as_ref().map(|feed| feed.position().clone());
        tracing::error!(
            ?position,
            "alerts this worker had not delivered were trimmed from the log, or the log was reset: its clients missed them"
        );
    }
}

/// The least time a PING is given to be answered.
const MIN_PONG_WAIT: Duration = Duration::from_millis(100);

/// The alert log read on the session's own connection (not the publish pool), every read
/// bounded by the command timeout.
struct ConnectionLog {
    connection: redis::aio::MultiplexedConnection,
    keys: LogKeys,
    read: ReadScript,
    timeout: Duration,
}

impl ConnectionLog {
    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, HistoryError>>,
    ) -> Result<T, HistoryError> {
        tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or_else(|_| Err(HistoryError::unavailable("reading the alert log timed out")))
    }
}

#[async_trait]
impl AlertLog for ConnectionLog {
    async fn alerts_after(&self, after: LogId, limit: usize) -> Result<AlertHistory, HistoryError> {
        let mut connection = self.connection.clone();
        self.bounded(
            self.read
                .alerts_after(&mut connection, &self.keys, after, limit),
        )
        .await
    }

    async fn head(&self) -> Result<LogPosition, HistoryError> {
        let mut connection = self.connection.clone();
        self.bounded(self.read.head(&mut connection, &self.keys))
            .await
    }
}

/// Why a session ended, and whether it had been subscribed (which resets the backoff).
struct SessionError {
    message: String,
    was_subscribed: bool,
}

impl SessionError {
    fn before(error: impl ToString) -> Self {
        Self {
            message: error.to_string(),
            was_subscribed: false,
        }
    }

    fn after(error: impl ToString) -> Self {
        Self {
            message: error.to_string(),
            was_subscribed: true,
        }
    }
}
