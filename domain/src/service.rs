//! The domain service: what a worker does when something publishes metrics or an alert.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{
    Alert, Broadcaster, Clock, Envelope, Metric, Payload, RuleEngine, ServiceError, WorkerId,
};

/// What the bus accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The envelope's sequence number for this worker.
    pub seq: u64,
    /// The alert's id, for alerts.
    pub alert_id: Option<String>,
}

/// Publishes metrics and alerts for one worker, filling what publishers leave out, and raises the
/// alerts its rules derive from the metrics that pass through it.
pub struct PerformanceService {
    worker: WorkerId,
    broadcaster: Arc<dyn Broadcaster>,
    clock: Arc<dyn Clock>,
    /// Next sequence number; per worker, so the pair (origin, seq) names a message cluster-wide.
    next_seq: AtomicU64,
    /// Held only while observing a batch, never across an await.
    rules: Mutex<RuleEngine>,
}

impl PerformanceService {
    pub fn new(
        worker: WorkerId,
        broadcaster: Arc<dyn Broadcaster>,
        clock: Arc<dyn Clock>,
        rules: RuleEngine,
    ) -> Self {
        Self {
            worker,
            broadcaster,
            clock,
            next_seq: AtomicU64::new(1),
            rules: Mutex::new(rules),
        }
    }

    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// Publishes a batch of metrics to every worker as one message.
    pub async fn publish_metrics(
        &self,
        mut metrics: Vec<Metric>,
    ) -> Result<PublishReceipt, ServiceError> {
        for (index, metric) in metrics.iter().enumerate() {
            let path = if metrics.len() == 1 {
                String::new()
            } else {
                format!("[{index}]")
            };
            metric.validate(&path)?;
        }
        let now_us = self.clock.now_us();
        for metric in &mut metrics {
            metric.timestamp.get_or_insert(now_us / 1000);
            metric.source.get_or_insert_with(|| self.worker.clone());
        }
        self.publish(now_us, Payload::Metrics(metrics)).await
    }

    /// Publishes one alert to every worker.
    pub async fn publish_alert(&self, mut alert: Alert) -> Result<PublishReceipt, ServiceError> {
        alert.validate("")?;
        let now_us = self.clock.now_us();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let id = alert
            .id
            .get_or_insert_with(|| format!("{}-{seq}", self.worker))
            .clone();
        alert.timestamp.get_or_insert(now_us / 1000);
        alert.source.get_or_insert_with(|| self.worker.clone());
        let envelope = Envelope {
            origin: self.worker.clone(),
            seq,
            published_at_us: now_us,
            payload: Payload::Alert(alert),
        };
        self.broadcaster.publish(&envelope).await?;
        Ok(PublishReceipt {
            seq,
            alert_id: Some(id),
        })
    }

    /// The seed's entry point for metrics, kept for its callers: publishes the batch, then runs
    /// the alert rules over it and publishes every alert they raise.
    pub async fn send_metrics(&self, metrics: Vec<Metric>) -> Result<PublishReceipt, ServiceError> {
        let raised = self.observe(&metrics);
        let receipt = self.publish_metrics(metrics).await?;
        for alert in raised {
            self.publish_alert(alert).await?;
        }
        Ok(receipt)
    }

    /// The seed's entry point for alerts, kept for its callers.
    pub async fn send_alert(&self, alert: Alert) -> Result<PublishReceipt, ServiceError> {
        self.publish_alert(alert).await
    }

    fn observe(&self, metrics: &[Metric]) -> Vec<Alert> {
        // A panic while holding this lock cannot leave the streak map half-updated in a way that
        // matters (worst case one streak is off by one), so a poisoned lock is used as is.
        let mut engine = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        metrics.iter().flat_map(|m| engine.observe(m)).collect()
    }

    async fn publish(&self, now_us: u64, payload: Payload) -> Result<PublishReceipt, ServiceError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            origin: self.worker.clone(),
            seq,
            published_at_us: now_us,
            payload,
        };
        self.broadcaster.publish(&envelope).await?;
        Ok(PublishReceipt {
            seq,
            alert_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MockBroadcaster, MockClock, PublishError, Severity};

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
                        && metrics[0].timestamp == Some(5_000)
                        && metrics[1].timestamp == Some(42)
                        && metrics
                            .iter()
                            .all(|m| m.source.as_ref().map(WorkerId::as_str) == Some("w1"))
                }
                Payload::Alert(_) => false,
            })
            .times(1)
            .returning(|_| Ok(()));
        let mut kept = Metric::new("b", 2.0);
        kept.timestamp = Some(42);
        let receipt = service(broadcaster, &[])
            .send_metrics(vec![Metric::new("a", 1.0), kept])
            .await;
        assert_eq!(receipt.map(|r| r.seq), Ok(1));
    }

    #[tokio::test]
    async fn invalid_metric_is_refused_before_the_bus_sees_it() {
        let mut broadcaster = MockBroadcaster::new();
        broadcaster.expect_publish().never();
        let result = service(broadcaster, &[])
            .send_metrics(vec![Metric::new("a", 1.0), Metric::new("b", f64::NAN)])
            .await;
        let field = match result {
            Err(ServiceError::Invalid(invalid)) => invalid.field().to_owned(),
            other => panic!("expected an invalid message, got {other:?}"),
        };
        assert_eq!(field, "[1].value");
    }

    #[tokio::test]
    async fn a_rule_breached_for_n_samples_publishes_one_alert() {
        let mut broadcaster = MockBroadcaster::new();
        broadcaster
            .expect_publish()
            .withf(|e| matches!(e.payload, Payload::Metrics(_)))
            .times(3)
            .returning(|_| Ok(()));
        broadcaster
            .expect_publish()
            .withf(|e| match &e.payload {
                Payload::Alert(alert) => {
                    alert.severity == Severity::Critical
                        && alert.metric.as_deref() == Some("cpu")
                        && alert.value == Some(97.0)
                        && alert.id.as_deref() == Some(&format!("w1-{}", e.seq))
                }
                Payload::Metrics(_) => false,
            })
            .times(1)
            .returning(|_| Ok(()));
        let service = service(broadcaster, &["cpu>90,for=3,severity=critical"]);
        for value in [95.0, 96.0, 97.0] {
            let sent = service.send_metrics(vec![Metric::new("cpu", value)]).await;
            assert!(sent.is_ok(), "{sent:?}");
        }
    }

    #[tokio::test]
    async fn bus_failure_is_reported_to_the_caller() {
        let mut broadcaster = MockBroadcaster::new();
        broadcaster
            .expect_publish()
            .returning(|_| Err(PublishError::Unavailable("redis down".into())));
        let result = service(broadcaster, &[])
            .send_alert(Alert::new(Severity::Info, "hello"))
            .await;
        assert_eq!(
            result,
            Err(ServiceError::Publish(PublishError::Unavailable(
                "redis down".into()
            )))
        );
    }
}
