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
//! Modules: `config` (the flags), `workload` (the series published and the selectors clients
//! subscribe with, and so what each client is owed), `message` (the bench message, published
//! and recognized),
//! `clients` (the WebSocket clients, `fanout_client::Connection`s; the one module that knows
//! them), `sources` (the local addresses they connect from), `tally`
//! (counting what a client saw), `publisher` (the steady rate), `report` (table and JSON),
//! `rendezvous` (one run split over several load processes, `--loader`) and `merge` (their
//! reports made one, `--merge`).
//!
//! The crate has a second binary, `fanout-floor` (`src/floor/`), the floor of issue 14: a tiny
//! server that writes each message, framed once, to every client with one write, to measure
//! fanout's cost per delivery against. The tool publishes to it with `--publish floor`; the two
//! share no code but the open-files limit.

mod arrival;
mod clients;
mod config;
mod limits;
mod merge;
mod message;
mod publisher;
mod rendezvous;
mod report;
mod sources;
mod tally;
mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::clients::Ramp;
use crate::config::BenchConfig;
use crate::message::now_us;
use crate::publisher::Published;
use crate::rendezvous::Rendezvous;
use crate::report::{ForMerge, Report};
use crate::tally::histogram_pairs;
use crate::workload::{Owed, Workload};

/// How long the drain waits for more when nothing arrives (at least; conflating clients wait two
/// intervals more).
const QUIET: Duration = Duration::from_secs(5);

/// How long a loader waits for the others' clients, and (beyond `--duration`) for loader 1's
/// publishing, before it gives up.
const RENDEZVOUS_LIMIT: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    let config = BenchConfig::parse();
    if !config.merge.is_empty() {
        let report = merge::merge(&merge::read(&config.merge)?)?;
        return finish(&config, &report);
    }
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
    let workload = Arc::new(config.workload()?);
    let clients = config.idle.unwrap_or(config.clients);
    let rendezvous = match (config.loader, &config.rendezvous) {
        (Some(loader), Some(dir)) => Some(Rendezvous::new(dir, loader)?),
        _ => None,
    };
    eprintln!(
        "bench: opening {clients} clients to {targets:?} from {} (open files limit {open_files})",
        config.source_addresses
    );
    let (stop_tx, stop) = watch::channel(false);
    let ramp = Ramp {
        concurrency: config.connect_concurrency,
        rate: config.connect_rate,
        sources: config.source_addresses.clone(),
    };
    let (started, started_unix_us) = (Instant::now(), now_us());
    let pool = clients::connect_all(&targets, clients, &ramp, &workload, stop).await;
    let connect_time = started.elapsed();
    let connect_ended_unix_us = now_us();
    eprintln!(
        "bench: {} of {clients} connected in {connect_time:.2?}",
        pool.connected()
    );
    if let Some(rendezvous) = &rendezvous {
        rendezvous.ready(pool.connected())?;
    }

    let mut report = Report::new(&config, &workload, clients, pool.connected(), connect_time);
    report.connect_latency_ms = report::Latency::of(pool.connect_latency_us());
    // What a client of each selector is owed; nothing in idle mode.
    let mut owed: Vec<Vec<u64>> = Vec::new();
    // Items the tool published are numbered below this; nothing in idle mode.
    let mut published_items = 0;
    if config.idle.is_some() {
        eprintln!("bench: holding them for {:?}", config.hold);
        tokio::time::sleep(config.hold).await;
        report.still_connected = pool.still_connected();
    } else {
        let published = publish(&config, &workload, &targets, rendezvous.as_ref()).await?;
        report.published = published.accepted;
        report.refused = published.refused.len() as u64;
        report.publish_seconds = published.elapsed.as_secs_f64();
        owed = (0..workload.selectors().max(1) as usize)
            .map(|selector| workload.owed_items(selector, published.total, &published.refused))
            .collect();
        published_items = workload.items(published.total).start;
        report.still_connected = pool.still_connected();
        // Let what is in flight arrive: until every item owed to a connected client is in (when
        // clients are owed every item and nothing was refused: a refused publish may still have
        // been delivered, and its items would fill the count early), or a quiet spell.
        let (target, quiet) = match workload.owed() {
            Owed::EveryItem if published.refused.is_empty() => {
                let items = owed.iter().enumerate();
                let target = items
                    .map(|(selector, items)| (pool.connected_with(selector) * items.len()) as u64);
                (Some(target.sum()), QUIET)
            }
            Owed::EveryItem => (None, QUIET),
            Owed::LatestValues => {
                let interval = workload.interval().unwrap_or_default();
                (None, QUIET.max(interval * 2 + Duration::from_secs(1)))
            }
        };
        pool.drain(target, quiet).await;
        // `scripts/bench` reads the workers' CPU at this line and at `bench: publishing`.
        eprintln!("bench: drained");
        report.first_to_last = pool.first_to_last();
    }
    let _ = stop_tx.send(true);
    let receipts_unix_us = pool.receipts_unix_us();
    let connect_latency_us = histogram_pairs(pool.connect_latency_us());
    let totals = pool.finish(&owed, published_items).await;
    report.absorb(&totals);
    if let Some(rendezvous) = &rendezvous {
        report.loader = Some(rendezvous.loader().to_string());
        report.for_merge = Some(ForMerge {
            connect_started_unix_us: started_unix_us,
            connect_ended_unix_us,
            receipts_unix_us,
            latency_us: histogram_pairs(&totals.latency_us),
            arrival_latency_us: histogram_pairs(&totals.arrival_latency_us),
            connect_latency_us,
        });
    }
    finish(&config, &report)?;
    Ok(report)
}

/// What was published: by this process, or with `--loader` by loader 1 (which waits for every
/// loader's clients first; the others wait for its record while their clients receive).
async fn publish(
    config: &BenchConfig,
    workload: &Arc<Workload>,
    targets: &[std::net::SocketAddr],
    rendezvous: Option<&Rendezvous>,
) -> anyhow::Result<Published> {
    let Some(rendezvous) = rendezvous else {
        return publisher::run(config, workload, targets).await;
    };
    if !rendezvous.loader().publishes() {
        eprintln!("bench: receiving what loader 1 publishes");
        return rendezvous
            .published(config.duration + RENDEZVOUS_LIMIT)
            .await;
    }
    eprintln!("bench: waiting for every loader's clients");
    rendezvous.all_ready(RENDEZVOUS_LIMIT).await?;
    let published = publisher::run(config, workload, targets).await?;
    rendezvous.announce(&published)?;
    Ok(published)
}

/// Prints the report, and writes it as JSON when asked.
fn finish(config: &BenchConfig, report: &Report) -> anyhow::Result<()> {
    report.print();
    if let Some(path) = &config.json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
