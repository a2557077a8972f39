//! The pools of publish and quota connections: deadpool-redis's connections, checked with a
//! round trip only when they may be broken.
//!
//! deadpool-redis checks every connection it hands out with `UNWATCH` + `PING`, so each publish
//! cost two Redis round trips, the check and the `PUBLISH` (callgrind, one worker, one client:
//! the check was ~9k of the ~168k instructions a metric cost, and a second wake-up of the worker
//! and of Redis per message). This manager makes connections as deadpool-redis does and checks
//! one the same way only when it may be broken: its last command ended in an error of the
//! connection (I/O, dropped, timed out) or never ended (the caller gave up on it), or it has not
//! been used for [`FRESH`]. A connection that just answered is handed out as it is.
//!
//! What the check caught before and this does not: a Redis that went away in the [`FRESH`]
//! before a publish. That publish finds its connection dropped; [`with_retry`] runs it once more
//! on a new connection, for commands that may run twice (a metric's `PUBLISH`: a second copy is
//! dropped by every worker, `copies.rs`; the quota's check: a second one charges the publisher
//! one more publish at worst; a `PING`). An alert's append may not: the publisher runs it on a
//! connection that has just answered a `PING`.

use std::time::Duration;

use crate::connect::bounded_by;
use deadpool::managed::{self, Metrics, PoolError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, ScriptInvocation, Value,
};

/// How long after its last use a connection is handed out without a check.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// A pool of [`Pooled`] connections to one Redis.
pub(crate) type Pool = managed::Pool<Manager>;

/// A connection taken from a [`Pool`].
pub(crate) type Connection = managed::Object<Manager>;

/// Makes connections as deadpool-redis does; checks them only when they may be broken.
pub(crate) struct Manager {
    inner: deadpool_redis::Manager,
}

impl Manager {
    /// Connections to `master` whose connect and every answer are bounded by `timeout`
    /// (`--redis-timeout`; redis-rs's own defaults would refuse a publish during a Redis stall
    /// well inside the documented bound).
    pub(crate) fn new(
        master: redis::ConnectionInfo,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            inner: deadpool_redis::Manager::new_with_config(master, bounded_by(timeout))?,
        })
    }
}

impl managed::Manager for Manager {
    type Type = Pooled;
    type Error = RedisError;

    async fn create(&self) -> Result<Pooled, RedisError> {
        Ok(Pooled {
            connection: managed::Manager::create(&self.inner).await?,
            suspect: false,
            unchecked: false,
        })
    }

    async fn recycle(&self, pooled: &mut Pooled, metrics: &Metrics) -> RecycleResult<RedisError> {
        pooled.unchecked = !pooled.suspect && metrics.last_used() < FRESH;
        if pooled.unchecked {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, &mut pooled.connection, metrics).await?;
        pooled.suspect = false;
        Ok(())
    }
}

/// A pooled connection that remembers whether its last command left it in doubt.
pub(crate) struct Pooled {
    connection: MultiplexedConnection,
    /// Set while a command runs (a caller that gives up leaves it set) and after an error of the
    /// connection itself; a Redis error reply (`NOSCRIPT`, `WRONGTYPE`, …) clears it.
    suspect: bool,
    /// Handed out this time without a check (it answered within [`FRESH`]).
    unchecked: bool,
}

impl Pooled {
    /// Whether this hand-out skipped the check: a failure may be Redis gone since it answered.
    pub(crate) fn unchecked(&self) -> bool {
        self.unchecked
    }

    fn settle<T>(&mut self, result: &Result<T, RedisError>) {
        self.suspect = result.as_ref().is_err_and(breaks_the_connection);
    }
}

/// An error of the connection rather than a reply of Redis: the connection is in doubt.
fn breaks_the_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.kind() == redis::ErrorKind::Parse
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
}

impl ConnectionLike for Pooled {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.suspect = true;
            let result = self.connection.req_packed_command(cmd).await;
            self.settle(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.suspect = true;
            let result = self
                .connection
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.settle(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}

/// A command [`with_retry`] may send twice.
pub(crate) trait Retryable<T> {
    fn run<'a>(&'a self, connection: &'a mut Pooled) -> RedisFuture<'a, T>;
}

impl<T: FromRedisValue + Send + 'static> Retryable<T> for Cmd {
    fn run<'a>(&'a self, connection: &'a mut Pooled) -> RedisFuture<'a, T> {
        Box::pin(self.query_async(connection))
    }
}

impl<T: FromRedisValue + Send + 'static> Retryable<T> for ScriptInvocation<'_> {
    fn run<'a>(&'a self, connection: &'a mut Pooled) -> RedisFuture<'a, T> {
        Box::pin(self.invoke_async(connection))
    }
}

/// Runs `command` on a pooled connection, and once more on a new one when the first was handed
/// out unchecked and failed as a connection (Redis went away after it last answered: the
/// connections idle beside it went too, and are dropped). For commands whose second run, had the
/// first reached Redis, does no harm. Returns the connection it last used with the outcome.
pub(crate) async fn with_retry<T>(
    pool: &Pool,
    command: &impl Retryable<T>,
) -> Result<(Connection, RedisResult<T>), PoolError<RedisError>> {
    let mut connection = pool.get().await?;
    let unchecked = connection.unchecked;
    let outcome = command.run(&mut connection).await;
    if !(unchecked && outcome.as_ref().is_err_and(breaks_the_connection)) {
        return Ok((connection, outcome));
    }
    drop(Connection::take(connection));
    pool.retain(|_, _| false);
    let mut connection = pool.get().await?;
    let outcome = command.run(&mut connection).await;
    Ok((connection, outcome))
}

/// Builds the pool: at most `size` connections, the most recently used handed out first (a
/// steady publisher keeps reusing a connection that just answered), every wait (for a free
/// connection, a connect, a check, an answer) bounded by `timeout`.
pub(crate) fn build(
    master: redis::ConnectionInfo,
    size: usize,
    timeout: Duration,
) -> Result<Pool, String> {
    let manager = Manager::new(master, timeout).map_err(|error| error.to_string())?;
    Pool::builder(manager)
        .max_size(size)
        .timeouts(deadpool_redis::Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        })
        .queue_mode(managed::QueueMode::Lifo)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    fn reply_error() -> RedisError {
        RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
            "NOSCRIPT",
        ))
    }

    #[test]
    fn a_broken_pipe_breaks_the_connection_and_a_reply_does_not() {
        assert!(breaks_the_connection(&io_error()));
        assert!(!breaks_the_connection(&reply_error()));
    }
}
