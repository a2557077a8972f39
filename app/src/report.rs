//! What a worker says about itself: `/healthz`, `/readyz` and `/metrics` (OpenMetrics text).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use fanout_domain::{PerformanceService, SubscriberState};
use fanout_http::WorkerReport;
use fanout_ws::ConnectionManager;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct WorkerStatus {
    pub manager: Arc<ConnectionManager>,
    pub service: Arc<PerformanceService>,
    pub publish_latency: Histogram,
    pub started: Instant,
}

impl WorkerReport for WorkerStatus {
    fn health(&self) -> serde_json::Value {
        let bus = self.manager.bus_status();
        let (queued, lost) = self.service.outbox_status();
        let status = match bus.state {
            SubscriberState::Idle | SubscriberState::Subscribed => "ok",
            SubscriberState::Connecting | SubscriberState::Reconnecting => "degraded",
        };
        serde_json::json!({
            "status": status,
            "worker": self.manager.worker(),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "draining": self.manager.is_draining(),
            "connections": self.manager.connections(),
            "bus": bus,
            "delivery": self.manager.stats(),
            "outbox": { "queued": queued, "lost": lost },
        })
    }

    fn readiness(&self) -> Result<(), String> {
        if self.manager.is_draining() {
            return Err("draining: the worker is shutting down".into());
        }
        if self.manager.is_full() {
            return Err("at its connection limit (--max-connections)".into());
        }
        let bus = self.manager.bus_status();
        match bus.state {
            SubscriberState::Idle | SubscriberState::Subscribed => Ok(()),
            SubscriberState::Connecting | SubscriberState::Reconnecting => Err(format!(
                "bus subscriber {:?}: {}",
                bus.state,
                bus.last_error.unwrap_or_default()
            )),
        }
    }

    fn prometheus(&self) -> String {
        let labels = [(
            Cow::Borrowed("worker"),
            Cow::Owned(self.manager.worker().to_string()),
        )];
        let mut registry = Registry::with_prefix_and_labels("fanout", labels.into_iter());
        let stats = self.manager.stats();
        let bus = self.manager.bus_status();
        let (outbox_queued, outbox_lost) = self.service.outbox_status();
        let (depth_max, depth_total) = self.manager.queue_depths();
        let gauge = |value: usize| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(
            "connections",
            "clients connected now (WebSocket and Server-Sent Events)",
            gauge(stats.connections),
        );
        registry.register(
            "clients_accepted",
            "WebSocket clients accepted since start",
            ConstCounter::new(stats.accepted),
        );
        registry.register(
            "messages_published",
            "Messages this worker handed to the bus",
            ConstCounter::new(self.service.published_total()),
        );
        registry.register(
            "bus_received",
            "Messages received from the bus",
            ConstCounter::new(bus.received),
        );
        registry.register(
            "bus_malformed",
            "Messages on the bus that were not valid envelopes (dropped)",
            ConstCounter::new(bus.malformed),
        );
        registry.register(
            "bus_lost",
            "Times this worker found alerts it could not deliver (trimmed from the log, log reset, lagging)",
            ConstCounter::new(bus.lost),
        );
        registry.register(
            "bus_reconnects",
            "Recoveries: times the bus subscriber was subscribed again after losing its connection",
            ConstCounter::new(bus.reconnects),
        );
        registry.register(
            "bus_failed_attempts",
            "Bus subscriber connection attempts that failed",
            ConstCounter::new(bus.failed_attempts),
        );
        registry.register(
            "bus_foreign_ids",
            "Alerts on the bus whose id the alert log did not assign (delivered without it)",
            ConstCounter::new(bus.foreign_ids),
        );
        registry.register(
            "bus_duplicates",
            "Second copies of a message the bus delivered again (dropped)",
            ConstCounter::new(bus.duplicates),
        );
        registry.register(
            "bus_late",
            "Metrics the bus delivered after newer ones of the same publisher (dropped)",
            ConstCounter::new(bus.late),
        );
        let subscribed = usize::from(bus.state == SubscriberState::Subscribed);
        registry.register(
            "bus_subscribed",
            "1 while the bus subscriber is subscribed",
            gauge(subscribed),
        );
        registry.register(
            "delivered",
            "Bus messages written to clients",
            ConstCounter::new(stats.delivered),
        );
        registry.register(
            "dropped_metrics",
            "Metrics frames dropped from full client queues (reason: slow client)",
            ConstCounter::new(stats.dropped_metrics),
        );
        registry.register(
            "slow_consumers_closed",
            "Clients closed with 4008 (slow consumer)",
            ConstCounter::new(stats.slow_consumers_closed),
        );
        registry.register(
            "subscription_groups",
            "Distinct subscription filters among the connected clients (one match and one encoding per message each)",
            gauge(stats.groups),
        );
        registry.register(
            "conflation_overflow",
            "Conflated metric values not kept because their group already had 10,000 series pending",
            ConstCounter::new(stats.conflation_overflow),
        );
        registry.register(
            "sse_hung_up",
            "SSE connections closed because the client read nothing of its stream's end for the client timeout",
            ConstCounter::new(stats.hung_up),
        );
        registry.register(
            "internal_errors",
            "Messages whose hand-over to the clients failed on a bug (contained; please report)",
            ConstCounter::new(stats.internal_errors),
        );
        registry.register(
            "outbox_queued",
            "Rule alerts waiting for the bus",
            gauge(outbox_queued),
        );
        registry.register(
            "outbox_lost",
            "Rule alerts lost to a full outbox",
            ConstCounter::new(outbox_lost),
        );
        registry.register(
            "client_queue_depth_max",
            "Frames in the deepest client queue",
            gauge(depth_max),
        );
        registry.register(
            "client_queue_depth_total",
            "Frames in all client queues",
            gauge(depth_total),
        );
        registry.register(
            "publish_duration_seconds",
            "Time to accept a publish through the HTTP API",
            self.publish_latency.clone(),
        );
        registry.register(
            "fanout_latency_seconds",
            "Time from publication to fan-out on this worker",
            self.manager.fanout_latency(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}
