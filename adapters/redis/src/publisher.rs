//! Publishing through a lazily created connection pool.
//!
//! Over 400 lines on purpose: one type publishes on all three Redis topologies (one Redis,
//! Sentinel, Cluster), kept together so that what a `202` promises reads in one place.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cluster::{ClusterCommands, NodeConnection};
use crate::echoes::Echo;
use crate::log::{AppendScript, LogKeys, ReadScript};
use crate::master::{MasterPool, Resolver};
use crate::pool::{self, Connection, Pool};
use crate::status::SharedStatus;
use crate::RedisConfig;
use async_trait::async_trait;
use fanout_domain::{
    AlertHistory, AlertLog, Broadcaster, Channel, Envelope, HistoryError, LogId, LogPosition,
    Payload, PublishError, SubscriberState,
};

/// `PUBLISH`es metrics; appends alerts to the alert log and publishes them in one atomic script.
/// Also reads the alert log back ([`AlertLog`]).
///
/// While this worker's subscriber is reconnecting it refuses (503) rather than accept messages
/// its own clients would miss; it first asks Redis itself, and when Redis answers it wakes the
/// subscriber and waits for it (within the command timeout).
pub struct RedisPublisher {
    config: RedisConfig,
    /// Created on the first publish, then shared by every publish of this worker; made again
    /// for the new master after a failover (Sentinel).
    pool: MasterPool,
    /// On a Redis Cluster, every command goes here instead of `pool`.
    cluster: Option<ClusterCommands>,
    keys: LogKeys,
    append: AppendScript,
    read: ReadScript,
    status: Arc<SharedStatus>,
}

impl RedisPublisher {
    pub(crate) fn new(
        config: RedisConfig,
        resolver: Arc<Resolver>,
        status: Arc<SharedStatus>,
    ) -> redis::RedisResult<Self> {
        let cluster = match &config.cluster {
            Some(cluster) => Some(ClusterCommands::new(&config, cluster)?),
            None => None,
        };
        Ok(Self {
            keys: LogKeys::new(&config.alert_log_key),
            pool: MasterPool::new(config.clone(), resolver, "publishing"),
            append: AppendScript::new(cluster.is_some()),
            cluster,
            config,
            read: ReadScript::new(),
            status,
        })
    }

    /// Waits until this worker's subscriber is live (or idle: no clients to miss anything).
    async fn subscriber_ready(&self, pool: &Pool) -> Result<(), PublishError> {
        let reconnecting = |state| {
            matches!(
                state,
                SubscriberState::Connecting | SubscriberState::Reconnecting
            )
        };
        if !reconnecting(self.status.state()) {
            return Ok(());
        }
        let probe = async {
            let (_connection, pinged) = pool::with_retry::<()>(pool, &redis::cmd("PING"))
                .await
                .map_err(|error| PublishError::caused_by("no Redis connection", error))?;
            pinged.map_err(|error| PublishError::caused_by("Redis unreachable", error))?;
            // Redis answers: the subscriber need not sleep out its backoff.
            self.status.redis_answered.notify_one();
            self.status.until(|state| !reconnecting(state)).await;
            Ok(())
        };
        tokio::time::timeout(self.config.command_timeout, probe)
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::unavailable(
                    "this worker's Redis subscription is not live again yet",
                ))
            })
    }

    async fn pool(&self) -> Result<(String, Pool), PublishError> {
        self.pool.get().await.map_err(PublishError::unavailable)
    }

    /// The pool to publish on: the master this worker's subscriber listens on, while it is live.
    /// After a failover the two can disagree for a moment (a paused old master still answers as
    /// master): a message published on the other one would reach none of this worker's clients,
    /// so the pool is made again, and until both agree the publish is refused (503).
    async fn on_the_subscribers_master(&self) -> Result<(String, Pool), PublishError> {
        let (master, pool) = self.pool().await?;
        if !self.pool.follows_failover() {
            return Ok((master, pool));
        }
        let Some(listening) = self.status.live_master() else {
            return Ok((master, pool));
        };
        if listening == master {
            return Ok((master, pool));
        }
        self.pool.failed(&master);
        let (master, pool) = self.pool().await?;
        if listening == master {
            return Ok((master, pool));
        }
        Err(PublishError::unavailable(format!(
            "this worker's subscriber listens on {listening} while the master is {master}: \
             it is moving, retry"
        )))
    }
}

#[async_trait]
impl Broadcaster for RedisPublisher {
    /// Answers a metric within `--redis-timeout` of its stamp, all waits included (for the
    /// subscriber, the pool, the publish, the echo): Redis runs a metric it acknowledges within
    /// that time of the stamp, which is what lets every worker tell a late one (`late`). An
    /// alert may have been stamped long before (a rule's, kept in the outbox while the bus was
    /// down): its time counts from now.
    async fn publish(&self, envelope: &Envelope) -> Result<Option<LogId>, PublishError> {
        let timeout = self.config.command_timeout;
        let stamped = matches!(envelope.payload, Payload::Metrics(_));
        let since_stamp = if stamped {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|now| now.checked_sub(Duration::from_micros(envelope.published_at_us)))
                .unwrap_or_default()
                .min(timeout)
        } else {
            Duration::ZERO
        };
        let started = Instant::now()
            .checked_sub(since_stamp)
            .unwrap_or_else(Instant::now);
        let within = timeout.saturating_sub(started.elapsed());
        tokio::time::timeout(within, self.publish_within(envelope, started))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::unavailable(format!(
                    "not published within {timeout:?} (--redis-timeout) of its arrival"
                )))
            })
    }
}

impl RedisPublisher {
    /// The publish itself, for [`Broadcaster::publish`]; `started` is the message's stamp.
    async fn publish_within(
        &self,
        envelope: &Envelope,
        started: Instant,
    ) -> Result<Option<LogId>, PublishError> {
        if let Some(cluster) = &self.cluster {
            return self.publish_sharded(cluster, envelope, started).await;
        }
        let (master, pool) = self.on_the_subscribers_master().await?;
        self.subscriber_ready(&pool).await?;
        let idles = self.status.idles();
        let session = self.status.live_session();
        let echo = self.echo_for(envelope, session.is_some());
        let payload = envelope.to_json();
        let attempt = async {
            let no_connection = |error| PublishError::caused_by("no Redis connection", error);
            let (mut connection, published) = match envelope.payload {
                Payload::Metrics(_) => {
                    let mut publish = redis::cmd("PUBLISH");
                    publish.arg(Channel::Metrics.name()).arg(&payload);
                    let (connection, published) = pool::with_retry::<i64>(&pool, &publish)
                        .await
                        .map_err(no_connection)?;
                    (connection, published.map(|_| None))
                }
                Payload::Alert(_) => {
                    // An append must not run twice (a second entry in the log): it goes on a
                    // connection that has just answered a PING.
                    let (mut connection, pinged) =
                        pool::with_retry::<()>(&pool, &redis::cmd("PING"))
                            .await
                            .map_err(no_connection)?;
                    let appended = match pinged {
                        Ok(()) => self
                            .append
                            .append(
                                &mut *connection,
                                &self.keys,
                                self.config.alert_retention,
                                &payload,
                                0,
                            )
                            .await
                            .map(|(id, _epoch)| Some(id)),
                        Err(error) => Err(error),
                    };
                    (connection, appended)
                }
            };
            // Whether Redis answered every command: a refusal for too few replicas is an answer,
            // the connection and the master are fine.
            let (published, answered) = match published {
                // WAIT counts the writes of this connection: it runs right after the script.
                Ok(Some(id)) if self.config.alert_min_replicas > 0 => {
                    match self.replicated(&mut *connection).await {
                        Ok(Ok(())) => (Ok(Some(id)), true),
                        Ok(Err(too_few)) => (Err(too_few), true),
                        Err(error) => (Err(error), false),
                    }
                }
                Ok(published) => (Ok(published), true),
                Err(error) => (Err(PublishError::caused_by("publish failed", error)), false),
            };
            if !answered {
                // A failed command may leave the connection broken: drop it from the pool
                // rather than hand it to the next publish.
                drop(Connection::take(connection));
            }
            Ok((published, answered))
        };
        let (outcome, answered) =
            match tokio::time::timeout(self.config.command_timeout, attempt).await {
                Ok(Ok(result)) => result,
                Ok(Err(no_connection)) => (Err(no_connection), false),
                Err(_) => (
                    Err(PublishError::unavailable(format!(
                        "publish took longer than {:?}",
                        self.config.command_timeout
                    ))),
                    false,
                ),
            };
        if !answered {
            // Perhaps a failover: the next publish asks the sentinels for the master again (not
            // after a refusal for too few replicas: the master answered it; making its pool
            // again for every alert while a replica is missing was one log line and new
            // connections each time).
            self.pool.failed(&master);
        }
        // A 202 promises this worker's clients the message: the session that was live before the
        // PUBLISH must still be live after it (a session that ends on purpose delivers what was
        // published before it said so).
        let changed = (session.is_some() && self.status.live_session() != session).then(|| {
            "this worker's subscriber changed sessions while the message was published: it may \
             not reach this worker's clients (it may still reach others')"
                .to_owned()
        });
        let moved_on = async {
            match session {
                Some(session) => self.status.until_session_leaves(session).await,
                None => std::future::pending().await,
            }
        };
        self.acknowledged(outcome, changed, echo, started, idles, moved_on)
            .await
    }
}

#[async_trait]
impl AlertLog for RedisPublisher {
    async fn alerts_after(&self, after: LogId, limit: usize) -> Result<AlertHistory, HistoryError> {
        if let Some(cluster) = &self.cluster {
            return self
                .bounded(async {
                    let mut connection = cluster.connection().await.map_err(|error| {
                        HistoryError::caused_by("no Redis Cluster connection", error)
                    })?;
                    self.read
                        .alerts_after(&mut connection, &self.keys, after, limit)
                        .await
                })
                .await;
        }
        self.reading(|mut connection| async move {
            self.read
                .alerts_after(&mut *connection, &self.keys, after, limit)
                .await
        })
        .await
    }

    async fn head(&self) -> Result<LogPosition, HistoryError> {
        if let Some(cluster) = &self.cluster {
            return self
                .bounded(async {
                    let mut connection = cluster.connection().await.map_err(|error| {
                        HistoryError::caused_by("no Redis Cluster connection", error)
                    })?;
                    self.read.head(&mut connection, &self.keys).await
                })
                .await;
        }
        self.reading(
            |mut connection| async move { self.read.head(&mut *connection, &self.keys).await },
        )
        .await
    }
}

impl RedisPublisher {
    /// Publishes on a Redis Cluster: metrics with `SPUBLISH` on this worker's partition (one
    /// channel for all of its metrics, so they keep their order), alerts with the append script
    /// in the alert log's slot. While this worker listens on the channel, the publish goes to the
    /// very master it listens on (a direct connection that follows no redirection: a master that
    /// lost the slot answers `MOVED`, and the publish 503s), and, for metrics, that subscription
    /// must be the same before and after: a `202` means this worker's clients get the message,
    /// as on one Redis. An idle worker publishes through the cluster connection (redis-rs routes
    /// by slot).
    async fn publish_sharded(
        &self,
        cluster: &ClusterCommands,
        envelope: &Envelope,
        started: Instant,
    ) -> Result<Option<LogId>, PublishError> {
        let channel = match envelope.payload {
            Payload::Metrics(_) => cluster.channels.partition_of(envelope.origin.as_str()),
            Payload::Alert(_) => cluster.channels.alerts(),
        };
        self.channel_ready(cluster, channel).await?;
        let idles = self.status.idles();
        let live = self.status.channel_live(channel);
        let echo = self.echo_for(envelope, live.is_some());
        let payload = envelope.to_json();
        // Set when the master answered that too few replicas hold the alert: not a broken
        // connection, nor a master that moved.
        let mut too_few_replicas = false;
        let attempt = async {
            match &live {
                Some((_, master)) => {
                    let alert = matches!(envelope.payload, Payload::Alert(_));
                    let mut connection = self.master_connection(cluster, master, alert).await?;
                    // Past the time this publish waits for, the master must not run it.
                    let deadline = |connection: &NodeConnection| {
                        connection.deadline_us(
                            self.config
                                .command_timeout
                                .saturating_sub(started.elapsed()),
                        )
                    };
                    let mut retried = false;
                    let published = loop {
                        let until = deadline(&connection);
                        let published = self
                            .sharded_script(
                                &mut connection.connection,
                                cluster,
                                channel,
                                envelope,
                                &payload,
                                until,
                            )
                            .await;
                        if alert
                            || retried
                            || !published.as_ref().is_err_and(publish_connection_lost)
                        {
                            break published?;
                        }
                        // Redis dropped the connection since its last use (`CLIENT KILL`, an
                        // idle `timeout`): once more on a new one. A metric may run twice (every
                        // worker drops a second copy, `copies.rs`); an alert's append went on a
                        // connection that had just answered a PING.
                        retried = true;
                        cluster.forget(master);
                        connection = self.master_connection(cluster, master, false).await?;
                    };
                    let mut connection = connection.connection;
                    if published.is_some() && self.config.alert_min_replicas > 0 {
                        // WAIT counts this connection's writes: the alert just appended.
                        let replicated = self.replicated(&mut connection).await?;
                        too_few_replicas = replicated.is_err();
                        replicated?;
                    }
                    Ok(published)
                }
                None => {
                    let mut connection = cluster.connection().await.map_err(|error| {
                        PublishError::caused_by("no Redis Cluster connection", error)
                    })?;
                    let published = self
                        .sharded_script(&mut connection, cluster, channel, envelope, &payload, 0)
                        .await?;
                    if published.is_some() && self.config.alert_min_replicas > 0 {
                        let within_ms = self.wait_ms();
                        let acknowledged = ClusterCommands::wait_on_slot(
                            &mut connection,
                            cluster.channels.slot(channel),
                            self.config.alert_min_replicas,
                            within_ms,
                        )
                        .await
                        .map_err(|error| {
                            PublishError::caused_by("WAIT for replicas failed", error)
                        })?;
                        let replicated = self.enough_replicas(acknowledged, within_ms);
                        too_few_replicas = replicated.is_err();
                        replicated?;
                    }
                    Ok(published)
                }
            }
        };
        let outcome = tokio::time::timeout(self.config.command_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::unavailable(format!(
                    "publish took longer than {:?}",
                    self.config.command_timeout
                )))
            });
        if let (Err(_), Some((_, master)), false) = (&outcome, &live, too_few_replicas) {
            // The connection may be broken, or the node no longer a master: connect anew.
            cluster.forget(master);
        }
        let session = live.map(|(session, _)| session);
        let changed = (session.is_some()
            && self
                .status
                .channel_live(channel)
                .map(|(session, _)| session)
                != session)
            .then(|| {
                format!(
                    "this worker's subscription of {} changed sessions while the message was \
                     published: it may not reach this worker's clients (it may still reach \
                     others')",
                    cluster.channels.name(channel)
                )
            });
        let moved_on = async {
            match session {
                Some(session) => self.status.until_channel_leaves(channel, session).await,
                None => std::future::pending().await,
            }
        };
        self.acknowledged(outcome, changed, echo, started, idles, moved_on)
            .await
    }

    /// The connection to `master` for a publish. For an alert it has just answered a `PING`
    /// (made anew once when Redis had dropped it): an append must not run twice, so it is not
    /// retried, and it must not go on a connection Redis dropped since its last use.
    async fn master_connection(
        &self,
        cluster: &ClusterCommands,
        master: &Arc<str>,
        alert: bool,
    ) -> Result<NodeConnection, PublishError> {
        let no_connection =
            |error| PublishError::caused_by("no connection to the Redis master", error);
        let mut node = cluster.node(master).await.map_err(no_connection)?;
        if !alert {
            return Ok(node);
        }
        match redis::cmd("PING")
            .query_async::<()>(&mut node.connection)
            .await
        {
            Ok(()) => Ok(node),
            Err(error) if crate::connect::lost(&error) => {
                cluster.forget(master);
                let mut node = cluster.node(master).await.map_err(no_connection)?;
                redis::cmd("PING")
                    .query_async::<()>(&mut node.connection)
                    .await
                    .map_err(no_connection)?;
                Ok(node)
            }
            Err(error) => Err(no_connection(error)),
        }
    }

    /// The publish itself on a Redis Cluster: the metrics script, or the alert log's append
    /// script (the log id).
    async fn sharded_script(
        &self,
        connection: &mut (impl redis::aio::ConnectionLike + Send),
        cluster: &ClusterCommands,
        channel: usize,
        envelope: &Envelope,
        payload: &str,
        deadline_us: u64,
    ) -> Result<Option<LogId>, PublishError> {
        let published = match envelope.payload {
            Payload::Metrics(_) => cluster
                .spublish(connection, channel, payload, deadline_us)
                .await
                .map(|_| None),
            Payload::Alert(_) => self
                .append
                .append(
                    connection,
                    &self.keys,
                    self.config.alert_retention,
                    payload,
                    deadline_us,
                )
                .await
                .map(|(id, _epoch)| Some(id)),
        };
        published.map_err(|error| PublishError::caused_by("publish failed", error))
    }

    /// Waits until this worker's subscriber is live on `channel` (or idle: no clients to miss
    /// anything), within the command timeout.
    async fn channel_ready(
        &self,
        cluster: &ClusterCommands,
        channel: usize,
    ) -> Result<(), PublishError> {
        if self.status.state() == SubscriberState::Idle
            || self.status.channel_live(channel).is_some()
        {
            return Ok(());
        }
        tokio::time::timeout(
            self.config.command_timeout,
            self.status.until_channel_live(channel),
        )
        .await
        .map_err(|_| {
            PublishError::unavailable(format!(
                "this worker's subscription of {} is not live again yet (its master is failing \
                 over, or unreachable)",
                cluster.channels.name(channel)
            ))
        })
    }

    /// For a metric published while this worker's subscriber is live: its echo, registered
    /// before the publish (it can come before the reply).
    fn echo_for(&self, envelope: &Envelope, live: bool) -> Option<Echo> {
        (live && matches!(envelope.payload, Payload::Metrics(_))).then(|| {
            self.status
                .echoes
                .expect(envelope.origin.as_str(), envelope.seq)
        })
    }

    /// What a publish's `outcome` is answered, on every topology. A metric's `202` needs the
    /// subscription it was published for to have stayed live (`changed`: why it did not) and
    /// its echo: Redis answers before it writes to its subscribers, and a master that stops in
    /// between may deliver the message late or not at all (see `echoes`). The echo is awaited
    /// within the Redis timeout counted from `started`, and until `moved_on` resolves (that
    /// subscription is no longer live). Neither holds when the subscriber went idle meanwhile
    /// (`idles`, [`SharedStatus::idles`] before the publish, changed): no client of this worker
    /// was there all along, none can miss it. Alerts have no echo: the log gives them to the
    /// next session.
    async fn acknowledged(
        &self,
        outcome: Result<Option<LogId>, PublishError>,
        changed: Option<String>,
        echo: Option<Echo>,
        started: Instant,
        idles: u64,
        moved_on: impl std::future::Future<Output = ()>,
    ) -> Result<Option<LogId>, PublishError> {
        let published = outcome?;
        let Some(mut echo) = echo else {
            return Ok(published);
        };
        let went_idle = || self.status.idles() != idles;
        if let Some(why) = changed {
            return if went_idle() {
                Ok(published)
            } else {
                Err(PublishError::unavailable(why))
            };
        }
        let left = self
            .config
            .command_timeout
            .saturating_sub(started.elapsed());
        tokio::select! {
            biased;
            () = echo.arrived() => Ok(published),
            () = moved_on => if went_idle() {
                Ok(published)
            } else {
                Err(PublishError::unavailable(
                    "Redis took the metric, but this worker's subscriber stopped before it came \
                     back: it may not reach this worker's clients (it may still reach others')",
                ))
            },
            () = tokio::time::sleep(left) => Err(PublishError::unavailable(format!(
                "Redis took the metric, but this worker's subscriber did not receive it within \
                 {:?}: it may reach clients late, or not at all (workers drop it when it comes \
                 after newer metrics)",
                self.config.command_timeout
            ))),
        }
    }

    /// How long `WAIT` may take: half the command timeout, so the answer still comes within it.
    fn wait_ms(&self) -> u64 {
        (self.config.command_timeout.as_millis() as u64 / 2).max(1)
    }

    fn enough_replicas(&self, acknowledged: u32, within_ms: u64) -> Result<(), PublishError> {
        let wanted = self.config.alert_min_replicas;
        if acknowledged < wanted {
            return Err(PublishError::unavailable(format!(
                "the alert reached {acknowledged} of the {wanted} replicas \
                 --alert-min-replicas asks for within {within_ms} ms; it may still be delivered"
            )));
        }
        Ok(())
    }

    /// `WAIT`s for `--alert-min-replicas` replicas to hold this connection's last write (the
    /// alert just appended), within the command timeout. The outer error: `WAIT` failed; the
    /// inner one: Redis answered that fewer replicas did.
    async fn replicated(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> Result<Result<(), PublishError>, PublishError> {
        let within_ms = self.wait_ms();
        let acknowledged: u32 = redis::cmd("WAIT")
            .arg(self.config.alert_min_replicas)
            .arg(within_ms)
            .query_async(connection)
            .await
            .map_err(|error| PublishError::caused_by("WAIT for replicas failed", error))?;
        Ok(self.enough_replicas(acknowledged, within_ms))
    }

    /// Runs a read of the alert log on a pooled connection, within the command timeout. With
    /// Sentinel a failed read is tried once more on a pool made for the master named now: the
    /// first read after a failover (a client resuming) would otherwise find the old master. A
    /// read on a connection handed out unchecked (`pool.rs`) is tried once more too.
    async fn reading<T, Read, Fut>(&self, read: Read) -> Result<T, HistoryError>
    where
        Read: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, HistoryError>>,
    {
        let mut outcome = Err(HistoryError::unavailable("the alert log was not read"));
        for _ in 0..2 {
            let (master, pool) = match self.pool().await {
                Ok(pool) => pool,
                Err(error) => return Err(HistoryError::caused_by("no Redis pool", error)),
            };
            let mut unchecked = false;
            let attempt = async {
                let connection = pool
                    .get()
                    .await
                    .map_err(|error| HistoryError::caused_by("no Redis connection", error))?;
                unchecked = connection.unchecked();
                read(connection).await
            };
            outcome = self.bounded(attempt).await;
            if outcome.is_ok() {
                break;
            }
            self.pool.failed(&master);
            if unchecked {
                // Redis may have gone since the connection last answered (a restart): the
                // connections idle beside it went too. A read may run twice.
                pool.retain(|_, _| false);
            } else if !self.pool.follows_failover() {
                break;
            }
        }
        outcome
    }

    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, HistoryError>>,
    ) -> Result<T, HistoryError> {
        tokio::time::timeout(self.config.command_timeout, read)
            .await
            .unwrap_or_else(|_| Err(HistoryError::unavailable("reading the alert log timed out")))
    }
}

/// Whether a publish failed because its connection was dropped (not refused, not answered).
fn publish_connection_lost(error: &PublishError) -> bool {
    let PublishError::Unavailable { cause, .. } = error;
    crate::connect::lost_cause(cause.as_ref())
}
