//! Publishing through a lazily created connection pool.

use async_trait::async_trait;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use fanout_domain::{
    AlertHistory, AlertId, AlertLog, Broadcaster, Channel, Envelope, HistoryError, Payload,
    PublishError,
};
use tokio::sync::OnceCell;

use crate::{log, RedisConfig};

/// `PUBLISH`es metrics; appends alerts to the alert log and publishes them in one atomic script.
/// Also reads the alert log back ([`AlertLog`]).
pub struct RedisPublisher {
    config: RedisConfig,
    /// Created on the first publish, then shared by every publish of this worker.
    pool: OnceCell<Pool>,
    alert_script: redis::Script,
}

impl RedisPublisher {
    pub fn new(config: RedisConfig) -> Self {
        Self {
            config,
            pool: OnceCell::new(),
            alert_script: log::publish_alert_script(),
        }
    }

    async fn pool(&self) -> Result<&Pool, PublishError> {
        self.pool
            .get_or_try_init(|| async {
                let mut config = deadpool_redis::Config::from_url(self.config.url.as_str());
                let mut pool = PoolConfig::new(self.config.pool_size);
                pool.timeouts = Timeouts {
                    wait: Some(self.config.command_timeout),
                    create: Some(self.config.command_timeout),
                    recycle: Some(self.config.command_timeout),
                };
                config.pool = Some(pool);
                let pool = config.create_pool(Some(Runtime::Tokio1)).map_err(|error| {
                    PublishError::Unavailable(format!("cannot create the Redis pool: {error}"))
                })?;
                tracing::info!(
                    max_connections = self.config.pool_size,
                    "Redis publish pool created"
                );
                Ok(pool)
            })
            .await
    }
}

#[async_trait]
impl Broadcaster for RedisPublisher {
    async fn publish(&self, envelope: &Envelope) -> Result<Option<AlertId>, PublishError> {
        let pool = self.pool().await?;
        let payload = envelope.to_json();
        let attempt = async {
            let mut connection = pool.get().await.map_err(|error| {
                PublishError::Unavailable(format!("no Redis connection: {error}"))
            })?;
            let published: Result<Option<AlertId>, redis::RedisError> = match envelope.payload {
                Payload::Metrics(_) => redis::cmd("PUBLISH")
                    .arg(Channel::Metrics.name())
                    .arg(&payload)
                    .query_async::<i64>(&mut *connection)
                    .await
                    .map(|_| None),
                Payload::Alert(_) => {
                    debug_assert!(payload.starts_with(log::ALERT_PREFIX));
                    self.alert_script
                        .key(&self.config.alert_log_key)
                        .arg(self.config.alert_retention)
                        .arg(&payload)
                        .arg(Channel::Alerts.name())
                        .invoke_async::<String>(&mut *connection)
                        .await
                        .and_then(|id| {
                            id.parse().map(Some).map_err(|_| {
                                redis::RedisError::from((
                                    redis::ErrorKind::UnexpectedReturnType,
                                    "XADD returned an unexpected id",
                                ))
                            })
                        })
                }
            };
            published.map_err(|error| {
                // A failed command may leave the connection broken: drop it from the pool
                // rather than hand it to the next publish.
                drop(deadpool_redis::Connection::take(connection));
                PublishError::Unavailable(format!("publish failed: {error}"))
            })
        };
        match tokio::time::timeout(self.config.command_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Unavailable(format!(
                "publish took longer than {:?}",
                self.config.command_timeout
            ))),
        }
    }
}

#[async_trait]
impl AlertLog for RedisPublisher {
    async fn alerts_after(
        &self,
        after: AlertId,
        limit: usize,
    ) -> Result<AlertHistory, HistoryError> {
        let pool = self
            .pool()
            .await
            .map_err(|PublishError::Unavailable(e)| HistoryError::Unavailable(e))?;
        let read = async {
            let mut connection = pool.get().await.map_err(|error| {
                HistoryError::Unavailable(format!("no Redis connection: {error}"))
            })?;
            log::alerts_after(&mut *connection, &self.config.alert_log_key, after, limit).await
        };
        tokio::time::timeout(self.config.command_timeout, read)
            .await
            .unwrap_or_else(|_| {
                Err(HistoryError::Unavailable(
                    "reading the alert log timed out".into(),
                ))
            })
    }
}
