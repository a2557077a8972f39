//! The worker's dedicated Pub/Sub connection and the listener that keeps it alive.
//!
//! One task per subscription runs `connect → SUBSCRIBE → listen` in a loop. Any error (connect
//! refused, stream ended, a `PING` unanswered within the command timeout) ends the session; the
//! task records it, waits a jittered, doubling delay and starts again. Only dropping the
//! [`fanout_domain::Subscription`] stops it, so the listener never dies silently.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use fanout_domain::{
    AlertId, BusStatus, BusSubscriber, Channel, Envelope, LocalDelivery, SubscriberState,
    Subscription,
};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::status::{RateLimitedLog, SharedStatus};
use crate::{log, RedisConfig};

/// How often at most a malformed message is logged (the rest are counted).
const MALFORMED_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

pub struct RedisSubscriber {
    config: RedisConfig,
    status: Arc<SharedStatus>,
}

impl RedisSubscriber {
    pub fn new(config: RedisConfig) -> Self {
        Self {
            config,
            status: Arc::new(SharedStatus::new()),
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
            config: self.config.clone(),
            status: Arc::clone(&self.status),
            delivery,
            malformed_log: RateLimitedLog::new(MALFORMED_LOG_INTERVAL),
            last_alert: None,
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
}

struct Listener {
    config: RedisConfig,
    status: Arc<SharedStatus>,
    delivery: Arc<dyn LocalDelivery>,
    malformed_log: RateLimitedLog,
    /// The newest alert-log id this worker has delivered (or skipped as already seen): after a
    /// reconnect, replay starts right after it. Set from the log's head before the first
    /// SUBSCRIBE, so nothing published from then on can fall between the log and the channel.
    last_alert: Option<AlertId>,
}

/// Alerts replayed per XRANGE page.
const REPLAY_PAGE: usize = 1000;

impl Listener {
    async fn run(mut self, cancel: CancellationToken, first_outcome: oneshot::Sender<()>) {
        let mut first_outcome = Some(first_outcome);
        let mut attempt: u32 = 0;
        loop {
            let session = tokio::select! {
                _ = cancel.cancelled() => return,
                session = self.session(&mut first_outcome) => session,
            };
            let Err(error) = session;
            if let Some(signal) = first_outcome.take() {
                let _ = signal.send(());
            }
            if error.was_subscribed {
                attempt = 0;
            }
            self.status.reconnects.fetch_add(1, Ordering::Relaxed);
            self.status.set_error(error.message.clone());
            let delay = self.config.backoff.delay(attempt);
            tracing::warn!(
                error = %error.message,
                retry_in_ms = delay.as_millis() as u64,
                attempt,
                "Redis subscriber lost its connection; reconnecting"
            );
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
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
        let client = redis::Client::open(self.config.url.as_str()).map_err(SessionError::before)?;
        let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| SessionError::before(format!("connect took longer than {timeout:?}")))?
            .map_err(SessionError::before)?;
        let mut log_connection =
            tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
                .await
                .map_err(|_| SessionError::before(format!("connect took longer than {timeout:?}")))?
                .map_err(SessionError::before)?;
        if self.last_alert.is_none() {
            let head = tokio::time::timeout(
                timeout,
                log::head(&mut log_connection, &self.config.alert_log_key),
            )
            .await
            .map_err(|_| SessionError::before("reading the alert log head timed out"))?
            .map_err(SessionError::before)?;
            self.last_alert = Some(head);
        }
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
        tokio::time::timeout(timeout, sink.subscribe(&channels))
            .await
            .map_err(|_| SessionError::before(format!("SUBSCRIBE took longer than {timeout:?}")))?
            .map_err(SessionError::before)?;
        // Live messages queue up on the subscription while the missed alerts are replayed; the
        // live copies of replayed alerts are skipped by id.
        let replayed = tokio::time::timeout(timeout * 4, self.replay(&mut log_connection))
            .await
            .map_err(|_| SessionError::before("replaying the alert log timed out"))?
            .map_err(SessionError::before)?;
        drop(log_connection);
        self.status.set_state(SubscriberState::Subscribed);
        tracing::info!(channels = ?channels, replayed, "Redis subscriber subscribed");
        if let Some(signal) = first_outcome.take() {
            let _ = signal.send(());
        }
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(SessionError::after("the connection closed"));
                    };
                    self.handle(message.get_channel_name(), message.get_payload_bytes());
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(SessionError::after(format!("PING failed: {error}"))),
                        Err(_) => return Err(SessionError::after(format!("no PONG within {timeout:?}: Redis hangs or the link is cut"))),
                    }
                }
            }
        }
    }

    /// Delivers every alert logged after `last_alert`, oldest first; returns how many.
    async fn replay(
        &mut self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<usize, String> {
        let mut replayed = 0;
        loop {
            let after = self.last_alert.unwrap_or(AlertId::ZERO);
            let history =
                log::alerts_after(connection, &self.config.alert_log_key, after, REPLAY_PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
            if !history.complete {
                self.status.lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    after = %after,
                    "alerts after {after} were trimmed from the log before this worker could replay them"
                );
            }
            let page = history.alerts.len();
            for envelope in history.alerts {
                self.last_alert = envelope.id.or(self.last_alert);
                self.delivery.deliver(&envelope);
            }
            replayed += page;
            if page < REPLAY_PAGE {
                return Ok(replayed);
            }
        }
    }

    fn handle(&mut self, channel_name: &str, payload: &[u8]) {
        let decoded = match Channel::from_name(channel_name) {
            Some(channel) => Envelope::from_json(channel, payload).map_err(|e| e.to_string()),
            None => Err(format!("message on unexpected channel {channel_name:?}")),
        };
        match decoded {
            Ok(envelope) => {
                self.status.received.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = envelope.id {
                    if self.last_alert.is_some_and(|last| id <= last) {
                        // Already delivered by a replay.
                        return;
                    }
                    self.last_alert = Some(id);
                }
                self.delivery.deliver(&envelope);
            }
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
            }
        }
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
