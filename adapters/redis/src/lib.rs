//! The Redis bus: a pooled publisher and one dedicated, self-healing Pub/Sub subscriber per worker.
//!
//! - [`RedisPublisher`] implements [`fanout_domain::Broadcaster`]: `PUBLISH` on a deadpool-redis
//!   pool created on first use, at most `pool_size` connections, every call bounded by a timeout
//!   so a hung Redis turns into a clear `Unavailable` error instead of a stuck request.
//! - [`RedisSubscriber`] implements [`fanout_domain::BusSubscriber`]: one dedicated connection
//!   (Redis requires it for `SUBSCRIBE`; a pooled connection is never used), subscribed to both
//!   channels, that reconnects and resubscribes on any error with exponential backoff and jitter,
//!   and detects a hung server with an application-level `PING`.
//! - [`RedisQuota`] implements [`fanout_domain::PublishQuota`]: `--publish-rate` per credential
//!   for every worker on this Redis, one atomic GCRA script per publish.
//!
//! It never panics on what arrives from Redis: a message that is not a valid envelope is counted
//! and logged (rate-limited) and the listener goes on.

#![warn(missing_docs, unreachable_pub)]

mod backoff;
mod cluster;
mod connect;
mod copies;
mod echoes;
mod inbox;
mod late;
mod log;
mod master;
mod node_session;
mod pool;
mod publisher;
mod quota;
mod sharded;
mod status;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

pub use backoff::Backoff;
pub use cluster::{ClusterConfig, DEFAULT_PARTITIONS};
pub use master::SentinelConfig;
pub use publisher::RedisPublisher;
pub use quota::RedisQuota;
pub use subscriber::RedisSubscriber;

use master::Resolver;
use status::SharedStatus;

/// One worker's Redis bus: the publisher (also the alert-log reader) and the subscriber, sharing
/// one view of the bus's health.
pub struct RedisBus {
    /// The worker's [`fanout_domain::Broadcaster`] and [`fanout_domain::AlertLog`].
    pub publisher: Arc<RedisPublisher>,
    /// The worker's [`fanout_domain::BusSubscriber`]. While it reconnects, the publisher refuses
    /// publishes this worker's clients would miss.
    pub subscriber: Arc<RedisSubscriber>,
}

impl RedisBus {
    /// Connects nothing yet: the pool is created on the first publish, the subscriber's
    /// connection on the first subscribe. Refused when the URL or the sentinels' addresses are
    /// malformed.
    pub fn new(config: RedisConfig) -> Result<Self, redis::RedisError> {
        let status = Arc::new(SharedStatus::new(config.command_timeout));
        let resolver = Arc::new(Resolver::new(&config)?);
        Ok(Self {
            publisher: Arc::new(RedisPublisher::new(
                config.clone(),
                Arc::clone(&resolver),
                Arc::clone(&status),
            )?),
            subscriber: Arc::new(RedisSubscriber::new(config, resolver, status)),
        })
    }
}

/// How a worker talks to Redis.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]`, or `rediss://` for TLS. With [`RedisConfig::sentinel`]
    /// its host and port are not used: it gives the scheme (TLS), the credentials and the
    /// database of every connection to the master.
    pub url: String,
    /// Find the master through these sentinels instead of at the URL's address.
    pub sentinel: Option<SentinelConfig>,
    /// Use this Redis Cluster (sharded Pub/Sub) instead of the URL's address; the URL then gives
    /// only the credentials.
    pub cluster: Option<ClusterConfig>,
    /// Replicas that must hold an alert before its publish is acknowledged (`WAIT`): 0 does not
    /// wait.
    pub alert_min_replicas: u32,
    /// Most pooled publish connections of this worker.
    pub pool_size: usize,
    /// Bound on connecting, and on each publish or ping.
    pub command_timeout: Duration,
    /// How often the subscriber pings Redis to detect a hung server or a silent partition; its
    /// PONG is awaited for the rest of `command_timeout`, so a hang is noticed within that.
    pub ping_interval: Duration,
    /// First and largest delay between reconnect attempts (jittered, doubling). The largest is
    /// small on purpose: a worker must be subscribed again within ~300 ms of Redis answering,
    /// and an attempt against a Redis that is down costs one refused connect.
    pub backoff: Backoff,
    /// The stream holding the alert log.
    pub alert_log_key: String,
    /// Alerts kept in the log (approximately: Redis trims whole blocks).
    pub alert_retention: usize,
}

impl RedisConfig {
    /// The defaults, for `url`: 10 pooled connections, a 2 s command timeout, a ping every
    /// second, reconnect delays of 50 ms up to 200 ms, and the alert log in
    /// `performance:alerts:log` keeping 10 000 alerts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sentinel: None,
            cluster: None,
            alert_min_replicas: 0,
            pool_size: 10,
            command_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(200)),
            alert_log_key: "performance:alerts:log".to_owned(),
            alert_retention: 10_000,
        }
    }

    /// A pool of at most `pool_size` connections, every step bounded by the command timeout.
    /// Connects nothing yet: connections are made when a caller asks for one.
    pub(crate) fn create_pool(
        &self,
        master: redis::ConnectionInfo,
        purpose: &'static str,
    ) -> Result<pool::Pool, String> {
        let pool = pool::build(master, self.pool_size, self.command_timeout)?;
        tracing::info!(
            max_connections = self.pool_size,
            purpose,
            "Redis pool created"
        );
        Ok(pool)
    }

    /// Checks the URL (and the sentinels' addresses) without connecting: a wrong scheme or host
    /// fails at start-up, not later.
    pub fn validate(&self) -> Result<(), redis::RedisError> {
        redis::Client::open(self.url.as_str())?;
        Resolver::new(self)?;
        if let Some(cluster) = &self.cluster {
            let invalid = |reason: String| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "invalid Redis Cluster configuration",
                    reason,
                )))
            };
            if self.sentinel.is_some() {
                return invalid("a Redis Cluster has no sentinels: give one or the other".into());
            }
            if self.url.starts_with("rediss://") {
                return invalid("TLS to a Redis Cluster is not supported yet".into());
            }
            if cluster.nodes.is_empty() || cluster.partitions == 0 {
                return invalid("it needs at least one node and one partition".into());
            }
            let alerts = cluster::slot(fanout_domain::Channel::Alerts.name());
            if cluster::slot(&self.alert_log_key) != alerts {
                return invalid(format!(
                    "the alert log key {:?} must be in the alert channel's slot, so that one \
                     script appends and publishes: give it the hash tag {{performance:alerts}}",
                    self.alert_log_key
                ));
            }
            cluster::ClusterCommands::new(self, cluster)?;
        }
        Ok(())
    }
}

/// The URL with its password replaced, for logs and health reports.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_only() {
        assert_eq!(
            redact_url("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("rediss://:secret@h"), "rediss://:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn accepts_plain_tls_and_authenticated_urls() {
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://h:6380",
            "redis://u:p@h:1/2",
        ] {
            assert!(RedisConfig::new(url).validate().is_ok(), "{url}");
        }
        assert!(RedisConfig::new("http://h").validate().is_err());
    }
}
