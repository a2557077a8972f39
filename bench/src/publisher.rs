//! Publishes numbered bench messages at a steady rate, through the HTTP API or straight into
//! Redis (in place of a worker): `PUBLISH` on one Redis, `SPUBLISH` on a Redis Cluster's metrics
//! partitions (message N on partition N mod P, so every partition carries a share); or to
//! `fanout-floor`'s control connection, one frame text per line, in place of the workers.
//!
//! The rate must not drift with the server's speed: sends are due by the clock, and a slow server
//! makes publishes queue (at most [`IN_FLIGHT`]), not the schedule slip.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use fanout_domain::{Channel, WorkerId};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use crate::config::{BenchConfig, PublishVia, RedisTarget};
use crate::message;
use crate::workload::Workload;

/// Publishes in flight at most (a slow server makes the tool queue, not the rate drift).
const IN_FLIGHT: usize = 512;

/// Sends are scheduled in slices of this length: `rate × elapsed` messages are due at each.
const SLICE: Duration = Duration::from_millis(5);

/// The origin of the envelopes the tool puts on the bus with `--publish redis`.
const ORIGIN: &str = "bench";

/// What the publishing phase did (what loader 1 hands the other loaders, see `rendezvous`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Messages scheduled (numbered `0..total`).
    pub total: u64,
    pub accepted: u64,
    /// The numbers of the messages not accepted, sorted.
    pub refused: Vec<u64>,
    pub elapsed: Duration,
}

enum Sink {
    Http {
        client: reqwest::Client,
        urls: Vec<String>,
    },
    Redis {
        connection: redis::aio::MultiplexedConnection,
        origin: WorkerId,
    },
    /// redis-rs routes each `SPUBLISH` to the master of its channel's slot (one connection per
    /// master, multiplexed). A bare `SPUBLISH`, not the workers' script: there is no failover
    /// during a bench run, and it is the cheapest publish an outside publisher can make.
    RedisCluster {
        connection: redis::cluster_async::ClusterConnection,
        origin: WorkerId,
        /// `performance:metrics:{N}` for N in `0..P`, named once.
        channels: Vec<String>,
    },
    /// `fanout-floor`'s control connection: one line per message, written whole under the lock
    /// (publishes run concurrently; lines must not interleave).
    Floor {
        control: AsyncMutex<TcpStream>,
        origin: WorkerId,
    },
}

impl Sink {
    async fn open(config: &BenchConfig, targets: &[SocketAddr]) -> anyhow::Result<Self> {
        Ok(match config.publish {
            PublishVia::Http => Sink::Http {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(IN_FLIGHT)
                    .build()?,
                urls: targets
                    .iter()
                    .map(|target| format!("http://{target}/api/metrics"))
                    .collect(),
            },
            PublishVia::Redis => match config.redis_target()? {
                RedisTarget::Single { url } => {
                    let client = redis::Client::open(url.as_str()).context("--redis-url")?;
                    Sink::Redis {
                        connection: client.get_multiplexed_async_connection().await?,
                        origin: WorkerId::new(ORIGIN)?,
                    }
                }
                RedisTarget::Cluster { nodes, partitions } => {
                    let client =
                        redis::cluster::ClusterClient::new(nodes).context("--redis-cluster")?;
                    Sink::RedisCluster {
                        connection: client
                            .get_async_connection()
                            .await
                            .context("cannot connect to the --redis-cluster")?,
                        origin: WorkerId::new(ORIGIN)?,
                        channels: (0..partitions).map(Channel::metrics_partition).collect(),
                    }
                }
            },
            PublishVia::Floor => {
                let control = TcpStream::connect(config.floor).await.with_context(|| {
                    format!("cannot connect to the floor at --floor {}", config.floor)
                })?;
                control.set_nodelay(true)?;
                Sink::Floor {
                    control: AsyncMutex::new(control),
                    origin: WorkerId::new(ORIGIN)?,
                }
            }
        })
    }

    /// Publishes bench message `sequence`; why not, when it was not accepted.
    async fn send(&self, workload: &Workload, sequence: u64) -> Result<(), String> {
        let metrics = message::batch(workload, sequence).map_err(|e| e.to_string())?;
        match self {
            Sink::Http { client, urls } => {
                let url = &urls[sequence as usize % urls.len()];
                // One metric as an object, as the tool always sent it; a batch as an array.
                let request = match metrics.as_slice() {
                    [metric] => client.post(url).json(metric),
                    _ => client.post(url).json(&metrics),
                };
                let response = request.send().await.map_err(|e| e.to_string())?;
                match response.status() {
                    status if status.is_success() => Ok(()),
                    status => Err(format!("HTTP {status}")),
                }
            }
            Sink::Redis { connection, origin } => {
                let envelope = message::envelope(origin, sequence, metrics);
                let mut connection = connection.clone();
                redis::cmd("PUBLISH")
                    .arg(envelope.channel().name())
                    .arg(envelope.to_json())
                    .query_async::<i64>(&mut connection)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Sink::RedisCluster {
                connection,
                origin,
                channels,
            } => {
                let envelope = message::envelope(origin, sequence, metrics);
                let channel = &channels[partition_of(sequence, channels.len())];
                let mut connection = connection.clone();
                redis::cmd("SPUBLISH")
                    .arg(channel)
                    .arg(envelope.to_json())
                    .query_async::<i64>(&mut connection)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Sink::Floor { control, origin } => {
                let envelope = message::envelope(origin, sequence, metrics);
                let mut line = message::frame_text(&envelope).map_err(|e| e.to_string())?;
                line.push('\n');
                let mut control = control.lock().await;
                control
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// The partition message `sequence` is published on, of `partitions` (≥ 1): round-robin, so
/// consecutive messages land on different partitions and every partition gets a share. (The
/// tool's clients count items by number, not by order, so spreading one origin over several
/// channels costs them nothing; a worker keeps to one partition for order.)
fn partition_of(sequence: u64, partitions: usize) -> usize {
    (sequence % partitions as u64) as usize
}

/// How many messages `rate` per second for `duration` is.
fn messages_in(rate: u32, duration: Duration) -> u64 {
    (f64::from(rate) * duration.as_secs_f64()).round() as u64
}

/// Publishes `rate` messages per second for `duration`, then waits for the ones in flight.
pub async fn run(
    config: &BenchConfig,
    workload: &Arc<Workload>,
    targets: &[SocketAddr],
) -> anyhow::Result<Published> {
    // Fails here, before any load, if the bench message is not valid for the domain.
    message::batch(workload, 0).context("the bench message")?;
    if config.publish == PublishVia::Floor
        && (workload.selectors() > 0 || workload.interval().is_some())
    {
        anyhow::bail!(
            "--publish floor sends every message to every client: --selectors and --interval need fanout"
        );
    }
    let sink = Arc::new(Sink::open(config, targets).await?);
    let total = messages_in(config.rate, config.duration);
    eprintln!(
        "bench: publishing {total} messages, {} per second for {:?}, via {:?}",
        config.rate, config.duration, config.publish
    );
    let accepted = Arc::new(AtomicU64::new(0));
    // Normally empty; a refused publish is pushed once.
    let refused = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(SLICE);
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * f64::from(config.rate)) as u64).min(total);
        while sent < due {
            let permit = Arc::clone(&in_flight).acquire_owned().await?;
            let (sink, accepted, refused, workload) = (
                Arc::clone(&sink),
                Arc::clone(&accepted),
                Arc::clone(&refused),
                Arc::clone(workload),
            );
            let sequence = sent;
            tokio::spawn(async move {
                match sink.send(&workload, sequence).await {
                    Ok(()) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(reason) => {
                        let mut refused = refused.lock().unwrap_or_else(PoisonError::into_inner);
                        if refused.is_empty() {
                            eprintln!("bench: publish {sequence} refused: {reason}");
                        }
                        refused.push(sequence);
                    }
                }
                drop(permit);
            });
            sent += 1;
        }
    }
    // Wait for the publishes still in flight.
    let _all = in_flight.acquire_many(IN_FLIGHT as u32).await?;
    let mut refused = std::mem::take(&mut *refused.lock().unwrap_or_else(PoisonError::into_inner));
    refused.sort_unstable();
    Ok(Published {
        total,
        accepted: accepted.load(Ordering::Relaxed),
        refused,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_count_is_rate_times_duration_rounded() {
        assert_eq!(messages_in(100, Duration::from_secs(30)), 3_000);
        assert_eq!(messages_in(3, Duration::from_millis(500)), 2);
        assert_eq!(messages_in(0, Duration::from_secs(30)), 0);
    }

    #[test]
    fn messages_go_round_robin_over_every_partition() {
        let chosen: Vec<usize> = (0..6).map(|sequence| partition_of(sequence, 3)).collect();
        assert_eq!(chosen, [0, 1, 2, 0, 1, 2]);
        assert_eq!(partition_of(u64::MAX, 16), 15);
        assert_eq!(partition_of(41, 1), 0);
    }

    #[test]
    fn the_origin_is_a_valid_worker_id() {
        assert!(WorkerId::new(ORIGIN).is_ok());
    }
}
