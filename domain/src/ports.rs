//! The ports: what the domain needs from the outside world, named for the need, not the technology.
//!
//! Adapters are chosen at runtime (`--bus memory|redis`), so the ports are object-safe traits used
//! as `Arc<dyn …>` (with `async-trait` for the async ones). One virtual call per publish or per
//! received message is noise next to the JSON work on the same path.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Envelope, HistoryError, LogEpoch, LogId, LogPosition, PublishError};

/// Publishes a message to every worker (including this one).
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Broadcaster: Send + Sync + 'static {
    /// Hands `envelope` to the bus. `Ok` means the bus accepted it, not that anyone received it.
    /// For an alert, `Ok(Some(id))` is its position in the alert log.
    async fn publish(&self, envelope: &Envelope) -> Result<Option<LogId>, PublishError>;
}

/// Receives what the bus carries and hands it to this worker's local clients.
///
/// Called from the bus listener: it must return quickly and never wait on a client.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Hands one bus message to this worker's clients: it only queues, never waits on a client
    /// or the network.
    fn deliver(&self, envelope: &Envelope);
}

/// The receiving side of a bus: one per worker.
#[async_trait]
pub trait BusSubscriber: Send + Sync + 'static {
    /// Starts handing every message on every channel to `delivery`, until the returned
    /// [`Subscription`] is dropped.
    ///
    /// Resolves once the subscription is live, or once the first attempt failed: the adapter then
    /// keeps retrying by itself and reports its progress through [`BusSubscriber::status`].
    async fn subscribe(&self, delivery: Arc<dyn LocalDelivery>) -> Subscription;

    /// What the subscriber is doing now, for health reports and logs.
    fn status(&self) -> BusStatus;

    /// Resolves once a subscription is live (state [`SubscriberState::Subscribed`]): from then
    /// on every message published reaches this worker. Call it after [`BusSubscriber::subscribe`].
    async fn until_live(&self);
}

/// A live subscription: dropping it stops the listener and releases its connection.
#[must_use = "dropping a Subscription stops it"]
pub struct Subscription {
    _guard: Box<dyn Any + Send + Sync>,
}

impl Subscription {
    /// Wraps whatever the adapter needs to keep alive; its `Drop` is what stops the listener.
    pub fn new(guard: impl Any + Send + Sync) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// The state of a worker's bus subscriber (decoded by clients from `hello` and `/healthz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriberState {
    /// No local clients, so no subscription.
    Idle,
    /// An attempt to connect and subscribe is under way (the first, or one after a delay).
    Connecting,
    /// Live: every message published from now on reaches this worker.
    Subscribed,
    /// The connection failed; the subscriber is waiting to try again.
    Reconnecting,
}

/// What a subscriber reports about itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BusStatus {
    /// Which bus: `memory` or `redis`.
    pub bus: &'static str,
    /// What the subscriber is doing now.
    pub state: SubscriberState,
    /// Recoveries: times the subscriber was subscribed again after losing its connection.
    pub reconnects: u64,
    /// Connection attempts that failed (several per outage, one per backoff step).
    pub failed_attempts: u64,
    /// Why the latest failed attempt or lost connection failed, kept after recovery for
    /// diagnosis; `None` when nothing has failed yet.
    pub last_error: Option<String>,
    /// Messages received from the bus and handed to local delivery.
    pub received: u64,
    /// Messages on the bus that were not valid envelopes.
    pub malformed: u64,
    /// Times this worker found alerts it could not deliver: an in-memory receiver that lagged,
    /// or a catch-up that found alerts already trimmed from the log, or the log reset.
    pub lost: u64,
    /// Alerts on the channel whose `id` the alert log did not assign: delivered without it.
    pub foreign_ids: u64,
    /// Second copies of a message already delivered (Redis Cluster can hand a worker the same
    /// message twice after a failover): dropped.
    pub duplicates: u64,
    /// Metrics that arrived after a message of the same publisher stamped well after them (a
    /// Redis Cluster master let go after a failover sends on what it held): dropped.
    pub late: u64,
    /// The Redis the subscriber last subscribed on, `HOST:PORT` (the master the sentinels named,
    /// with Sentinel); `None` for the in-memory bus or before the first subscribe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

/// The time, as the domain sees it. Reading the clock is I/O; tests use a fixed one.
#[cfg_attr(test, mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix microseconds.
    fn now_us(&self) -> u64;
}

/// Alerts the bus retained, read back after a given position.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertHistory {
    /// The log's identity now: positions compare only within one epoch.
    pub epoch: LogEpoch,
    /// Alerts after the asked-for position, oldest first, each with its `id` and `epoch` set.
    pub alerts: Vec<Envelope>,
    /// False when an alert after the asked-for position is not in the log: trimmed by the
    /// retention limit, or the position is beyond the newest id this log ever assigned (it comes
    /// from another log). Within this epoch only: comparing epochs is the reader's part.
    pub complete: bool,
}

/// The bus's bounded log of alerts, for workers and clients that were away.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait AlertLog: Send + Sync + 'static {
    /// At most `limit` alerts with an id greater than `after`, oldest first, read atomically
    /// with the log's epoch (an empty log gets its epoch on first read).
    async fn alerts_after(&self, after: LogId, limit: usize) -> Result<AlertHistory, HistoryError>;

    /// The log's epoch and newest id (zero when empty): where a new reader starts.
    async fn head(&self) -> Result<LogPosition, HistoryError>;
}
