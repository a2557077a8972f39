//! The connection cap (`--max-connections`): a slot is reserved before the upgrade and given back
//! when its [`Slot`] is dropped.
//!
//! Counting registered clients cannot hold the cap: a connection is registered only after its
//! upgrade, and the first client of an idle worker waits for the bus subscription first, so any
//! number of simultaneous upgrades would pass a check of the count. Reserving a semaphore permit
//! in the request handler makes the decision atomic, and holding it in an owned guard gives it
//! back on every path — refused after the upgrade, failed upgrade (axum drops the callback that
//! owns it), connection end, shutdown — without anyone having to remember to.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one worker; unlimited without a cap.
pub(crate) struct ConnectionSlots {
    semaphore: Option<Arc<Semaphore>>,
}

/// One reserved connection slot; dropping it gives the slot back.
#[must_use = "dropping a Slot gives the connection slot back"]
pub(crate) struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ConnectionSlots {
    /// `max` slots (capped at what a semaphore can count, far beyond any real worker), or as
    /// many as asked for without a cap.
    pub(crate) fn new(max: Option<usize>) -> Self {
        Self {
            semaphore: max.map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
        }
    }

    /// Whether every slot is taken now (never without a cap).
    pub(crate) fn is_full(&self) -> bool {
        self.semaphore
            .as_ref()
            .is_some_and(|semaphore| semaphore.available_permits() == 0)
    }

    /// A free slot, or `None` when every slot is taken. Never waits.
    pub(crate) fn try_reserve(&self) -> Option<Slot> {
        match &self.semaphore {
            None => Some(Slot { _permit: None }),
            Some(semaphore) => Arc::clone(semaphore)
                .try_acquire_owned()
                .ok()
                .map(|permit| Slot {
                    _permit: Some(permit),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_worker_hands_out_exactly_its_slots_and_gets_them_back_on_drop() {
        let slots = ConnectionSlots::new(Some(2));
        let first = slots.try_reserve();
        let second = slots.try_reserve();
        assert!(first.is_some() && second.is_some());
        assert!(slots.try_reserve().is_none(), "a third slot of two");
        assert!(slots.is_full());
        drop(first);
        assert!(
            slots.try_reserve().is_some(),
            "the dropped slot is free again"
        );
    }

    #[test]
    fn without_a_cap_every_reservation_succeeds() {
        let slots = ConnectionSlots::new(None);
        let held: Vec<_> = (0..1000).filter_map(|_| slots.try_reserve()).collect();
        assert_eq!(held.len(), 1000);
    }
}
