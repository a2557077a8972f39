//! The subscriber on a Redis Cluster: sharded Pub/Sub, one dedicated connection per master that
//! serves any of the worker's metric partitions, and one for the alert channel, each a session of
//! its own.
//!
//! A supervising task reads the slot map (`CLUSTER SLOTS`, from any node that answers) and keeps
//! one node session per master with exactly the channels that master serves. A session ends on
//! any error (connection lost, a `PING` unanswered within the command timeout, a server-side
//! `sunsubscribe` because a slot moved, `MOVED` on `SSUBSCRIBE`); the supervisor then reads the
//! map again and starts sessions where the channels are now served. Sessions of other masters
//! go on untouched: a failover stops only the partitions of the failed master. The map is also
//! read at every ping interval, so a slot that moved without a push is followed within it.
//!
//! Each session's channels are marked live in the shared status under the session's number, so a
//! publisher knows whether the partition it publishes on is live, and whether it stayed live
//! across its `SPUBLISH`. The alert channel's session reads the alert log on its own node and
//! holds the worker's [`AlertFeed`] while it lives (one session at a time: a lock).
//!
//! Over 400 lines on purpose: the supervisor of the node sessions and its slot-map bookkeeping are one state machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_domain::{AlertFeed, LocalDelivery};
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterChannels, ClusterConfig, SessionKey, SlotMap};
use crate::connect::multiplexed;
use crate::inbox::{SessionError, LOG_INTERVAL};
use crate::log::LogKeys;
use crate::status::{RateLimitedLog, SharedStatus};
use crate::RedisConfig;

/// Longest wait for one node's `CLUSTER SLOTS` answer before the next node is asked: a node
/// that hangs must not hold up finding the others.
const SLOTS_WAIT: Duration = Duration::from_millis(500);

/// What every node session shares.
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    pub(crate) channels: Arc<ClusterChannels>,
    pub(crate) status: Arc<SharedStatus>,
    pub(crate) delivery: Arc<dyn LocalDelivery>,
    /// Credentials and database of every connection (from `--redis-url`).
    pub(crate) settings: RedisConnectionInfo,
    pub(crate) keys: LogKeys,
    /// Cancelled when the subscription is dropped (its last client left), under the status's
    /// lock: what this listener and its node sessions tell the status goes through
    /// [`SharedStatus::change_as_listener`] with it (or with a node's child of it), so that a
    /// dropped listener's late `subscribed` never looks like a new one's.
    pub(crate) listener: CancellationToken,
    /// This worker's place in the alert log, held by the session that carries the alert
    /// channel; started at the log's head before the first `SSUBSCRIBE` of it.
    pub(crate) feed: Arc<tokio::sync::Mutex<Option<AlertFeed>>>,
}

/// What a node session tells the supervisor.
pub(crate) enum Event {
    /// It ended.
    Ended(Ended),
    /// It no longer holds `channel` (the slot moved away, or its master refused it).
    Dropped {
        key: SessionKey,
        session: u64,
        channel: usize,
    },
}

/// A node session that ended, and why.
pub(crate) struct Ended {
    pub(crate) key: SessionKey,
    pub(crate) session: u64,
    pub(crate) error: SessionError,
}

struct Running {
    /// The channels it holds (as far as the supervisor knows: a session also drops channels and
    /// says so).
    channels: Vec<usize>,
    session: u64,
    cancel: CancellationToken,
    /// The new set of channels, when slots moved.
    changes: mpsc::UnboundedSender<Vec<usize>>,
}

/// The supervising task of the sharded subscriber.
pub(crate) struct ShardedListener {
    shared: Arc<Shared>,
    /// Nodes to ask for the slot map: the seeds, then every node a map named.
    known: Vec<String>,
    asking: Option<(String, MultiplexedConnection)>,
}

impl ShardedListener {
    pub(crate) fn new(
        config: RedisConfig,
        cluster: &ClusterConfig,
        status: Arc<SharedStatus>,
        delivery: Arc<dyn LocalDelivery>,
        cancel: CancellationToken,
    ) -> Self {
        let channels = Arc::new(ClusterChannels::new(cluster.partitions));
        status.reset_channels(channels.len());
        // Checked at start-up (`RedisConfig::validate`).
        let settings = config
            .url
            .as_str()
            .into_connection_info()
            .map(|info| info.redis_settings().clone())
            .unwrap_or_default();
        Self {
            shared: Arc::new(Shared {
                keys: LogKeys::new(&config.alert_log_key),
                config,
                channels,
                status,
                delivery,
                settings,
                listener: cancel,
                feed: Arc::new(tokio::sync::Mutex::new(None)),
            }),
            known: cluster.nodes.clone(),
            asking: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        // What the supervisor tells the status goes through `change_as_listener` with this: a
        // subscription dropped meanwhile is left idle.
        let cancel = shared.listener.clone();
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Event>();
        let mut running: BTreeMap<SessionKey, Running> = BTreeMap::new();
        let mut attempt: u32 = 0;
        let mut attempts_log = RateLimitedLog::new(LOG_INTERVAL);
        let mut recovering = false;
        let mut tick = tokio::time::interval(shared.config.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut delay = Duration::ZERO;
            match self.slot_map().await {
                Ok((map, asked)) => {
                    let wanted = map.assign(&shared.channels);
                    self.move_running(&mut running, &wanted, &asked).await;
                    // Channels no running session holds get a new one on their master.
                    let held: Vec<usize> = running
                        .values()
                        .flat_map(|node| node.channels.iter().copied())
                        .collect();
                    for (key, channels) in wanted {
                        if running.contains_key(&key) {
                            continue;
                        }
                        let channels: Vec<usize> =
                            channels.into_iter().filter(|c| !held.contains(c)).collect();
                        if channels.is_empty() {
                            continue;
                        }
                        let session = shared.status.next_session();
                        let (changes, changes_rx) = mpsc::unbounded_channel();
                        let node = Running {
                            channels: channels.clone(),
                            session,
                            cancel: cancel.child_token(),
                            changes,
                        };
                        tokio::spawn(crate::node_session::node_session(
                            Arc::clone(&shared),
                            key.clone(),
                            channels,
                            session,
                            recovering,
                            node.cancel.clone(),
                            changes_rx,
                            events_tx.clone(),
                        ));
                        running.insert(key, node);
                    }
                    let mut masters: Vec<&str> =
                        running.keys().map(|key| key.master.as_str()).collect();
                    masters.dedup();
                    let masters = masters.join(",");
                    shared
                        .status
                        .change_as_listener(&cancel, |status| status.set_master(masters));
                    let covered: usize = running.values().map(|node| node.channels.len()).sum();
                    if covered < shared.channels.len() {
                        let error = format!(
                            "{} of {} sharded channels are in slots no master serves: a failover is under way",
                            shared.channels.len() - covered,
                            shared.channels.len()
                        );
                        shared
                            .status
                            .change_as_listener(&cancel, |status| status.set_error(error));
                    }
                }
                Err(error) => {
                    let failed = shared.status.attempt_failed();
                    if let Some(suppressed) = attempts_log.allow(Instant::now()) {
                        tracing::warn!(
                            %error,
                            failed_attempts_total = failed,
                            suppressed,
                            "no Redis Cluster node tells the slot map; retrying"
                        );
                    }
                    if running.is_empty() {
                        shared
                            .status
                            .change_as_listener(&cancel, |status| status.set_error(error));
                    }
                    delay = shared.config.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                }
            }
            let wait = async {
                tokio::time::sleep(delay).await;
                tokio::select! {
                    event = events_rx.recv() => event,
                    _ = tick.tick() => None,
                }
            };
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = wait => event,
            };
            let ended = match event {
                None => continue,
                Some(Event::Dropped {
                    key,
                    session,
                    channel,
                }) => {
                    // Find the channel's master again, soon.
                    if let Some(node) = running.get_mut(&key) {
                        if node.session == session {
                            node.channels.retain(|&c| c != channel);
                        }
                    }
                    recovering = true;
                    // A moment for the cluster to agree on the slot, so that a map that lags
                    // behind the node refusing the channel is not asked in a tight loop.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(shared.config.backoff.delay(0)) => {}
                    }
                    continue;
                }
                Some(Event::Ended(ended)) => ended,
            };
            if running
                .get(&ended.key)
                .is_some_and(|node| node.session == ended.session)
            {
                running.remove(&ended.key);
            }
            if ended.error.was_subscribed {
                attempt = 0;
                recovering = true;
                tracing::warn!(master = %ended.key.master, error = %ended.error.message, "Redis Cluster subscriber session ended; finding the channels' masters again");
            } else {
                let failed = shared.status.attempt_failed();
                let delay = shared.config.backoff.delay(attempt);
                if let Some(suppressed) = attempts_log.allow(Instant::now()) {
                    tracing::warn!(
                        master = %ended.key.master,
                        error = %ended.error.message,
                        retry_in_ms = delay.as_millis() as u64,
                        failed_attempts_total = failed,
                        suppressed,
                        "Redis Cluster subscriber cannot subscribe on a master; retrying"
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }

    /// Gives running sessions the channels the map says their masters serve now, and ends those
    /// whose master serves none. Only when a second node agrees: a master that was frozen while
    /// its replica was promoted answers, for a moment after it is let go, with its old view, and
    /// following it would move live subscriptions back to a master that is about to lose them.
    async fn move_running(
        &mut self,
        running: &mut BTreeMap<SessionKey, Running>,
        wanted: &BTreeMap<SessionKey, Vec<usize>>,
        asked: &str,
    ) {
        let changed: Vec<SessionKey> = running
            .iter()
            .filter(|(key, node)| wanted.get(*key) != Some(&node.channels))
            .map(|(key, _)| key.clone())
            .collect();
        if changed.is_empty() {
            return;
        }
        let Some(second) = self.second_opinion(asked).await else {
            return;
        };
        let confirmed = second.assign(&self.shared.channels);
        for key in changed {
            if confirmed.get(&key) != wanted.get(&key) {
                continue;
            }
            match wanted.get(&key) {
                Some(channels) => {
                    if let Some(node) = running.get_mut(&key) {
                        node.channels = channels.clone();
                        let _ = node.changes.send(channels.clone());
                    }
                }
                None => {
                    if let Some(node) = running.remove(&key) {
                        node.cancel.cancel();
                    }
                }
            }
        }
    }

    /// The slot map as another node than `asked` sees it, from the first that answers.
    async fn second_opinion(&mut self, asked: &str) -> Option<SlotMap> {
        let timeout = self.shared.config.command_timeout.min(SLOTS_WAIT);
        for node in self.known.clone() {
            if node == asked {
                continue;
            }
            let connecting = async {
                let client = redis::Client::open(node_info(&node, &self.shared.settings)?)?;
                multiplexed(&client, timeout).await
            };
            let Ok(Ok(mut connection)) = tokio::time::timeout(timeout, connecting).await else {
                continue;
            };
            if let Ok(map) = cluster_slots(&mut connection, &node, timeout).await {
                return Some(map);
            }
        }
        None
    }

    /// The slot map, from the node asked last time if it still answers, else from the first of
    /// the known nodes that does.
    async fn slot_map(&mut self) -> Result<(SlotMap, String), String> {
        let timeout = self.shared.config.command_timeout.min(SLOTS_WAIT);
        if let Some((node, connection)) = self.asking.as_mut() {
            if let Ok(map) = cluster_slots(connection, node, timeout).await {
                let node = node.clone();
                self.learn(&map);
                return Ok((map, node));
            }
            self.asking = None;
        }
        let mut last_error = String::from("no Redis Cluster node is configured");
        for node in self.known.clone() {
            let connecting = async {
                let client = redis::Client::open(node_info(&node, &self.shared.settings)?)?;
                multiplexed(&client, timeout).await
            };
            let mut connection = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    last_error = format!("{node}: {error}");
                    continue;
                }
                Err(_) => {
                    last_error = format!("{node}: no answer within {timeout:?}");
                    continue;
                }
            };
            match cluster_slots(&mut connection, &node, timeout).await {
                Ok(map) => {
                    self.learn(&map);
                    self.asking = Some((node.clone(), connection));
                    return Ok((map, node));
                }
                Err(error) => last_error = format!("{node}: {error}"),
            }
        }
        Err(last_error)
    }

    fn learn(&mut self, map: &SlotMap) {
        for node in &map.nodes {
            if !self.known.contains(node) {
                self.known.push(node.clone());
            }
        }
    }
}

async fn cluster_slots(
    connection: &mut MultiplexedConnection,
    node: &str,
    timeout: Duration,
) -> Result<SlotMap, String> {
    let reply = tokio::time::timeout(
        timeout,
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(connection),
    )
    .await
    .map_err(|_| format!("CLUSTER SLOTS unanswered within {timeout:?}"))?
    .map_err(|error| error.to_string())?;
    let map = SlotMap::from_cluster_slots(&reply, node).map_err(|error| error.to_string())?;
    if map.nodes.is_empty() {
        return Err(format!("{node} serves no slots: not part of a cluster yet"));
    }
    Ok(map)
}

/// The connection details of one node, `HOST:PORT`, with the shared credentials.
pub(crate) fn node_info(
    node: &str,
    settings: &RedisConnectionInfo,
) -> redis::RedisResult<ConnectionInfo> {
    Ok(format!("redis://{node}")
        .as_str()
        .into_connection_info()?
        .set_redis_settings(settings.clone()))
}
