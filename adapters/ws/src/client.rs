//! One connection, served by one task: it writes what the hot path could not write at once (and
//! the connection's own frames), reads what the client sends (requests, pongs, close, garbage),
//! and pings it. A WebSocket client is read by tungstenite; an SSE client (`sse`) sends nothing,
//! so its task only hears when it leaves, and does not close it for silence: the same task, over
//! a different [`Peer`].
//!
//! The hot path writes a live client's frames itself while the socket takes them (see `queue`):
//! this task is woken only when the socket pushes back, when the client sends something, or by
//! its timers. One task and no per-client framing keeps an idle client cheap and a delivery to
//! one write. A client that stops reading only fills its own bounded queue; a close decided
//! meanwhile (slow consumer, shutdown) is written after what the socket already started.
//!
//! Over 400 lines on purpose: one connection's life (open, greet, serve, close) in one place; the
//! stages are small functions, and splitting them would spread the one task's invariants.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fanout_domain::{Grant, LogPosition, Subscribe};
use futures_util::{FutureExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Interval, Sleep};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use crate::admission::Admitted;
use crate::filter::Filter;
use crate::manager::{ConnectionManager, Registered};
use crate::protocol::{Answer, CloseReason, Frame, FrameKind};
use crate::queue::{ClientQueue, Drove};
use crate::request_rate::{RequestRate, MAX_REQUESTS_PER_SECOND};
use crate::slots::Slot;
use crate::socket::{Socket, Tcp, TcpReader, Writer};
use crate::sse::{Departure, EventPipe};
use crate::{wire, ClientLimits};

/// How long the server waits for the client's answer to its close frame before dropping the
/// socket, so that the client can read what was sent before it.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The read buffer tungstenite allocates up front for each connection. Clients send little, and
/// a larger frame (up to `--max-client-message`) is still read, in more reads: each step down
/// from 4 KiB saved its difference in worker RSS per idle connection (`scripts/bench idle`).
const READ_BUFFER: usize = 256;

/// What the client sends, read by tungstenite; what tungstenite writes itself (pongs, the answer
/// to a client's close) goes into the client's queue, after what is queued.
type Reader = WebSocketStream<Duplex>;

/// What a connection's task hears from its client, as WebSocket messages: a WebSocket client's
/// frames, or, from an SSE client, nothing until it leaves (the stream's end).
pub(crate) trait Peer:
    futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send + 'static
{
    /// Whether the client answers pings: one silent for the client timeout is closed with 4001.
    /// An SSE client cannot (its pings are comments nobody answers).
    const ANSWERS_PINGS: bool;

    /// Hands what the reader still owes the client to the client's queue: tungstenite's answer
    /// to a close frame the client sent (RFC 6455 §5.5.1), which it writes only when flushed.
    fn flush_answers(&mut self) {}
}

impl Peer for Reader {
    const ANSWERS_PINGS: bool = true;

    fn flush_answers(&mut self) {
        // Writing into the queue never waits (`Duplex`): one poll does it.
        let _ = futures_util::SinkExt::flush(self).now_or_never();
    }
}

impl Peer for Departure {
    const ANSWERS_PINGS: bool = false;
}

/// The client's socket as tungstenite sees it: reads from the socket, writes into the queue.
struct Duplex {
    read: Pin<Box<dyn AsyncRead + Send>>,
    queue: Arc<ClientQueue>,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.read.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // tungstenite writes whole frames from its buffer, and this takes the whole buffer.
        self.queue.push_control(Frame {
            kind: FrameKind::Control,
            wire: bytes::Bytes::copy_from_slice(buf),
            alert_id: None,
        });
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What admission decided for a connection, handed to its task (boxed: see [`serve`]).
pub(crate) type Start = Admitted;

/// A registered client, before its greeting.
struct Opened<R> {
    manager: Arc<ConnectionManager>,
    id: u64,
    queue: Arc<ClientQueue>,
    reader: R,
    snapshot: Frame,
    filter: Arc<Filter>,
    resume_from: Option<LogPosition>,
    grant: Grant,
}

impl<R> Opened<R> {
    fn new(
        manager: Arc<ConnectionManager>,
        registered: Registered,
        reader: R,
        resume_from: Option<LogPosition>,
        grant: Grant,
    ) -> Box<Self> {
        let Registered {
            id,
            queue,
            snapshot,
            filter,
        } = registered;
        Box::new(Self {
            manager,
            id,
            queue,
            reader,
            snapshot,
            filter,
            resume_from,
            grant,
        })
    }
}

/// Serves one upgraded connection until it closes; the client is unregistered, and its
/// connection slot given back, the moment the connection is over for delivery purposes.
///
/// This task lives as long as the connection, and a future is as large as its largest stage
/// (with every argument and captured value kept for its whole life): so the stages that run
/// once (opening, greeting, unregistering, lingering) are boxed futures, gone once done, and
/// what is handed between them is boxed. An idle connection keeps only [`Connection`] and its
/// loop (docs/PERFORMANCE.md, idle memory).
pub(crate) async fn serve(manager: Arc<ConnectionManager>, upgraded: Upgraded, start: Box<Start>) {
    let Some((opened, slot)) = Box::pin(open(manager, upgraded, start)).await else {
        return;
    };
    serve_opened(opened, slot).await;
}

/// Serves one SSE client, whose frames go into `pipe` (see `sse`), as [`serve`] does a WebSocket.
pub(crate) async fn serve_events(
    manager: Arc<ConnectionManager>,
    pipe: EventPipe,
    departure: Departure,
    start: Box<Start>,
) {
    let Admitted {
        resume_from,
        grant,
        first,
        slot,
    } = *start;
    let Some(registered) = register(&manager, Box::new(pipe), &grant, first).await else {
        return;
    };
    let opened = Opened::new(manager, registered, departure, resume_from, grant);
    serve_opened(opened, slot).await;
}

/// Registers a client and gives its queue `socket`; `None` when the worker drains (the client
/// is told with 1001 if its socket takes the frame at once).
async fn register(
    manager: &ConnectionManager,
    mut socket: Box<dyn Socket>,
    grant: &Grant,
    first: Subscribe,
) -> Option<Registered> {
    match manager.register(grant, first).await {
        Ok(registered) => {
            registered.queue.attach(socket);
            Some(registered)
        }
        Err(refused) => {
            let _ = socket.try_write(&CloseReason::GOING_AWAY.frame());
            tracing::debug!(%refused, "client refused after admission");
            None
        }
    }
}

/// Greets a registered client, serves it until its connection ends, and unregisters it.
async fn serve_opened<R: Peer>(opened: Box<Opened<R>>, slot: Slot) {
    let (manager, id) = (Arc::clone(&opened.manager), opened.id);
    // Whatever happens to the connection from here, a panic included (a bug), the client is
    // unregistered and its slot given back: a connection that ended never stays counted.
    let served = AssertUnwindSafe(async move {
        let mut connection = Box::pin(greet(opened)).await?;
        match connection.run().await {
            Ending::CloseSent => Some(Box::new(connection.reader)),
            Ending::Gone => None,
        }
    })
    .catch_unwind()
    .await;
    Box::pin(manager.unregister(id, slot)).await;
    match served {
        Ok(Some(mut closed)) => Box::pin(linger(&mut *closed)).await,
        Ok(None) => {}
        Err(_) => tracing::error!(
            client = id,
            "the connection ended on a bug (please report it); the client was unregistered"
        ),
    }
}

/// Takes the socket from the upgraded connection, registers the client and sets up the reader.
async fn open(
    manager: Arc<ConnectionManager>,
    upgraded: Upgraded,
    start: Box<Start>,
) -> Option<(Box<Opened<Reader>>, Slot)> {
    let Admitted {
        resume_from,
        grant,
        first,
        slot,
    } = *start;
    // The socket itself when fanout's server served the handshake (see `socket`).
    let (read, write, early_bytes): (Pin<Box<dyn AsyncRead + Send>>, Box<dyn Socket>, _) =
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let tcp = Arc::new(parts.io.into_inner());
                let early_bytes = parts.read_buf.to_vec();
                (
                    Box::pin(TcpReader(Arc::clone(&tcp))),
                    Box::new(Tcp(tcp)),
                    early_bytes,
                )
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                (Box::pin(read), Box::new(Writer(write)), Vec::new())
            }
        };
    let registered = register(&manager, write, &grant, first).await?;
    let limits = manager.limits();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_incoming_message))
        .max_frame_size(Some(limits.max_incoming_message));
    let duplex = Duplex {
        read,
        queue: Arc::clone(&registered.queue),
    };
    // What the client sent right after its handshake, already read by the HTTP server, first.
    let reader =
        WebSocketStream::from_partially_read(duplex, early_bytes, Role::Server, Some(config)).await;
    Some((
        Opened::new(manager, registered, reader, resume_from, grant),
        slot,
    ))
}

/// Greets and resumes a registered client, and returns its connection, live; `None` when the
/// client left meanwhile.
async fn greet<R: Peer>(opened: Box<Opened<R>>) -> Option<Connection<R>> {
    let Opened {
        manager,
        id,
        queue,
        mut reader,
        snapshot,
        filter,
        resume_from,
        grant,
    } = *opened;
    // `hello` promises that every message published from now on reaches the client: it waits
    // for the bus subscription to be live.
    let mut greeting = Vec::new();
    // Requests sent before `hello` are carried out after the greeting (and the replay).
    let mut early = Vec::new();
    match until_live(&manager, &mut reader, &queue, &mut early).await {
        Waited::Live => greeting.extend([manager.hello(), snapshot]),
        Waited::Closing => {}
        Waited::Gone => return None,
    }
    // Live frames queue up while the missed alerts are read; the greeting and the replay go
    // first, then the queue without the replayed ids.
    let mut floor = None;
    if let Some(from) = resume_from.filter(|_| grant.alerts && !greeting.is_empty()) {
        match manager.replay(&from, &filter).await {
            Ok(replay) => {
                greeting.extend(replay.frames);
                floor = replay.floor;
            }
            Err(error) => {
                tracing::warn!(client = id, %error, "cannot replay alerts for a resuming client");
                // Nothing live goes out after a resume that failed: the client would take it for
                // the stream after its replay.
                queue.close_now(CloseReason::TRY_AGAIN_LATER);
            }
        }
    }
    queue.go_live(greeting, floor);
    let limits = *manager.limits();
    Some(Connection {
        id,
        reader,
        queue,
        manager,
        limits,
        last_heard: Instant::now(),
        ping: ping_interval(limits.ping_interval),
        // One timer for the connection's life, not one per loop turn.
        expiry: grant.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        }),
        requests: RequestRate::default(),
        early,
    })
}

/// How the wait for a live subscription ended.
enum Waited {
    Live,
    /// The server is closing the client (shutdown) before it was live.
    Closing,
    /// The client left.
    Gone,
}

/// Most requests kept from a client before its `hello`; later ones are dropped unanswered.
const MAX_EARLY_REQUESTS: usize = 64;

/// Waits for the worker's bus subscription to be live, noticing meanwhile a client that leaves
/// or a close the server decided, answering its pings (PROTOCOL.md) and keeping the requests it
/// sends meanwhile.
async fn until_live<R: Peer>(
    manager: &ConnectionManager,
    reader: &mut R,
    queue: &ClientQueue,
    early: &mut Vec<Utf8Bytes>,
) -> Waited {
    let live = manager.until_live();
    tokio::pin!(live);
    loop {
        tokio::select! {
            _ = &mut live => return Waited::Live,
            _ = queue.closed() => return Waited::Closing,
            // The pongs tungstenite queued for the client's pings; no message goes out yet.
            wrote = std::future::poll_fn(|cx| queue.poll_write_controls(cx)) => {
                if wrote.is_err() {
                    return Waited::Gone;
                }
            }
            incoming = reader.next() => match incoming {
                Some(Ok(Message::Close(_))) => {
                    reader.flush_answers();
                    let _ = std::future::poll_fn(|cx| Poll::Ready(queue.poll_write_controls(cx)))
                        .await;
                    return Waited::Gone;
                }
                Some(Err(_)) | None => return Waited::Gone,
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
    /// The server's close frame is written: wait briefly for the client's answer.
    CloseSent,
    /// The client closed, or the socket failed.
    Gone,
}

struct Connection<R> {
    /// The client's id in the registry.
    id: u64,
    reader: R,
    queue: Arc<ClientQueue>,
    manager: Arc<ConnectionManager>,
    limits: ClientLimits,
    /// When the client last sent anything (a pong counts).
    last_heard: Instant,
    ping: Interval,
    /// Fires when the client's credential expires; gone once it fired.
    expiry: Option<Pin<Box<Sleep>>>,
    /// The requests carried out in the last second (`request_rate`).
    requests: RequestRate,
    /// Requests the client sent before its `hello`, carried out first.
    early: Vec<Utf8Bytes>,
}

impl<R: Peer> Connection<R> {
    async fn run(&mut self) -> Ending {
        // Bounded by `MAX_EARLY_REQUESTS`, and outside the rate: they were kept to be carried out.
        for request in std::mem::take(&mut self.early) {
            self.carry_out(&request);
        }
        // Once this side decided to close, nothing more is read until the close frame is out
        // (tungstenite answers nothing but errors after a protocol error).
        let mut closing = false;
        loop {
            tokio::select! {
                drove = self.queue.write() => match drove {
                    Drove::Wrote(frames) => self.manager.registry().count_delivered(frames),
                    Drove::CloseSent => return Ending::CloseSent,
                    Drove::Failed => return Ending::Gone,
                },
                incoming = self.reader.next(), if !closing => {
                    self.last_heard = Instant::now();
                    match incoming {
                        // A request: its answer goes out after what was queued before it.
                        Some(Ok(Message::Text(request))) => self.request(&request),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Binary(_))) => {
                            closing = true;
                            self.queue.close(CloseReason::UNSUPPORTED_DATA);
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            // tungstenite's answer to the client's close goes out after what is
                            // queued: one try.
                            self.reader.flush_answers();
                            let _ = self.queue.write().now_or_never();
                            return Ending::Gone;
                        }
                        Some(Err(error)) => match close_reason_for(&error) {
                            Some(reason) => {
                                closing = true;
                                self.queue.close(reason);
                            }
                            None => return Ending::Gone,
                        },
                    }
                }
                _ = expired(&mut self.expiry) => {
                    self.expiry = None;
                    self.queue.close(CloseReason::TOKEN_EXPIRED);
                }
                _ = self.ping.tick() => {
                    // A socket that took nothing for the client timeout: the client is gone.
                    if self
                        .queue
                        .blocked_since()
                        .is_some_and(|since| since.elapsed() > self.limits.client_timeout)
                    {
                        return Ending::Gone;
                    }
                    if R::ANSWERS_PINGS && self.last_heard.elapsed() > self.limits.client_timeout {
                        self.queue.close(CloseReason::TIMEOUT);
                    } else {
                        self.queue.push_control(Frame {
                            kind: FrameKind::Control,
                            wire: wire::ping(),
                            alert_id: None,
                        });
                    }
                }
            }
        }
    }

    /// Carries out a client's request, within [`MAX_REQUESTS_PER_SECOND`] (`request_rate`):
    /// beyond it a request is answered with an error and changes nothing.
    fn request(&mut self, text: &str) {
        if !self.requests.allow(Instant::now()) {
            let id = fanout_domain::ClientRequest::id_of(text);
            let error = fanout_domain::RequestError::whole(
                id,
                format!("too many requests: at most {MAX_REQUESTS_PER_SECOND} per second"),
            );
            self.queue.push_control(Answer::error(&error).frame());
            return;
        }
        self.carry_out(text);
    }

    /// Carries out a request: its answer goes out after everything queued before it, and
    /// before everything queued after the change.
    fn carry_out(&mut self, text: &str) {
        let mut batch = Vec::new();
        self.queue.drain_now(&mut batch);
        self.manager.request(self.id, text, &mut batch);
        self.queue.put_front(batch);
    }
}

/// The closing handshake: reads until the client answers the close frame, briefly.
async fn linger<R: Peer>(reader: &mut R) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(message)) = reader.next().await {
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

/// The close code for a read error, or `None` when the connection is simply gone.
fn close_reason_for(error: &tungstenite::Error) -> Option<CloseReason> {
    match error {
        tungstenite::Error::Capacity(_) => Some(CloseReason::TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(CloseReason::INVALID_PAYLOAD),
        tungstenite::Error::Protocol(_) => Some(CloseReason::POLICY),
        _ => None,
    }
}
