//! `fanout bench`: the load tool. It opens WebSocket clients spread over worker URLs, publishes
//! realistic metrics at a fixed rate (through the HTTP API or straight into Redis), and reports
//! what arrived: counts, loss, duplicates, deliveries per second and end-to-end latency.
//!
//! It measures from the envelope's `published_at_us` (stamped by the server on an HTTP publish,
//! by the tool itself on a Redis publish) to the moment a client has the frame. It runs in its
//! own process so that its cost is not the server's; on a small machine it competes for the same
//! cores, which the report makes no attempt to hide.

mod clients;
mod publisher;
mod report;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::sync::watch;

use crate::limits;

pub use report::Report;

/// Options of `fanout bench`.
#[derive(Clone, Debug, Args)]
pub struct BenchConfig {
    /// Worker base URL, repeatable; clients and publishes are spread over them round-robin.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,

    /// WebSocket clients to open.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Messages published per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,

    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Publish through the HTTP API, or straight into Redis.
    #[arg(long, value_enum, default_value_t = PublishVia::Http)]
    pub publish: PublishVia,

    /// Redis URL for `--publish redis`: the global `--redis-url` (the workers' flags are global,
    /// so bench cannot declare its own), filled in by `main`.
    #[arg(skip)]
    pub redis_url: String,

    /// Clients connecting at once during the ramp.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Idle mode: open this many clients, publish nothing, hold them for `--hold`, report the
    /// connect time (for memory measurements of the server).
    #[arg(long)]
    pub idle: Option<usize>,

    /// How long idle clients are held.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub hold: Duration,

    /// Local addresses 127.0.0.1 … 127.0.0.N to connect from (each gives ~28k ports).
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    Http,
    Redis,
}

/// The WebSocket address behind a worker base URL.
fn websocket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = url
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default();
    authority
        .parse()
        .with_context(|| format!("--url {url}: expected http://IP:PORT"))
}

/// Runs the benchmark and prints the report.
pub async fn run(config: BenchConfig) -> anyhow::Result<Report> {
    let open_files = limits::raise_open_files();
    let targets: Vec<SocketAddr> = config
        .urls
        .iter()
        .map(|url| websocket_addr(url))
        .collect::<anyhow::Result<_>>()?;
    let clients = config.idle.unwrap_or(config.clients);
    eprintln!("bench: opening {clients} clients to {targets:?} (open files limit {open_files})");
    let (stop_tx, stop) = watch::channel(false);
    let ramp = Instant::now();
    let pool = clients::connect_all(&targets, clients, &config, stop.clone()).await;
    let connect_time = ramp.elapsed();
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
    report.absorb(totals);
    report.print();
    if let Some(path) = &config.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}
