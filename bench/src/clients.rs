//! The load tool's WebSocket clients: connect with a bounded ramp, each with its selector's
//! subscription (see [`Workload`]), then read every frame and hand the bench items to a [`Tally`].
//!
//! A client is a [`fanout_client::Connection`], the project's own client, opened over a TCP stream
//! bound to one of the source addresses (round-robin, see [`SourceAddresses`]) that keeps the
//! kernel's arrival time of what it reads ([`ArrivalStamped`]), with [`Buffers::SMALL`]. Each item
//! is timed twice: to the read and to its arrival. This is the only module that
//! knows the client, so counting and reporting do not. It must stay cheap per frame: tens of
//! thousands of these run in one process next to the server, so frames are read as their raw
//! text ([`Connection::next_text`], no copy) and searched for the bench message, never decoded.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_client::{Buffers, ConnectOptions, Connection, Subscription};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::arrival::ArrivalStamped;
use crate::message::{now_us, Sighting};
use crate::sources::{bound_socket, SourceAddresses};
use crate::tally::{new_histogram, Recorded, Taken, Tally};
use crate::workload::Workload;

/// How the clients connect.
pub struct Ramp {
    /// Clients connecting at once (at least 1).
    pub concurrency: usize,
    /// Connects started per second at most (client `i` starts `i / rate` seconds in, at the
    /// earliest); `None`: as fast as `concurrency` lets them.
    pub rate: Option<NonZeroU32>,
    /// Local addresses to connect from, round-robin.
    pub sources: SourceAddresses,
}

/// Counters every client bumps as it goes, for progress and the drain.
struct Shared {
    received: AtomicU64,
    connected: AtomicUsize,
    /// Clients connected now, by selector (one entry without selectors).
    connected_by_selector: Vec<AtomicUsize>,
    epoch: Instant,
    /// `epoch` on the wall clock, Unix microseconds.
    epoch_unix_us: u64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// The clients, each a task that runs until the stop signal or its connection ends.
pub struct Pool {
    /// Each client's selector and, once it ends, what it saw (`None`: it never connected).
    tasks: Vec<(usize, JoinHandle<Option<Tally>>)>,
    shared: Arc<Shared>,
    connected_at_start: usize,
    /// Each connected client's connect and handshake, µs.
    connect_latency_us: Histogram<u32>,
}

/// Opens `count` clients over `targets` (round-robin), client `i` with the subscription of
/// `workload`'s selector for it, at most `ramp.concurrency` connecting at once and no faster than
/// `ramp.rate`; returns once every attempt succeeded or failed.
pub async fn connect_all(
    targets: &[SocketAddr],
    count: usize,
    ramp: &Ramp,
    workload: &Arc<Workload>,
    stop: watch::Receiver<bool>,
) -> Pool {
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        connected_by_selector: (0..workload.selectors().max(1))
            .map(|_| AtomicUsize::new(0))
            .collect(),
        epoch: Instant::now(),
        epoch_unix_us: now_us(),
        first_ns: AtomicU64::new(u64::MAX),
        last_ns: AtomicU64::new(0),
    });
    let connecting = Arc::new(Semaphore::new(ramp.concurrency.max(1)));
    let started = tokio::time::Instant::now();
    // One message per client, its connect latency or `None` when it failed, then the channel
    // closes: bounded by `count`.
    let (attempted_tx, mut attempted) = mpsc::unbounded_channel::<Option<Duration>>();
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let target = targets[index % targets.len()];
        let source = ramp.sources.for_client(index);
        let start_at = ramp
            .rate
            .map(|rate| started + Duration::from_secs_f64(index as f64 / f64::from(rate.get())));
        let selector = workload.selector_of(index);
        let (connecting, shared, attempted_tx, stop, workload) = (
            Arc::clone(&connecting),
            Arc::clone(&shared),
            attempted_tx.clone(),
            stop.clone(),
            Arc::clone(workload),
        );
        let task = tokio::spawn(async move {
            if let Some(start_at) = start_at {
                tokio::time::sleep_until(start_at).await;
            }
            let permit = connecting.acquire_owned().await.ok();
            let subscription = workload.subscription(selector);
            let began = Instant::now();
            let connected = connect(source, target, subscription.as_ref()).await;
            let took = began.elapsed();
            drop(permit);
            let _ = attempted_tx.send(connected.as_ref().ok().map(|_| took));
            drop(attempted_tx);
            match connected {
                Ok(connection) => {
                    let reader = Reader {
                        shared: &shared,
                        workload: &workload,
                        selector,
                    };
                    reader.join();
                    let tally = reader.receive(connection, stop).await;
                    reader.leave();
                    Some(tally)
                }
                Err(error) => {
                    eprintln!(
                        "bench: client {index} could not connect from {source} to {target}: {error:#}"
                    );
                    None
                }
            }
        });
        tasks.push((selector, task));
    }
    drop(attempted_tx);
    let mut connected_at_start = 0;
    let mut connect_latency_us = new_histogram();
    for _ in 0..count {
        match attempted.recv().await {
            Some(Some(took)) => {
                connected_at_start += 1;
                // Out of range only past 60 s; such a sample is dropped rather than clamped.
                let _ = connect_latency_us.record((took.as_micros() as u64).max(1));
            }
            Some(None) => {}
            None => break,
        }
    }
    Pool {
        tasks,
        shared,
        connected_at_start,
        connect_latency_us,
    }
}

/// How long a stopping client waits for the server to acknowledge its close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

async fn connect(
    source: Ipv4Addr,
    target: SocketAddr,
    subscription: Option<&Subscription>,
) -> anyhow::Result<Connection<ArrivalStamped>> {
    let socket = bound_socket(source)?;
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    // Small buffers: the tool holds tens of thousands of these. No token, no resume.
    let options = ConnectOptions {
        subscription,
        buffers: Buffers::SMALL,
        ..ConnectOptions::default()
    };
    let stream = ArrivalStamped::new(tcp)?;
    Ok(Connection::connect_over_stream(stream, &format!("ws://{target}"), &options).await?)
}

/// One connected client's reading: what its selector takes, and the counters it bumps.
struct Reader<'a> {
    shared: &'a Shared,
    workload: &'a Workload,
    selector: usize,
}

impl Reader<'_> {
    /// Counts this client among the connected ones.
    fn join(&self) {
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        self.by_selector().fetch_add(1, Ordering::Relaxed);
    }

    fn leave(&self) {
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        self.by_selector().fetch_sub(1, Ordering::Relaxed);
    }

    fn by_selector(&self) -> &AtomicUsize {
        // `selector_of` is below `selectors().max(1)`, the vector's length.
        &self.shared.connected_by_selector[self.selector]
    }

    async fn receive(
        &self,
        mut connection: Connection<ArrivalStamped>,
        mut stop: watch::Receiver<bool>,
    ) -> Tally {
        let mut tally = Tally::new();
        // One wait for the stop for the whole run: made anew per frame, it would join and leave
        // the watch's waiter list each time, a lock shared by every client of the tool.
        let stopped = stop.changed();
        tokio::pin!(stopped);
        loop {
            let read = tokio::select! {
                biased;
                read = connection.next_text() => read,
                _ = &mut stopped => break,
            };
            let text = match read {
                Ok(text) => text,
                Err(error) if error.is_disconnect() => break,
                // A binary frame: not ours, and the connection is still open.
                Err(_) => continue,
            };
            let Some(sighting) = Sighting::in_frame(&text) else {
                continue;
            };
            tally.frame();
            let now = now_us();
            let arrived = connection.stream().arrived_us();
            let mut first = 0;
            for item in sighting.items() {
                let taken = if self.workload.takes(self.selector, item) {
                    Taken::Yes
                } else {
                    Taken::No
                };
                if tally.record(item, taken, sighting.published_at_us, now) == Recorded::First {
                    first += 1;
                    if let Some(arrived) = arrived {
                        tally.arrived(sighting.published_at_us, arrived);
                    }
                }
            }
            if first == 0 {
                continue;
            }
            let shared = self.shared;
            shared.received.fetch_add(first, Ordering::Relaxed);
            let at = shared.epoch.elapsed().as_nanos() as u64;
            shared.first_ns.fetch_min(at, Ordering::Relaxed);
            shared.last_ns.fetch_max(at, Ordering::Relaxed);
        }
        connection.close(CLOSE_WAIT).await;
        tally
    }
}

impl Pool {
    /// Clients connected at the end of the ramp.
    pub fn connected(&self) -> usize {
        self.connected_at_start
    }

    pub fn still_connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Clients of `selector` connected now.
    pub fn connected_with(&self, selector: usize) -> usize {
        self.shared
            .connected_by_selector
            .get(selector)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// Waits until `expected` items arrived (`None`: no count to wait for), or nothing arrived
    /// for `quiet`.
    pub async fn drain(&self, expected: Option<u64>, quiet: Duration) {
        let expected = expected.unwrap_or(u64::MAX);
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

    /// Each connected client's connect and handshake, µs.
    pub fn connect_latency_us(&self) -> &Histogram<u32> {
        &self.connect_latency_us
    }

    /// Time from the first to the last bench message received, by any client.
    pub fn first_to_last(&self) -> Duration {
        let first = self.shared.first_ns.load(Ordering::Relaxed);
        let last = self.shared.last_ns.load(Ordering::Relaxed);
        Duration::from_nanos(last.saturating_sub(first))
    }

    /// When the first and the last bench item were received (by any client), Unix microseconds;
    /// `None` before any was.
    pub fn receipts_unix_us(&self) -> Option<(u64, u64)> {
        let first = self.shared.first_ns.load(Ordering::Relaxed);
        let last = self.shared.last_ns.load(Ordering::Relaxed);
        let unix = |ns: u64| self.shared.epoch_unix_us + ns / 1_000;
        (first != u64::MAX).then(|| (unix(first), unix(last.max(first))))
    }

    /// Waits for every client to end (after the stop signal), settles each against what a
    /// client of its selector was owed (`owed[selector]`; nothing without an entry) and the items
    /// the tool published (numbered below `published`), and sums them.
    pub async fn finish(self, owed: &[Vec<u64>], published: u64) -> Tally {
        let mut total = Tally::new();
        for (selector, task) in self.tasks {
            if let Ok(Some(mut tally)) = task.await {
                tally.settle(owed.get(selector).map_or(&[], Vec::as_slice), published);
                total.add(&tally);
            }
        }
        total
    }
}
