//! Sends the alerts that waited in the service's outbox once the bus takes them again.

use std::sync::Arc;
use std::time::Duration;

use fanout_domain::PerformanceService;
use tokio_util::sync::CancellationToken;

/// How often the outbox is tried while it holds alerts (and checked while it is empty).
const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Runs until `stop` is cancelled.
pub async fn run(service: Arc<PerformanceService>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported_lost = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (queued, lost) = service.outbox_status();
        if lost > reported_lost {
            tracing::error!(
                lost = lost - reported_lost,
                lost_total = lost,
                "outbox full: alerts raised by this worker were lost"
            );
            reported_lost = lost;
        }
        if queued == 0 {
            continue;
        }
        match service.flush_outbox().await {
            Ok(sent) => tracing::info!(sent, "outbox: queued alerts published"),
            Err(error) => tracing::debug!(%error, queued, "outbox: bus still unavailable"),
        }
    }
}
