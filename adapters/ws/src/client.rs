//! One WebSocket connection: a writer task that drains the client's queue, and a reader that
//! watches what the client sends (pongs, close, garbage).
//!
//! The writer feeds every queued frame and flushes once per batch, so a busy client costs one
//! write syscall per batch, not per message. A writer stuck on a client that stopped reading only
//! blocks itself: the bus listener pushes into the bounded queue and never waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::manager::{ConnectionManager, Registered};
use crate::queue::{ClientQueue, CloseReason, Frame};
use fanout_domain::AlertId;

/// Serves one upgraded connection until it closes, then unregisters it.
pub(crate) async fn serve(
    manager: Arc<ConnectionManager>,
    socket: WebSocket,
    resume_after: Option<AlertId>,
) {
    let Registered {
        id,
        queue,
        mut greeting,
    } = match manager.register().await {
        Ok(registered) => registered,
        Err(refused) => {
            let mut socket = socket;
            let _ = socket.send(close_message(CloseReason::GOING_AWAY)).await;
            tracing::debug!(%refused, "client refused after upgrade");
            return;
        }
    };
    // Live frames queue up while the missed alerts are read; the writer sends the greeting and
    // the replay first, then the queue without the replayed ids.
    let mut floor = None;
    if let Some(after) = resume_after {
        match manager.replay(after).await {
            Ok(replay) => {
                greeting.extend(replay.frames);
                floor = replay.floor;
            }
            Err(error) => {
                tracing::warn!(client = id, %error, "cannot replay alerts for a resuming client");
                queue.close(CloseReason::TRY_AGAIN_LATER);
            }
        }
    }
    let (sink, stream) = socket.split();
    let started = Instant::now();
    let last_heard_ms = Arc::new(AtomicU64::new(0));
    let mut writer = tokio::spawn(write_loop(
        Arc::clone(&manager),
        Arc::clone(&queue),
        sink,
        greeting,
        floor,
        Arc::clone(&last_heard_ms),
        started,
    ));
    let mut reader = tokio::spawn(read_loop(
        Arc::clone(&queue),
        stream,
        last_heard_ms,
        started,
    ));
    // The writer ends after sending a close frame or on a write error; the reader when the client
    // closes or breaks the protocol (it then asks the writer to close). Whichever ends first, the
    // client is gone for delivery purposes.
    tokio::select! {
        _ = &mut writer => {
            // The server closed (or the socket failed): the client is gone for delivery now.
            // Then the closing handshake: the client's answer to our close frame, briefly, so
            // that the socket is not torn down under frames it has yet to read.
            manager.unregister(id).await;
            if tokio::time::timeout(CLOSE_LINGER, &mut reader).await.is_err() {
                reader.abort();
            }
        }
        _ = &mut reader => {
            // Give the writer the chance to send the close frame the reader asked for.
            if tokio::time::timeout(CLOSE_LINGER, &mut writer).await.is_err() {
                writer.abort();
            }
            manager.unregister(id).await;
        }
    }
}

/// How long one side of a connection waits for the other to finish the closing handshake.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

async fn write_loop(
    manager: Arc<ConnectionManager>,
    queue: Arc<ClientQueue>,
    mut sink: SplitSink<WebSocket, Message>,
    greeting: Vec<Frame>,
    floor: Option<AlertId>,
    last_heard_ms: Arc<AtomicU64>,
    started: Instant,
) {
    let limits = *manager.limits();
    if !greeting.is_empty() {
        let frames = greeting
            .into_iter()
            .map(|frame| Ok(Message::Text(frame.text)));
        let sent = tokio::time::timeout(
            limits.client_timeout,
            sink.send_all(&mut futures_util::stream::iter(frames)),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
    let mut batch = Vec::new();
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        let close = tokio::select! {
            close = queue.next_batch(&mut batch) => close,
            _ = ping.tick() => {
                let silent_ms = (started.elapsed().as_millis() as u64)
                    .saturating_sub(last_heard_ms.load(Ordering::Relaxed));
                if Duration::from_millis(silent_ms) > limits.client_timeout {
                    Some(CloseReason::TIMEOUT)
                } else {
                    if send_within(&mut sink, Message::Ping(Default::default()), limits.client_timeout).await.is_err() {
                        return;
                    }
                    None
                }
            }
        };
        if let Some(floor) = floor {
            // Live copies of alerts the replay already sent.
            batch.retain(|frame| frame.alert_id.is_none_or(|id| id > floor));
        }
        let written = batch.len() as u64;
        let mut close = close;
        if written > 0 {
            let frames = batch.drain(..).map(|frame| Ok(Message::Text(frame.text)));
            let mut frames = futures_util::stream::iter(frames);
            // `send_all` feeds everything, then flushes once. A client that stopped reading
            // blocks it; a close decided meanwhile (slow consumer, shutdown) interrupts it, and
            // the close frame goes out behind what the socket already took.
            tokio::select! {
                sent = tokio::time::timeout(limits.client_timeout, sink.send_all(&mut frames)) => {
                    if !matches!(sent, Ok(Ok(()))) {
                        return;
                    }
                    manager.registry().count_delivered(written);
                }
                reason = queue.closed() => close = Some(reason),
            }
        }
        if let Some(reason) = close {
            // A slow client gets until the client timeout to read its way to the close frame.
            let _ = send_within(&mut sink, close_message(reason), limits.client_timeout).await;
            return;
        }
    }
}

async fn send_within(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    limit: Duration,
) -> Result<(), ()> {
    match tokio::time::timeout(limit, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn read_loop(
    queue: Arc<ClientQueue>,
    mut stream: SplitStream<WebSocket>,
    last_heard_ms: Arc<AtomicU64>,
    started: Instant,
) {
    while let Some(received) = stream.next().await {
        last_heard_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        match received {
            // Clients have nothing to say yet; text is ignored so that future client messages
            // (e.g. a resume request) do not break older servers.
            Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => {}
            Ok(Message::Binary(_)) => {
                queue.close(CloseReason::UNSUPPORTED_DATA);
                return;
            }
            Ok(Message::Close(_)) => return,
            Err(error) => {
                if let Some(reason) = close_reason_for(error) {
                    queue.close(reason);
                }
                return;
            }
        }
    }
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

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from_static(reason.reason),
    }))
}
