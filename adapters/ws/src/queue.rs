//! One client's bounded outgoing queue, and the socket it is written to.
//!
//! The bus listener pushes into it without waiting. While the client is live and nothing is
//! queued for it, a push writes the frame straight to the socket (one non-blocking write): no
//! task is woken and nothing is copied or framed per client. Only when the socket does not take
//! the whole frame (or something is queued already) is the frame queued, and the connection's
//! task woken to write it when the socket is writable again. The task also writes what it adds
//! itself: the greeting, answers to requests, pings and the close frame.
//!
//! The bound is in messages and in bytes. Metrics are latest-value data, so on overflow the oldest
//! metrics frames go first (counted); when an alert or control frame cannot fit, the client is
//! closed with [`CloseReason::SLOW_CONSUMER`] instead, so that it reconnects rather than silently
//! missing an alert. A client that lost a whole queue's worth of metrics without the socket
//! taking a single byte is not reading at all: it is closed the same way. A frame the socket took
//! in part is never dropped: the rest of it goes out before anything else.
//!
//! It must never make the pusher wait, hold its lock across an `.await`, or encode a frame (the
//! frames come encoded, framed and shared, from `protocol`).
//!
//! Over 400 lines on purpose: more than half is the unit tests, with a real duplex socket; the
//! queue and the direct write share one lock and one set of invariants, so they stay together.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use fanout_domain::LogId;
use tokio::sync::Notify;

use crate::protocol::{CloseReason, Frame, FrameKind};
use crate::socket::Socket;
use crate::wire;

/// The bounds of one client's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Most frames queued for one client (`--client-queue-messages`). Also how many metrics
    /// frames it may lose without its writer taking anything before it is closed as not reading.
    pub max_messages: usize,
    /// Most bytes of encoded frames queued for one client (`--client-queue-bytes`).
    pub max_bytes: usize,
}

/// The client's socket, to write to.
pub(crate) type Out = Box<dyn Socket>;

/// What became of a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Written whole to the socket.
    Written,
    /// Queued; `dropped` older metrics frames made room (or the new metrics frame itself was
    /// dropped when nothing could make room).
    Queued { dropped: u64 },
    /// The client is being closed; the frame was discarded.
    Closing,
    /// The client already has this alert (its resume replayed it); the frame was discarded.
    Replayed,
    /// The client is now being closed (4008): this push overflowed the queue with an alert, or
    /// its drops made a whole queue's worth since the client last took something. `dropped`:
    /// the metrics frames this push dropped and those the close discarded, unsent.
    Overflowed { dropped: u64 },
}

/// What [`ClientQueue::lend`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lent {
    /// Queued first and lent: send it to this descriptor, then hand the outcome back.
    Out(RawFd),
    /// Not lent: handled as a push.
    Pushed(Pushed),
}

/// What the connection's task's turn at the socket came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drove {
    /// This many bus messages (not control frames) were written whole.
    Wrote(u64),
    /// The close frame is written: the server's side of the connection is done.
    CloseSent,
    /// The socket failed.
    Failed,
}

struct State {
    /// Frames to write, oldest first; the first may be partly written already.
    frames: VecDeque<Frame>,
    /// Bytes of the first frame already written.
    started: usize,
    bytes: usize,
    close: Option<CloseReason>,
    /// The close frame is queued (after everything queued before the close).
    close_queued: bool,
    /// Metrics frames dropped since the socket last took anything.
    dropped_since_progress: usize,
    /// The socket; `None` until the connection's task attaches it (and in unit tests).
    out: Option<Out>,
    /// `out`'s descriptor for the ring (`Socket::raw_fd`), read once at `attach`: the fan-out
    /// then touches this state alone per client, not the socket's own allocations, which are
    /// cold again by the next message.
    fd: Option<RawFd>,
    /// The greeting is out (or queued first): pushes may write straight to the socket.
    live: bool,
    /// The task took frames to write after its own (a request's answer): no direct writes until
    /// it puts them back.
    held: bool,
    /// Alerts with an id at or below this were replayed: live copies are discarded.
    floor: Option<LogId>,
    /// The connection's task, when it waits for something to write.
    writer: Option<Waker>,
    /// Since when the socket has not taken a byte of what is queued.
    blocked_since: Option<Instant>,
    /// The first queued frame is lent to the fan-out, which is sending it (`lend`): nobody else
    /// writes or drops it until it comes back (`returned`).
    lent: bool,
}

impl State {
    /// Whether a push may write to the socket now: live, nothing ahead of it.
    fn direct(&self) -> bool {
        self.live && !self.held && self.frames.is_empty() && self.close.is_none()
    }

    /// An alert the client's resume has replayed already.
    fn replayed(&self, frame: &Frame) -> bool {
        matches!((self.floor, frame.alert_id), (Some(floor), Some(id)) if id <= floor)
    }

    fn enqueue(&mut self, frame: Frame) {
        self.bytes += frame.wire.len();
        self.frames.push_back(frame);
    }

    /// Where frames that go before everything queued are inserted: after a started (or lent)
    /// frame.
    fn front(&self) -> usize {
        usize::from(self.started > 0 || self.lent)
    }

    /// Drops every frame not yet started; returns how many were metrics frames.
    fn clear_unstarted(&mut self) -> u64 {
        let keep = self.front();
        let mut metrics = 0;
        for frame in self.frames.drain(keep..) {
            self.bytes -= frame.wire.len();
            metrics += u64::from(frame.kind == FrameKind::Metrics);
        }
        metrics
    }

    /// How many frames at the front are the connection's own (`FrameKind::Control`).
    fn leading_controls(&self) -> usize {
        self.frames
            .iter()
            .take_while(|frame| frame.kind == FrameKind::Control)
            .count()
    }

    /// Inserts `frames`, in order, before everything queued but a started frame, outside the
    /// bounds.
    fn insert_front(&mut self, frames: impl IntoIterator<Item = Frame>) {
        let at = self.front();
        for (i, frame) in frames.into_iter().enumerate() {
            self.bytes += frame.wire.len();
            self.frames.insert(at + i, frame);
        }
    }
}

/// Takes `n` written bytes off the front of `frames` (the first written from byte `started`),
/// keeping `started` and `bytes` (what is queued) true; returns the messages (not control
/// frames) written whole, and whether anything but a ping was written. A free function, not a
/// method: the caller holds the state's socket borrowed meanwhile.
fn took(
    frames: &mut VecDeque<Frame>,
    started: &mut usize,
    bytes: &mut usize,
    mut n: usize,
) -> (u64, bool) {
    let (mut wrote, mut progressed) = (0, false);
    while n > 0 {
        let Some(front) = frames.front() else {
            break;
        };
        progressed |= !wire::is_ping(&front.wire);
        let left = front.wire.len() - *started;
        if n < left {
            *started += n;
            break;
        }
        n -= left;
        *started = 0;
        if let Some(done) = frames.pop_front() {
            *bytes -= done.wire.len();
            if done.kind != FrameKind::Control {
                wrote += 1;
            }
        }
    }
    (wrote, progressed)
}

/// Releases the lock, then wakes the connection's task if it waits for something to write.
fn release_and_wake(mut state: MutexGuard<'_, State>) {
    let writer = state.writer.take();
    drop(state);
    if let Some(writer) = writer {
        writer.wake();
    }
}

pub(crate) struct ClientQueue {
    limits: QueueLimits,
    /// Held only for a push, a write attempt or a drain: never across an await.
    state: Mutex<State>,
    /// Wakes whoever waits for the client to be closed.
    closing: Notify,
}

impl ClientQueue {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                started: 0,
                bytes: 0,
                close: None,
                close_queued: false,
                dropped_since_progress: 0,
                out: None,
                fd: None,
                live: false,
                held: false,
                floor: None,
                writer: None,
                blocked_since: None,
                lent: false,
            }),
            closing: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the queue the socket to write to.
    pub(crate) fn attach(&self, out: Out) {
        let mut state = self.lock();
        state.fd = out.raw_fd();
        state.out = Some(out);
    }

    /// Hands a bus message's frame to the client: written at once when `direct` and the socket
    /// takes it, else queued within the bounds (and the connection's task woken to write it).
    pub(crate) fn push(&self, frame: &Frame, direct: bool) -> Pushed {
        self.push_locked(self.lock(), frame, direct)
    }

    /// Hands a bus message's frame to the client, to be sent by the caller: when the client is
    /// live, nothing is queued and its socket can be sent to from outside, the frame is queued
    /// first and *lent* (the descriptor is returned), and the caller must hand the send's outcome
    /// to [`ClientQueue::returned`]; until then nobody else writes to the socket or drops the
    /// frame. Else it is pushed as by [`ClientQueue::push`] (written directly or queued).
    pub(crate) fn lend(&self, frame: &Frame) -> Lent {
        let mut state = self.lock();
        if state.close.is_none() && !state.replayed(frame) && state.direct() {
            if let Some(fd) = state.fd {
                state.enqueue(frame.clone());
                state.lent = true;
                return Lent::Out(fd);
            }
        }
        Lent::Pushed(self.push_locked(state, frame, true))
    }

    /// The outcome of the send of a lent frame (see [`ClientQueue::lend`]): the bytes the socket
    /// took, or its error. Taken whole, the frame is done; else the rest of it goes out first
    /// when the connection's task (woken) finds the socket writable, or meets its error.
    pub(crate) fn returned(&self, sent: std::io::Result<usize>) -> Pushed {
        let mut state = self.lock();
        state.lent = false;
        let length = state.frames.front().map_or(0, |frame| frame.wire.len());
        match sent {
            Ok(taken) if taken == length => {
                if let Some(done) = state.frames.pop_front() {
                    state.bytes -= done.wire.len();
                }
                state.dropped_since_progress = 0;
                // A frame of the connection's own may have been queued behind it meanwhile.
                if state.frames.is_empty() {
                    return Pushed::Written;
                }
                release_and_wake(state);
                return Pushed::Written;
            }
            Ok(taken) => state.started = taken,
            Err(_) => {}
        }
        release_and_wake(state);
        Pushed::Queued { dropped: 0 }
    }

    fn push_locked(&self, mut state: MutexGuard<'_, State>, frame: &Frame, direct: bool) -> Pushed {
        if state.close.is_some() {
            return Pushed::Closing;
        }
        if state.replayed(frame) {
            return Pushed::Replayed;
        }
        if direct && state.direct() {
            if let Some(out) = state.out.as_mut() {
                // When the socket pushes back, the frame is queued and the task woken: its own
                // write attempt registers its waker with the socket.
                match out.try_write(frame) {
                    Ok(n) if n == frame.wire.len() => {
                        state.dropped_since_progress = 0;
                        return Pushed::Written;
                    }
                    Ok(n) => state.started = n,
                    // `WouldBlock`; any other error the task's own attempt meets too, and ends
                    // the connection.
                    Err(_) => {}
                }
                state.enqueue(frame.clone());
                release_and_wake(state);
                return Pushed::Queued { dropped: 0 };
            }
        }
        let size = frame.wire.len();
        let fits = |s: &State| {
            s.frames.len() < self.limits.max_messages && s.bytes + size <= self.limits.max_bytes
        };
        let mut dropped = 0;
        while !fits(&state) {
            let first = state.front();
            let Some(oldest_metrics) = state
                .frames
                .iter()
                .skip(first)
                .position(|f| f.kind == FrameKind::Metrics)
            else {
                break;
            };
            if let Some(removed) = state.frames.remove(first + oldest_metrics) {
                state.bytes -= removed.wire.len();
                dropped += 1;
            }
        }
        let hopeless = if fits(&state) {
            state.enqueue(frame.clone());
            false
        } else {
            if frame.kind == FrameKind::Metrics {
                dropped += 1;
            }
            frame.kind != FrameKind::Metrics
        };
        state.dropped_since_progress += dropped as usize;
        if hopeless || state.dropped_since_progress >= self.limits.max_messages {
            let discarded = state.clear_unstarted();
            state.close = Some(CloseReason::SLOW_CONSUMER);
            release_and_wake(state);
            self.closing.notify_waiters();
            return Pushed::Overflowed {
                dropped: dropped + discarded,
            };
        }
        release_and_wake(state);
        Pushed::Queued { dropped }
    }

    /// Queues frames of the connection's own (greeting, answers, a ping, what `drain_now` took)
    /// before everything queued, outside the bounds, and lets pushes write directly again.
    pub(crate) fn put_front(&self, frames: impl IntoIterator<Item = Frame>) {
        let mut state = self.lock();
        state.insert_front(frames);
        state.held = false;
        release_and_wake(state);
    }

    /// Queues a frame of the connection's own (a pong, a ping), outside the bounds: after
    /// everything queued, or before the greeting after the other such frames only, ahead of any
    /// message, so that [`ClientQueue::poll_write_controls`] can send it while no message may go
    /// out yet. Nothing once the close frame is queued.
    pub(crate) fn push_control(&self, frame: Frame) {
        let mut state = self.lock();
        if state.close_queued {
            return;
        }
        if state.live {
            state.enqueue(frame);
        } else {
            let at = state.leading_controls();
            state.bytes += frame.wire.len();
            state.frames.insert(at, frame);
        }
        release_and_wake(state);
    }

    /// Starts live delivery with `greeting` first (hello, snapshot, a replay): alerts up to
    /// `floor` were replayed, so their live copies, queued or to come, are discarded.
    pub(crate) fn go_live(&self, greeting: Vec<Frame>, floor: Option<LogId>) {
        let mut state = self.lock();
        if let Some(floor) = floor {
            let mut index = state.front();
            while index < state.frames.len() {
                if state.frames[index].alert_id.is_some_and(|id| id <= floor) {
                    if let Some(removed) = state.frames.remove(index) {
                        state.bytes -= removed.wire.len();
                    }
                } else {
                    index += 1;
                }
            }
        }
        state.insert_front(greeting);
        state.floor = floor;
        state.live = true;
        release_and_wake(state);
    }

    /// Asks the writer to send what is queued, then close with `reason` (the first reason wins).
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        state.close.get_or_insert(reason);
        release_and_wake(state);
        self.closing.notify_waiters();
    }

    /// Closes with `reason` at once: what is queued and not started is dropped.
    pub(crate) fn close_now(&self, reason: CloseReason) {
        // A close decided elsewhere (shutdown, a failed replay): not the slow-consumer drops.
        let _ = self.lock().clear_unstarted();
        self.close(reason);
    }

    /// Resolves once the client is to be closed.
    pub(crate) async fn closed(&self) -> CloseReason {
        loop {
            let closing = self.closing.notified();
            if let Some(reason) = self.lock().close {
                return reason;
            }
            closing.await;
        }
    }

    /// Frames queued now.
    pub(crate) fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Since when the socket has taken nothing of what is queued, if it is behind.
    pub(crate) fn blocked_since(&self) -> Option<Instant> {
        self.lock().blocked_since
    }

    /// Moves every queued frame not yet started into `out`, and holds pushes from writing
    /// directly until [`ClientQueue::put_front`] gives the frames back (with what goes after
    /// them): a request's answer goes out after what was queued before it.
    pub(crate) fn drain_now(&self, out: &mut Vec<Frame>) {
        let mut state = self.lock();
        let first = state.front();
        for frame in state.frames.drain(first..) {
            out.push(frame);
        }
        state.bytes = state.frames.iter().map(|f| f.wire.len()).sum();
        state.dropped_since_progress = 0;
        state.held = true;
    }

    /// The connection task's turn: writes what is queued until the socket pushes back, queueing
    /// the close frame once a close is set. Pending while there is nothing to write (the task is
    /// woken by a push) or the socket is full (woken by the socket).
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>) -> Poll<Drove> {
        let mut state = self.lock();
        if let (Some(reason), false) = (state.close, state.close_queued) {
            state.close_queued = true;
            state.enqueue(reason.frame());
        }
        let state = &mut *state;
        if state.close_queued && state.frames.is_empty() {
            return Poll::Ready(Drove::CloseSent);
        }
        if state.lent {
            // The fan-out is sending the first frame; `returned` wakes the task.
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut wrote = 0;
        // Progress is the client taking something of what it is sent, not a ping: the drop-oldest
        // rule can bring an old ping to the front of a full queue, and a socket (an SSE pipe, a
        // nearly full TCP buffer) can still take those few bytes while it takes no message.
        let mut progressed = false;
        let Some(out) = state.out.as_mut() else {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        };
        // Everything queued goes out in one `writev` (up to `WRITE_SLICES` frames): a client that
        // fell behind gets its backlog in one write, not one per frame.
        while !state.frames.is_empty() {
            match out.poll_write_frames(cx, &state.frames, state.started) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Drove::Failed),
                Poll::Ready(Ok(n)) => {
                    let (messages, moved) =
                        took(&mut state.frames, &mut state.started, &mut state.bytes, n);
                    wrote += messages;
                    progressed |= moved;
                }
                Poll::Pending => {
                    if progressed || state.blocked_since.is_none() {
                        state.blocked_since = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        if progressed {
            state.dropped_since_progress = 0;
        }
        if state.frames.is_empty() {
            state.blocked_since = None;
            if !state
                .writer
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.writer = Some(cx.waker().clone());
            }
        }
        if wrote > 0 {
            Poll::Ready(Drove::Wrote(wrote))
        } else if state.close_queued && state.frames.is_empty() {
            Poll::Ready(Drove::CloseSent)
        } else {
            Poll::Pending
        }
    }

    /// Before the greeting: writes the connection's own frames at the front of the queue (the
    /// pongs tungstenite answers a waiting client's pings with, `push_control`), never a
    /// message. Ready once some were written, or with the socket's error; pending while there
    /// are none (the task is woken by the next push) or the socket is full.
    pub(crate) fn poll_write_controls(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut state = self.lock();
        let state = &mut *state;
        let leading = state.leading_controls();
        let Some(out) = state.out.as_mut().filter(|_| leading > 0) else {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        };
        // Only those frames are handed to the socket (few, small and rare: cloned).
        let controls: VecDeque<Frame> = state.frames.iter().take(leading).cloned().collect();
        match out.poll_write_frames(cx, &controls, state.started) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                took(&mut state.frames, &mut state.started, &mut state.bytes, n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`ClientQueue::poll_write`] as a future.
    pub(crate) async fn write(&self) -> Drove {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::socket::Writer;
    use crate::wire;

    fn frame(kind: FrameKind, text: &str) -> Frame {
        Frame {
            kind,
            wire: wire::text(text.as_bytes()),
            alert_id: None,
        }
    }

    fn alert(id: &str) -> Frame {
        Frame {
            alert_id: Some(id.parse().unwrap_or_else(|e| panic!("{e:?}"))),
            ..frame(FrameKind::Alert, id)
        }
    }

    fn queue(max_messages: usize, max_bytes: usize) -> ClientQueue {
        ClientQueue::new(QueueLimits {
            max_messages,
            max_bytes,
        })
    }

    /// A live queue whose socket takes `capacity` bytes until the returned end reads them.
    fn live(capacity: usize) -> (ClientQueue, DuplexStream) {
        let queue = queue(8, 1024);
        let (client, server) = tokio::io::duplex(capacity);
        queue.attach(Box::new(Writer(server)));
        queue.go_live(Vec::new(), None);
        (queue, client)
    }

    fn drain(queue: &ClientQueue) -> Vec<String> {
        let mut out = Vec::new();
        queue.drain_now(&mut out);
        out.iter().map(|f| f.text().to_string()).collect()
    }

    /// Reads `len` bytes as the client would.
    async fn read(client: &mut DuplexStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        client
            .read_exact(&mut bytes)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        bytes
    }

    #[test]
    fn overflow_drops_the_oldest_metrics_first() {
        let queue = queue(3, 1024);
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "m1"), true),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            queue.push(&frame(FrameKind::Alert, "a1"), true),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "m2"), true),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "m3"), true),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(drain(&queue), ["a1", "m2", "m3"]);
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_for_a_whole_queue_of_drops_is_closed() {
        let queue = queue(2, 1024);
        for _ in 0..3 {
            assert!(matches!(
                queue.push(&frame(FrameKind::Metrics, "m"), true),
                Pushed::Queued { .. }
            ));
        }
        // Taken: the count starts again.
        drain(&queue);
        for _ in 0..3 {
            queue.push(&frame(FrameKind::Metrics, "m"), true);
        }
        // The push that closes it: one more dropped, and the two queued ones discarded.
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "m"), true),
            Pushed::Overflowed { dropped: 3 }
        );
        assert_eq!(queue.closed().await, CloseReason::SLOW_CONSUMER);
    }

    /// A socket that takes pings and nothing else: what a full SSE pipe or a nearly full TCP
    /// buffer can look like to the queue (a few bytes still fit, a message does not).
    struct TakesOnlyPings;

    impl Socket for TakesOnlyPings {
        fn try_write(&mut self, frame: &Frame) -> std::io::Result<usize> {
            if wire::is_ping(&frame.wire) {
                Ok(frame.wire.len())
            } else {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }

        fn poll_write_frames(
            &mut self,
            _: &mut Context<'_>,
            frames: &VecDeque<Frame>,
            _: usize,
        ) -> Poll<std::io::Result<usize>> {
            match frames.front().map(|frame| self.try_write(frame)) {
                Some(Ok(n)) => Poll::Ready(Ok(n)),
                _ => Poll::Pending,
            }
        }
    }

    /// Found by an outside tester: with a short ping interval an SSE client that read nothing
    /// was never closed, because dropping the oldest metrics brought an old ping to the front,
    /// the pipe took its few bytes, and that counted as the client taking something.
    #[tokio::test]
    async fn pings_taken_are_not_progress_for_the_slow_consumer_rule() {
        let queue = queue(4, 1 << 20);
        queue.attach(Box::new(TakesOnlyPings));
        queue.go_live(Vec::new(), None);
        let ping = Frame {
            kind: FrameKind::Control,
            wire: wire::ping(),
            alert_id: None,
        };
        let mut pushed = Vec::new();
        for _ in 0..12 {
            pushed.push(queue.push(&frame(FrameKind::Metrics, "m"), true));
            queue.push_control(ping.clone());
            // The connection's task takes its turn: the ping at the front goes out, no message.
            let _ = futures_util::FutureExt::now_or_never(queue.write());
        }
        assert!(
            pushed
                .iter()
                .any(|p| matches!(p, Pushed::Overflowed { .. })),
            "a client that took only pings was never closed: {pushed:?}"
        );
        assert_eq!(queue.closed().await, CloseReason::SLOW_CONSUMER);
    }

    #[test]
    fn the_byte_bound_holds_too() {
        let size = wire::text(b"mm").len();
        let queue = queue(100, 2 * size);
        queue.push(&frame(FrameKind::Metrics, "mm"), true);
        queue.push(&frame(FrameKind::Metrics, "nn"), true);
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "oo"), true),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(drain(&queue), ["nn", "oo"]);
    }

    #[tokio::test]
    async fn an_alert_that_cannot_fit_closes_the_client() {
        let queue = queue(2, 1024);
        queue.push(&frame(FrameKind::Alert, "a1"), true);
        queue.push(&frame(FrameKind::Alert, "a2"), true);
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "m"), true),
            Pushed::Queued { dropped: 1 }
        );
        // The two alerts discarded by the close are not metrics.
        assert_eq!(
            queue.push(&frame(FrameKind::Alert, "a3"), true),
            Pushed::Overflowed { dropped: 0 }
        );
        assert_eq!(
            queue.push(&frame(FrameKind::Alert, "a4"), true),
            Pushed::Closing
        );
        assert!(drain(&queue).is_empty());
        assert_eq!(queue.closed().await, CloseReason::SLOW_CONSUMER);
    }

    #[tokio::test]
    async fn a_live_client_with_nothing_queued_is_written_to_at_once() {
        let (queue, mut client) = live(1024);
        let m = frame(FrameKind::Metrics, "m1");
        assert_eq!(queue.push(&m, true), Pushed::Written);
        assert_eq!(read(&mut client, m.wire.len()).await, m.wire);
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn before_the_greeting_nothing_is_written_directly() {
        let queue = queue(8, 1024);
        let (_client, server) = tokio::io::duplex(1024);
        queue.attach(Box::new(Writer(server)));
        let m = frame(FrameKind::Metrics, "m1");
        assert_eq!(queue.push(&m, true), Pushed::Queued { dropped: 0 });
        assert_eq!(queue.len(), 1);
    }

    /// While a client waits for its greeting, pongs go out (PROTOCOL.md: pings are answered)
    /// and no message does: the greeting is still the first message the client reads.
    #[tokio::test]
    async fn before_the_greeting_pongs_are_written_and_messages_wait() {
        let queue = queue(8, 1024);
        let (mut client, server) = tokio::io::duplex(1024);
        queue.attach(Box::new(Writer(server)));
        let m = frame(FrameKind::Metrics, "m1");
        assert_eq!(queue.push(&m, true), Pushed::Queued { dropped: 0 });
        let pongs = [
            frame(FrameKind::Control, "pong 1"),
            frame(FrameKind::Control, "pong 2"),
        ];
        for pong in &pongs {
            queue.push_control(pong.clone());
        }
        // One write takes both (the socket has room for them).
        std::future::poll_fn(|cx| queue.poll_write_controls(cx))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let expected: Vec<u8> = pongs.iter().flat_map(|p| p.wire.iter()).copied().collect();
        assert_eq!(read(&mut client, expected.len()).await, expected);
        assert_eq!(queue.len(), 1, "the message waits for the greeting");
        let nothing = std::future::poll_fn(|cx| Poll::Ready(queue.poll_write_controls(cx))).await;
        assert!(
            nothing.is_pending(),
            "no message goes out before the greeting"
        );

        let hello = frame(FrameKind::Control, "hello");
        queue.go_live(vec![hello.clone()], None);
        let drove = queue.write().await;
        assert!(matches!(drove, Drove::Wrote(1)), "{drove:?}");
        let rest: Vec<u8> = hello.wire.iter().chain(m.wire.iter()).copied().collect();
        assert_eq!(read(&mut client, rest.len()).await, rest);
    }

    #[tokio::test]
    async fn a_frame_the_socket_took_in_part_is_finished_first_and_never_dropped() {
        // The socket takes 5 bytes: the first frame is started, then everything queues.
        let (queue, mut client) = live(5);
        let first = frame(FrameKind::Metrics, "first metrics frame");
        assert_eq!(queue.push(&first, true), Pushed::Queued { dropped: 0 });
        // Overflow drops the oldest metrics, but not the started one.
        let mut later = Vec::new();
        for i in 0..10 {
            let m = frame(FrameKind::Metrics, &format!("m{i}"));
            queue.push(&m, true);
            later.push(m);
        }
        assert_eq!(queue.len(), 8);
        let expected: Vec<u8> = first
            .wire
            .iter()
            .chain(later[3..].iter().flat_map(|m| m.wire.iter()))
            .copied()
            .collect();
        let reader = tokio::spawn(async move {
            let read = read(&mut client, expected.len()).await;
            (read == expected, client)
        });
        let mut wrote = 0;
        while wrote < 8 {
            match queue.write().await {
                Drove::Wrote(n) => wrote += n,
                other => panic!("{other:?}"),
            }
        }
        let (in_order, _client) = reader.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(in_order);
        // Caught up: direct again.
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "x"), true),
            Pushed::Written
        );
    }

    #[tokio::test]
    async fn live_copies_of_replayed_alerts_are_discarded() {
        let queue = queue(8, 1024);
        queue.push(&alert("1-0"), true);
        queue.push(&alert("3-0"), true);
        // The replay holds 1-0 and 2-0, and goes first.
        queue.go_live(
            vec![alert("1-0"), alert("2-0")],
            Some("2-0".parse().unwrap_or_else(|e| panic!("{e:?}"))),
        );
        assert_eq!(queue.push(&alert("2-0"), true), Pushed::Replayed);
        assert_eq!(
            queue.push(&alert("4-0"), true),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(drain(&queue), ["1-0", "2-0", "3-0", "4-0"]);
    }

    #[tokio::test]
    async fn a_request_answer_goes_after_what_was_queued_before_it_and_before_what_follows() {
        let (queue, mut client) = live(1024);
        let (a, b, answer) = (
            frame(FrameKind::Metrics, "a"),
            frame(FrameKind::Metrics, "b"),
            frame(FrameKind::Control, "answer"),
        );
        // Queued behind a greeting not yet written.
        queue.put_front([frame(FrameKind::Control, "hello")]);
        queue.push(&a, true);
        let mut before = Vec::new();
        queue.drain_now(&mut before);
        // Held: not written directly although nothing is queued but the greeting.
        assert_eq!(queue.push(&b, true), Pushed::Queued { dropped: 0 });
        before.push(answer.clone());
        queue.put_front(before);
        let order = ["hello", "a", "answer", "b"];
        let expected: Vec<u8> = order
            .iter()
            .flat_map(|t| wire::text(t.as_bytes()).to_vec())
            .collect();
        assert_eq!(queue.write().await, Drove::Wrote(2));
        assert_eq!(read(&mut client, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn the_close_frame_goes_after_what_was_queued_before_it() {
        let (queue, mut client) = live(1024);
        queue.put_front([frame(FrameKind::Control, "hello")]);
        queue.push(&frame(FrameKind::Metrics, "m"), true);
        queue.close(CloseReason::GOING_AWAY);
        queue.close(CloseReason::TOO_BIG);
        let drove = queue.write().await;
        assert!(matches!(drove, Drove::Wrote(1)), "{drove:?}");
        assert_eq!(queue.write().await, Drove::CloseSent);
        let expected: Vec<u8> = [
            wire::text(b"hello"),
            wire::text(b"m"),
            wire::close(1001, CloseReason::GOING_AWAY.reason),
        ]
        .concat();
        assert_eq!(read(&mut client, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn frames_queued_while_behind_go_out_in_one_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let mut client = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let queue = queue(64, 1 << 20);
        queue.attach(Box::new(crate::socket::Tcp(std::sync::Arc::new(server))));
        queue.go_live(Vec::new(), None);
        let frames: Vec<Frame> = (0..10)
            .map(|i| frame(FrameKind::Metrics, &format!("m{i}")))
            .collect();
        for f in &frames {
            // Behind: not written at once.
            assert_eq!(queue.push(f, false), Pushed::Queued { dropped: 0 });
        }
        // One turn of the task, one `writev`: all ten.
        assert_eq!(queue.write().await, Drove::Wrote(10));
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.wire.to_vec()).collect();
        let mut got = vec![0; expected.len()];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, expected);
    }

    /// A live queue on a real TCP socket (which can be lent), and the client's end.
    async fn live_tcp(max_messages: usize) -> (ClientQueue, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let queue = queue(max_messages, 1 << 20);
        queue.attach(Box::new(crate::socket::Tcp(std::sync::Arc::new(server))));
        queue.go_live(Vec::new(), None);
        (queue, client)
    }

    /// While the fan-out sends a lent frame, the frame is neither dropped (overflow, a close)
    /// nor overtaken (a frame of the connection's own goes after it), and the task writes
    /// nothing; a send that took part of it has the task write the rest first.
    #[tokio::test]
    async fn a_lent_frame_is_neither_dropped_nor_overtaken() {
        let (queue, mut client) = live_tcp(2).await;
        let lent = frame(FrameKind::Metrics, "lent");
        let Lent::Out(fd) = queue.lend(&lent) else {
            panic!("a live TCP client with nothing queued is lent the frame")
        };
        // Not lent twice: the next frame is queued behind it.
        let later = frame(FrameKind::Metrics, "later");
        assert_eq!(
            queue.lend(&later),
            Lent::Pushed(Pushed::Queued { dropped: 0 })
        );
        // Overflow drops `later`, never the lent frame.
        assert_eq!(
            queue.push(&frame(FrameKind::Metrics, "newest"), true),
            Pushed::Queued { dropped: 1 }
        );
        queue.put_front([frame(FrameKind::Control, "pong")]);
        // The task's turn while the frame is out: nothing written, Pending.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(queue.poll_write(&mut cx).is_pending());
        // The fan-out's send took 3 bytes of it: the task writes the rest first.
        let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        let taken =
            nix::sys::socket::send(fd, &lent.wire[..3], flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(queue.returned(Ok(taken)), Pushed::Queued { dropped: 0 });
        assert_eq!(queue.write().await, Drove::Wrote(2));
        let expected: Vec<u8> = [
            lent.wire.clone(),
            wire::text(b"pong"),
            wire::text(b"newest"),
        ]
        .concat();
        let mut got = vec![0; expected.len()];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, expected);
    }

    /// A lent frame the socket took whole is done: counted written, nothing left to write; one
    /// the socket refused is queued for the task, which writes it whole.
    #[tokio::test]
    async fn a_lent_frame_comes_back_written_or_queued() {
        let (queue, mut client) = live_tcp(8).await;
        let first = frame(FrameKind::Metrics, "first");
        assert!(matches!(queue.lend(&first), Lent::Out(_)));
        assert_eq!(queue.returned(Ok(first.wire.len())), Pushed::Written);
        assert_eq!(queue.len(), 0);
        let second = frame(FrameKind::Metrics, "second");
        assert!(matches!(queue.lend(&second), Lent::Out(_)));
        assert_eq!(
            queue.returned(Err(std::io::ErrorKind::WouldBlock.into())),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(queue.len(), 1);
        let drove = queue.write().await;
        assert!(matches!(drove, Drove::Wrote(1)), "{drove:?}");
        let mut got = vec![0; second.wire.len()];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, second.wire.to_vec());
    }

    /// Only a socket with a descriptor is lent a frame; any other is written directly as before.
    #[tokio::test]
    async fn a_socket_without_a_descriptor_is_written_directly() {
        let (queue, mut client) = live(1024);
        let only = frame(FrameKind::Metrics, "m");
        assert_eq!(queue.lend(&only), Lent::Pushed(Pushed::Written));
        assert_eq!(read(&mut client, only.wire.len()).await, only.wire.to_vec());
    }
}
