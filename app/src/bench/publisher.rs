//! Publishes numbered metrics at a steady rate, through the HTTP API or straight into Redis.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::clients::now_us;
use super::{BenchConfig, PublishVia};

/// The name of every metric the tool publishes; clients ignore everything else.
pub const METRIC_NAME: &str = "bench.load";

/// Publishes in flight at most (a slow server makes the tool queue, not the rate drift).
const IN_FLIGHT: usize = 512;

/// Sends are scheduled in slices of this length: `rate × elapsed` messages are due at each.
const SLICE: Duration = Duration::from_millis(5);

pub struct Published {
    pub accepted: u64,
    pub refused: u64,
    pub elapsed: Duration,
}

/// A realistic metric of about 200 bytes, numbered by `value`.
fn metric(sequence: u64) -> serde_json::Value {
    serde_json::json!({
        "name": METRIC_NAME,
        "value": sequence,
        "unit": "ms",
        "labels": {
            "host": "bench-host-01",
            "region": "eu-west-1",
            "service": "checkout",
            "endpoint": "/api/v1/orders"
        }
    })
}

enum Sink {
    Http {
        client: reqwest::Client,
        urls: Vec<String>,
    },
    Redis(redis::aio::MultiplexedConnection),
}

impl Sink {
    async fn send(&self, sequence: u64) -> bool {
        match self {
            Sink::Http { client, urls } => {
                let url = &urls[sequence as usize % urls.len()];
                let sent = client.post(url).json(&metric(sequence)).send().await;
                sent.is_ok_and(|response| response.status().is_success())
            }
            Sink::Redis(connection) => {
                let envelope = serde_json::json!({
                    "type": "metrics",
                    "origin": "bench",
                    "seq": sequence,
                    "published_at_us": now_us(),
                    "data": [metric(sequence)],
                });
                let mut connection = connection.clone();
                redis::cmd("PUBLISH")
                    .arg("performance:metrics")
                    .arg(envelope.to_string())
                    .query_async::<i64>(&mut connection)
                    .await
                    .is_ok()
            }
        }
    }
}

pub async fn run(config: &BenchConfig, targets: &[SocketAddr]) -> anyhow::Result<Published> {
    let sink = Arc::new(match config.publish {
        PublishVia::Http => Sink::Http {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(IN_FLIGHT)
                .build()?,
            urls: targets
                .iter()
                .map(|t| format!("http://{t}/api/metrics"))
                .collect(),
        },
        PublishVia::Redis => {
            let client = redis::Client::open(config.redis_url.as_str())?;
            Sink::Redis(client.get_multiplexed_async_connection().await?)
        }
    });
    let total = (f64::from(config.rate) * config.duration.as_secs_f64()).round() as u64;
    eprintln!(
        "bench: publishing {total} messages, {} per second for {:?}, via {:?}",
        config.rate, config.duration, config.publish
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(SLICE);
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * f64::from(config.rate)) as u64).min(total);
        while sent < due {
            let permit = Arc::clone(&in_flight).acquire_owned().await?;
            let (sink, accepted, refused) = (
                Arc::clone(&sink),
                Arc::clone(&accepted),
                Arc::clone(&refused),
            );
            let sequence = sent;
            tokio::spawn(async move {
                let counter = if sink.send(sequence).await {
                    accepted
                } else {
                    refused
                };
                counter.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
            sent += 1;
        }
    }
    // Wait for the publishes still in flight.
    let _all = in_flight.acquire_many(IN_FLIGHT as u32).await?;
    Ok(Published {
        accepted: accepted.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}
