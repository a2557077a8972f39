//! Alerts raised inside a worker that could not be published yet.

use std::collections::VecDeque;

use crate::Envelope;

/// A bounded FIFO of alert envelopes waiting for the bus to come back. Order is kept: while it
/// holds anything, new alerts queue behind. Overflow is counted as loss, never hidden.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Envelope>,
    capacity: usize,
    lost: u64,
}

impl Outbox {
    /// An empty outbox that holds at most `capacity` alerts (`--outbox-capacity`); with 0, every
    /// alert that cannot go out at once is lost.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity,
            lost: 0,
        }
    }

    /// Whether nothing waits: only then may a new alert go straight to the bus without
    /// overtaking older ones.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Alerts waiting now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Alerts dropped because the outbox was full.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Queues `envelope`; `false` (and one more loss counted) when the outbox is full.
    pub fn push(&mut self, envelope: Envelope) -> bool {
        if self.queue.len() >= self.capacity {
            self.lost += 1;
            return false;
        }
        self.queue.push_back(envelope);
        true
    }

    /// The oldest waiting alert, to publish before removing it: a refusal leaves it first in
    /// line.
    pub fn front(&self) -> Option<&Envelope> {
        self.queue.front()
    }

    /// Removes the oldest waiting alert (once the bus accepted it).
    pub fn pop_front(&mut self) -> Option<Envelope> {
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Valid;
    use crate::{Alert, Payload, Severity, WorkerId};

    fn envelope(seq: u64) -> Envelope {
        Envelope {
            id: None,
            epoch: None,
            origin: WorkerId::new("w").unwrap_or_else(|e| panic!("{e}")),
            seq,
            published_at_us: 0,
            payload: Payload::Alert(Alert::new(Severity::Info, "a").valid()),
        }
    }

    #[test]
    fn keeps_order_and_counts_overflow_as_loss() {
        let mut outbox = Outbox::new(2);
        assert!(outbox.push(envelope(1)));
        assert!(outbox.push(envelope(2)));
        assert!(!outbox.push(envelope(3)));
        assert_eq!(outbox.lost(), 1);
        assert_eq!(outbox.pop_front().map(|e| e.seq), Some(1));
        assert_eq!(outbox.front().map(|e| e.seq), Some(2));
        assert_eq!(outbox.len(), 1);
    }
}
