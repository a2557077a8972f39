//! A worker's own metrics coming back from Redis: what its `202` waits for.
//!
//! Redis answers a `PUBLISH` (or `SPUBLISH`) before it has written the message to its
//! subscribers. A master that freezes in between (a VM paused, a long fork) and is let go after a
//! failover can hand the message on seconds late, or never to this worker's session. So a metric
//! is answered `202` only once this worker's own subscriber has received it and handed it to the
//! local clients: the publisher registers the message's `seq` before publishing, the subscriber's
//! inbox reports each of this worker's messages it delivers, and the publisher waits for that
//! within its Redis timeout (503 otherwise). A message whose echo never came is dropped as late
//! by every worker if it comes much later (see `late`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// The publishes of this worker waiting for their echo, by `seq`.
#[derive(Default)]
pub(crate) struct Echoes {
    waiting: Mutex<Waiting>,
    /// How many wait: the inbox checks this before it takes the lock.
    count: AtomicUsize,
}

#[derive(Default)]
struct Waiting {
    /// This worker's id (every publish of a worker carries the same).
    origin: Option<Box<str>>,
    by_seq: HashMap<u64, oneshot::Sender<()>>,
}

impl Echoes {
    /// Registers a publish of `origin`'s message `seq`, before it is sent: the echo can come
    /// before the publisher's reply. Dropping the returned [`Echo`] forgets it.
    pub(crate) fn expect(self: &Arc<Self>, origin: &str, seq: u64) -> Echo {
        let (sender, receiver) = oneshot::channel();
        let mut waiting = self.lock();
        if waiting.origin.as_deref() != Some(origin) {
            // Only when the worker's id is first seen (one id per worker).
            waiting.origin = Some(Box::from(origin));
            waiting.by_seq.clear();
        }
        waiting.by_seq.insert(seq, sender);
        self.count.store(waiting.by_seq.len(), Ordering::Release);
        Echo {
            echoes: Arc::clone(self),
            seq,
            receiver,
        }
    }

    /// The subscriber handed `origin`'s message `seq` to this worker's clients.
    pub(crate) fn arrived(&self, origin: &str, seq: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut waiting = self.lock();
        if waiting.origin.as_deref() != Some(origin) {
            return;
        }
        if let Some(sender) = waiting.by_seq.remove(&seq) {
            let _ = sender.send(());
        }
        self.count.store(waiting.by_seq.len(), Ordering::Release);
    }

    fn forget(&self, seq: u64) {
        let mut waiting = self.lock();
        waiting.by_seq.remove(&seq);
        self.count.store(waiting.by_seq.len(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Every update is one step: a poisoned lock holds nothing half-done.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One publish waiting for its echo.
pub(crate) struct Echo {
    echoes: Arc<Echoes>,
    seq: u64,
    receiver: oneshot::Receiver<()>,
}

impl Echo {
    /// Resolves when the echo has arrived (at once if it already has).
    pub(crate) async fn arrived(&mut self) {
        if (&mut self.receiver).await.is_err() {
            // Forgotten: cannot happen while this Echo lives; never resolve.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.echoes.forget(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn resolves(echo: &mut Echo) -> bool {
        tokio::time::timeout(Duration::from_millis(50), echo.arrived())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_echo_resolves_its_publish_only() {
        let echoes = Arc::new(Echoes::default());
        let mut one = echoes.expect("w1", 1);
        let mut two = echoes.expect("w1", 2);
        echoes.arrived("w2", 1);
        assert!(!resolves(&mut one).await, "another worker's seq 1");
        echoes.arrived("w1", 1);
        assert!(resolves(&mut one).await);
        assert!(!resolves(&mut two).await);
        echoes.arrived("w1", 2);
        assert!(resolves(&mut two).await);
    }

    #[tokio::test]
    async fn an_echo_before_the_wait_counts_and_a_dropped_wait_is_forgotten() {
        let echoes = Arc::new(Echoes::default());
        let mut early = echoes.expect("w1", 7);
        echoes.arrived("w1", 7);
        assert!(resolves(&mut early).await);
        drop(early);
        let given_up = echoes.expect("w1", 8);
        drop(given_up);
        assert_eq!(echoes.count.load(Ordering::Acquire), 0);
        assert!(echoes.lock().by_seq.is_empty());
        echoes.arrived("w1", 8);
    }
}
