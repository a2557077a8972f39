//! `fanout-bench`: the load tool of fanout, shipped beside the server the way `redis-benchmark`
//! ships beside `redis-server`. It opens WebSocket clients spread over worker URLs, publishes
//! realistic metrics at a fixed rate (through the HTTP API or straight into Redis), and reports
//! what arrived: counts, loss, duplicates, deliveries per second and end-to-end latency.
//!
//! It measures from the envelope's `published_at_us` (stamped by the server on an HTTP publish,
//! by the tool itself on a Redis publish) to the moment a client has the frame. It runs in its
//! own process so that its cost is not the server's; on a small machine it competes for the same
//! cores, which the report makes no attempt to hide.
//!
//! It talks to the server only through what any client sees (HTTP, WebSocket, the bus's Redis
//! channels), the domain's types and the project's client (`fanout-client`); it must never depend
//! on the server crate, and the server must never depend on it.
//!
//! Modules: `config` (the flags), `message` (the bench message, published and recognized),
//! `clients` (the WebSocket clients, `fanout_client::Connection`s; the one module that knows
//! them), `tally`
//! (counting what a client saw), `publisher` (the steady rate), `report` (table and JSON).

mod clients;
mod config;
mod limits;
mod message;
mod publisher;
mod report;
mod tally;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::clients::Ramp;
use crate::config::BenchConfig;
use crate::report::Report;

fn main() -> anyhow::Result<()> {
    let config = BenchConfig::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config)).map(drop)
}

/// Runs the benchmark, prints the report, and writes it as JSON when asked.
async fn run(config: BenchConfig) -> anyhow::Result<Report> {
    let open_files = limits::raise_open_files();
    let targets = config.targets()?;
    let clients = config.idle.unwrap_or(config.clients);
    eprintln!("bench: opening {clients} clients to {targets:?} (open files limit {open_files})");
    let (stop_tx, stop) = watch::channel(false);
    let ramp = Ramp {
        concurrency: config.connect_concurrency,
        source_addresses: config.source_addresses,
    };
    let started = Instant::now();
    let pool = clients::connect_all(&targets, clients, &ramp, stop).await;
    let connect_time = started.elapsed();
    eprintln!(
        "bench: {} of {clients} connected in {connect_time:.2?}",
        pool.connected()
    );

    let mut report = Report::new(&config, clients, pool.connected(), connect_time);
    if config.idle.is_some() {
        eprintln!("bench: holding them for {:?}", config.hold);
        tokio::time::sleep(config.hold).await;
        report.still_connected = pool.still_connected();
    } else {
        let published = publisher::run(&config, &targets).await?;
        report.published = published.accepted;
        report.refused = published.refused;
        report.publish_seconds = published.elapsed.as_secs_f64();
        let connected = pool.still_connected() as u64;
        let expected = published.accepted * connected;
        // Let what is in flight arrive: until every expected delivery is in, or 5 s of silence.
        pool.drain(expected, Duration::from_secs(5)).await;
        report.still_connected = connected as usize;
        report.expected = expected;
        report.first_to_last = pool.first_to_last();
    }
    let _ = stop_tx.send(true);
    let totals = pool.finish().await;
    report.absorb(&totals);
    report.print();
    if let Some(path) = &config.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}
