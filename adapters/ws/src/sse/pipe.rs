//! The bounded pipe between an SSE client's queue and its HTTP response body.
//!
//! The client's [`ClientQueue`](crate::queue::ClientQueue) owns the writing end, [`EventPipe`], as
//! its [`Socket`]: a frame written to it is turned into its event (`event`) and its parts are
//! appended, or, when the pipe holds [`PIPE_BYTES`] already, nothing is taken (`WouldBlock`) and
//! the frame stays in the client's queue, under its bounds and slow-consumer policy, exactly as
//! when a WebSocket's TCP buffer is full. The reading end, [`EventBody`], is the response body
//! hyper writes to the connection (one body frame per part, so the JSON goes out as the shared
//! bytes it is). The pipe only takes whole frames: the queue never has a started frame for an
//! SSE client.
//!
//! [`Departure`] is what the connection task hears from an SSE client: nothing, until hyper drops
//! the body (the client left, or the response is over), and then the end of the stream.
//!
//! It must never block the writer (the fan-out writes under the queue's lock), nor hold more than
//! [`PIPE_BYTES`] of events beyond the one that made it full.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::Notify;
use tungstenite::Message;

use super::event::{Event, RETRY};
use crate::protocol::Frame;
use crate::socket::Socket;

/// Bytes of events the pipe holds before it takes no more: the SSE client's counterpart of a
/// TCP send buffer (hyper's own buffer and the kernel's come after it).
pub(crate) const PIPE_BYTES: usize = 64 * 1024;

/// Most frames one write of the connection's task takes (as a WebSocket's `writev`).
const WRITE_FRAMES: usize = 64;

/// How the writing end finished.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Still writing.
    Open,
    /// The close event is in: the body ends after it.
    Closed,
    /// The writer went away without a close event (the client was given up): the response is
    /// cut, so that the client does not take it for a clean end.
    Cut,
}

struct State {
    parts: VecDeque<Bytes>,
    bytes: usize,
    end: End,
    /// hyper dropped the body: the client left, or the response is over.
    body_gone: bool,
    /// The body, waiting for parts.
    reader: Option<Waker>,
    /// The connection's task, waiting for room.
    writer: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the body is dropped.
    gone: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A new pipe, `retry:` first: its writing end, the response body, and the watch on the body.
pub(crate) fn pipe() -> (EventPipe, EventBody, Departure) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            parts: VecDeque::from([Bytes::from_static(RETRY)]),
            bytes: RETRY.len(),
            end: End::Open,
            body_gone: false,
            reader: None,
            writer: None,
        }),
        gone: Notify::new(),
    });
    (
        EventPipe(Arc::clone(&shared)),
        EventBody(Arc::clone(&shared)),
        Departure::new(shared),
    )
}

/// The writing end: the SSE client's socket.
pub(crate) struct EventPipe(Arc<Shared>);

impl EventPipe {
    /// Appends `event` when there is room (or the pipe is empty: an event larger than the pipe
    /// still goes); `false` when there is none.
    fn append(state: &mut State, event: Event) -> bool {
        let len = event.len();
        if state.bytes > 0 && state.bytes + len > PIPE_BYTES {
            return false;
        }
        state.bytes += len;
        state
            .parts
            .extend(event.parts.into_iter().filter(|part| !part.is_empty()));
        if event.last {
            state.end = End::Closed;
        }
        true
    }

    /// Why nothing can be written, if so.
    fn refuses(state: &State) -> Option<io::Error> {
        if state.body_gone {
            return Some(io::ErrorKind::BrokenPipe.into());
        }
        (state.end != End::Open).then(|| io::Error::other("the event stream has ended"))
    }
}

/// Wakes `waker` (outside the lock it was taken under).
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Socket for EventPipe {
    fn try_write(&mut self, frame: &Frame) -> io::Result<usize> {
        let Some(event) = Event::of(frame) else {
            return Ok(frame.wire.len());
        };
        let mut state = self.0.lock();
        if let Some(error) = Self::refuses(&state) {
            return Err(error);
        }
        if !Self::append(&mut state, event) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let reader = state.reader.take();
        drop(state);
        wake(reader);
        Ok(frame.wire.len())
    }

    fn poll_write_frames(
        &mut self,
        cx: &mut Context<'_>,
        frames: &VecDeque<Frame>,
        started: usize,
    ) -> Poll<io::Result<usize>> {
        if started != 0 {
            // The pipe takes whole frames only, so the queue never has a started one.
            return Poll::Ready(Err(io::Error::other(
                "a frame was started on an SSE stream",
            )));
        }
        let mut state = self.0.lock();
        if let Some(error) = Self::refuses(&state) {
            return Poll::Ready(Err(error));
        }
        let mut taken = 0;
        for frame in frames.iter().take(WRITE_FRAMES) {
            if let Some(event) = Event::of(frame) {
                if state.end != End::Open || !Self::append(&mut state, event) {
                    break;
                }
            }
            taken += frame.wire.len();
        }
        if taken == 0 {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let reader = state.reader.take();
        drop(state);
        wake(reader);
        Poll::Ready(Ok(taken))
    }
}

impl Drop for EventPipe {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if state.end == End::Open {
            state.end = End::Cut;
        }
        let reader = state.reader.take();
        drop(state);
        wake(reader);
    }
}

/// The end of the body, watched once the connection's task is over.
pub(crate) struct Lingering(Arc<Shared>);

impl Lingering {
    /// Resolves once hyper dropped the body: the client read the rest, or left.
    pub(crate) async fn gone(&self) {
        loop {
            let gone = self.0.gone.notified();
            if self.0.lock().body_gone {
                return;
            }
            gone.await;
        }
    }
}

impl EventBody {
    /// What watches this body's end.
    pub(crate) fn lingering(&self) -> Lingering {
        Lingering(Arc::clone(&self.0))
    }
}

/// The reading end: the body of the `200 text/event-stream` response.
pub(crate) struct EventBody(Arc<Shared>);

impl Stream for EventBody {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.0.lock();
        if let Some(part) = state.parts.pop_front() {
            state.bytes -= part.len();
            let writer = state.writer.take();
            drop(state);
            wake(writer);
            return Poll::Ready(Some(Ok(part)));
        }
        match state.end {
            End::Open => {
                state.reader = Some(cx.waker().clone());
                Poll::Pending
            }
            End::Closed => Poll::Ready(None),
            End::Cut => {
                // Once: hyper ends the connection on a body error.
                state.end = End::Closed;
                Poll::Ready(Some(Err(io::Error::other(
                    "the client was given up without a close event",
                ))))
            }
        }
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.body_gone = true;
        state.parts.clear();
        state.bytes = 0;
        let writer = state.writer.take();
        drop(state);
        wake(writer);
        self.0.gone.notify_waiters();
    }
}

/// What the connection task hears from an SSE client: nothing (it sends nothing, not even
/// pongs), and the end of the stream once the body is dropped.
pub(crate) struct Departure {
    shared: Arc<Shared>,
    /// Resolves when the body is dropped; made on first poll.
    waiting: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl Departure {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            waiting: None,
        }
    }
}

impl Stream for Departure {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = Arc::clone(&self.shared);
        let waiting = self.waiting.get_or_insert_with(|| {
            Box::pin(async move {
                loop {
                    let gone = shared.gone.notified();
                    if shared.lock().body_gone {
                        return;
                    }
                    gone.await;
                }
            })
        });
        waiting.as_mut().poll(cx).map(|()| None)
    }
}
