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
//!
//! Over 400 lines on purpose: see the line above (half tests, one concept).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout_domain::{
    ClientRequest, Envelope, LocalDelivery, Metric, Payload, RequestError, Subscribe,
};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use tokio::sync::Notify;

use crate::conflate::Conflator;
use crate::filter::{Bounds, Filter, Timing};
use crate::protocol::{CloseReason, Frame, FrameKind};
use crate::queue::{ClientQueue, Lent, Pushed};
use crate::slots::Slot;
use crate::snapshot::LatestMetrics;

/// Counters of what this worker's clients were sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryStats {
    /// Clients connected now.
    pub connections: usize,
    /// Distinct filters among them: clients whose subscriptions ask for the same things share
    /// one, and a message is matched and encoded once per filter.
    pub groups: usize,
    /// Clients accepted since start.
    pub accepted: u64,
    /// Frames written and flushed to clients.
    pub delivered: u64,
    /// Metrics frames dropped because a client's queue was full.
    pub dropped_metrics: u64,
    /// Clients closed because an alert did not fit in their queue.
    pub slow_consumers_closed: u64,
    /// Conflated metric values not kept because their group already had the most series pending
    /// (10,000).
    pub conflation_overflow: u64,
    /// Messages whose hand-over to the clients failed on a bug (contained: the bus listener goes
    /// on); anything but 0 is worth a bug report.
    pub internal_errors: u64,
    /// SSE responses cut after their stream ended because the client read nothing of the rest
    /// for the client timeout: their connection was closed, so that it holds nothing.
    pub hung_up: u64,
}

/// Publication-to-fan-out times beyond this (a minute) are not observed: they are replays or
/// an outside publisher's `published_at_us`, not latency, and would swamp the histogram.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A message older than this (µs from its publication to its fan-out) finds the worker behind:
/// its frame is queued for every client rather than written to each at once, so that a client's
/// task writes the frames that pile up in one write. At a load the worker keeps up with, messages
/// are younger, and each client gets a message with one write and no task woken. (An outside
/// publisher's made-up `published_at_us`, or a clock apart by more, only costs the direct path.)
const BEHIND_US: u64 = 2_000;

/// The clients of one worker; the bus listener's [`LocalDelivery`].
pub(crate) struct ClientRegistry {
    /// Held for an insert, a remove, a change of subscriptions or one fan-out pass; never across
    /// an await.
    clients: Mutex<Clients>,
    /// Signalled whenever the last client leaves.
    emptied: Notify,
    accepted: AtomicU64,
    delivered: AtomicU64,
    dropped_metrics: AtomicU64,
    slow_consumers_closed: AtomicU64,
    hung_up: AtomicU64,
    /// Conflated series not kept because a group already had the most pending.
    conflation_overflow: AtomicU64,
    /// Messages whose fan-out panicked (a bug), contained so that the bus listener goes on.
    internal_errors: AtomicU64,
    /// The latest value of each metric series this worker has seen, for new clients' snapshot.
    latest: Mutex<LatestMetrics>,
    /// Seconds from a message's publication to its fan-out on this worker (observed once per
    /// message, when it is queued for the clients).
    fanout_latency: Histogram,
    /// This registry, for the conflation timers it spawns (they end when it is gone).
    me: Weak<ClientRegistry>,
}

/// The clients, and their groups: clients whose subscriptions ask for the same things share a
/// group, so a message is matched and encoded once per group, not once per client.
#[derive(Default)]
struct Clients {
    members: HashMap<u64, Member>,
    groups: HashMap<Arc<Filter>, Group>,
    /// The fan-out's batched sends, used under this lock.
    ring: RingSlot,
}

/// Fewest clients in a group for its sends to go through the ring: for a few, the submission and
/// its wait cost more than the `send`s they replace (`cargo bench -p fanout-ws --bench fanout --
/// "direct write"`: one client 14.9 µs with the ring against 10.3 µs without, 16 clients
/// 104–108 µs against 113–128 µs; PERFORMANCE.md has the end-to-end figures).
#[cfg(target_os = "linux")]
const RING_MIN_CLIENTS: usize = 16;

/// The fan-out's `io_uring` (`ring.rs`): made at the first direct fan-out; where the kernel
/// refuses one, or should it ever fail, the fan-out sends to each client on its own.
#[derive(Default)]
enum RingSlot {
    #[default]
    Untried,
    #[cfg(target_os = "linux")]
    Ready(Box<Batch>),
    Unavailable,
}

/// The ring and what one batch needs, kept between messages.
#[cfg(target_os = "linux")]
struct Batch {
    ring: crate::ring::Ring,
    fds: Vec<std::os::fd::RawFd>,
    results: Vec<std::io::Result<usize>>,
}

impl RingSlot {
    #[cfg(target_os = "linux")]
    fn get(&mut self) -> Option<&mut Batch> {
        if matches!(self, RingSlot::Untried) {
            *self = match crate::ring::Ring::new() {
                Ok(ring) => RingSlot::Ready(Box::new(Batch {
                    ring,
                    fds: Vec::new(),
                    results: Vec::new(),
                })),
                Err(error) => {
                    tracing::info!(
                        %error,
                        "io_uring unavailable: each client of a message gets its own send"
                    );
                    RingSlot::Unavailable
                }
            };
        }
        match self {
            RingSlot::Ready(batch) => Some(batch),
            _ => None,
        }
    }
}

struct Member {
    queue: Arc<ClientQueue>,
    bounds: Bounds,
    /// Sorted by id. A vector, not a map: a client holds one or a few (at most
    /// `--max-subscriptions`), and a map's first node would cost an idle client ~2 KB.
    subscriptions: Vec<Subscribe>,
    /// The key of the group it is in.
    filter: Arc<Filter>,
}

struct Group {
    filter: Arc<Filter>,
    /// The broadcast group: every metric at once, every alert (no matching needed).
    everything: bool,
    queues: HashMap<u64, Arc<ClientQueue>>,
    /// One per interval its filter conflates at; their timers end when the group is gone.
    conflators: Vec<Arc<Conflator>>,
}

impl Group {
    fn conflator(&self, interval: Duration) -> Option<&Conflator> {
        self.conflators
            .iter()
            .find(|c| c.interval() == interval)
            .map(|c| c.as_ref())
    }
}

/// A client just added: how many are connected now, its snapshot, and its filter.
pub(crate) struct Added {
    pub(crate) connections: usize,
    /// The latest metrics its subscriptions take, taken under the clients lock: older than every
    /// live frame the client will get.
    pub(crate) snapshot: Vec<Metric>,
    pub(crate) filter: Arc<Filter>,
}

/// A request carried out.
pub(crate) enum Applied {
    /// The subscription is in place; the latest metrics it takes, taken under the clients lock.
    Subscribed {
        id: String,
        snapshot: Vec<Metric>,
    },
    Unsubscribed {
        id: String,
    },
}

/// What one fan-out pass did to the queues.
#[derive(Default)]
struct Tally {
    /// Frames written straight to the socket.
    written: u64,
    dropped: u64,
    overflowed: u64,
}

impl Tally {
    /// Pushes `frame` to every queue; `direct`: a live client with nothing queued is written to
    /// at once — with the ring, all such clients' sends in one submission.
    fn push_all<'a>(
        &mut self,
        queues: impl ExactSizeIterator<Item = &'a Arc<ClientQueue>>,
        frame: &Frame,
        direct: bool,
        ring: &mut RingSlot,
    ) {
        #[cfg(target_os = "linux")]
        if direct && queues.len() >= RING_MIN_CLIENTS {
            if let Some(batch) = ring.get() {
                if let Err(failed) = self.send_all(queues, frame, batch) {
                    tracing::error!(
                        error = %failed,
                        "io_uring failed: each client of a message gets its own send from now on"
                    );
                    *ring = RingSlot::Unavailable;
                }
                return;
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = ring;
        for queue in queues {
            self.add(queue.push(frame, direct));
        }
    }

    /// The ring's part of [`Tally::push_all`]: every queue that lends the frame gets it with one
    /// `send` of one submission; the others have it pushed (queued, or a socket without a
    /// descriptor written on its own).
    #[cfg(target_os = "linux")]
    fn send_all<'a>(
        &mut self,
        queues: impl Iterator<Item = &'a Arc<ClientQueue>>,
        frame: &Frame,
        batch: &mut Batch,
    ) -> Result<(), crate::ring::RingFailed> {
        let mut lent = Vec::new();
        batch.fds.clear();
        for queue in queues {
            match queue.lend(frame) {
                Lent::Out(fd) => {
                    lent.push(queue);
                    batch.fds.push(fd);
                }
                Lent::Pushed(pushed) => self.add(pushed),
            }
        }
        if lent.is_empty() {
            return Ok(());
        }
        let sent = batch
            .ring
            .send_all(&frame.wire, &batch.fds, &mut batch.results);
        if sent.is_err() {
            // Sends may still be in the kernel's hands: what they use stays valid for good
            // (the frame's bytes, and each socket through its queue), and since what each socket
            // took is unknown, the clients are closed to reconnect and resume.
            std::mem::forget(frame.wire.clone());
            for queue in &lent {
                std::mem::forget(Arc::clone(queue));
                let _ = queue.returned(Err(std::io::ErrorKind::Other.into()));
                queue.close_now(CloseReason::GOING_AWAY);
            }
            return sent;
        }
        for (queue, result) in lent.iter().zip(batch.results.drain(..)) {
            self.add(queue.returned(result));
        }
        Ok(())
    }

    fn add(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Written => self.written += 1,
            Pushed::Queued { dropped } => self.dropped += dropped,
            Pushed::Overflowed { dropped } => {
                self.overflowed += 1;
                self.dropped += dropped;
            }
            Pushed::Closing | Pushed::Replayed => {}
        }
    }
}

impl ClientRegistry {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            clients: Mutex::new(Clients::default()),
            emptied: Notify::new(),
            accepted: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped_metrics: AtomicU64::new(0),
            slow_consumers_closed: AtomicU64::new(0),
            hung_up: AtomicU64::new(0),
            conflation_overflow: AtomicU64::new(0),
            internal_errors: AtomicU64::new(0),
            latest: Mutex::new(LatestMetrics::default()),
            fanout_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            me: me.clone(),
        })
    }

    /// From now on, each client of a message gets its own `send` (no `io_uring`).
    pub(crate) fn without_ring(&self) {
        self.lock().ring = RingSlot::Unavailable;
    }

    fn lock(&self) -> MutexGuard<'_, Clients> {
        // Every critical section leaves members and groups consistent before anything that could
        // panic, so a poisoned lock is usable.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latest(&self) -> MutexGuard<'_, LatestMetrics> {
        // `record` leaves the map consistent at every step, so a poisoned lock is usable.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a client that takes everything, without counting it (the benchmarks' way in;
    /// clients go through [`ClientRegistry::add`]).
    pub(crate) fn insert(&self, id: u64, queue: Arc<ClientQueue>) {
        let bounds = Bounds {
            metrics: true,
            alerts: true,
            scope: BTreeMap::new(),
        };
        self.join(&mut self.lock(), id, queue, bounds, Subscribe::everything());
    }

    /// Adds a client with its first subscription and takes its snapshot under the same lock, so
    /// the snapshot is older than every live frame the client will get.
    pub(crate) fn add(
        &self,
        id: u64,
        queue: Arc<ClientQueue>,
        bounds: Bounds,
        first: Subscribe,
    ) -> Added {
        let added = {
            let mut clients = self.lock();
            // The snapshot before the client joins: nothing that could fail follows the join.
            let wanted = Filter::new([&first], &bounds);
            let snapshot = if wanted.takes_metrics() {
                self.latest()
                    .snapshot_of(|m| wanted.timing(m) != Timing::Never)
            } else {
                Vec::new()
            };
            let filter = self.join(&mut clients, id, queue, bounds, first);
            Added {
                connections: clients.members.len(),
                snapshot,
                filter,
            }
        };
        self.accepted.fetch_add(1, Ordering::Relaxed);
        added
    }

    fn join(
        &self,
        clients: &mut Clients,
        id: u64,
        queue: Arc<ClientQueue>,
        bounds: Bounds,
        first: Subscribe,
    ) -> Arc<Filter> {
        let subscriptions = vec![first];
        let filter = self.enter_group(
            clients,
            id,
            &queue,
            Filter::new(subscriptions.iter(), &bounds),
        );
        clients.members.insert(
            id,
            Member {
                queue,
                bounds,
                subscriptions,
                filter: Arc::clone(&filter),
            },
        );
        filter
    }

    /// Puts `queue` in the group of `filter`, creating it (and its conflation timers) when it is
    /// the first; returns the group's key.
    fn enter_group(
        &self,
        clients: &mut Clients,
        id: u64,
        queue: &Arc<ClientQueue>,
        filter: Filter,
    ) -> Arc<Filter> {
        if let Some(group) = clients.groups.get_mut(&filter) {
            group.queues.insert(id, Arc::clone(queue));
            return Arc::clone(&group.filter);
        }
        let filter = Arc::new(filter);
        let conflators = filter
            .intervals()
            .into_iter()
            .map(|interval| self.spawn_conflator(Arc::clone(&filter), interval))
            .collect();
        let group = Group {
            filter: Arc::clone(&filter),
            everything: filter.is_everything(),
            queues: HashMap::from([(id, Arc::clone(queue))]),
            conflators,
        };
        clients.groups.insert(Arc::clone(&filter), group);
        filter
    }

    fn leave_group(clients: &mut Clients, id: u64, filter: &Filter) {
        if let Some(group) = clients.groups.get_mut(filter) {
            group.queues.remove(&id);
            if group.queues.is_empty() {
                clients.groups.remove(filter);
            }
        }
    }

    /// A timer that sends what `filter`'s group has pending at `interval`, until the group (and
    /// so the conflator) is gone.
    fn spawn_conflator(&self, filter: Arc<Filter>, interval: Duration) -> Arc<Conflator> {
        let conflator = Arc::new(Conflator::new(interval));
        let pending = Arc::downgrade(&conflator);
        let registry = self.me.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (Some(conflator), Some(registry)) = (pending.upgrade(), registry.upgrade())
                else {
                    return;
                };
                let frames = conflator.take_frames();
                if !frames.is_empty() {
                    unbudgeted(|| registry.push_to_group(&filter, &frames));
                }
            }
        });
        conflator
    }

    fn push_to_group(&self, filter: &Filter, frames: &[Frame]) {
        let mut tally = Tally::default();
        let mut clients = self.lock();
        let Clients { groups, ring, .. } = &mut *clients;
        if let Some(group) = groups.get(filter) {
            for frame in frames {
                tally.push_all(group.queues.values(), frame, true, ring);
            }
        }
        drop(clients);
        self.count(tally);
    }

    /// Carries out a client's request. Under the clients lock, so that the frames queued before
    /// the change are moved into `before` (they go out first) and every frame queued after it
    /// follows the new subscriptions; a new subscription's snapshot is taken under the same lock.
    pub(crate) fn apply(
        &self,
        id: u64,
        request: ClientRequest,
        max_subscriptions: usize,
        before: &mut Vec<Frame>,
    ) -> Result<Applied, RequestError> {
        let mut clients = self.lock();
        let Some(member) = clients.members.get_mut(&id) else {
            return Err(RequestError::whole(None, "the connection is closing"));
        };
        let applied = match request {
            ClientRequest::Subscribe(subscribe) => {
                let held = member.subscriptions.len();
                let at = member
                    .subscriptions
                    .binary_search_by(|s| s.id.cmp(&subscribe.id));
                if held >= max_subscriptions && at.is_err() {
                    return Err(RequestError::field(
                        Some(subscribe.id),
                        fanout_domain::SelectorError {
                            field: "id".into(),
                            reason: format!(
                                "this connection already holds {held} subscriptions, the most \
                                 allowed (--max-subscriptions)"
                            ),
                        },
                    ));
                }
                let selector = member.bounds.narrow(subscribe.selector.clone());
                let id = subscribe.id.clone();
                match at {
                    Ok(at) => member.subscriptions[at] = subscribe,
                    Err(at) => member.subscriptions.insert(at, subscribe),
                }
                let snapshot = if selector.takes_no_metrics() {
                    Vec::new()
                } else {
                    self.latest().snapshot_of(|m| selector.matches_metric(m))
                };
                Applied::Subscribed { id, snapshot }
            }
            ClientRequest::Unsubscribe { id } => {
                let Ok(at) = member.subscriptions.binary_search_by(|s| s.id.cmp(&id)) else {
                    return Err(RequestError::field(
                        Some(id.clone()),
                        fanout_domain::SelectorError {
                            field: "id".into(),
                            reason: format!("this connection holds no subscription {id:?}"),
                        },
                    ));
                };
                member.subscriptions.remove(at);
                Applied::Unsubscribed { id }
            }
        };
        let filter = Filter::new(member.subscriptions.iter(), &member.bounds);
        member.queue.drain_now(before);
        if filter != *member.filter {
            let old = Arc::clone(&member.filter);
            let queue = Arc::clone(&member.queue);
            let owed: Vec<Arc<Conflator>> = clients
                .groups
                .get(&*old)
                .map(|group| group.conflators.clone())
                .unwrap_or_default();
            Self::leave_group(&mut clients, id, &old);
            let key = self.enter_group(&mut clients, id, &queue, filter);
            // Conflated values recorded but not yet sent are still owed to this client when its
            // new filter conflates their series too (a series it now takes at once, or newly,
            // is in the new subscription's snapshot).
            if let Some(group) = clients.groups.get(&key) {
                for from in &owed {
                    for to in &group.conflators {
                        let every = Timing::Every(to.interval());
                        to.adopt(from, |m| key.timing(m) == every);
                    }
                }
            }
            if let Some(member) = clients.members.get_mut(&id) {
                member.filter = key;
            }
        }
        Ok(applied)
    }

    /// Removes a client and gives its connection slot back; returns how many are left.
    pub(crate) fn remove(&self, id: u64, slot: Slot) -> usize {
        let remaining = {
            let mut clients = self.lock();
            // The slot is free before the client leaves the count: whoever sees the count drop
            // (`/healthz`) can connect.
            drop(slot);
            if let Some(member) = clients.members.remove(&id) {
                Self::leave_group(&mut clients, id, &member.filter);
            }
            clients.members.len()
        };
        if remaining == 0 {
            self.emptied.notify_waiters();
        }
        remaining
    }

    /// Clients connected now.
    pub(crate) fn len(&self) -> usize {
        self.lock().members.len()
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
        for member in clients.members.values() {
            member.queue.close(reason);
        }
        clients.members.len()
    }

    /// Frames waiting in client queues now: the deepest queue, and all of them.
    pub(crate) fn queue_depths(&self) -> (usize, usize) {
        let clients = self.lock();
        clients
            .members
            .values()
            .map(|m| m.queue.len())
            .fold((0, 0), |(max, total), len| (max.max(len), total + len))
    }

    pub(crate) fn count_delivered(&self, frames: u64) {
        self.delivered.fetch_add(frames, Ordering::Relaxed);
    }

    fn count(&self, tally: Tally) {
        if tally.written > 0 {
            self.delivered.fetch_add(tally.written, Ordering::Relaxed);
        }
        if tally.dropped > 0 {
            self.dropped_metrics
                .fetch_add(tally.dropped, Ordering::Relaxed);
        }
        if tally.overflowed > 0 {
            self.slow_consumers_closed
                .fetch_add(tally.overflowed, Ordering::Relaxed);
            tracing::warn!(
                clients = tally.overflowed,
                "closing slow clients with 4008: an alert did not fit in their queue, or they took no message while a queue's worth of metrics was dropped"
            );
        }
    }

    /// One more SSE response was cut (see [`DeliveryStats::hung_up`]).
    pub(crate) fn count_hang_up(&self) {
        self.hung_up.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> DeliveryStats {
        let (connections, groups) = {
            let clients = self.lock();
            (clients.members.len(), clients.groups.len())
        };
        DeliveryStats {
            connections,
            groups,
            accepted: self.accepted.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped_metrics: self.dropped_metrics.load(Ordering::Relaxed),
            slow_consumers_closed: self.slow_consumers_closed.load(Ordering::Relaxed),
            conflation_overflow: self.conflation_overflow.load(Ordering::Relaxed),
            internal_errors: self.internal_errors.load(Ordering::Relaxed),
            hung_up: self.hung_up.load(Ordering::Relaxed),
        }
    }

    /// Publication-to-fan-out latency of every message this worker delivered, in seconds.
    pub(crate) fn fanout_latency(&self) -> Histogram {
        self.fanout_latency.clone()
    }

    /// Observes the message's age, and returns it in µs (0 when unknown).
    fn observe_latency(&self, envelope: &Envelope) -> u64 {
        if envelope.published_at_us == 0 {
            return 0;
        }
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        // A replayed alert, or an outside publisher's made-up time, is not a latency.
        let age_us = now_us.saturating_sub(envelope.published_at_us);
        if age_us <= MAX_LATENCY_US {
            self.fanout_latency.observe(age_us as f64 / 1e6);
        }
        age_us
    }
}

impl LocalDelivery for ClientRegistry {
    /// Hands `envelope` to the clients. A panic in doing so (a bug) is contained here, counted
    /// (`internal_errors`) and logged, so that it can never end the bus listener that called.
    fn deliver(&self, envelope: &Envelope) {
        let fanned_out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            unbudgeted(|| self.fan_out(envelope));
        }));
        if fanned_out.is_err() {
            self.internal_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                origin = %envelope.origin,
                seq = envelope.seq,
                "a message could not be handed to the clients (a bug: please report it); \
                 the listener goes on"
            );
        }
    }
}

/// Runs `f`, a fan-out pass, outside tokio's cooperative budget: its socket writes would
/// otherwise all be refused once the calling task spent its budget (128 I/O operations), and
/// every client past the 128th of a message be queued and its task woken instead of written to.
fn unbudgeted(f: impl FnOnce()) {
    let mut f = Some(f);
    let pass = tokio::task::coop::unconstrained(std::future::poll_fn(move |_| {
        if let Some(f) = f.take() {
            f();
        }
        Poll::Ready(())
    }));
    // Ready at its first poll: the pass runs once, there and then.
    let _ = std::pin::pin!(pass)
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
}

impl ClientRegistry {
    fn fan_out(&self, envelope: &Envelope) {
        if let Payload::Metrics(metrics) = &envelope.payload {
            let mut latest = self.latest();
            for metric in metrics {
                latest.record(metric);
            }
        }
        let mut clients = self.lock();
        if clients.members.is_empty() {
            return;
        }
        let Clients { groups, ring, .. } = &mut *clients;
        // Behind (the message waited): queued, not written, so that each client's task writes
        // what piles up in one write instead of one per frame.
        let direct = self.observe_latency(envelope) <= BEHIND_US;
        let mut tally = Tally::default();
        let mut unkept = 0;
        match &envelope.payload {
            Payload::Alert(alert) => {
                // Encoded once, for every group that takes it (alerts are never conflated).
                let mut frame = None;
                for group in groups.values() {
                    if group.everything || group.filter.takes_alert(alert) {
                        let frame = frame
                            .get_or_insert_with(|| Frame::for_envelope(FrameKind::Alert, envelope));
                        tally.push_all(group.queues.values(), frame, direct, ring);
                    }
                }
            }
            Payload::Metrics(metrics) => {
                // The whole batch is encoded at most once, and each distinct share of it at most
                // once, whatever the number of groups taking it.
                let mut whole = None;
                let mut shares: HashMap<Vec<usize>, Frame> = HashMap::new();
                let mut now = Vec::new();
                for group in groups.values() {
                    if group.everything {
                        let frame = whole.get_or_insert_with(|| {
                            Frame::for_envelope(FrameKind::Metrics, envelope)
                        });
                        tally.push_all(group.queues.values(), frame, direct, ring);
                        continue;
                    }
                    now.clear();
                    for (index, metric) in metrics.iter().enumerate() {
                        match group.filter.timing(metric) {
                            Timing::Now => now.push(index),
                            Timing::Every(interval) => {
                                let kept = group
                                    .conflator(interval)
                                    .is_some_and(|c| c.record(envelope, metric));
                                unkept += u64::from(!kept);
                            }
                            Timing::Never => {}
                        }
                    }
                    let frame = if now.is_empty() {
                        continue;
                    } else if now.len() == metrics.len() {
                        &*whole.get_or_insert_with(|| {
                            Frame::for_envelope(FrameKind::Metrics, envelope)
                        })
                    } else {
                        if !shares.contains_key(&now) {
                            let share: Vec<&Metric> = now.iter().map(|&i| &metrics[i]).collect();
                            let frame = Frame::metrics(envelope.to_json_with_metrics(&share));
                            shares.insert(now.clone(), frame);
                        }
                        &shares[&now]
                    };
                    tally.push_all(group.queues.values(), frame, direct, ring);
                }
            }
        }
        drop(clients);
        if unkept > 0 {
            self.conflation_overflow
                .fetch_add(unkept, Ordering::Relaxed);
        }
        self.count(tally);
    }
}

#[cfg(test)]
mod tests {
    use fanout_domain::{Alert, ClientRequest, Severity, WorkerId};
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

    fn open() -> Bounds {
        Bounds {
            metrics: true,
            alerts: true,
            scope: BTreeMap::new(),
        }
    }

    fn add(registry: &ClientRegistry, id: u64, queue: Arc<ClientQueue>) -> Added {
        registry.add(id, queue, open(), Subscribe::everything())
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
            add(&registry, id as u64, Arc::clone(queue));
        }
        registry.deliver(&metrics(1.0));
        let frames: Vec<Frame> = queues.iter().flat_map(|q| taken(q)).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].text(), metrics(1.0).to_json());
        let first = frames[0].wire.as_ptr();
        assert!(
            frames.iter().all(|f| f.wire.as_ptr() == first),
            "one encoding per message, shared by every client"
        );
    }

    #[test]
    fn dropped_metrics_are_counted_across_clients() {
        let registry = ClientRegistry::new();
        // Two frames each: the third drops the oldest (one drop is less than a whole queue's
        // worth, so neither client is closed for not reading).
        add(&registry, 1, queue(2));
        add(&registry, 2, queue(2));
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
        add(&registry, 1, Arc::clone(&full));
        add(&registry, 2, Arc::clone(&roomy));
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
    fn a_client_gets_only_the_channels_its_credential_allows() {
        let registry = ClientRegistry::new();
        let alerts_only = queue(8);
        let bounds = Bounds {
            metrics: false,
            ..open()
        };
        registry.add(1, Arc::clone(&alerts_only), bounds, Subscribe::everything());
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
        let added = add(&registry, 1, queue(8));
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
        let bounds = Bounds {
            metrics: false,
            ..open()
        };
        let added = registry.add(1, queue(8), bounds, Subscribe::everything());
        assert!(added.snapshot.is_empty());
    }

    fn subscribe(id: &str, metrics: &str, interval: Option<&str>) -> Subscribe {
        let mut subscribe = Subscribe::from_query(
            Some(metrics),
            None,
            None,
            interval,
            &fanout_domain::SelectorLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        subscribe.id = id.to_owned();
        subscribe
    }

    fn batch(names: &[&str]) -> Envelope {
        envelope(Payload::Metrics(
            names
                .iter()
                .map(|n| Metric::new(*n, 1.0).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        ))
    }

    fn names(frame: &Frame) -> Vec<String> {
        let decoded = Envelope::from_json(fanout_domain::Channel::Metrics, frame.text().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        match decoded.payload {
            Payload::Metrics(metrics) => metrics.iter().map(|m| m.name().to_owned()).collect(),
            Payload::Alert(_) => panic!("an alert"),
        }
    }

    #[test]
    fn a_batch_is_split_and_each_share_encoded_once_per_group() {
        let registry = ClientRegistry::new();
        let api: Vec<_> = (0..3).map(|_| queue(8)).collect();
        for (id, queue) in api.iter().enumerate() {
            let first = subscribe(&format!("s{id}"), "api.*", None);
            registry.add(id as u64, Arc::clone(queue), open(), first);
        }
        let everything = queue(8);
        add(&registry, 10, Arc::clone(&everything));
        let db = queue(8);
        registry.add(11, Arc::clone(&db), open(), subscribe("s", "db.*", None));
        assert_eq!(registry.stats().groups, 3, "equal selectors share a group");

        registry.deliver(&batch(&["api.a", "db.b", "api.c"]));
        let api_frames: Vec<Frame> = api.iter().flat_map(|q| taken(q)).collect();
        assert_eq!(api_frames.len(), 3);
        assert_eq!(names(&api_frames[0]), ["api.a", "api.c"]);
        let first = api_frames[0].wire.as_ptr();
        assert!(
            api_frames.iter().all(|f| f.wire.as_ptr() == first),
            "one encoding of the share for the whole group"
        );
        assert_eq!(names(&taken(&db)[0]), ["db.b"]);
        let whole = taken(&everything);
        assert_eq!(
            whole[0].text(),
            batch(&["api.a", "db.b", "api.c"]).to_json()
        );

        registry.deliver(&batch(&["web.x"]));
        assert!(api.iter().all(|q| q.len() == 0), "no match: no frame");
        assert_eq!(everything.len(), 1);
    }

    #[test]
    fn a_request_moves_the_client_and_hands_over_what_was_queued_before_it() {
        let registry = ClientRegistry::new();
        let client = queue(8);
        add(&registry, 1, Arc::clone(&client));
        registry.deliver(&batch(&["api.a", "db.b"]));
        let mut before = Vec::new();
        let applied = registry.apply(
            1,
            ClientRequest::Subscribe(subscribe("default", "api.*", None)),
            16,
            &mut before,
        );
        let Ok(Applied::Subscribed { id, snapshot }) = applied else {
            panic!("not subscribed");
        };
        assert_eq!(id, "default");
        assert_eq!(
            snapshot.iter().map(|m| m.name()).collect::<Vec<_>>(),
            ["api.a"],
            "the snapshot of what the new subscription takes"
        );
        assert_eq!(
            names(&before[0]),
            ["api.a", "db.b"],
            "queued before: unfiltered"
        );
        registry.deliver(&batch(&["api.a", "db.b"]));
        assert_eq!(names(&taken(&client)[0]), ["api.a"]);

        let mut before = Vec::new();
        let unsubscribed = registry.apply(
            1,
            ClientRequest::Unsubscribe {
                id: "default".into(),
            },
            16,
            &mut before,
        );
        assert!(matches!(unsubscribed, Ok(Applied::Unsubscribed { .. })));
        registry.deliver(&batch(&["api.a"]));
        registry.deliver(&alert());
        assert_eq!(client.len(), 0, "no subscription: nothing");
        let again = registry.apply(
            1,
            ClientRequest::Unsubscribe {
                id: "default".into(),
            },
            16,
            &mut before,
        );
        assert_eq!(again.err().and_then(|e| e.field), Some("id".to_owned()));
    }

    #[test]
    fn subscriptions_beyond_the_limit_are_refused_but_replacing_is_not() {
        let registry = ClientRegistry::new();
        add(&registry, 1, queue(8));
        let mut before = Vec::new();
        let mut apply = |id: &str| {
            registry
                .apply(
                    1,
                    ClientRequest::Subscribe(subscribe(id, "api.*", None)),
                    2,
                    &mut before,
                )
                .map(|_| ())
                .map_err(|e| e.field)
        };
        assert_eq!(apply("s1"), Ok(()));
        assert_eq!(apply("s2"), Err(Some("id".to_owned())), "default + s1 = 2");
        assert_eq!(apply("s1"), Ok(()), "replacing one held is fine");
        assert_eq!(apply("default"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_owed_by_conflation_still_arrives_after_the_client_changes_group() {
        let registry = ClientRegistry::new();
        let client = queue(64);
        let first = subscribe("default", "cpu", Some("1s"));
        registry.add(1, Arc::clone(&client), open(), first);
        // Let the group's timer start, then record a value it owes.
        tokio::time::sleep(Duration::from_millis(10)).await;
        registry.deliver(&metrics(7.0));
        let mut before = Vec::new();
        let request = ClientRequest::Subscribe(subscribe("mem", "mem", None));
        assert!(registry.apply(1, request, 16, &mut before).is_ok());
        assert_eq!(registry.stats().groups, 1, "the old group is gone");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let frames = taken(&client);
        assert_eq!(frames.len(), 1, "the owed value, once");
        let decoded =
            Envelope::from_json(fanout_domain::Channel::Metrics, frames[0].text().as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        let Payload::Metrics(sent) = decoded.payload else {
            panic!("not metrics");
        };
        assert_eq!(sent[0].value(), 7.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflated_series_goes_out_once_per_interval_with_its_latest_value() {
        let registry = ClientRegistry::new();
        let clients: Vec<_> = (0..2).map(|_| queue(64)).collect();
        for (id, client) in clients.iter().enumerate() {
            let first = subscribe("default", "cpu", Some("200ms"));
            registry.add(id as u64, Arc::clone(client), open(), first);
        }
        let mut values = Vec::new();
        // 100 messages a second for one second, in virtual time.
        for step in 1..=100 {
            registry.deliver(&metrics(step as f64));
            tokio::time::sleep(Duration::from_millis(10)).await;
            values.push(step);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        for client in &clients {
            let frames = taken(client);
            assert!(
                (5..=6).contains(&frames.len()),
                "{} frames in ~1.25 s at 200 ms",
                frames.len()
            );
            let last = Envelope::from_json(
                fanout_domain::Channel::Metrics,
                frames[frames.len() - 1].text().as_bytes(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let Payload::Metrics(last) = last.payload else {
                panic!("not metrics");
            };
            assert_eq!(last[0].value(), 100.0, "the latest value arrives");
        }
    }

    #[tokio::test]
    async fn counts_follow_adds_and_removes_and_the_last_remove_wakes_the_waiters() {
        let registry = ClientRegistry::new();
        add(&registry, 1, queue(8));
        add(&registry, 2, queue(8));
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
            add(&registry, id as u64, Arc::clone(queue));
        }
        assert_eq!(registry.close_all(CloseReason::GOING_AWAY), 2);
        for queue in &queues {
            assert_eq!(
                queue.push(
                    &Frame::for_envelope(FrameKind::Metrics, &metrics(1.0)),
                    true
                ),
                Pushed::Closing
            );
        }
    }

    /// A message that waited longer than `BEHIND_US` is queued for the connections' tasks (which
    /// write backlogs in one write), a fresh one written at once; both reach the client.
    #[tokio::test]
    async fn a_message_that_waited_is_queued_and_a_fresh_one_written_at_once() {
        use tokio::io::AsyncReadExt;

        let registry = ClientRegistry::new();
        let client = queue(8);
        let (mut reader, socket) = tokio::io::duplex(64 * 1024);
        client.attach(Box::new(crate::socket::Writer(socket)));
        client.go_live(Vec::new(), None);
        add(&registry, 1, Arc::clone(&client));
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let stamped = |published_at_us| Envelope {
            published_at_us,
            ..metrics(1.0)
        };

        let fresh = stamped(now_us);
        registry.deliver(&fresh);
        assert_eq!(client.len(), 0, "a fresh message is written at once");
        let old = stamped(now_us - 10 * BEHIND_US);
        registry.deliver(&old);
        assert_eq!(client.len(), 1, "a message that waited is queued");
        assert_eq!(
            client.write().await,
            crate::queue::Drove::Wrote(1),
            "and the task writes it"
        );
        let expected: Vec<u8> = [&fresh, &old]
            .iter()
            .flat_map(|e| Frame::for_envelope(FrameKind::Metrics, e).wire.to_vec())
            .collect();
        let mut got = vec![0; expected.len()];
        reader
            .read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, expected);
        assert_eq!(registry.stats().delivered, 1, "the direct write is counted");
    }
}
