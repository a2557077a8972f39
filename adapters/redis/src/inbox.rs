//! What a subscriber session does with each message, whichever Redis it listens to: decode it
//! (counting and logging, rate-limited, what is not an envelope), hand metrics to the worker's
//! clients, and pass alerts through the domain's [`AlertFeed`] so that the log stays the only
//! source of alert ids.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fanout_domain::{
    AlertFeed, AlertHistory, AlertLog, Caught, Channel, Envelope, HistoryError, LiveAlert,
    LocalDelivery, LogId, LogPosition, Payload,
};

use crate::connect::multiplexed;
use crate::log::{LogKeys, ReadScript};
use crate::status::{RateLimitedLog, SharedStatus};
use redis::aio::MultiplexedConnection;

/// How often at most a malformed message, a foreign alert id or a failed reconnect attempt is
/// logged (the rest are counted).
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The least time a PING is given to be answered.
pub(crate) const MIN_PONG_WAIT: Duration = Duration::from_millis(100);

/// One session's (or listener's) handling of arriving messages.
pub(crate) struct Inbox {
    pub(crate) status: Arc<SharedStatus>,
    pub(crate) delivery: Arc<dyn LocalDelivery>,
    malformed_log: RateLimitedLog,
    foreign_log: RateLimitedLog,
    duplicate_log: RateLimitedLog,
    late_log: RateLimitedLog,
}

impl Inbox {
    pub(crate) fn new(status: Arc<SharedStatus>, delivery: Arc<dyn LocalDelivery>) -> Self {
        Self {
            status,
            delivery,
            malformed_log: RateLimitedLog::new(LOG_INTERVAL),
            foreign_log: RateLimitedLog::new(LOG_INTERVAL),
            duplicate_log: RateLimitedLog::new(LOG_INTERVAL),
            late_log: RateLimitedLog::new(LOG_INTERVAL),
        }
    }

    /// Hands one message on; `channel` is what its name (`channel_name`) maps to, if anything.
    /// Alerts go through `feed` when there is one; an error (the alert log unreadable) ends the
    /// session.
    pub(crate) async fn handle(
        &mut self,
        channel: Option<Channel>,
        channel_name: &str,
        payload: &[u8],
        feed: Option<&mut AlertFeed>,
        log: &dyn AlertLog,
    ) -> Result<(), HistoryError> {
        let decoded = match channel {
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
        if envelope.seq != 0 && envelope.published_at_us != 0 {
            let first = self
                .status
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first_copy(envelope.channel(), payload, Instant::now());
            if !first {
                let total = self.status.duplicates.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.duplicate_log.allow(Instant::now()) {
                    tracing::warn!(
                        channel = channel_name,
                        origin = %envelope.origin,
                        seq = envelope.seq,
                        duplicates_total = total,
                        suppressed,
                        "dropped a second copy of a message Redis had delivered already"
                    );
                }
                return Ok(());
            }
        }
        let numbered = envelope.seq != 0 && envelope.published_at_us != 0;
        if numbered && matches!(envelope.payload, Payload::Metrics(_)) {
            if let Err(older) = self.on_time(&envelope) {
                let total = self.status.late.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.late_log.allow(Instant::now()) {
                    tracing::warn!(
                        channel = channel_name,
                        origin = %envelope.origin,
                        seq = envelope.seq,
                        older_ms = older.as_millis() as u64,
                        late_total = total,
                        suppressed,
                        "dropped a metric that arrived after a newer one of its publisher (a Redis master let go after a failover sent it late)"
                    );
                }
                return Ok(());
            }
        }
        self.status.received.fetch_add(1, Ordering::Relaxed);
        let (Payload::Alert(_), Some(feed)) = (&envelope.payload, feed) else {
            self.delivery.deliver(&envelope);
            if numbered {
                self.status
                    .echoes
                    .arrived(envelope.origin.as_str(), envelope.seq);
            }
            return Ok(());
        };
        let claimed = envelope.id;
        let handled = feed.on_live(envelope, log, self.delivery.as_ref()).await?;
        if let Some(caught) = handled.caught {
            self.report_gap(caught, feed);
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

    /// Whether a numbered metric comes in time (see `late`).
    fn on_time(&self, envelope: &Envelope) -> Result<(), Duration> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        self.status
            .newest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(
                envelope.channel(),
                envelope.origin.as_str(),
                envelope.published_at_us,
                now_us,
                Instant::now(),
            )
    }

    /// Counts and logs a catch-up that could not deliver everything after the feed's position.
    pub(crate) fn report_gap(&self, caught: Caught, feed: &AlertFeed) {
        if caught.complete {
            return;
        }
        self.status.lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            position = ?feed.position(),
            "alerts this worker had not delivered were trimmed from the log, or the log was reset: its clients missed them"
        );
    }
}

/// The alert log read on a session's own connection (not the publish pool), every read bounded
/// by the command timeout.
pub(crate) struct ConnectionLog {
    /// Where the session's Redis is, to connect again.
    client: redis::Client,
    connection: Mutex<MultiplexedConnection>,
    keys: LogKeys,
    read: ReadScript,
    timeout: Duration,
}

impl ConnectionLog {
    /// The log read on its own connection to the session's Redis (made here, within `timeout`).
    pub(crate) async fn connect(
        client: redis::Client,
        keys: LogKeys,
        timeout: Duration,
    ) -> Result<Self, String> {
        let connection = tokio::time::timeout(timeout, multiplexed(&client, timeout))
            .await
            .map_err(|_| format!("connect took longer than {timeout:?}"))?
            .map_err(|error| error.to_string())?;
        Ok(Self {
            client,
            connection: Mutex::new(connection),
            keys,
            read: ReadScript::new(),
            timeout,
        })
    }

    /// Runs `read` within the timeout. A read that failed because its connection was lost is run
    /// again on a new connection, as often as one can be made, until the timeout: the log's
    /// connection can go while the subscription lives on (Redis closing idle connections,
    /// `CLIENT KILL TYPE normal`, a proxy), and go again while it is made anew or the read tried
    /// once more (kills in a row), and that must not end the session. A Redis that refuses a new
    /// connection, or any other error, ends it at once.
    async fn reading<T, Fut>(
        &self,
        read: impl Fn(MultiplexedConnection) -> Fut,
    ) -> Result<T, HistoryError>
    where
        Fut: std::future::Future<Output = Result<T, HistoryError>>,
    {
        let attempts = async {
            let mut connection = Some(
                self.connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            );
            let mut failed = None;
            loop {
                if let Some(connection) = connection.take() {
                    let outcome = read(connection).await;
                    match &outcome {
                        Err(error) if connection_lost(error) => failed = Some(outcome),
                        _ => return outcome,
                    }
                }
                match multiplexed(&self.client, self.timeout).await {
                    Ok(fresh) => {
                        *self
                            .connection
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                        connection = Some(fresh);
                    }
                    // Dropped while it was being made: Redis answered, so again, after a pause
                    // (something that resets every connection is not hammered until the timeout).
                    Err(error) if crate::connect::lost(&error) => {
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                    Err(error) => {
                        return failed.unwrap_or_else(|| {
                            Err(HistoryError::caused_by(
                                "reading the alert log failed",
                                error,
                            ))
                        })
                    }
                }
            }
        };
        tokio::time::timeout(self.timeout, attempts)
            .await
            .unwrap_or_else(|_| Err(HistoryError::unavailable("reading the alert log timed out")))
    }
}

#[async_trait]
impl AlertLog for ConnectionLog {
    async fn alerts_after(&self, after: LogId, limit: usize) -> Result<AlertHistory, HistoryError> {
        self.reading(|mut connection| async move {
            self.read
                .alerts_after(&mut connection, &self.keys, after, limit)
                .await
        })
        .await
    }

    async fn head(&self) -> Result<LogPosition, HistoryError> {
        self.reading(
            |mut connection| async move { self.read.head(&mut connection, &self.keys).await },
        )
        .await
    }
}

/// The pause before the alert log's connection is made again after an attempt that was dropped.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Whether a read failed because its connection is gone (dropped, reset, closed by Redis):
/// another connection may read.
fn connection_lost(error: &HistoryError) -> bool {
    let HistoryError::Unavailable { cause, .. } = error;
    crate::connect::lost_cause(cause.as_ref())
}

/// A log for sessions that carry no alerts: never read.
pub(crate) struct NoLog;

#[async_trait]
impl AlertLog for NoLog {
    async fn alerts_after(&self, _: LogId, _: usize) -> Result<AlertHistory, HistoryError> {
        Err(HistoryError::unavailable("this session reads no alert log"))
    }

    async fn head(&self) -> Result<LogPosition, HistoryError> {
        Err(HistoryError::unavailable("this session reads no alert log"))
    }
}

/// Why a session ended, and whether it had been subscribed (which resets the backoff).
pub(crate) struct SessionError {
    pub(crate) message: String,
    pub(crate) was_subscribed: bool,
}

impl SessionError {
    pub(crate) fn before(error: impl ToString) -> Self {
        Self {
            message: error.to_string(),
            was_subscribed: false,
        }
    }

    pub(crate) fn after(error: impl ToString) -> Self {
        Self {
            message: error.to_string(),
            was_subscribed: true,
        }
    }
}
