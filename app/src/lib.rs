//! The composition root of fanout: configuration, logging, the built-in monitor, one worker's
//! wiring ([`start`]) and the supervisor that runs several worker processes.
//!
//! This is the only crate that picks concrete adapters. Tests start workers through [`start`]
//! (in-process, on port 0) or run the `fanout` binary.

pub mod config;
pub mod config_file;
mod http_server;
pub mod limits;
mod monitor;
mod outbox;
mod report;
pub mod supervisor;
pub mod telemetry;
mod worker;

pub use config::{BusKind, Cli, WorkerConfig};
pub use worker::{check_access, default_worker_id, start, Bus, RunningWorker};
