//! The connection lifecycle of one worker: a client's way from registration to its last frame —
//! subscribing to the bus for the worker's first client and unsubscribing after its last, under
//! one async lock; registering and unregistering; the greeting (`hello`, `snapshot`) and the
//! replay for a resuming client; the drain at shutdown.
//!
//! The first client to arrive subscribes, the last one to leave unsubscribes. Both happen under
//! one async lock, and a client is inserted while that lock is held, so there is never a
//! registered client without a live subscription, and a new client's `hello` frame and metrics
//! snapshot come before any bus message. A client's `hello` is sent once the subscription is live
//! (it means "from now on you get every message"). A resuming client is sent the alerts it missed
//! from the bus's alert log (through the domain's one pager, `read_after`), then the live stream
//! with the replayed ids skipped.
//!
//! It must never sit on the per-message path (that is `registry`'s), never hold a std lock
//! across an `.await` (the async lock orders subscription changes only), and never decide who may
//! connect (that is `admission`'s) or write a frame shape of its own (that is `protocol`'s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fanout_domain::{
    read_after, AccessControl, AlertLog, BusStatus, BusSubscriber, ClientRequest, Grant,
    HistoryError, LocalDelivery, LogEpoch, LogId, LogPosition, Payload, Subscribe, Subscription,
    WorkerId,
};
use prometheus_client::metrics::histogram::Histogram;

use crate::admission::{Admission, Admitted, Gate, NotAdmitted, UpgradeRequest};
use crate::filter::{Bounds, Filter};
use crate::protocol::{
    Answer, CloseReason, Completeness, Frame, FrameKind, Hello, Resume, Snapshot,
};
use crate::queue::ClientQueue;
use crate::registry::{Applied, ClientRegistry, DeliveryStats};
use crate::slots::Slot;
use crate::ClientLimits;

/// A registered client: its id, its queue, and the metrics snapshot to send (after `hello`)
/// before anything queued. Unregister it with [`ConnectionManager::unregister`].
pub(crate) struct Registered {
    pub(crate) id: u64,
    pub(crate) queue: Arc<ClientQueue>,
    pub(crate) snapshot: Frame,
    /// What its first subscription lets through (its resume replays only that).
    pub(crate) filter: Arc<Filter>,
}

/// What a resuming client is sent before the live stream.
pub(crate) struct Replay {
    /// The `resume` control frame, then every retained alert after the client's last id.
    pub(crate) frames: Vec<Frame>,
    /// The newest replayed id: live alerts up to it are duplicates.
    pub(crate) floor: Option<LogId>,
}

/// Why a client was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// [`ConnectionManager::shutdown`] was called: the worker takes no new clients.
    #[error("the worker is shutting down")]
    Draining,
}

/// Keeps one worker's WebSocket clients and its bus subscription.
pub struct ConnectionManager {
    worker: WorkerId,
    subscriber: Arc<dyn BusSubscriber>,
    history: Arc<dyn AlertLog>,
    access: Arc<dyn AccessControl>,
    /// Who may connect: origins, the `max_connections` slots, and whether the worker drains.
    gate: Gate,
    registry: Arc<ClientRegistry>,
    /// `Some` while the worker has clients. The async lock orders subscribe/unsubscribe against
    /// client arrivals (see the module doc).
    subscription: tokio::sync::Mutex<Option<Subscription>>,
    next_client_id: AtomicU64,
    limits: ClientLimits,
}

impl ConnectionManager {
    /// The manager of `worker`'s clients: it subscribes through `subscriber` when the first
    /// client arrives, replays missed alerts from `history`, and checks credentials with
    /// `access`. Any origin and any number of clients are admitted until
    /// [`ConnectionManager::with_admission`] says otherwise. Subscribes to nothing yet.
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
            gate: Gate::new(Admission::default()),
            registry: ClientRegistry::new(),
            subscription: tokio::sync::Mutex::new(None),
            next_client_id: AtomicU64::new(1),
            limits,
        }
    }

    /// The worker whose clients it keeps, as named in `hello` frames and health reports.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// The bounds and timers every client of this worker gets.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Sets who may open a connection (origins, the connection cap).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.gate = Gate::new(admission);
        self
    }

    /// Whether a message's direct sends go in one `io_uring` submission where the kernel allows
    /// it (the default), or each with its own `send(2)`.
    pub fn with_io_uring(self, enabled: bool) -> Self {
        if !enabled {
            self.registry.without_ring();
        }
        self
    }

    /// Decides an upgrade request before the upgrade; an admitted one holds a connection slot.
    pub(crate) fn admit(&self, request: &UpgradeRequest<'_>) -> Result<Admitted, NotAdmitted> {
        self.gate.admit(
            self.access.as_ref(),
            request,
            &self.limits.subscriptions.selector,
        )
    }

    /// Clients connected to this worker now.
    pub fn connections(&self) -> usize {
        self.registry.len()
    }

    /// What the worker's bus subscriber is doing now, for health reports.
    pub fn bus_status(&self) -> BusStatus {
        self.subscriber.status()
    }

    /// Delivery counters since start, and the clients connected now.
    pub fn stats(&self) -> DeliveryStats {
        self.registry.stats()
    }

    /// Publication-to-fan-out latency of every message this worker delivered, in seconds.
    pub fn fanout_latency(&self) -> Histogram {
        self.registry.fanout_latency()
    }

    /// Frames waiting in client queues now: the deepest queue, and all of them.
    pub fn queue_depths(&self) -> (usize, usize) {
        self.registry.queue_depths()
    }

    /// Whether [`ConnectionManager::shutdown`] was called: no new client is admitted.
    pub fn is_draining(&self) -> bool {
        self.gate.is_draining()
    }

    /// Whether the worker is at `--max-connections`: a new client would get 503.
    pub fn is_full(&self) -> bool {
        self.gate.is_full()
    }

    pub(crate) fn registry(&self) -> &ClientRegistry {
        &self.registry
    }

    /// Registers a client, subscribing to the bus first if it is the worker's first client.
    pub(crate) async fn register(
        &self,
        grant: &Grant,
        first: Subscribe,
    ) -> Result<Registered, Refused> {
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
        // Which channels the client may receive is part of its filter (`Bounds`), not the queue's.
        let queue = Arc::new(ClientQueue::new(self.limits.queue));
        let added = self
            .registry
            .add(id, Arc::clone(&queue), Bounds::of(grant), first);
        drop(subscription);
        // Encoded outside every lock; its content was taken when the client was added.
        let snapshot = Snapshot::new(&added.snapshot).frame();
        tracing::info!(
            client = id,
            connections = added.connections,
            "client connected"
        );
        Ok(Registered {
            id,
            queue,
            snapshot,
            filter: added.filter,
        })
    }

    /// Resolves once the worker's bus subscription is live.
    pub(crate) async fn until_live(&self) {
        self.subscriber.until_live().await;
    }

    /// The `hello` frame, as of now.
    pub(crate) fn hello(&self) -> Frame {
        Hello::new(&self.worker, self.connections(), self.subscriber.status()).frame()
    }

    /// Reads every retained alert after `from` for a resuming client, and keeps those `filter`
    /// takes (`complete` is about the log, not the filter).
    pub(crate) async fn replay(
        &self,
        from: &LogPosition,
        filter: &Filter,
    ) -> Result<Replay, HistoryError> {
        let read = read_after(self.history.as_ref(), from).await?;
        let completeness = if read.complete {
            Completeness::Complete
        } else {
            tracing::warn!(
                after = %from.id,
                epoch = ?from.epoch.as_ref().map(LogEpoch::as_str),
                "a resuming client missed alerts: trimmed from the log, or the log was reset"
            );
            Completeness::Incomplete
        };
        let taken: Vec<Frame> = read
            .alerts
            .iter()
            .filter(|e| matches!(&e.payload, Payload::Alert(alert) if filter.takes_alert(alert)))
            .map(|e| Frame::for_envelope(FrameKind::Alert, e))
            .collect();
        let resume = Resume::new(
            from.id,
            read.position.epoch.as_ref(),
            taken.len(),
            completeness,
        );
        let mut frames = vec![resume.frame()];
        frames.extend(taken);
        // Live copies of every alert read are skipped, also of those the filter left out.
        let floor = read.alerts.last().and_then(|e| e.id);
        Ok(Replay { frames, floor })
    }

    /// Carries out a text frame a client sent (a `subscribe` or `unsubscribe` request): the
    /// frames queued for it before the change go into `out`, then the answer, then, after a
    /// subscribe, the snapshot of what the new subscription takes. A bad request is answered
    /// with an `error` frame and changes nothing.
    pub(crate) fn request(&self, client: u64, text: &str, out: &mut Vec<Frame>) {
        let limits = &self.limits.subscriptions;
        let applied = ClientRequest::parse(text, &limits.selector).and_then(|request| {
            self.registry
                .apply(client, request, limits.max_per_connection, out)
        });
        match applied {
            Ok(Applied::Subscribed { id, snapshot }) => {
                tracing::debug!(client, subscription = %id, series = snapshot.len(), "subscribed");
                out.push(Answer::subscribed(&id).frame());
                out.push(Snapshot::new(&snapshot).frame());
            }
            Ok(Applied::Unsubscribed { id }) => {
                tracing::debug!(client, subscription = %id, "unsubscribed");
                out.push(Answer::unsubscribed(&id).frame());
            }
            Err(error) => {
                tracing::debug!(client, %error, field = ?error.field, "client request refused");
                out.push(Answer::error(&error).frame());
            }
        }
    }

    /// Removes a client at once and gives its slot back; unsubscribes from the bus when it was
    /// the last one.
    pub(crate) async fn unregister(&self, id: u64, slot: Slot) {
        let remaining = self.registry.remove(id, slot);
        tracing::info!(client = id, connections = remaining, "client disconnected");
        if remaining > 0 {
            return;
        }
        let mut subscription = self.subscription.lock().await;
        // A client may have arrived since the remove above; it holds the subscription then.
        if self.connections() == 0 && subscription.take().is_some() {
            tracing::info!("last client left: unsubscribed from the bus");
        }
    }

    /// Stops accepting clients and asks every client to close with 1001 (going away) after what
    /// is already queued for it.
    pub fn shutdown(&self) {
        self.gate.start_draining();
        let connections = self.registry.close_all(CloseReason::GOING_AWAY);
        tracing::info!(connections, "shutting down: closing every client with 1001");
    }

    /// Resolves once no client is connected.
    pub async fn wait_until_empty(&self) {
        self.registry.until_empty().await;
    }
}

/// In their own file (`manager/tests.rs`) for the fakes of the bus and the alert log they need.
#[cfg(test)]
mod tests;
