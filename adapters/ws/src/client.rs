//! One WebSocket connection, served by one task: it drains the client's queue to the socket,
//! reads what the client sends (pongs, close, garbage), and pings it.
//!
//! One task and no split socket per client keeps an idle client cheap and a delivery to one task
//! wake-up. The task feeds every queued frame and flushes once per batch, so a busy client costs
//! one write syscall per batch, not per message. A client that stops reading only blocks its own
//! task: the bus listener pushes into the bounded queue and never waits, and a close decided
//! meanwhile (slow consumer, shutdown) interrupts the blocked write.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use fanout_domain::{Grant, LogPosition, Subscribe};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use tokio::time::{Interval, Sleep};

use crate::filter::Filter;
use crate::manager::{ConnectionManager, Registered};
use crate::protocol::{Answer, CloseReason, Frame, FrameKind};
use crate::queue::ClientQueue;
use crate::slots::Slot;
use crate::ClientLimits;

/// How long the server waits for the client's answer to its close frame before dropping the
/// socket, so that the client can read what was sent before it.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Serves one upgraded connection until it closes; the client is unregistered, and its
/// connection slot given back, the moment the connection is over for delivery purposes.
pub(crate) async fn serve(
    manager: Arc<ConnectionManager>,
    mut socket: WebSocket,
    resume_from: Option<LogPosition>,
    grant: Grant,
    first: Subscribe,
    slot: Slot,
) {
    let Registered {
        id,
        queue,
        snapshot,
        filter,
    } = match manager.register(&grant, first).await {
        Ok(registered) => registered,
        Err(refused) => {
            let _ = socket.send(CloseReason::GOING_AWAY.message()).await;
            tracing::debug!(%refused, "client refused after upgrade");
            return;
        }
    };
    // Whatever happens to the connection from here, a panic included (a bug), the client is
    // unregistered and its slot given back: a connection that ended never stays counted.
    let served = AssertUnwindSafe(serve_registered(
        &manager,
        socket,
        resume_from,
        &grant,
        id,
        &queue,
        snapshot,
        &filter,
    ))
    .catch_unwind()
    .await;
    manager.unregister(id, slot).await;
    match served {
        Ok(Some(mut closed)) => linger(&mut closed).await,
        Ok(None) => {}
        Err(_) => tracing::error!(
            client = id,
            "the connection ended on a bug (please report it); the client was unregistered"
        ),
    }
}

/// Greets, resumes and then serves a registered client until the connection is over for
/// delivery; the caller unregisters it. Returns the socket when the server sent a close frame,
/// for the closing handshake.
#[allow(clippy::too_many_arguments)]
async fn serve_registered(
    manager: &Arc<ConnectionManager>,
    mut socket: WebSocket,
    resume_from: Option<LogPosition>,
    grant: &Grant,
    id: u64,
    queue: &ClientQueue,
    snapshot: Frame,
    filter: &Filter,
) -> Option<WebSocket> {
    // `hello` promises that every message published from now on reaches the client: it waits
    // for the bus subscription to be live.
    let mut greeting = Vec::new();
    // Requests sent before `hello` are carried out after the greeting (and the replay).
    let mut early = Vec::new();
    match until_live(manager, &mut socket, queue, &mut early).await {
        Waited::Live => greeting.extend([manager.hello(), snapshot]),
        Waited::Closing => {}
        Waited::Gone => return None,
    }
    // Live frames queue up while the missed alerts are read; the greeting and the replay go
    // first, then the queue without the replayed ids.
    let mut floor = None;
    if let Some(from) = resume_from.filter(|_| grant.alerts && !greeting.is_empty()) {
        match manager.replay(&from, filter).await {
            Ok(replay) => {
                greeting.extend(replay.frames);
                floor = replay.floor;
            }
            Err(error) => {
                tracing::warn!(client = id, %error, "cannot replay alerts for a resuming client");
                // Nothing live goes out after a resume that failed: the client would take it for
                // the stream after its replay. Closed first, so nothing more is queued.
                queue.close(CloseReason::TRY_AGAIN_LATER);
                queue.drain_now(&mut Vec::new());
            }
        }
    }
    let mut connection = Connection {
        id,
        socket,
        queue,
        manager,
        limits: *manager.limits(),
        last_heard: Instant::now(),
        ping: ping_interval(manager.limits().ping_interval),
        // One timer for the connection's life, not one per loop turn.
        expiry: grant.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        }),
        requests: (Instant::now(), 0),
    };
    match connection.run(greeting, floor, early).await {
        Ending::CloseSent => Some(connection.socket),
        Ending::Gone => None,
    }
}

/// How the wait for a live subscription ended.
enum Waited {
    Live,
    /// The server is closing the client (shutdown) before it was live.
    Closing,
    /// The client left.
    Gone,
}

/// Most `subscribe`/`unsubscribe` requests a connection may have carried out per second.
const MAX_REQUESTS_PER_SECOND: u32 = 20;

/// Most requests kept from a client before its `hello`; later ones are dropped unanswered.
const MAX_EARLY_REQUESTS: usize = 64;

/// Waits for the worker's bus subscription to be live, noticing meanwhile a client that leaves
/// or a close the server decided, and keeping the requests the client sends meanwhile.
async fn until_live(
    manager: &ConnectionManager,
    socket: &mut WebSocket,
    queue: &ClientQueue,
    early: &mut Vec<Utf8Bytes>,
) -> Waited {
    let live = manager.until_live();
    tokio::pin!(live);
    loop {
        tokio::select! {
            _ = &mut live => return Waited::Live,
            _ = queue.closed() => return Waited::Closing,
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Waited::Gone,
                Some(Ok(Message::Text(text))) if early.len() < MAX_EARLY_REQUESTS => {
                    early.push(text);
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

fn ping_interval(period: Duration) -> Interval {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping
}

/// How a connection ended.
enum Ending {
    /// The server sent a close frame: wait briefly for the client's answer.
    CloseSent,
    /// The client closed, or the socket failed.
    Gone,
}

struct Connection<'a> {
    /// The client's id in the registry.
    id: u64,
    socket: WebSocket,
    queue: &'a ClientQueue,
    manager: &'a ConnectionManager,
    limits: ClientLimits,
    /// When the client last sent anything (a pong counts).
    last_heard: Instant,
    ping: Interval,
    /// Fires when the client's credential expires.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Requests carried out in the current one-second window, and when it started.
    requests: (Instant, u32),
}

impl Connection<'_> {
    async fn run(
        &mut self,
        greeting: Vec<Frame>,
        floor: Option<fanout_domain::LogId>,
        early: Vec<Utf8Bytes>,
    ) -> Ending {
        let mut batch = greeting;
        let mut close = None;
        let mut is_greeting = true;
        let mut early = early.into_iter();
        loop {
            if let (Some(floor), false) = (floor, is_greeting) {
                // Live copies of alerts the replay already sent.
                batch.retain(|frame| frame.alert_id.is_none_or(|id| id > floor));
            }
            is_greeting = false;
            if !batch.is_empty() {
                match self.write(&mut batch).await {
                    Written::All(frames) => self.manager.registry().count_delivered(frames),
                    Written::Interrupted(reason) => close = Some(reason),
                    Written::Failed => return Ending::Gone,
                }
            }
            if let Some(reason) = close {
                return self.send_close(reason).await;
            }
            if let Some(request) = early.next() {
                self.request(&request, &mut batch);
                continue;
            }
            tokio::select! {
                reason = self.queue.next_batch(&mut batch) => close = reason,
                incoming = self.socket.recv() => {
                    self.last_heard = Instant::now();
                    match incoming {
                        // A request: its answer, and what was queued before it, go out next.
                        Some(Ok(Message::Text(request))) => {
                            self.request(&request, &mut batch);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Binary(_))) => close = Some(CloseReason::UNSUPPORTED_DATA),
                        Some(Ok(Message::Close(_))) | None => return Ending::Gone,
                        Some(Err(error)) => match close_reason_for(error) {
                            Some(reason) => close = Some(reason),
                            None => return Ending::Gone,
                        },
                    }
                }
                _ = expired(&mut self.expiry) => close = Some(CloseReason::TOKEN_EXPIRED),
                _ = self.ping.tick() => {
                    if self.last_heard.elapsed() > self.limits.client_timeout {
                        close = Some(CloseReason::TIMEOUT);
                    } else if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return Ending::Gone;
                    }
                }
            }
        }
    }

    /// Carries out a client's request, within [`MAX_REQUESTS_PER_SECOND`]: each request can move
    /// the client between groups and take a snapshot under the registry's lock, so a client
    /// cannot make the hot path wait by sending them without end. Beyond the budget a request is
    /// answered with an error and changes nothing.
    fn request(&mut self, text: &str, batch: &mut Vec<Frame>) {
        let now = Instant::now();
        if now.duration_since(self.requests.0) >= Duration::from_secs(1) {
            self.requests = (now, 0);
        }
        self.requests.1 += 1;
        if self.requests.1 > MAX_REQUESTS_PER_SECOND {
            let id = fanout_domain::ClientRequest::id_of(text);
            let error = fanout_domain::RequestError::whole(
                id,
                format!("too many requests: at most {MAX_REQUESTS_PER_SECOND} per second"),
            );
            batch.push(Answer::error(&error).frame());
            return;
        }
        self.manager.request(self.id, text, batch);
    }

    /// Feeds every frame of `batch` and flushes once. A pending close interrupts a write the
    /// client is not reading; so does a write that makes no progress for the client timeout.
    async fn write(&mut self, batch: &mut Vec<Frame>) -> Written {
        // Bus messages delivered; control frames (hello, snapshot, resume) are not counted.
        let count = batch
            .iter()
            .filter(|f| f.kind != FrameKind::Control)
            .count() as u64;
        let frames = batch.drain(..).map(|frame| Ok(Message::Text(frame.text)));
        let mut frames = futures_util::stream::iter(frames);
        let started = Instant::now();
        loop {
            tokio::select! {
                sent = self.socket.send_all(&mut frames) => {
                    return if sent.is_ok() { Written::All(count) } else { Written::Failed };
                }
                reason = self.queue.closed() => return Written::Interrupted(reason),
                // `send_all` resumes where it stopped: fed frames stay in the socket's buffer,
                // the rest stay in `frames`.
                _ = self.ping.tick() => {
                    if started.elapsed() > self.limits.client_timeout {
                        return Written::Failed;
                    }
                }
            }
        }
    }

    async fn send_close(&mut self, reason: CloseReason) -> Ending {
        // A slow client gets until the client timeout to read its way to the close frame.
        match tokio::time::timeout(
            self.limits.client_timeout,
            self.socket.send(reason.message()),
        )
        .await
        {
            Ok(Ok(())) => Ending::CloseSent,
            _ => Ending::Gone,
        }
    }
}

/// The closing handshake: reads until the client answers the close frame, briefly.
async fn linger(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(_) = message {
                return;
            }
        }
    })
    .await;
}

/// Resolves when the credential expires; never without one.
async fn expired(expiry: &mut Option<Pin<Box<Sleep>>>) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

enum Written {
    All(u64),
    Interrupted(CloseReason),
    Failed,
}

/// The close code for a read error, or `None` when the connection is simply gone.
fn close_reason_for(error: axum::Error) -> Option<CloseReason> {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some(CloseReason::TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(CloseReason::INVALID_PAYLOAD),
        tungstenite::Error::Protocol(_) => Some(CloseReason::POLICY),
        _ => None,
    }
}
