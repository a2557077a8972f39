//! The hot path: the worker's connected clients, and handing every bus message to them (the bus
//! listener's [`LocalDelivery`]), with the delivery counters and the fan-out latency histogram.
//!
//! A message is encoded once and a clone of the shared bytes is pushed into each client's bounded
//! [`ClientQueue`] under one short hold of a std mutex. It must never wait on a client, never
//! hold a lock across an `.await`, never allocate per client, and never subscribe, replay or
//! decide who may connect (that is the connection lifecycle's and admission's).
//!
//! About half of this file is its tests, with real client queues: the hot path and its
//! accounting are one concept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use fanout_domain::{Envelope, LocalDelivery, Metric, Payload};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use tokio::sync::Notify;

use crate::protocol::{CloseReason, Frame, FrameKind};
use crate::queue::{ClientQueue, Pushed};
use crate::slots::Slot;
use crate::snapshot::LatestMetrics;

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

/// Publication-to-fan-out times beyond this (a minute) are not observed: they are replays or
/// an outside publisher's `published_at_us`, not latency, and would swamp the histogram.
const MAX_LATENCY_US: u64 = 60_000_000;

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

/// A client just added: how many are connected now, and its snapshot.
pub(crate) struct Added {
    pub(crate) connections: usize,
    /// The latest metrics, taken under the clients lock: older than every live frame the client
    /// will get. Empty for a client that does not receive metrics.
    pub(crate) snapshot: Vec<Metric>,
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

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ClientQueue>>> {
        // Inserts and removes cannot leave the map inconsistent, so a poisoned lock is usable.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latest(&self) -> MutexGuard<'_, LatestMetrics> {
        // `record` leaves the map consistent at every step, so a poisoned lock is usable.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a client queue without counting it (the benchmarks' way in; clients go through
    /// [`ClientRegistry::add`]).
    pub(crate) fn insert(&self, id: u64, queue: Arc<ClientQueue>) {
        self.lock().insert(id, queue);
    }

    /// Adds a client and takes its snapshot under the same lock, so the snapshot is older than
    /// every live frame the client will get.
    pub(crate) fn add(&self, id: u64, queue: Arc<ClientQueue>) -> Added {
        let added = {
            let mut clients = self.lock();
            let snapshot = if queue.accepts(FrameKind::Metrics) {
                self.latest().snapshot()
            } else {
                Vec::new()
            };
            clients.insert(id, queue);
            Added {
                connections: clients.len(),
                snapshot,
            }
        };
        self.accepted.fetch_add(1, Ordering::Relaxed);
        added
    }

    /// Removes a client and gives its connection slot back; returns how many are left.
    pub(crate) fn remove(&self, id: u64, slot: Slot) -> usize {
        let remaining = {
            let mut clients = self.lock();
            // The slot is free before the client leaves the count: whoever sees the count drop
            // (`/healthz`) can connect.
            drop(slot);
            clients.remove(&id);
            clients.len()
        };
        if remaining == 0 {
            self.emptied.notify_waiters();
        }
        remaining
    }

    /// Clients connected now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Resolves once no client is connected.
    pub(crate) async fn until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.len() == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// Asks every client to close with `reason` after what is already queued for it; returns how
    /// many were asked.
    pub(crate) fn close_all(&self, reason: CloseReason) -> usize {
        let clients = self.lock();
        for queue in clients.values() {
            queue.close(reason);
        }
        clients.len()
    }

    /// Frames waiting in client queues now: the deepest queue, and all of them.
    pub(crate) fn queue_depths(&self) -> (usize, usize) {
        let clients = self.lock();
        clients
            .values()
            .map(|q| q.len())
            .fold((0, 0), |(max, total), len| (max.max(len), total + len))
    }

    pub(crate) fn count_delivered(&self, frames: u64) {
        self.delivered.fetch_add(frames, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> DeliveryStats {
        DeliveryStats {
            connections: self.len(),
            accepted: self.accepted.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped_metrics: self.dropped_metrics.load(Ordering::Relaxed),
            slow_consumers_closed: self.slow_consumers_closed.load(Ordering::Relaxed),
        }
    }

    /// Publication-to-fan-out latency of every message this worker delivered, in seconds.
    pub(crate) fn fanout_latency(&self) -> Histogram {
        self.fanout_latency.clone()
    }
}

impl LocalDelivery for ClientRegistry {
    fn deliver(&self, envelope: &Envelope) {
        let kind = match &envelope.payload {
            Payload::Metrics(metrics) => {
                let mut latest = self.latest();
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
            // A replayed alert, or an outside publisher's made-up time, is not a latency.
            let age_us = now_us.saturating_sub(envelope.published_at_us);
            if age_us <= MAX_LATENCY_US {
                self.fanout_latency.observe(age_us as f64 / 1e6);
            }
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

#[cfg(test)]
mod tests {
    use fanout_domain::{Alert, Severity, WorkerId};
    use futures_util::FutureExt;

    use super::*;
    use crate::queue::QueueLimits;
    use crate::slots::ConnectionSlots;

    fn envelope(payload: Payload) -> Envelope {
        Envelope {
            id: None,
            epoch: None,
            origin: WorkerId::new("web-1-4242").unwrap_or_else(|e| panic!("{e}")),
            seq: 1,
            published_at_us: 0,
            payload,
        }
    }

    fn metrics(value: f64) -> Envelope {
        envelope(Payload::Metrics(vec![
            Metric::new("cpu", value).unwrap_or_else(|e| panic!("{e}"))
        ]))
    }

    fn alert() -> Envelope {
        envelope(Payload::Alert(
            Alert::new(Severity::Critical, "cpu high").unwrap_or_else(|e| panic!("{e}")),
        ))
    }

    fn queue(max_messages: usize) -> Arc<ClientQueue> {
        Arc::new(ClientQueue::new(QueueLimits {
            max_messages,
            max_bytes: 1024 * 1024,
        }))
    }

    fn taken(queue: &ClientQueue) -> Vec<Frame> {
        let mut frames = Vec::new();
        queue.drain_now(&mut frames);
        frames
    }

    fn slot() -> Slot {
        ConnectionSlots::new(None)
            .try_reserve()
            .unwrap_or_else(|| panic!("an uncapped worker always has a slot"))
    }

    #[test]
    fn every_client_gets_the_same_encoded_bytes() {
        let registry = ClientRegistry::new();
        let queues: Vec<_> = (0..3).map(|_| queue(8)).collect();
        for (id, queue) in queues.iter().enumerate() {
            registry.add(id as u64, Arc::clone(queue));
        }
        registry.deliver(&metrics(1.0));
        let frames: Vec<Frame> = queues.iter().flat_map(|q| taken(q)).collect();
        assert_eq!(frames.len(), 3);
        let first = frames[0].text.as_str();
        assert_eq!(first, metrics(1.0).to_json());
        assert!(
            frames
                .iter()
                .all(|f| f.text.as_str().as_ptr() == first.as_ptr()),
            "one encoding per message, shared by every client"
        );
    }

    #[test]
    fn dropped_metrics_are_counted_across_clients() {
        let registry = ClientRegistry::new();
        // Two frames each: the third drops the oldest (one drop is less than a whole queue's
        // worth, so neither client is closed for not reading).
        registry.add(1, queue(2));
        registry.add(2, queue(2));
        for value in [1.0, 2.0, 3.0] {
            registry.deliver(&metrics(value));
        }
        assert_eq!(registry.stats().dropped_metrics, 2);
        assert_eq!(registry.stats().slow_consumers_closed, 0);
    }

    #[test]
    fn an_alert_that_does_not_fit_closes_only_that_client_and_is_counted() {
        let registry = ClientRegistry::new();
        let full = queue(1);
        let roomy = queue(8);
        registry.add(1, Arc::clone(&full));
        registry.add(2, Arc::clone(&roomy));
        registry.deliver(&alert());
        registry.deliver(&alert());
        assert_eq!(registry.stats().slow_consumers_closed, 1);
        assert_eq!(taken(&roomy).len(), 2);
        registry.deliver(&alert());
        assert_eq!(
            registry.stats().slow_consumers_closed,
            1,
            "a closing client is not counted again"
        );
    }

    #[test]
    fn a_client_gets_only_the_channels_its_queue_accepts() {
        let registry = ClientRegistry::new();
        let limits = QueueLimits {
            max_messages: 8,
            max_bytes: 1024,
        };
        let alerts_only = Arc::new(ClientQueue::for_channels(limits, false, true));
        registry.add(1, Arc::clone(&alerts_only));
        registry.deliver(&metrics(1.0));
        registry.deliver(&alert());
        let frames = taken(&alerts_only);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].kind, FrameKind::Alert);
    }

    #[test]
    fn the_snapshot_holds_what_was_delivered_before_anyone_connected() {
        let registry = ClientRegistry::new();
        registry.deliver(&metrics(1.0));
        registry.deliver(&metrics(2.0));
        let added = registry.add(1, queue(8));
        assert_eq!(
            added.snapshot,
            [Metric::new("cpu", 2.0).unwrap_or_else(|e| panic!("{e}"))]
        );
        assert_eq!(added.connections, 1);
    }

    #[test]
    fn a_client_without_metrics_gets_an_empty_snapshot() {
        let registry = ClientRegistry::new();
        registry.deliver(&metrics(1.0));
        let limits = QueueLimits {
            max_messages: 8,
            max_bytes: 1024,
        };
        let alerts_only = Arc::new(ClientQueue::for_channels(limits, false, true));
        assert!(registry.add(1, alerts_only).snapshot.is_empty());
    }

    #[tokio::test]
    async fn counts_follow_adds_and_removes_and_the_last_remove_wakes_the_waiters() {
        let registry = ClientRegistry::new();
        registry.add(1, queue(8));
        registry.add(2, queue(8));
        assert_eq!(registry.remove(1, slot()), 1);
        let until_empty = registry.until_empty();
        tokio::pin!(until_empty);
        assert!(until_empty.as_mut().now_or_never().is_none());
        assert_eq!(registry.remove(2, slot()), 0);
        until_empty.await;
        let stats = registry.stats();
        assert_eq!((stats.connections, stats.accepted), (0, 2));
    }

    #[test]
    fn close_all_closes_every_queue() {
        let registry = ClientRegistry::new();
        let queues: Vec<_> = (0..2).map(|_| queue(8)).collect();
        for (id, queue) in queues.iter().enumerate() {
            registry.add(id as u64, Arc::clone(queue));
        }
        assert_eq!(registry.close_all(CloseReason::GOING_AWAY), 2);
        for queue in &queues {
            assert_eq!(
                queue.push(Frame::for_envelope(FrameKind::Metrics, &metrics(1.0))),
                Pushed::Closing
            );
        }
    }
}
