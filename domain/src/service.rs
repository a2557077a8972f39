//! The domain service: what a worker does when something publishes metrics or an alert.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{
    Alert, Broadcaster, Clock, Envelope, LogId, Metric, Outbox, Payload, PublishError, RuleEngine,
    WorkerId,
};

/// What the bus accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The envelope's sequence number for this worker.
    pub seq: u64,
    /// The alert's id, for alerts.
    pub alert_id: Option<String>,
    /// The alert's position in the bus's alert log, for alerts.
    pub log_id: Option<LogId>,
}

/// What became of an alert raised by a rule inside this worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Raised {
    /// The bus accepted it.
    Published,
    /// The bus refused it; it waits in the outbox, in order.
    Queued,
    /// The outbox was full: lost, and counted.
    Lost,
}

/// Publishes metrics and alerts for one worker, filling what publishers leave out (and setting
/// `source`, which belongs to the server, whatever the caller put there), and raises the alerts
/// its rules derive from the metrics that pass through it.
pub struct PerformanceService {
    worker: WorkerId,
    broadcaster: Arc<dyn Broadcaster>,
    clock: Arc<dyn Clock>,
    /// Next sequence number; per worker, so the pair (origin, seq) names a message cluster-wide.
    next_seq: AtomicU64,
    /// Held only while observing a batch, never across an await.
    rules: Mutex<RuleEngine>,
    /// Rule alerts waiting for the bus. Held only for a push or a pop, never across an await.
    outbox: Mutex<Outbox>,
    published: AtomicU64,
}

impl PerformanceService {
    /// The service of `worker`: publishes through `broadcaster`, reads the time from `clock`,
    /// runs `rules` over every metric sent through it, and keeps at most `outbox_capacity` rule
    /// alerts while the bus refuses them. Sequence numbers start at 1.
    pub fn new(
        worker: WorkerId,
        broadcaster: Arc<dyn Broadcaster>,
        clock: Arc<dyn Clock>,
        rules: RuleEngine,
        outbox_capacity: usize,
    ) -> Self {
        Self {
            worker,
            broadcaster,
            clock,
            next_seq: AtomicU64::new(1),
            rules: Mutex::new(rules),
            outbox: Mutex::new(Outbox::new(outbox_capacity)),
            published: AtomicU64::new(0),
        }
    }

    /// The worker it publishes as: the `origin` and `source` of everything it sends.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// Publishes a batch of metrics to every worker as one message (the seed's entry point,
    /// kept for its callers): runs the alert rules over the batch, publishes it, and raises every
    /// alert the rules produced — through the outbox, so they are kept even when the metrics
    /// themselves could not be published.
    pub async fn send_metrics(&self, metrics: Vec<Metric>) -> Result<PublishReceipt, PublishError> {
        let raised = {
            let mut engine = lock(&self.rules);
            metrics
                .iter()
                .flat_map(|m| engine.observe(m))
                .collect::<Vec<_>>()
        };
        let published = self.publish_batch(metrics).await;
        for alert in raised {
            self.raise_alert(alert).await;
        }
        published
    }

    /// Publishes one alert to every worker (the seed's entry point, kept for its callers). A
    /// refusal is returned to the caller (who still holds the alert and may retry): nothing is
    /// queued on its behalf.
    pub async fn send_alert(&self, alert: Alert) -> Result<PublishReceipt, PublishError> {
        let envelope = self.alert_envelope(alert);
        let log_id = self.publish_envelope(&envelope).await?;
        Ok(PublishReceipt {
            seq: envelope.seq,
            alert_id: alert_id_of(&envelope),
            log_id,
        })
    }

    async fn publish_batch(
        &self,
        mut metrics: Vec<Metric>,
    ) -> Result<PublishReceipt, PublishError> {
        let now_us = self.clock.now_us();
        for metric in &mut metrics {
            metric.fill_timestamp(Some(now_us / 1000));
            // Always this worker: a publisher that could name another worker as the source would
            // overwrite that worker's series in every snapshot.
            metric.set_source(self.worker.clone());
        }
        let envelope = self.envelope(now_us, Payload::Metrics(metrics));
        self.publish_envelope(&envelope).await?;
        Ok(PublishReceipt {
            seq: envelope.seq,
            alert_id: None,
            log_id: None,
        })
    }

    /// Publishes an alert raised inside this worker; when the bus refuses it (or older ones still
    /// wait), it goes to the outbox and [`PerformanceService::flush_outbox`] sends it later.
    pub async fn raise_alert(&self, alert: Alert) -> Raised {
        let envelope = self.alert_envelope(alert);
        if lock(&self.outbox).is_empty() && self.publish_envelope(&envelope).await.is_ok() {
            return Raised::Published;
        }
        if lock(&self.outbox).push(envelope) {
            Raised::Queued
        } else {
            Raised::Lost
        }
    }

    /// Publishes what waits in the outbox, oldest first, until it is empty or the bus refuses.
    /// Returns how many went out. Call it from one task only.
    pub async fn flush_outbox(&self) -> Result<usize, PublishError> {
        let mut sent = 0;
        loop {
            let Some(front) = lock(&self.outbox).front().cloned() else {
                return Ok(sent);
            };
            self.publish_envelope(&front).await?;
            lock(&self.outbox).pop_front();
            sent += 1;
        }
    }

    /// Alerts waiting in the outbox, and alerts lost because it was full.
    pub fn outbox_status(&self) -> (usize, u64) {
        let outbox = lock(&self.outbox);
        (outbox.len(), outbox.lost())
    }

    /// Messages this worker handed to the bus.
    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    async fn publish_envelope(&self, envelope: &Envelope) -> Result<Option<LogId>, PublishError> {
        let published = self.broadcaster.publish(envelope).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(published)
    }

    fn alert_envelope(&self, mut alert: Alert) -> Envelope {
        let now_us = self.clock.now_us();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        alert.fill_id(|| format!("{}-{seq}", self.worker));
        alert.fill_timestamp(Some(now_us / 1000));
        // Always this worker, as for metrics.
        alert.set_source(self.worker.clone());
        Envelope {
            id: None,
            epoch: None,
            origin: self.worker.clone(),
            seq,
            published_at_us: now_us,
            payload: Payload::Alert(alert),
        }
    }

    fn envelope(&self, now_us: u64, payload: Payload) -> Envelope {
        Envelope {
            id: None,
            epoch: None,
            origin: self.worker.clone(),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            published_at_us: now_us,
            payload,
        }
    }
}

fn alert_id_of(envelope: &Envelope) -> Option<String> {
    match &envelope.payload {
        Payload::Alert(alert) => alert.id().map(str::to_owned),
        Payload::Metrics(_) => None,
    }
}

/// These locks guard plain data whose every update is a single step, so a panic elsewhere while
/// one was held cannot leave it inconsistent: a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Valid;
    use crate::{MockBroadcaster, MockClock, PublishError, Severity};

    impl PerformanceService {
        fn observe_only(&self, metrics: &[Metric]) -> usize {
            let mut engine = lock(&self.rules);
            metrics.iter().map(|m| engine.observe(m).len()).sum()
        }
    }

    fn clock_at(us: u64) -> Arc<MockClock> {
        let mut clock = MockClock::new();
        clock.expect_now_us().return_const(us);
        Arc::new(clock)
    }

    fn service(broadcaster: MockBroadcaster, rules: &[&str]) -> PerformanceService {
        let rules = rules
            .iter()
            .map(|r| r.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        PerformanceService::new(
            WorkerId::new("w1").unwrap_or_else(|e| panic!("{e}")),
            Arc::new(broadcaster),
            clock_at(5_000_000),
            RuleEngine::new(rules),
            2,
        )
    }

    #[tokio::test]
    async fn send_metrics_publishes_one_envelope_with_server_filled_fields() {
        let mut broadcaster = MockBroadcaster::new();
        broadcaster
            .expect_publish()
            .withf(|envelope| match &envelope.payload {
                Payload::Metrics(metrics) => {
                    envelope.seq == 1
                        && envelope.origin.as_str() == "w1"
                        && envelope.published_at_us == 5_000_000
                        && metrics.len() == 2
                        && metrics[0].timestamp() == Some(5_000)
                        && metrics[1].timestamp() == Some(42)
                        && metrics
                            .iter()
                            .all(|m| m.source().map(WorkerId::as_str) == Some("w1"))
                }
                Payload::Alert(_) => false,
            })
            .times(1)
            .returning(|_| Ok(None));
        let kept = Metric::new("b", 2.0).valid().with_timestamp(42);
        let receipt = service(broadcaster, &[])
            .send_metrics(vec![Metric::new("a", 1.0).valid(), kept])
            .await;
        assert_eq!(receipt.ok().map(|r| r.seq), Some(1));
    }

    #[tokio::test]
    async fn source_is_always_the_publishing_worker() {
        let forged = WorkerId::new("w9").unwrap_or_else(|e| panic!("{e}"));
        let from_w1 = |source: Option<&WorkerId>| source.map(WorkerId::as_str) == Some("w1");
        let mut broadcaster = MockBroadcaster::new();
        broadcaster
            .expect_publish()
            .withf(move |envelope| match &envelope.payload {
                Payload::Metrics(metrics) => metrics.iter().all(|m| from_w1(m.source())),
                Payload::Alert(alert) => from_w1(alert.source()),
            })
            .times(3)
            .returning(|_| Ok(None));
        let service = service(broadcaster, &[]);
        let mut metric = Metric::new("cpu", 1.0).valid();
        metric.set_source(forged.clone());
        let mut alert = Alert::new(Severity::Info, "forged").valid();
        alert.set_source(forged);
        assert!(service.send_metrics(vec![metric]).await.is_ok());
        assert!(service.send_alert(alert.clone()).await.is_ok());
        assert_eq!(service.raise_alert(alert).await, Raised::Published);
    }

    #[tokio::test]
    async fn a_rule_breached_for_n_samples_publishes_one_alert() {
        let mut broadcaster = MockBroadcaster::new();
        broadcaster
            .expect_publish()
            .withf(|e| matches!(e.payload, Payload::Metrics(_)))
            .times(3)
            .returning(|_| Ok(None));
        broadcaster
            .expect_publish()
            .withf(|e| match &e.payload {
                Payload::Alert(alert) => {
                    alert.severity() == Severity::Critical
                        && alert.metric() == Some("cpu")
                        && alert.value() == Some(97.0)
                        && alert.id() == Some(&format!("w1-{}", e.seq))
                }
                Payload::Metrics(_) => false,
            })
            .times(1)
            .returning(|_| Ok(None));
        let service = service(broadcaster, &["cpu>90,for=3,severity=critical"]);
        for value in [95.0, 96.0, 97.0] {
            let sent = service
                .send_metrics(vec![Metric::new("cpu", value).valid()])
                .await;
            assert!(sent.is_ok(), "{sent:?}");
        }
    }

    #[tokio::test]
    async fn rule_alerts_wait_in_the_outbox_while_the_bus_is_down_and_go_out_in_order() {
        let mut broadcaster = MockBroadcaster::new();
        let mut sequence = mockall::Sequence::new();
        // Down for the metrics batch and the first alert...
        broadcaster
            .expect_publish()
            .times(2)
            .in_sequence(&mut sequence)
            .returning(|_| Err(PublishError::unavailable("down")));
        // ...back for the flush, which must send the queued alerts oldest first.
        for expected in [
            "cpu is 95 (> 90) for 1 sample",
            "cpu is 96 (> 90) for 1 sample",
        ] {
            broadcaster
                .expect_publish()
                .times(1)
                .in_sequence(&mut sequence)
                .withf(move |e| matches!(&e.payload, Payload::Alert(a) if a.message() == expected))
                .returning(|_| Ok(Some(LogId::new(1, 0))));
        }
        let service = service(broadcaster, &["cpu>90"]);
        let first = service
            .send_metrics(vec![Metric::new("cpu", 95.0).valid()])
            .await;
        assert!(
            matches!(first, Err(PublishError::Unavailable { .. })),
            "{first:?}"
        );
        assert_eq!(service.outbox_status(), (1, 0));
        // The rule re-arms after one sample below the threshold; this alert queues behind.
        let _ = service.observe_only(&[Metric::new("cpu", 10.0).valid()]);
        let raised = service
            .raise_alert(Alert::new(Severity::Warning, "cpu is 96 (> 90) for 1 sample").valid())
            .await;
        assert_eq!(raised, Raised::Queued);
        // A third one overflows the outbox of 2 and is counted as lost.
        let lost = service
            .raise_alert(Alert::new(Severity::Info, "overflow").valid())
            .await;
        assert_eq!(lost, Raised::Lost);
        assert_eq!(service.outbox_status(), (2, 1));
        assert_eq!(service.flush_outbox().await.ok(), Some(2));
        assert_eq!(service.outbox_status(), (0, 1));
    }

    #[tokio::test]
    async fn bus_failure_is_reported_to_the_caller() {
        let mut broadcaster = MockBroadcaster::new();
        broadcaster
            .expect_publish()
            .returning(|_| Err(PublishError::unavailable("redis down")));
        let result = service(broadcaster, &[])
            .send_alert(Alert::new(Severity::Info, "hello").valid())
            .await;
        assert_eq!(
            result.err().map(|e| e.to_string()).as_deref(),
            Some("bus unavailable: redis down")
        );
    }
}
