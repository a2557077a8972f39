//! One client's bounded outgoing queue.
//!
//! The bus listener pushes into it without waiting; the client's writer task drains it. The
//! bound is in messages and in bytes. Metrics are latest-value data, so on overflow the oldest
//! metrics frames go first (counted); when an alert or control frame cannot fit, the client is
//! closed with [`CloseReason::SLOW_CONSUMER`] instead, so that it reconnects rather than silently
//! missing an alert. A client that lost a whole queue's worth of metrics without its writer
//! taking a single batch is not reading at all: it is closed the same way.
//!
//! It must never make the pusher wait, hold its lock across an `.await`, or encode a frame (the
//! frames come encoded and shared, from `protocol`).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::protocol::{CloseReason, Frame, FrameKind};

/// The bounds of one client's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Most frames queued for one client (`--client-queue-messages`). Also how many metrics
    /// frames it may lose without its writer taking anything before it is closed as not reading.
    pub max_messages: usize,
    /// Most bytes of encoded frames queued for one client (`--client-queue-bytes`).
    pub max_bytes: usize,
}

/// What became of a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; `dropped` older metrics frames made room (or the new metrics frame itself was
    /// dropped when nothing could make room).
    Queued { dropped: u64 },
    /// The client is being closed; the frame was discarded.
    Closing,
    /// This push overflowed the queue with an alert: the client is now being closed.
    Overflowed,
}

struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseReason>,
    /// Metrics frames dropped since the writer last took a batch.
    dropped_since_drain: usize,
}

pub(crate) struct ClientQueue {
    limits: QueueLimits,
    /// Held only for a push or a drain: never across an await.
    state: Mutex<State>,
    /// Wakes the writer; a notification sent while it is busy is kept as a permit.
    ready: Notify,
    /// Wakes a writer that is blocked writing to the socket when the client must be closed.
    closing: Notify,
}

impl ClientQueue {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                close: None,
                dropped_since_drain: 0,
            }),
            ready: Notify::new(),
            closing: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn push(&self, frame: Frame) -> Pushed {
        let mut state = self.lock();
        if state.close.is_some() {
            return Pushed::Closing;
        }
        let size = frame.text.len();
        let fits = |s: &State| {
            s.frames.len() < self.limits.max_messages && s.bytes + size <= self.limits.max_bytes
        };
        let mut dropped = 0;
        while !fits(&state) {
            let Some(oldest_metrics) = state
                .frames
                .iter()
                .position(|f| f.kind == FrameKind::Metrics)
            else {
                break;
            };
            if let Some(removed) = state.frames.remove(oldest_metrics) {
                state.bytes -= removed.text.len();
                dropped += 1;
            }
        }
        let hopeless = if fits(&state) {
            state.bytes += size;
            state.frames.push_back(frame);
            false
        } else {
            if frame.kind == FrameKind::Metrics {
                dropped += 1;
            }
            frame.kind != FrameKind::Metrics
        };
        state.dropped_since_drain += dropped as usize;
        if hopeless || state.dropped_since_drain >= self.limits.max_messages {
            state.frames.clear();
            state.bytes = 0;
            state.close = Some(CloseReason::SLOW_CONSUMER);
            drop(state);
            self.ready.notify_one();
            self.closing.notify_waiters();
            return Pushed::Overflowed;
        }
        drop(state);
        self.ready.notify_one();
        Pushed::Queued { dropped }
    }

    /// Asks the writer to send what is queued, then close with `reason` (the first reason wins).
    pub(crate) fn close(&self, reason: CloseReason) {
        self.lock().close.get_or_insert(reason);
        self.ready.notify_one();
        self.closing.notify_waiters();
    }

    /// Resolves once the client is to be closed; the writer races its socket writes against it.
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

    /// Moves every queued frame into `out` without waiting.
    pub(crate) fn drain_now(&self, out: &mut Vec<Frame>) {
        let mut state = self.lock();
        out.extend(state.frames.drain(..));
        state.bytes = 0;
        state.dropped_since_drain = 0;
    }

    /// Waits until there is something to write, moves every queued frame into `out`, and returns
    /// the close reason once one is set (after the frames queued before it).
    pub(crate) async fn next_batch(&self, out: &mut Vec<Frame>) -> Option<CloseReason> {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() || state.close.is_some() {
                    out.extend(state.frames.drain(..));
                    state.bytes = 0;
                    state.dropped_since_drain = 0;
                    return state.close;
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::ws::Utf8Bytes;

    use super::*;

    fn frame(kind: FrameKind, text: &'static str) -> Frame {
        Frame {
            kind,
            text: Utf8Bytes::from_static(text),
            alert_id: None,
        }
    }

    fn queue(max_messages: usize, max_bytes: usize) -> ClientQueue {
        ClientQueue::new(QueueLimits {
            max_messages,
            max_bytes,
        })
    }

    async fn drain(queue: &ClientQueue) -> (Vec<String>, Option<CloseReason>) {
        let mut out = Vec::new();
        let close = queue.next_batch(&mut out).await;
        (out.iter().map(|f| f.text.to_string()).collect(), close)
    }

    #[tokio::test]
    async fn overflow_drops_the_oldest_metrics_first() {
        let queue = queue(3, 1024);
        assert_eq!(
            queue.push(frame(FrameKind::Metrics, "m1")),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            queue.push(frame(FrameKind::Alert, "a1")),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            queue.push(frame(FrameKind::Metrics, "m2")),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            queue.push(frame(FrameKind::Metrics, "m3")),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(
            drain(&queue).await,
            (vec!["a1".into(), "m2".into(), "m3".into()], None)
        );
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_for_a_whole_queue_of_drops_is_closed() {
        let queue = queue(2, 1024);
        for _ in 0..3 {
            assert!(matches!(
                queue.push(frame(FrameKind::Metrics, "m")),
                Pushed::Queued { .. }
            ));
        }
        // Drained: the count starts again.
        assert_eq!(drain(&queue).await.1, None);
        for _ in 0..3 {
            queue.push(frame(FrameKind::Metrics, "m"));
        }
        assert_eq!(
            queue.push(frame(FrameKind::Metrics, "m")),
            Pushed::Overflowed
        );
        assert_eq!(queue.closed().await, CloseReason::SLOW_CONSUMER);
    }

    #[tokio::test]
    async fn the_byte_bound_holds_too() {
        let queue = queue(100, 4);
        queue.push(frame(FrameKind::Metrics, "mm"));
        queue.push(frame(FrameKind::Metrics, "nn"));
        assert_eq!(
            queue.push(frame(FrameKind::Metrics, "oo")),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(drain(&queue).await.0, ["nn", "oo"]);
    }

    #[tokio::test]
    async fn an_alert_that_cannot_fit_closes_the_client() {
        let queue = queue(2, 1024);
        queue.push(frame(FrameKind::Alert, "a1"));
        queue.push(frame(FrameKind::Alert, "a2"));
        assert_eq!(
            queue.push(frame(FrameKind::Metrics, "m")),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(
            queue.push(frame(FrameKind::Alert, "a3")),
            Pushed::Overflowed
        );
        assert_eq!(queue.push(frame(FrameKind::Alert, "a4")), Pushed::Closing);
        assert_eq!(
            drain(&queue).await,
            (vec![], Some(CloseReason::SLOW_CONSUMER))
        );
    }

    #[tokio::test]
    async fn close_comes_after_what_was_queued_before_it() {
        let queue = queue(8, 1024);
        queue.push(frame(FrameKind::Metrics, "m"));
        queue.close(CloseReason::GOING_AWAY);
        queue.close(CloseReason::TOO_BIG);
        assert_eq!(
            drain(&queue).await,
            (vec!["m".into()], Some(CloseReason::GOING_AWAY))
        );
    }
}
