//! `fanout-floor`: the least any server can spend per delivery on this machine, to measure
//! fanout against (issue 14, "the floor").
//!
//! A tiny WebSocket server for the load tool's clients. It answers their upgrade with the real
//! handshake, then, for each message the tool publishes to it (`fanout-bench --publish floor`,
//! over the control connection, see `control`), builds one WebSocket frame — header and payload,
//! unmasked, the exact `metrics` frame text a worker would write — and writes it to every client
//! with one `write` each, from a plain loop on a few threads (`fan_out`). No per-client framing,
//! queue, task or wake-up: what is left is the kernel's `write` and a loop around it.
//!
//! It is a binary of its own, not a mode of `fanout-bench`, because it is a server: it must run
//! in its own process (so `scripts/bench` reads its CPU from `/proc` exactly as the workers'),
//! with its own flags and lifetime (until killed), and it shares nothing with the tool but the
//! line protocol of the control connection. It must never do per-client work on the hot path
//! that a real server could avoid, or it stops being a floor.

mod control;
mod fan_out;
mod frame;
// The tool's own, shared by path: the floor also holds thousands of sockets.
#[path = "../limits.rs"]
mod limits;
mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::fan_out::FanOut;

/// fanout-floor: writes each message, framed once, to every WebSocket client with one write.
#[derive(Clone, Debug, Parser)]
#[command(name = "fanout-floor", version, long_about = None)]
struct FloorConfig {
    /// Where WebSocket clients connect (any path is accepted).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Where the load tool publishes (`fanout-bench --publish floor --floor ADDR`).
    #[arg(long, default_value = "127.0.0.1:8079")]
    control: SocketAddr,

    /// Fan-out threads, the clients spread over them round-robin (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let config = FloorConfig::parse();
    let open_files = limits::raise_open_files();
    let threads = match config.threads {
        Some(threads) => threads.max(1),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let fan_outs = (0..threads)
        .map(|index| FanOut::start(format!("fan-out-{index}")))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot start the fan-out threads")?;
    let fan_outs = Arc::new(fan_outs);
    let control = std::net::TcpListener::bind(config.control)
        .with_context(|| format!("cannot listen on --control {}", config.control))?;
    // Handshakes and the watch for each client's end: one thread is plenty, and leaves the
    // cores to the fan-out threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
    // `scripts/bench` waits for this line: both addresses are bound.
    eprintln!(
        "floor: listening on {} (control {}), {threads} fan-out threads, open files limit {open_files}",
        config.listen, config.control
    );
    let relay_to = Arc::clone(&fan_outs);
    let relay = std::thread::Builder::new()
        .name("control".to_owned())
        .spawn(move || control::serve(&control, &relay_to))
        .context("cannot start the control thread")?;
    runtime.spawn(listener::serve(listener, fan_outs));
    // The control thread ends only when a fan-out thread has: then the floor is broken.
    let ended = runtime.block_on(runtime.spawn_blocking(move || relay.join()));
    match ended {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => Err(error.into()),
        _ => anyhow::bail!("the control thread panicked"),
    }
}
