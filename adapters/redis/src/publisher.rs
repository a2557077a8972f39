//! Publishing through a lazily created connection pool.

use async_trait::async_trait;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use fanout_domain::{Broadcaster, Envelope, PublishError};
use tokio::sync::OnceCell;

use crate::RedisConfig;

/// `PUBLISH`es envelopes on the channel their payload belongs to.
pub struct RedisPublisher {
    config: RedisConfig,
    /// Created on the first publish, then shared by every publish of this worker.
    pool: OnceCell<Pool>,
}

impl RedisPublisher {
    pub fn new(config: RedisConfig) -> Self {
        Self {
            config,
            pool: OnceCell::new(),
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
    async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let pool = self.pool().await?;
        let payload = envelope.to_json();
        let channel = envelope.channel().name();
        let attempt = async {
            let mut connection = pool.get().await.map_err(|error| {
                PublishError::Unavailable(format!("no Redis connection: {error}"))
            })?;
            let published: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(&payload)
                .query_async(&mut *connection)
                .await;
            published.map(|_| ()).map_err(|error| {
                // A failed command may leave the connection broken: drop it from the pool
                // rather than hand it to the next publish.
                drop(deadpool_redis::Connection::take(connection));
                PublishError::Unavailable(format!("PUBLISH failed: {error}"))
            })
        };
        match tokio::time::timeout(self.config.command_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Unavailable(format!(
                "PUBLISH took longer than {:?}",
                self.config.command_timeout
            ))),
        }
    }
}
