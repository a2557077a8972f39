//! The publish quota shared by every worker on one Redis: GCRA in one Lua script.
//!
//! Each credential's state is one key (`performance:quota:<credential>`) holding its theoretical
//! arrival time in microseconds, with a TTL so that idle credentials cost nothing. The script
//! reads the time from the Redis server (`TIME`), so every worker decides on one clock, and reads,
//! decides and writes in one atomic step: the quota holds whichever worker a publish lands on,
//! at one round trip per publish. The arithmetic is the domain's [`PublishRate`]; the script is
//! its transcription (tests/limits.rs checks it across worker processes).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fanout_domain::{PublishQuota, PublishRate, QuotaDecision, QuotaError};
use redis::Script;

use crate::cluster::ClusterCommands;
use crate::master::{MasterPool, Resolver};
use crate::pool::{self, Connection};
use crate::RedisConfig;

/// Prefix of each credential's key.
const KEY_PREFIX: &str = "performance:quota:";

/// `ARGV[1]`: the interval one publish uses up, `ARGV[2]`: the burst, both in microseconds.
/// Returns 0 when the publish is allowed (and counted), else the microseconds until one would be.
/// Times are whole microseconds since the epoch (< 2^53): exact in Lua's doubles; `%.0f` writes
/// them back without the exponent notation Lua's number-to-string would use.
const GCRA_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > burst then
  return ahead - burst
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000))
return 0
"#;

/// `--publish-rate` per credential, kept in Redis.
pub struct RedisQuota {
    config: RedisConfig,
    rate: PublishRate,
    /// Created on the first check; at most `pool_size` connections, like the publisher's (every
    /// publish makes one check, so it sees the publisher's concurrency). Follows a failover.
    pool: MasterPool,
    /// On a Redis Cluster, checks go here instead (each credential's key in its own slot).
    cluster: Option<ClusterCommands>,
    script: Script,
}

impl RedisQuota {
    /// `rate` publishes per second per credential (a burst of `rate`), counted in the Redis at
    /// `config.url` (or the master the sentinels name) so that every worker on it shares one
    /// count. Connects on the first check; refused when the addresses are malformed.
    pub fn new(config: RedisConfig, rate: NonZeroU32) -> Result<Self, redis::RedisError> {
        let resolver = Arc::new(Resolver::new(&config)?);
        let cluster = match &config.cluster {
            Some(cluster) => Some(ClusterCommands::new(&config, cluster)?),
            None => None,
        };
        Ok(Self {
            pool: MasterPool::new(config.clone(), resolver, "publish quota"),
            cluster,
            config,
            rate: PublishRate::per_second(rate),
            script: Script::new(GCRA_SCRIPT),
        })
    }
}

#[async_trait]
impl PublishQuota for RedisQuota {
    async fn check(&self, credential: &str) -> Result<QuotaDecision, QuotaError> {
        if let Some(cluster) = &self.cluster {
            let attempt = async {
                let mut connection = cluster
                    .connection()
                    .await
                    .map_err(|error| QuotaError::caused_by("no Redis Cluster connection", error))?;
                self.script
                    .key(format!("{KEY_PREFIX}{credential}"))
                    .arg(self.rate.interval_us())
                    .arg(self.rate.burst_us())
                    .invoke_async::<u64>(&mut connection)
                    .await
                    .map_err(|error| QuotaError::caused_by("the quota check failed", error))
            };
            return self.decide(attempt).await;
        }
        let (master, pool) = self.pool.get().await.map_err(QuotaError::unavailable)?;
        let attempt = async {
            let mut check = self.script.key(format!("{KEY_PREFIX}{credential}"));
            check.arg(self.rate.interval_us()).arg(self.rate.burst_us());
            let (connection, checked) = pool::with_retry::<u64>(&pool, &check)
                .await
                .map_err(|error| QuotaError::caused_by("no Redis connection", error))?;
            checked.map_err(|error| {
                // A failed command may leave the connection broken: drop it from the pool.
                drop(Connection::take(connection));
                QuotaError::caused_by("the quota check failed", error)
            })
        };
        let decided = self.decide(attempt).await;
        if decided.is_err() {
            self.pool.failed(&master);
        }
        decided
    }
}

impl RedisQuota {
    /// Runs one check within the command timeout and reads its answer: 0 allows, else the
    /// microseconds until a publish would be allowed.
    async fn decide(
        &self,
        check: impl std::future::Future<Output = Result<u64, QuotaError>>,
    ) -> Result<QuotaDecision, QuotaError> {
        let retry_after_us = tokio::time::timeout(self.config.command_timeout, check)
            .await
            .map_err(|_| {
                QuotaError::unavailable(format!(
                    "the quota check took longer than {:?}",
                    self.config.command_timeout
                ))
            })??;
        Ok(match retry_after_us {
            0 => QuotaDecision::Allowed,
            micros => QuotaDecision::Limited {
                retry_after: Duration::from_micros(micros),
            },
        })
    }
}
