//! The built-in performance monitor: samples this process and host every interval and sends the
//! samples through the domain service (which publishes them and runs the alert rules), so a
//! lone `fanout` already shows live data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_domain::{Metric, PerformanceService};
use fanout_ws::ConnectionManager;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

/// Runs until `stop` is cancelled.
pub async fn run(
    service: Arc<PerformanceService>,
    manager: Arc<ConnectionManager>,
    interval: Duration,
    stop: CancellationToken,
) {
    let pid = Pid::from_u32(std::process::id());
    let mut system = System::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_delivered = manager.stats().delivered;
    let mut last_tick = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        system.refresh_cpu_usage();
        system.refresh_memory();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let stats = manager.stats();
        let elapsed = last_tick.elapsed().as_secs_f64().max(1e-3);
        let delivered_per_second = stats.delivered.saturating_sub(last_delivered) as f64 / elapsed;
        last_delivered = stats.delivered;
        last_tick = Instant::now();

        let worker = service.worker().to_string();
        let mut readings = vec![
            (
                "host.cpu_percent",
                f64::from(system.global_cpu_usage()),
                Some("%"),
            ),
            (
                "host.memory_used_percent",
                memory_percent(&system),
                Some("%"),
            ),
            ("fanout.connections", stats.connections as f64, None),
            (
                "fanout.delivered_per_second",
                delivered_per_second,
                Some("1/s"),
            ),
        ];
        if let Some(process) = system.process(pid) {
            readings.push((
                "process.cpu_percent",
                f64::from(process.cpu_usage()),
                Some("%"),
            ));
            readings.push(("process.rss_bytes", process.memory() as f64, Some("B")));
        }
        // A reading that is not a valid metric (a non-finite value the OS reported) is skipped.
        let samples = readings
            .into_iter()
            .filter_map(|(name, value, unit)| {
                let metric = Metric::new(name, value).ok()?;
                let metric = match unit {
                    Some(unit) => metric.with_unit(unit).ok()?,
                    None => metric,
                };
                metric.with_label("worker", worker.clone()).ok()
            })
            .collect();
        match service.send_metrics(samples).await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("monitor: publishing works again");
            }
            Ok(_) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "monitor: cannot publish samples (logged once until it works again)");
            }
            Err(_) => {}
        }
    }
}

fn memory_percent(system: &System) -> f64 {
    let total = system.total_memory();
    if total == 0 {
        return 0.0;
    }
    system.used_memory() as f64 * 100.0 / total as f64
}
