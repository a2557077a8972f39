//! The one harness every scenario uses: start workers ([`start_worker`]: in-process or as real
//! `fanout` processes, on an in-memory bus or on Redis), connect real WebSocket clients (built on
//! `fanout-client`), publish over real HTTP, and wait on signals with timeouts that fail loudly.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod auth;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod http;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod sentinel;
pub mod sse;
pub mod worker;

pub use client::Client;
pub use worker::{clients, start_worker, InProcess, On, Process, ProcessRefusedIoUring};

use std::future::Future;
use std::time::Duration;

/// Every wait in the suite is bounded by this; a wait that runs out fails the test.
pub const WAIT: Duration = Duration::from_secs(15);

/// Waits until `condition` holds, checking every 20 ms; panics naming `what` after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `future`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A port that was free a moment ago on 127.0.0.1 (for servers that must keep their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
