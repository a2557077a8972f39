//! The per-worker connection manager: who is connected, and handing every bus message to them.
//!
//! It holds the worker's bus subscription while the worker has clients: the first client to
//! arrive subscribes, the last one to leave unsubscribes. Both happen under one async lock, and a
//! client is inserted while that lock is held, so there is never a registered client without a
//! live subscription, and a new client's `hello` frame and metrics snapshot come before any bus
//! message. A client's `hello` is sent once the subscription is live (it means "from now on you
//! get every message"). A resuming client is sent the alerts it missed from the bus's alert log,
//! then the live stream with the replayed ids skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fanout_domain::{
    read_after, AccessControl, AlertLog, BusStatus, BusSubscriber, Envelope, Grant, HistoryError,
    LocalDelivery, LogEpoch, LogId, LogPosition, Metric, Payload, Subscription, WorkerId,
};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use tokio::sync::Notify;

use crate::queue::{ClientQueue, CloseReason, Frame, FrameKind, Pushed};
use crate::slots::{ConnectionSlots, Slot};
use crate::ClientLimits;

/// Counters of what this worker's clients were sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryStats {
    /// Clients connected now.
    pub connections: usize,
    /// Clients accepted since start.
    pub accepted: u64,
    /// Frames written and flushed to clients.
    pub delivered: u64,
    /// Metrics frames dropped because a client's queue was full.
    pub dropped_metrics: u64,
    /// Clients closed because an alert did not fit in their queue.
    pub slow_consumers_closed: u64,
}

/// The clients of one worker; the bus listener's [`LocalDelivery`].
pub(crate) struct ClientRegistry {
    /// Held for an insert, a remove or one fan-out pass; never across an await.
    clients: Mutex<HashMap<u64, Arc<ClientQueue>>>,
    /// Signalled whenever the last client leaves.
    emptied: Notify,
    accepted: AtomicU64,
    delivered: AtomicU64,
    dropped_metrics: AtomicU64,
    slow_consumers_closed: AtomicU64,
    /// The latest value of each metric series this worker has seen, for new clients' snapshot.
    latest: Mutex<LatestMetrics>,
    /// Seconds from a message's publication to its fan-out on this worker (observed once per
    /// message, when it is queued for the clients).
    fanout_latency: Histogram,
}

/// Most metric series kept for the snapshot; new series beyond it are not kept (the bound keeps
/// a publisher with unbounded label values from growing the worker's memory).
const MAX_SNAPSHOT_SERIES: usize = 10_000;

/// A metric series: name, labels and the worker that published it.
type SeriesKey = (String, BTreeMap<String, String>, Option<WorkerId>);

/// Latest value per series.
#[derive(Default)]
struct LatestMetrics {
    series: HashMap<SeriesKey, Metric>,
}

impl LatestMetrics {
    fn record(&mut self, metric: &Metric) {
        let key = (
            metric.name().to_owned(),
            metric.labels().clone(),
            metric.source().cloned(),
        );
        if let Some(kept) = self.series.get_mut(&key) {
            *kept = metric.clone();
        } else if self.series.len() < MAX_SNAPSHOT_SERIES {
            self.series.insert(key, metric.clone());
        }
    }

    fn snapshot(&self) -> Vec<Metric> {
        let mut metrics: Vec<Metric> = self.series.values().cloned().collect();
        metrics.sort_by(|a, b| a.name().cmp(b.name()));
        metrics
    }
}

impl ClientRegistry {
    pub(crate) fn new() -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            emptied: Notify::new(),
            accepted: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped_metrics: AtomicU64::new(0),
            slow_consumers_closed: AtomicU64::new(0),
            latest: Mutex::new(LatestMetrics::default()),
            fanout_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }

    /// Adds a client queue directly (the benchmarks' way in; clients go through `register`).
    pub(crate) fn insert(&self, id: u64, queue: Arc<ClientQueue>) {
        self.lock().insert(id, queue);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ClientQueue>>> {
        // Inserts and removes cannot leave the map inconsistent, so a poisoned lock is usable.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count_delivered(&self, frames: u64) {
        self.delivered.fetch_add(frames, Ordering::Relaxed);
    }
}

impl LocalDelivery for ClientRegistry {
    fn deliver(&self, envelope: &Envelope) {
        let kind = match &envelope.payload {
            Payload::Metrics(metrics) => {
                let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
                for metric in metrics {
                    latest.record(metric);
                }
                FrameKind::Metrics
            }
            Payload::Alert(_) => FrameKind::Alert,
        };
        let clients = self.lock();
        if clients.is_empty() {
            return;
        }
        if envelope.published_at_us > 0 {
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or_default();
            let seconds = now_us.saturating_sub(envelope.published_at_us) as f64 / 1e6;
            self.fanout_latency.observe(seconds);
        }
        // The one serialization of this message on this worker; every client shares the bytes.
        let frame = Frame::for_envelope(kind, envelope);
        let mut dropped = 0;
        let mut overflowed = 0;
        for queue in clients.values() {
            match queue.push(frame.clone()) {
                Pushed::Queued { dropped: n } => dropped += n,
                Pushed::Overflowed => overflowed += 1,
                Pushed::Closing => {}
            }
        }
        drop(clients);
        if dropped > 0 {
            self.dropped_metrics.fetch_add(dropped, Ordering::Relaxed);
        }
        if overflowed > 0 {
            self.slow_consumers_closed
                .fetch_add(overflowed, Ordering::Relaxed);
            tracing::warn!(
                clients = overflowed,
                "closing slow clients: an alert did not fit in their queue"
            );
        }
    }
}

/// A registered client: its id, its queue, and the metrics snapshot to send (after `hello`)
/// before anything queued. Unregister it with [`ConnectionManager::unregister`].
pub(crate) struct Registered {
    pub(crate) id: u64,
    pub(crate) queue: Arc<ClientQueue>,
    pub(crate) snapshot: Frame,
}

/// What a resuming client is sent before the live stream.
pub(crate) struct Replay {
    /// The `resume` control frame, then every retained alert after the client's last id.
    pub(crate) frames: Vec<Frame>,
    /// The newest replayed id: live alerts up to it are duplicates.
    pub(crate) floor: Option<LogId>,
}

#[derive(Serialize)]
struct Snapshot {
    #[serde(rename = "type")]
    kind: &'static str,
    data: Vec<Metric>,
}

#[derive(Serialize)]
struct Resume<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    after: LogId,
    /// The log's epoch now: the one the replayed and live alerts' ids belong to.
    epoch: Option<&'a LogEpoch>,
    replayed: usize,
    /// False when an alert after `after` is not in the log: trimmed, or the log was reset
    /// (the client's epoch is not the log's): some are missed.
    complete: bool,
}

/// Why a client was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the worker is shutting down")]
    Draining,
}

#[derive(Serialize)]
struct Hello<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    worker: &'a WorkerId,
    connections: usize,
    bus: BusStatus,
}

/// Who may open a WebSocket connection, checked before the upgrade.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// Browser origins allowed to connect (the `Origin` header); empty: any. Requests without an
    /// `Origin` (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Most clients on this worker; beyond it upgrades get 503. A slot is reserved before the
    /// upgrade, so the cap holds however many clients upgrade at once.
    pub max_connections: Option<usize>,
}

/// Keeps one worker's WebSocket clients and its bus subscription.
pub struct ConnectionManager {
    worker: WorkerId,
    subscriber: Arc<dyn BusSubscriber>,
    history: Arc<dyn AlertLog>,
    access: Arc<dyn AccessControl>,
    admission: Admission,
    /// The `max_connections` slots, reserved before the upgrade.
    slots: ConnectionSlots,
    registry: Arc<ClientRegistry>,
    /// `Some` while the worker has clients. The async lock orders subscribe/unsubscribe against
    /// client arrivals (see the module doc).
    subscription: tokio::sync::Mutex<Option<Subscription>>,
    next_client_id: AtomicU64,
    limits: ClientLimits,
    draining: AtomicBool,
}

impl ConnectionManager {
    pub fn new(
        worker: WorkerId,
        subscriber: Arc<dyn BusSubscriber>,
        history: Arc<dyn AlertLog>,
        access: Arc<dyn AccessControl>,
        limits: ClientLimits,
    ) -> Self {
        Self {
            worker,
            subscriber,
            history,
            access,
            admission: Admission::default(),
            slots: ConnectionSlots::new(None),
            registry: Arc::new(ClientRegistry::new()),
            subscription: tokio::sync::Mutex::new(None),
            next_client_id: AtomicU64::new(1),
            limits,
            draining: AtomicBool::new(false),
        }
    }

    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    pub(crate) fn access(&self) -> &dyn AccessControl {
        self.access.as_ref()
    }

    /// Sets who may open a connection (origins, the connection cap).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.slots = ConnectionSlots::new(admission.max_connections);
        self.admission = admission;
        self
    }

    /// Reserves a connection slot for an upgrade; `None` when the worker is at its cap. The slot
    /// is given back when the returned guard is dropped.
    pub(crate) fn reserve_slot(&self) -> Option<Slot> {
        self.slots.try_reserve()
    }

    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn connections(&self) -> usize {
        self.registry.lock().len()
    }

    pub fn bus_status(&self) -> BusStatus {
        self.subscriber.status()
    }

    pub fn stats(&self) -> DeliveryStats {
        DeliveryStats {
            connections: self.connections(),
            accepted: self.registry.accepted.load(Ordering::Relaxed),
            delivered: self.registry.delivered.load(Ordering::Relaxed),
            dropped_metrics: self.registry.dropped_metrics.load(Ordering::Relaxed),
            slow_consumers_closed: self.registry.slow_consumers_closed.load(Ordering::Relaxed),
        }
    }

    /// Publication-to-fan-out latency of every message this worker delivered, in seconds.
    pub fn fanout_latency(&self) -> Histogram {
        self.registry.fanout_latency.clone()
    }

    /// Frames waiting in client queues now: the deepest queue, and all of them.
    pub fn queue_depths(&self) -> (usize, usize) {
        let clients = self.registry.lock();
        clients
            .values()
            .map(|q| q.len())
            .fold((0, 0), |(max, total), len| (max.max(len), total + len))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn registry(&self) -> &ClientRegistry {
        &self.registry
    }

    /// Registers a client, subscribing to the bus first if it is the worker's first client.
    pub(crate) async fn register(&self, grant: &Grant) -> Result<Registered, Refused> {
        let mut subscription = self.subscription.lock().await;
        if self.is_draining() {
            return Err(Refused::Draining);
        }
        if subscription.is_none() {
            let delivery: Arc<dyn LocalDelivery> = self.registry.clone();
            *subscription = Some(self.subscriber.subscribe(delivery).await);
            let status = self.subscriber.status();
            tracing::info!(state = ?status.state, bus = status.bus, "first client: subscribed to the bus");
        }
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(ClientQueue::for_channels(
            self.limits.queue,
            grant.metrics,
            grant.alerts,
        ));
        let (connections, snapshot) = {
            let mut clients = self.registry.lock();
            let snapshot = Snapshot {
                kind: "snapshot",
                data: if grant.metrics {
                    self.registry
                        .latest
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .snapshot()
                } else {
                    Vec::new()
                },
            };
            // Taken under the clients lock, so the snapshot is older than every live frame the
            // client will get.
            let snapshot = Frame::control(&snapshot);
            clients.insert(id, Arc::clone(&queue));
            (clients.len(), snapshot)
        };
        self.registry.accepted.fetch_add(1, Ordering::Relaxed);
        drop(subscription);
        tracing::info!(client = id, connections, "client connected");
        Ok(Registered {
            id,
            queue,
            snapshot,
        })
    }

    /// Resolves once the worker's bus subscription is live.
    pub(crate) async fn until_live(&self) {
        self.subscriber.until_live().await;
    }

    /// The `hello` frame, as of now.
    pub(crate) fn hello(&self) -> Frame {
        Frame::control(&Hello {
            kind: "hello",
            worker: &self.worker,
            connections: self.connections(),
            bus: self.subscriber.status(),
        })
    }

    /// Reads every retained alert after `from` for a resuming client.
    pub(crate) async fn replay(&self, from: &LogPosition) -> Result<Replay, HistoryError> {
        let read = read_after(self.history.as_ref(), from).await?;
        if !read.complete {
            tracing::warn!(
                after = %from.id,
                epoch = ?from.epoch.as_ref().map(LogEpoch::as_str),
                "a resuming client missed alerts: trimmed from the log, or the log was reset"
            );
        }
        let resume = Resume {
            kind: "resume",
            after: from.id,
            epoch: read.position.epoch.as_ref(),
            replayed: read.alerts.len(),
            complete: read.complete,
        };
        let mut frames = vec![Frame::control(&resume)];
        frames.extend(
            read.alerts
                .iter()
                .map(|e| Frame::for_envelope(FrameKind::Alert, e)),
        );
        let floor = read.alerts.last().and_then(|e| e.id);
        Ok(Replay { frames, floor })
    }

    /// Removes a client at once and gives its slot back; unsubscribes from the bus when it was
    /// the last one.
    pub(crate) async fn unregister(&self, id: u64, slot: Slot) {
        let remaining = {
            let mut clients = self.registry.lock();
            // The slot is free before the client leaves the count: whoever sees the count drop
            // (`/healthz`) can connect.
            drop(slot);
            clients.remove(&id);
            clients.len()
        };
        tracing::info!(client = id, connections = remaining, "client disconnected");
        if remaining > 0 {
            return;
        }
        self.registry.emptied.notify_waiters();
        let mut subscription = self.subscription.lock().await;
        // A client may have arrived since the remove above; it holds the subscription then.
        if self.connections() == 0 && subscription.take().is_some() {
            tracing::info!("last client left: unsubscribed from the bus");
        }
    }

    /// Stops accepting clients and asks every client to close with 1001 (going away) after what
    /// is already queued for it.
    pub fn shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        let clients = self.registry.lock();
        tracing::info!(
            connections = clients.len(),
            "shutting down: closing every client with 1001"
        );
        for queue in clients.values() {
            queue.close(CloseReason::GOING_AWAY);
        }
    }

    /// Resolves once no client is connected.
    pub async fn wait_until_empty(&self) {
        loop {
            let emptied = self.registry.emptied.notified();
            if self.connections() == 0 {
                return;
            }
            emptied.await;
        }
    }
}
