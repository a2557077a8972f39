//! The load tool's WebSocket clients: connect with a bounded ramp, then count, de-duplicate and
//! time every bench message without parsing whole frames.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::publisher::METRIC_NAME;
use super::BenchConfig;

/// Latencies are kept in microseconds, 1 µs to 60 s, with two significant digits.
pub fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2)
        .unwrap_or_else(|e| unreachable!("valid bounds: {e}"))
}

/// What one client saw.
pub struct ClientStats {
    pub received: u64,
    pub duplicates: u64,
    pub latency_us: Histogram<u32>,
}

/// Counters every client bumps as it goes, for progress and the drain.
struct Shared {
    received: AtomicU64,
    connected: AtomicUsize,
    epoch: Instant,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

pub struct Pool {
    tasks: Vec<JoinHandle<Option<ClientStats>>>,
    shared: Arc<Shared>,
    connected_at_start: usize,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Opens `count` clients over `targets`, at most `connect_concurrency` connecting at once;
/// returns once every attempt succeeded or failed.
pub async fn connect_all(
    targets: &[SocketAddr],
    count: usize,
    config: &BenchConfig,
    stop: watch::Receiver<bool>,
) -> Pool {
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        epoch: Instant::now(),
        first_ns: AtomicU64::new(u64::MAX),
        last_ns: AtomicU64::new(0),
    });
    let ramp = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
    let (attempted_tx, mut attempted) = mpsc::unbounded_channel::<bool>();
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let target = targets[index % targets.len()];
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (index % usize::from(config.source_addresses.max(1))) as u8,
        ));
        let (ramp, shared, attempted_tx, stop) = (
            Arc::clone(&ramp),
            Arc::clone(&shared),
            attempted_tx.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = ramp.acquire_owned().await.ok();
            let connected = connect(source, target).await;
            drop(permit);
            let _ = attempted_tx.send(connected.is_ok());
            drop(attempted_tx);
            match connected {
                Ok(stream) => {
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    let stats = receive(stream, &shared, stop).await;
                    shared.connected.fetch_sub(1, Ordering::Relaxed);
                    Some(stats)
                }
                Err(error) => {
                    eprintln!("bench: client {index} could not connect to {target}: {error}");
                    None
                }
            }
        }));
    }
    drop(attempted_tx);
    let mut connected_at_start = 0;
    for _ in 0..count {
        match attempted.recv().await {
            Some(ok) => connected_at_start += usize::from(ok),
            None => break,
        }
    }
    Pool {
        tasks,
        shared,
        connected_at_start,
    }
}

type Stream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(source: IpAddr, target: SocketAddr) -> anyhow::Result<Stream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    // Small buffers: the tool holds tens of thousands of these.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 8 * 1024;
    config.write_buffer_size = 0;
    let url = format!("ws://{target}/ws/performance");
    let (stream, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    Ok(stream)
}

/// The number after `"key":` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

async fn receive(
    mut stream: Stream,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> ClientStats {
    let mut stats = ClientStats {
        received: 0,
        duplicates: 0,
        latency_us: new_histogram(),
    };
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = stop.changed() => break,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        if !text.contains(METRIC_NAME) {
            continue;
        }
        let now = now_us();
        let (Some(sequence), Some(published)) = (
            number_after(&text, "\"value\":"),
            number_after(&text, "\"published_at_us\":"),
        ) else {
            continue;
        };
        let (word, bit) = ((sequence / 64) as usize, sequence % 64);
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & (1 << bit) != 0 {
            stats.duplicates += 1;
            continue;
        }
        seen[word] |= 1 << bit;
        stats.received += 1;
        let _ = stats
            .latency_us
            .record(now.saturating_sub(published).max(1));
        shared.received.fetch_add(1, Ordering::Relaxed);
        let at = shared.epoch.elapsed().as_nanos() as u64;
        shared.first_ns.fetch_min(at, Ordering::Relaxed);
        shared.last_ns.fetch_max(at, Ordering::Relaxed);
    }
    let _ = stream.close(None).await;
    stats
}

/// Everything the clients saw, merged.
pub struct Totals {
    pub received: u64,
    pub duplicates: u64,
    pub latency_us: Histogram<u32>,
}

impl Pool {
    pub fn connected(&self) -> usize {
        self.connected_at_start
    }

    pub fn still_connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Waits until `expected` deliveries arrived, or nothing arrived for `quiet`.
    pub async fn drain(&self, expected: u64, quiet: Duration) {
        let mut last = self.shared.received.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while last < expected && quiet_since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.shared.received.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
    }

    /// Time from the first to the last bench message received, by any client.
    pub fn first_to_last(&self) -> Duration {
        let first = self.shared.first_ns.load(Ordering::Relaxed);
        let last = self.shared.last_ns.load(Ordering::Relaxed);
        Duration::from_nanos(last.saturating_sub(first))
    }

    pub async fn finish(self) -> Totals {
        let mut totals = Totals {
            received: 0,
            duplicates: 0,
            latency_us: new_histogram(),
        };
        for task in self.tasks {
            if let Ok(Some(stats)) = task.await {
                totals.received += stats.received;
                totals.duplicates += stats.duplicates;
                let _ = totals.latency_us.add(&stats.latency_us);
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_without_parsing_the_frame() {
        let frame = r#"{"type":"metrics","origin":"w","seq":3,"published_at_us":1764380000123456,"data":[{"name":"bench.load","value":42.0}]}"#;
        assert_eq!(
            number_after(frame, "\"published_at_us\":"),
            Some(1_764_380_000_123_456)
        );
        assert_eq!(number_after(frame, "\"value\":"), Some(42));
        assert_eq!(number_after(frame, "\"missing\":"), None);
    }
}
