//! Redis Cluster: which sharded channels a worker uses, which slot each lives in, and which
//! master owns each slot now.
//!
//! Metrics go over `partitions` sharded channels `performance:metrics:{N}` (their hash tags spread
//! them over slots, so over masters); a worker publishes on one of them, picked from its origin,
//! so its messages stay on one channel and arrive in the order they were published. Alerts keep
//! the channel `performance:alerts`, sharded in its own slot, where the alert log's keys
//! (`{performance:alerts}…`) live too: the script that appends and publishes runs on one node.
//!
//! The slot map is read with `CLUSTER SLOTS` from any node that answers, seeds first; it is
//! asked again whenever a subscription ends, and at every ping.
//!
//! Over 400 lines on purpose: the partition scheme, the slot map and its reading are one concept; a third is their tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fanout_domain::Channel;
use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{IntoConnectionInfo, RedisConnectionInfo, RedisResult, Value};

use crate::RedisConfig;

/// Slots in a Redis Cluster.
const SLOTS: u16 = 16384;

/// How to reach a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Some of the cluster's nodes, `HOST:PORT` each: the others are learnt from them.
    pub nodes: Vec<String>,
    /// Sharded channels metrics are spread over (`--redis-partitions`).
    pub partitions: u16,
}

/// The default number of metrics partitions: enough to spread over a few masters evenly, few
/// enough that a worker's subscriptions stay cheap (one `SSUBSCRIBE` each).
pub const DEFAULT_PARTITIONS: u16 = 16;

/// The slot of a key or sharded channel: CRC16 of its hash tag (the first non-empty `{…}`) or of
/// the whole name.
pub(crate) fn slot(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// The sharded channels one worker subscribes to: the metrics partitions, then the alert
/// channel, each with its slot. Indexed `0..partitions` for metrics, `partitions` for alerts.
#[derive(Debug)]
pub(crate) struct ClusterChannels {
    names: Vec<String>,
    slots: Vec<u16>,
    partitions: u16,
}

impl ClusterChannels {
    pub(crate) fn new(partitions: u16) -> Self {
        let mut names: Vec<String> = (0..partitions).map(Channel::metrics_partition).collect();
        names.push(Channel::Alerts.name().to_owned());
        let slots = names.iter().map(|name| slot(name)).collect();
        Self {
            names,
            slots,
            partitions,
        }
    }

    /// Every channel index.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    pub(crate) fn slot(&self, index: usize) -> u16 {
        self.slots[index]
    }

    /// The index of the alert channel.
    pub(crate) fn alerts(&self) -> usize {
        usize::from(self.partitions)
    }

    /// The channel a message arrived on, by name: `None` for one fanout does not use.
    pub(crate) fn channel_of(&self, name: &str) -> Option<Channel> {
        Channel::from_sharded_name(name, self.partitions)
    }

    /// The partition a worker with this origin publishes its metrics on.
    pub(crate) fn partition_of(&self, origin: &str) -> usize {
        usize::from(crc16::State::<crc16::XMODEM>::calculate(origin.as_bytes()) % self.partitions)
    }
}

/// The worker's commands on a Redis Cluster (publishes, the alert log, the quota): one
/// multiplexed cluster connection, made on first use, that routes each command to its slot's
/// master and follows `MOVED` and failovers by itself (redis-rs). Not a deadpool pool: its
/// cluster manager `PING`s every master on each checkout, which doubles a publish's round trips
/// and fails every checkout while any master is down.
pub(crate) struct ClusterCommands {
    client: ClusterClient,
    connection: tokio::sync::Mutex<Option<ClusterConnection>>,
    /// Connections to single masters, by `HOST:PORT`: a publish goes to the master this worker's
    /// subscriber listens on for the channel, and nowhere else.
    nodes: std::sync::Mutex<HashMap<Arc<str>, NodeConnection>>,
    settings: RedisConnectionInfo,
    timeout: Duration,
    pub(crate) channels: ClusterChannels,
    publish: redis::Script,
}

/// `SPUBLISH` that only a master runs. A replica accepts a bare `SPUBLISH` and delivers it only to
/// its own subscribers; while a master is failing over, redis-rs may send a command to one, and the
/// message would be acknowledged yet reach no worker. Declared with the channel as its key, the
/// script gets `MOVED` from a replica instead, and the publish fails (503) until the promotion.
/// It also refuses to run past its deadline (`LATE_CHECK`).
fn spublish_on_master() -> String {
    format!(
        "{}\nreturn redis.call('SPUBLISH', KEYS[1], ARGV[1])",
        crate::log::LATE_CHECK
    )
}

/// A connection to one master, and how far its clock is ahead of this worker's.
#[derive(Clone)]
pub(crate) struct NodeConnection {
    pub(crate) connection: MultiplexedConnection,
    offset_us: i64,
}

impl NodeConnection {
    /// `within` from now, in the master's clock (Unix microseconds).
    pub(crate) fn deadline_us(&self, within: Duration) -> u64 {
        let now = unix_us();
        let within = i64::try_from(within.as_micros()).unwrap_or(i64::MAX);
        u64::try_from(now.saturating_add(self.offset_us).saturating_add(within)).unwrap_or(0)
    }
}

fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl ClusterCommands {
    pub(crate) fn new(config: &RedisConfig, cluster: &ClusterConfig) -> RedisResult<Self> {
        let settings = config.url.as_str().into_connection_info()?;
        let settings = settings.redis_settings();
        let nodes: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("redis://{node}"))
            .collect();
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(config.command_timeout)
            .response_timeout(config.command_timeout);
        if let Some(username) = settings.username() {
            builder = builder.username(username);
        }
        if let Some(password) = settings.password() {
            builder = builder.password(password);
        }
        Ok(Self {
            client: builder.build()?,
            connection: tokio::sync::Mutex::new(None),
            nodes: std::sync::Mutex::new(HashMap::new()),
            settings: settings.clone(),
            timeout: config.command_timeout,
            channels: ClusterChannels::new(cluster.partitions),
            publish: redis::Script::new(&spublish_on_master()),
        })
    }

    /// A connection to the master at `master` alone (it follows no redirection: a node that no
    /// longer serves the slot answers `MOVED`, an error), made on first use, with the master's
    /// clock offset read by `TIME` (to within the round trip).
    pub(crate) async fn node(&self, master: &Arc<str>) -> RedisResult<NodeConnection> {
        if let Some(connection) = self.nodes_lock().get(master) {
            return Ok(connection.clone());
        }
        let info = format!("redis://{master}")
            .as_str()
            .into_connection_info()?
            .set_redis_settings(self.settings.clone());
        let client = redis::Client::open(info)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let before = unix_us();
        let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut connection).await?;
        let after = unix_us();
        let node = NodeConnection {
            connection,
            offset_us: seconds * 1_000_000 + micros - (before + after) / 2,
        };
        self.nodes_lock().insert(Arc::clone(master), node.clone());
        Ok(node)
    }

    /// Drops the connection to `master` after it failed: the next publish connects anew.
    pub(crate) fn forget(&self, master: &str) {
        self.nodes_lock().remove(master);
    }

    fn nodes_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, NodeConnection>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes `payload` on the sharded channel `channel`, on its slot's master only, and not
    /// after `deadline_us` (the master's clock; 0 for none).
    pub(crate) async fn spublish(
        &self,
        connection: &mut (impl redis::aio::ConnectionLike + Send),
        channel: usize,
        payload: &str,
        deadline_us: u64,
    ) -> RedisResult<i64> {
        self.publish
            .key(self.channels.name(channel))
            .arg(payload)
            .arg(deadline_us)
            .invoke_async(connection)
            .await
    }

    /// The shared connection (a cheap clone), made on first use.
    pub(crate) async fn connection(&self) -> RedisResult<ClusterConnection> {
        let mut connection = self.connection.lock().await;
        if let Some(connection) = connection.as_ref() {
            return Ok(connection.clone());
        }
        let made = self.client.get_async_connection().await?;
        tracing::info!("Redis Cluster connection made");
        *connection = Some(made.clone());
        Ok(made)
    }

    /// `WAIT replicas within_ms` on the master of `slot`: the writes this connection made there
    /// (the alert just appended) reached that many replicas. redis-rs would send a bare `WAIT`
    /// to every master.
    pub(crate) async fn wait_on_slot(
        connection: &mut ClusterConnection,
        slot: u16,
        replicas: u32,
        within_ms: u64,
    ) -> RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(within_ms);
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slot,
            SlotAddr::Master,
        )));
        let reply = connection.route_command(wait, route).await?;
        Ok(redis::from_redis_value(reply)?)
    }
}

/// Which master serves each slot, as one node saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// First slot of each range → (last slot, master `HOST:PORT`).
    ranges: BTreeMap<u16, (u16, String)>,
    /// Every node named in the map (masters and replicas), to ask next time.
    pub(crate) nodes: Vec<String>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply; `asked` stands in for a node that announces no host.
    pub(crate) fn from_cluster_slots(reply: &Value, asked: &str) -> RedisResult<Self> {
        let malformed = |what: &str| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "malformed CLUSTER SLOTS reply",
                what.to_owned(),
            ))
        };
        let Value::Array(ranges) = reply else {
            return Err(malformed("not an array"));
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(host, _)| host);
        let mut map = SlotMap::default();
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err(malformed("a range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end))) = (fields.first(), fields.get(1))
            else {
                return Err(malformed("a range has no bounds"));
            };
            let mut nodes = Vec::new();
            for node in &fields[2..] {
                let Value::Array(node) = node else {
                    return Err(malformed("a node is not an array"));
                };
                let host = match node.first() {
                    Some(Value::BulkString(host)) if !host.is_empty() && host != b"?" => {
                        String::from_utf8_lossy(host).into_owned()
                    }
                    _ => asked_host.to_owned(),
                };
                let Some(Value::Int(port)) = node.get(1) else {
                    return Err(malformed("a node has no port"));
                };
                nodes.push(format!("{host}:{port}"));
            }
            let (Ok(start), Ok(end), Some(master)) =
                (u16::try_from(*start), u16::try_from(*end), nodes.first())
            else {
                return Err(malformed("a range is out of bounds or has no master"));
            };
            map.ranges.insert(start, (end, master.clone()));
            for node in nodes {
                if !map.nodes.contains(&node) {
                    map.nodes.push(node);
                }
            }
        }
        Ok(map)
    }

    /// The master serving `slot`, if any does.
    pub(crate) fn owner(&self, slot: u16) -> Option<&str> {
        let (_, (end, master)) = self.ranges.range(..=slot).next_back()?;
        (slot <= *end).then_some(master.as_str())
    }

    /// Channel indexes grouped into the subscriber's sessions: per master, the metric partitions
    /// it serves, and the alert channel in a session of its own (a slow alert log never pauses
    /// metrics). Channels whose slot no master serves (a failover under way) are left out.
    pub(crate) fn assign(&self, channels: &ClusterChannels) -> BTreeMap<SessionKey, Vec<usize>> {
        let mut sessions: BTreeMap<SessionKey, Vec<usize>> = BTreeMap::new();
        for index in 0..channels.len() {
            if let Some(master) = self.owner(channels.slot(index)) {
                let key = SessionKey {
                    master: master.to_owned(),
                    alerts: index == channels.alerts(),
                };
                sessions.entry(key).or_default().push(index);
            }
        }
        sessions
    }
}

/// One session of the sharded subscriber: a master, and whether it is the alert channel's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SessionKey {
    pub(crate) master: String,
    pub(crate) alerts: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![bulk(host), Value::Int(port), bulk("id")])
    }

    #[test]
    fn slots_follow_redis_hash_tags() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("{performance:alerts}:log"), slot("performance:alerts"));
        // An empty tag is no tag: the whole name is hashed.
        assert_eq!(
            slot("{}x"),
            crc16::State::<crc16::XMODEM>::calculate(b"{}x") % SLOTS
        );
    }

    #[test]
    fn the_alert_log_shares_the_alert_channels_slot_and_partitions_spread() {
        let channels = ClusterChannels::new(16);
        assert_eq!(channels.len(), 17);
        assert_eq!(channels.name(channels.alerts()), "performance:alerts");
        assert_eq!(
            channels.slot(channels.alerts()),
            slot("{performance:alerts}:log:epoch")
        );
        let mut slots: Vec<u16> = (0..16).map(|i| channels.slot(i)).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 16, "every partition in a slot of its own");
        // Over three masters with the usual even split, every master gets partitions.
        let thirds = [0..5461, 5461..10923, 10923..16384];
        for third in thirds {
            assert!(slots.iter().any(|s| third.contains(s)), "{third:?}");
        }
        for channel in 0..channels.len() {
            assert!(channels.channel_of(channels.name(channel)).is_some());
        }
        assert!(channels.partition_of("worker-a") < 16);
    }

    #[test]
    fn a_slot_map_names_each_slots_master_and_every_node() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, "10.0.0.9:7001").expect("a valid reply");
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5460), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461), Some("10.0.0.9:7001"));
        assert_eq!(map.owner(16383), Some("10.0.0.9:7001"));
        assert_eq!(
            map.nodes,
            ["127.0.0.1:7000", "127.0.0.1:7003", "10.0.0.9:7001"]
        );
        let holes = Value::Array(vec![Value::Array(vec![
            Value::Int(100),
            Value::Int(200),
            node("h", 1),
        ])]);
        let map = SlotMap::from_cluster_slots(&holes, "h:1").expect("a valid reply");
        assert_eq!(map.owner(99), None);
        assert_eq!(map.owner(201), None);
        assert!(SlotMap::from_cluster_slots(&Value::Int(1), "h:1").is_err());
    }

    #[test]
    fn the_alert_channel_gets_a_session_of_its_own_beside_its_masters_partitions() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node("127.0.0.1", 7000),
        ])]);
        let map = SlotMap::from_cluster_slots(&reply, "127.0.0.1:7000").expect("a valid reply");
        let channels = ClusterChannels::new(4);
        let sessions = map.assign(&channels);
        let key = |alerts| SessionKey {
            master: "127.0.0.1:7000".to_owned(),
            alerts,
        };
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[&key(false)], [0, 1, 2, 3]);
        assert_eq!(sessions[&key(true)], [channels.alerts()]);
    }
}
