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

use crate::master::{MasterPool, Resolver};
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
    script: Script,
}

impl RedisQuota {
    /// `rate` publishes per second per credential (a burst of `rate`), counted in the Redis at
    /// `config.url` (or the master the sentinels name) so that every worker on it shares one
    /// count. Connects on the first check; refused when the addresses are malformed.
    pub fn new(config: RedisConfig, rate: NonZeroU32) -> Result<Self, redis::RedisError> {
        let resolver = Arc::new(Resolver::new(&config)?);
        Ok(Self {
            pool: MasterPool::new(config.clone(), resolver, "publish quota"),
            config,
            rate: PublishRate::per_second(rate),
            script: Script::new(GCRA_SCRIPT),
        })
    }
}

#[async_trait]
impl PublishQuota for RedisQuota {
    async fn check(&self, credential: &str) -> Result<QuotaDecision, QuotaError> {
        let (master, pool) = self.pool.get().await.map_err(QuotaError::unavailable)?;
        let attempt = async {
            let mut connection = pool
                .get()
                .await
                .map_err(|error| QuotaError::caused_by("no Redis connection", error))?;
            self.script
                .key(format!("{KEY_PREFIX}{credential}"))
                .arg(self.rate.interval_us())
                .arg(self.rate.burst_us())
                .invoke_async::<u64>(&mut *connection)
                .await
                .map_err(|error| {
                    // A failed command may leave the connection broken: drop it from the pool.
                    drop(deadpool_redis::Connection::take(connection));
                    QuotaError::caused_by("the quota check failed", error)
                })
        };
        let checked = tokio::time::timeout(self.config.command_timeout, attempt)
            .await
            .map_err(|_| {
                QuotaError::unavailable(format!(
                    "the quota check took longer than {:?}",
                    self.config.command_timeout
                ))
            })
            .and_then(|checked| checked);
        if checked.is_err() {
            self.pool.failed(&master);
        }
        let retry_after_us = checked?;
        Ok(match retry_after_us {
            0 => QuotaDecision::Allowed,
            micros => QuotaDecision::Limited {
                retry_after: Duration::from_micros(micros),
            },
        })
    }
}
