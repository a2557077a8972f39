//! Connecting to Redis quickly when it comes back: hedged connection attempts.

use std::time::Duration;

use futures_util::StreamExt;

/// How long connection attempts may go unanswered before another one is started beside them.
const HEDGE_AFTER: Duration = Duration::from_millis(100);

/// Most connection attempts running side by side.
const MAX_ATTEMPTS: usize = 8;

/// Runs `attempt`, and another one beside it every [`HEDGE_AFTER`] while none has finished (at
/// most [`MAX_ATTEMPTS`]); the first to succeed wins and the others are dropped. An attempt that
/// fails ends the wait only when no other is still running, so a refused connection is reported
/// at once. Why: a SYN lost while Redis, or the NAT in front of it, comes back costs the kernel's
/// 1 s retransmission; with Docker's port mapping that tripled the time to resubscribe.
pub(crate) async fn hedged<T, Attempt>(attempt: impl Fn() -> Attempt) -> redis::RedisResult<T>
where
    Attempt: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut running = futures_util::stream::FuturesUnordered::new();
    running.push(attempt());
    let mut started = 1;
    loop {
        tokio::select! {
            outcome = running.next() => match outcome {
                Some(Ok(connected)) => return Ok(connected),
                Some(Err(error)) if running.is_empty() => return Err(error),
                Some(Err(_)) => {}
                None => unreachable!("an attempt is always running here"),
            },
            _ = tokio::time::sleep(HEDGE_AFTER), if started < MAX_ATTEMPTS => {
                running.push(attempt());
                started += 1;
            }
        }
    }
}

/// A multiplexed connection whose connect and every command are bounded by `timeout` (redis-rs's
/// own default would cut every command at 500 ms, whatever `--redis-timeout` says), made with
/// hedged attempts.
pub(crate) async fn multiplexed(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = bounded_by(timeout);
    hedged(|| client.get_multiplexed_async_connection_with_config(&config)).await
}

/// A connection's settings with its connect and every answer bounded by `timeout`
/// (`--redis-timeout`), not by redis-rs's own defaults (1 s and 500 ms).
pub(crate) fn bounded_by(timeout: Duration) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
}

/// Whether a command or a connection failed because the connection was dropped (by Redis —
/// `CLIENT KILL`, an idle `timeout` —, a proxy, a reset), not refused: another connection may
/// do it.
pub(crate) fn lost(error: &redis::RedisError) -> bool {
    (error.is_io_error() || error.is_connection_dropped()) && !error.is_connection_refusal()
}

/// [`lost`], for the Redis error a domain error keeps as its cause (none: not lost).
pub(crate) fn lost_cause(cause: Option<&fanout_domain::Cause>) -> bool {
    cause
        .and_then(|cause| cause.downcast_ref::<redis::RedisError>())
        .is_some_and(lost)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn refused() -> redis::RedisError {
        redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test]
    async fn an_attempt_that_goes_unanswered_is_overtaken_by_another() {
        let started = AtomicUsize::new(0);
        let connected = hedged(|| {
            let attempt = started.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt == 0 {
                    // The first SYN was lost: this attempt would wait for the kernel's retry.
                    std::future::pending::<()>().await;
                }
                Ok::<usize, redis::RedisError>(attempt)
            }
        })
        .await;
        assert_eq!(connected.ok(), Some(1));
    }

    #[tokio::test]
    async fn a_refused_connection_fails_at_once_without_more_attempts() {
        let started = AtomicUsize::new(0);
        let outcome = hedged(|| {
            started.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(refused()) }
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }
}
