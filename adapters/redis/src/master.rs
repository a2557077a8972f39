//! Where the master is, and a pool of connections to it that follows a failover.
//!
//! With one Redis (`--redis-url`) the master is that URL. With Sentinel (`--redis-sentinel`,
//! `--redis-sentinel-master`) it is asked of the sentinels each time a connection to it is made
//! (redis-rs's `Sentinel`, which also checks that the answer says `ROLE` master); the URL then
//! gives only what every connection to the master shares: TLS, credentials, database.
//!
//! A [`MasterPool`] is a deadpool pool bound to one master address. A command that fails in a
//! way a failover explains (the connection lost, `READONLY` from a demoted master, a timeout)
//! drops the pool, so the next command asks the sentinels again. It must never hold a lock across
//! a command, only across finding the master and creating the pool.

use std::sync::{Mutex, PoisonError};

use crate::pool::Pool;
use futures_util::StreamExt;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult, TlsMode};

use crate::RedisConfig;

/// How to find the master through Redis Sentinel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The sentinels, `HOST:PORT` each; asked in turn.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// The username for the sentinels (ACL), if they need one.
    pub username: Option<String>,
    /// The password for the sentinels, if they need one.
    pub password: Option<String>,
    /// Whether the sentinels speak TLS.
    pub tls: bool,
}

/// The masters a sentinel announces, as they are promoted.
pub(crate) type SwitchEvents = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// Finds the master: the URL's, or the one the sentinels name.
pub(crate) struct Resolver {
    template: ConnectionInfo,
    sentinel: Option<SentinelResolver>,
}

struct SentinelResolver {
    /// redis-rs's client of the sentinels: it asks them in turn and checks the answer's `ROLE`.
    sentinels: tokio::sync::Mutex<Sentinel>,
    /// The sentinels' addresses, for the light question "which master?" ([`Resolver::named_master`]).
    nodes: Vec<ConnectionInfo>,
    /// A connection to one of them, kept between questions.
    asking: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    master_name: String,
    node: SentinelNodeConnectionInfo,
}

impl Resolver {
    /// Checks the configuration without connecting.
    pub(crate) fn new(config: &RedisConfig) -> RedisResult<Self> {
        let template = config.url.as_str().into_connection_info()?;
        let sentinel = match &config.sentinel {
            None => None,
            Some(sentinel) => {
                let scheme = if sentinel.tls { "rediss" } else { "redis" };
                let mut nodes = Vec::with_capacity(sentinel.sentinels.len());
                for address in &sentinel.sentinels {
                    let mut settings = redis::RedisConnectionInfo::default();
                    if let Some(username) = &sentinel.username {
                        settings = settings.set_username(username);
                    }
                    if let Some(password) = &sentinel.password {
                        settings = settings.set_password(password);
                    }
                    let node = format!("{scheme}://{address}")
                        .as_str()
                        .into_connection_info()?
                        .set_redis_settings(settings);
                    nodes.push(node);
                }
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(template.redis_settings().clone());
                if let ConnectionAddr::TcpTls { insecure, .. } = template.addr() {
                    node = node.set_tls_mode(if *insecure {
                        TlsMode::Insecure
                    } else {
                        TlsMode::Secure
                    });
                }
                Some(SentinelResolver {
                    sentinels: tokio::sync::Mutex::new(Sentinel::build(nodes.clone())?),
                    nodes,
                    asking: tokio::sync::Mutex::new(None),
                    master_name: sentinel.master_name.clone(),
                    node,
                })
            }
        };
        Ok(Self { template, sentinel })
    }

    /// Whether the master can move (Sentinel): then a failed command is worth asking again.
    pub(crate) fn follows_failover(&self) -> bool {
        self.sentinel.is_some()
    }

    /// The master the sentinels name now, `HOST:PORT`, without connecting to it (a cheap
    /// question, asked often): `None` without Sentinel, or when no sentinel answers.
    pub(crate) async fn named_master(&self) -> Option<String> {
        let resolver = self.sentinel.as_ref()?;
        let mut asking = resolver.asking.lock().await;
        for _ in 0..=resolver.nodes.len() {
            if asking.is_none() {
                for node in &resolver.nodes {
                    let Ok(client) = redis::Client::open(node.clone()) else {
                        continue;
                    };
                    if let Ok(connection) = client.get_multiplexed_async_connection().await {
                        *asking = Some(connection);
                        break;
                    }
                }
            }
            let connection = asking.as_mut()?;
            let answer: RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&resolver.master_name)
                .query_async(connection)
                .await;
            match answer {
                Ok(Some((host, port))) => return Some(format!("{host}:{port}")),
                // This sentinel knows no master (or failed): ask another.
                Ok(None) | Err(_) => *asking = None,
            }
        }
        None
    }

    /// The masters the sentinels announce from now on (`+switch-master` for our master name),
    /// `HOST:PORT` each, from the first sentinel that takes the subscription within `timeout`;
    /// `None` without Sentinel or when none does.
    pub(crate) async fn switch_events(&self, timeout: std::time::Duration) -> Option<SwitchEvents> {
        let resolver = self.sentinel.as_ref()?;
        for node in &resolver.nodes {
            let subscribed = async {
                let client = redis::Client::open(node.clone())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            if let Ok(Ok(pubsub)) = tokio::time::timeout(timeout, subscribed).await {
                let name = resolver.master_name.clone();
                let events = pubsub.into_on_message().filter_map(move |message| {
                    // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    let payload: String = message.get_payload().unwrap_or_default();
                    let fields: Vec<&str> = payload.split(' ').collect();
                    let named = match fields.as_slice() {
                        [master, _, _, ip, port] if *master == name => Some(format!("{ip}:{port}")),
                        _ => None,
                    };
                    std::future::ready(named)
                });
                return Some(Box::pin(events));
            }
        }
        None
    }

    /// Where to connect now. With Sentinel this asks the sentinels (and checks the master's
    /// `ROLE`), so it can fail while a failover is under way.
    pub(crate) async fn master(&self) -> RedisResult<ConnectionInfo> {
        match &self.sentinel {
            None => Ok(self.template.clone()),
            Some(resolver) => {
                let client = resolver
                    .sentinels
                    .lock()
                    .await
                    .async_master_for(&resolver.master_name, Some(&resolver.node))
                    .await?;
                Ok(client.get_connection_info().clone())
            }
        }
    }
}

/// A pool of connections to the current master, created on first use and again after a failure
/// a failover explains.
pub(crate) struct MasterPool {
    config: RedisConfig,
    resolver: std::sync::Arc<Resolver>,
    purpose: &'static str,
    /// The pool and the master address it connects to.
    current: Mutex<Option<(String, Pool)>>,
    /// Held while a pool is being made, so that a failover makes one pool, not one per request.
    making: tokio::sync::Mutex<()>,
}

impl MasterPool {
    pub(crate) fn new(
        config: RedisConfig,
        resolver: std::sync::Arc<Resolver>,
        purpose: &'static str,
    ) -> Self {
        Self {
            config,
            resolver,
            purpose,
            current: Mutex::new(None),
            making: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<(String, Pool)> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The pool of the current master, and its address.
    pub(crate) async fn get(&self) -> Result<(String, Pool), String> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _making = self.making.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let master = tokio::time::timeout(self.config.command_timeout, self.resolver.master())
            .await
            .map_err(|_| {
                format!(
                    "finding the Redis master took longer than {:?}",
                    self.config.command_timeout
                )
            })?
            .map_err(|error| format!("cannot find the Redis master: {error}"))?;
        let address = master.addr().to_string();
        let pool = self
            .config
            .create_pool(master, self.purpose)
            .map_err(|error| format!("cannot create the Redis pool: {error}"))?;
        if self.resolver.follows_failover() {
            tracing::info!(master = %address, purpose = self.purpose, "Redis master found through Sentinel");
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((address.clone(), pool.clone()));
        Ok((address, pool))
    }

    /// Whether the master can move (Sentinel).
    pub(crate) fn follows_failover(&self) -> bool {
        self.resolver.follows_failover()
    }

    /// After a command on `address` failed: with Sentinel, the next command asks for the master
    /// again (the failure may be a failover: the connection lost, `READONLY`, a timeout).
    pub(crate) fn failed(&self, address: &str) {
        if !self.resolver.follows_failover() {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|(at, _)| at == address) {
            *current = None;
        }
    }
}
