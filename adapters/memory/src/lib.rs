//! The in-memory bus: every worker in one process shares one [`MemoryBus`].
//!
//! This is how local development and the fast tests run several workers without Redis. It keeps
//! the bus contract the Redis adapter keeps: a publish reaches every subscribed worker once, in
//! publish order; a worker that falls more than [`MemoryBus::CAPACITY`] messages behind loses the
//! oldest and counts them as `lost` (the listener is never blocked by a slow worker). Alerts get
//! ordered ids and the last [`MemoryBus::DEFAULT_RETENTION`] are kept for replay ([`AlertLog`]).
//! Each bus has its own random epoch: a process restarted with a new bus is a new log, and a
//! client resuming from the old one is told so.
//! It never touches the network and never blocks a publisher.

#![warn(missing_docs, unreachable_pub)]

mod quota;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use fanout_domain::{
    AlertHistory, AlertLog, Broadcaster, BusStatus, BusSubscriber, Envelope, HistoryError,
    LocalDelivery, LogEpoch, LogId, LogPosition, Payload, PublishError, SubscriberState,
    Subscription,
};
use tokio::sync::broadcast;

pub use quota::MemoryQuota;

/// One bus shared by every worker of a process. Cloning is cheap and shares the bus.
#[derive(Clone)]
pub struct MemoryBus {
    sender: broadcast::Sender<Arc<Envelope>>,
    /// Held while an alert gets its id and is sent, so ids are delivered in order.
    log: Arc<Mutex<AlertLogState>>,
}

/// The retained alerts, the in-memory counterpart of the Redis stream.
struct AlertLogState {
    epoch: LogEpoch,
    entries: VecDeque<Envelope>,
    retention: usize,
    next_seq: u64,
    /// The newest id trimmed away by the retention limit.
    max_deleted: LogId,
}

impl AlertLogState {
    fn new(retention: usize) -> Self {
        Self {
            epoch: LogEpoch::from_random(rand::random()),
            entries: VecDeque::new(),
            retention: retention.max(1),
            next_seq: 1,
            max_deleted: LogId::ZERO,
        }
    }

    /// The newest id assigned in this epoch.
    fn head(&self) -> LogId {
        LogId::new(0, self.next_seq - 1)
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// Messages a subscriber may fall behind before it loses the oldest.
    pub const CAPACITY: usize = 16 * 1024;

    /// Alerts retained for replay by default.
    pub const DEFAULT_RETENTION: usize = 10_000;

    /// A bus with a fresh epoch that retains the last [`MemoryBus::DEFAULT_RETENTION`] alerts.
    pub fn new() -> Self {
        Self::with_retention(Self::DEFAULT_RETENTION)
    }

    /// A bus that retains the last `retention` alerts for replay.
    pub fn with_retention(retention: usize) -> Self {
        let (sender, _) = broadcast::channel(Self::CAPACITY);
        Self {
            sender,
            log: Arc::new(Mutex::new(AlertLogState::new(retention))),
        }
    }

    /// Empties the alert log and starts a new epoch, as a Redis that lost its data would: the
    /// way tests play a log reset.
    pub fn reset_log(&self) {
        let mut log = self.lock_log();
        *log = AlertLogState::new(log.retention);
    }

    fn lock_log(&self) -> MutexGuard<'_, AlertLogState> {
        // Every update of the log state is complete before anything that could panic.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A subscriber for one worker.
    pub fn subscriber(&self) -> MemorySubscriber {
        MemorySubscriber {
            bus: self.clone(),
            counters: Arc::new(Counters::default()),
        }
    }
}

#[async_trait]
impl Broadcaster for MemoryBus {
    async fn publish(&self, envelope: &Envelope) -> Result<Option<LogId>, PublishError> {
        let Payload::Alert(_) = envelope.payload else {
            // An error only means no worker is subscribed now: like Redis Pub/Sub, nobody hears it.
            let _ = self.sender.send(Arc::new(envelope.clone()));
            return Ok(None);
        };
        let mut log = self.lock_log();
        let id = LogId::new(0, log.next_seq);
        log.next_seq += 1;
        let mut logged = envelope.clone();
        logged.id = Some(id);
        logged.epoch = Some(log.epoch.clone());
        log.entries.push_back(logged.clone());
        while log.entries.len() > log.retention {
            if let Some(trimmed) = log.entries.pop_front().and_then(|e| e.id) {
                log.max_deleted = trimmed;
            }
        }
        let _ = self.sender.send(Arc::new(logged));
        Ok(Some(id))
    }
}

#[async_trait]
impl AlertLog for MemoryBus {
    async fn alerts_after(&self, after: LogId, limit: usize) -> Result<AlertHistory, HistoryError> {
        let log = self.lock_log();
        let alerts = log
            .entries
            .iter()
            .filter(|e| e.id.is_some_and(|id| id > after))
            .take(limit)
            .cloned()
            .collect();
        Ok(AlertHistory {
            epoch: log.epoch.clone(),
            alerts,
            complete: after >= log.max_deleted && after <= log.head(),
        })
    }

    async fn head(&self) -> Result<LogPosition, HistoryError> {
        let log = self.lock_log();
        Ok(LogPosition {
            epoch: Some(log.epoch.clone()),
            id: log.head(),
        })
    }
}

#[derive(Default)]
struct Counters {
    /// Live subscriptions of this worker (0 or 1 in practice).
    active: AtomicUsize,
    received: AtomicU64,
    lost: AtomicU64,
}

/// The receiving side of the in-memory bus for one worker.
pub struct MemorySubscriber {
    bus: MemoryBus,
    counters: Arc<Counters>,
}

/// Stops the listener task when the subscription is dropped.
struct ListenerGuard {
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl BusSubscriber for MemorySubscriber {
    async fn subscribe(&self, delivery: Arc<dyn LocalDelivery>) -> Subscription {
        // Subscribing to the broadcast channel here, before returning, is what makes the
        // subscription live at once: every later publish is queued for this receiver.
        let mut receiver = self.bus.sender.subscribe();
        let counters = Arc::clone(&self.counters);
        counters.active.fetch_add(1, Ordering::Relaxed);
        let task_counters = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(envelope) => {
                        task_counters.received.fetch_add(1, Ordering::Relaxed);
                        delivery.deliver(&envelope);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        task_counters.lost.fetch_add(missed, Ordering::Relaxed);
                        tracing::warn!(
                            missed,
                            "in-memory bus: this worker fell behind and lost messages"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Subscription::new(ListenerGuard { task, counters })
    }

    /// The in-memory bus is live as soon as `subscribe` returns.
    async fn until_live(&self) {}

    fn status(&self) -> BusStatus {
        let state = if self.counters.active.load(Ordering::Relaxed) > 0 {
            SubscriberState::Subscribed
        } else {
            SubscriberState::Idle
        };
        BusStatus {
            bus: "memory",
            state,
            reconnects: 0,
            failed_attempts: 0,
            last_error: None,
            received: self.counters.received.load(Ordering::Relaxed),
            malformed: 0,
            lost: self.counters.lost.load(Ordering::Relaxed),
            foreign_ids: 0,
            duplicates: 0,
            late: 0,
            master: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_domain::{Metric, Payload, WorkerId};
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    struct Recorder(mpsc::UnboundedSender<u64>);
    impl LocalDelivery for Recorder {
        fn deliver(&self, envelope: &Envelope) {
            let _ = self.0.send(envelope.seq);
        }
    }

    fn envelope(seq: u64) -> Envelope {
        Envelope {
            id: None,
            epoch: None,
            origin: WorkerId::new("w").unwrap_or_else(|e| panic!("{e}")),
            seq,
            published_at_us: 0,
            payload: Payload::Metrics(
                vec![Metric::new("m", 1.0).unwrap_or_else(|e| panic!("{e}"))],
            ),
        }
    }

    #[tokio::test]
    async fn every_subscribed_worker_receives_each_message_once_in_order() {
        let bus = MemoryBus::new();
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        let a = bus.subscriber();
        let b = bus.subscriber();
        let _sa = a.subscribe(Arc::new(Recorder(a_tx))).await;
        let _sb = b.subscribe(Arc::new(Recorder(b_tx))).await;
        for seq in 1..=3 {
            assert_eq!(bus.publish(&envelope(seq)).await.ok(), Some(None));
        }
        for rx in [&mut a_rx, &mut b_rx] {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(rx.recv().await.unwrap_or_default());
            }
            assert_eq!(got, [1, 2, 3]);
        }
        assert_eq!(a.status().received, 3);
        assert_eq!(a.status().state, SubscriberState::Subscribed);
    }

    #[tokio::test]
    async fn dropping_the_subscription_stops_delivery() {
        let bus = MemoryBus::new();
        let subscriber = bus.subscriber();
        let seen = Arc::new(Mutex::new(0));
        struct Count(Arc<Mutex<u32>>);
        impl LocalDelivery for Count {
            fn deliver(&self, _: &Envelope) {
                if let Ok(mut n) = self.0.lock() {
                    *n += 1;
                }
            }
        }
        let subscription = subscriber.subscribe(Arc::new(Count(seen.clone()))).await;
        drop(subscription);
        assert_eq!(subscriber.status().state, SubscriberState::Idle);
        // Another worker's delivery of the same message is the signal that the bus has run.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _other = bus.subscriber().subscribe(Arc::new(Recorder(tx))).await;
        assert_eq!(bus.publish(&envelope(7)).await.ok(), Some(None));
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(*seen.lock().unwrap_or_else(|e| e.into_inner()), 0);
    }

    #[tokio::test]
    async fn alerts_get_ordered_ids_and_the_log_says_when_replay_is_incomplete() {
        let bus = MemoryBus::with_retention(2);
        let alert = |n: u64| Envelope {
            epoch: None,
            payload: Payload::Alert(
                fanout_domain::Alert::new(fanout_domain::Severity::Info, "a")
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            ..envelope(n)
        };
        let mut ids = Vec::new();
        for n in 1..=3 {
            ids.push(
                bus.publish(&alert(n))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(LogId::ZERO),
            );
        }
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        // The first was trimmed: asking after it is complete, asking from before it is not.
        let after_first = bus
            .alerts_after(ids[0], 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(after_first.complete);
        assert_eq!(
            after_first.alerts.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        let from_start = bus
            .alerts_after(LogId::ZERO, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!from_start.complete);
        assert_eq!(from_start.alerts.len(), 2);
    }
}
