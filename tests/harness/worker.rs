//! The one way a scenario starts a worker: [`start_worker`], in this process ([`InProcess`]: a
//! [`RunningWorker`] from `fanout_app::start`) or as a real `fanout` process ([`Process`]: a
//! [`WorkerProcess`]), on an in-memory bus or on Redis, configured with the `fanout` command line
//! in both cases. Each returns the handle its placement has (an in-process worker's connection
//! count and shutdown; a process's pid, log and `kill -9`); both have the worker's address.

use std::future::Future;
use std::net::SocketAddr;

use clap::Parser;
use fanout_app::{Bus, Cli, RunningWorker};
use fanout_memory::MemoryBus;

use super::process::WorkerProcess;
use super::Client;

/// The bus a worker joins.
#[derive(Clone, Copy)]
pub enum On<'a> {
    /// An in-memory bus shared with the other in-process workers given the same one.
    SharedMemory(&'a MemoryBus),
    /// The worker's own in-memory bus (`--bus memory`).
    OwnMemory,
    /// Redis at this URL (`--bus redis --redis-url URL`).
    Redis(&'a str),
}

/// Where a worker runs; decides the handle [`start_worker`] returns.
pub trait Placement {
    type Worker;
    fn start(id: &str, bus: On<'_>, args: &[&str]) -> impl Future<Output = Self::Worker>;
}

/// In this process, through `fanout_app::start`.
pub struct InProcess;

/// A `fanout` process of the built binary; killed when its handle drops.
pub struct Process;

/// A [`Process`] the kernel refuses `io_uring`, as Docker's default seccomp profile does
/// ([`WorkerProcess::start_refusing_io_uring`]).
pub struct ProcessRefusedIoUring;

/// Starts worker `id` on `bus`, listening on an ephemeral port of 127.0.0.1 unless `args` has
/// `--listen`, with the built-in monitor off unless `args` has `--metrics-interval` (its samples
/// would mix with the test's own messages). `args` are `fanout` command-line flags.
pub async fn start_worker<P: Placement>(id: &str, bus: On<'_>, args: &[&str]) -> P::Worker {
    P::start(id, bus, args).await
}

/// The command line of a worker: the defaults above, the bus, then `args`.
fn command_line(id: &str, bus: On<'_>, args: &[&str]) -> Vec<String> {
    let mut line: Vec<String> = vec!["--worker-id".into(), id.into()];
    if !args.contains(&"--listen") {
        line.extend(["--listen".into(), "127.0.0.1:0".into()]);
    }
    if !args.contains(&"--metrics-interval") {
        line.extend(["--metrics-interval".into(), "0s".into()]);
    }
    match bus {
        On::SharedMemory(_) | On::OwnMemory => line.extend(["--bus".into(), "memory".into()]),
        On::Redis(url) => line.extend([
            "--bus".into(),
            "redis".into(),
            "--redis-url".into(),
            url.into(),
        ]),
    }
    line.extend(args.iter().map(|arg| (*arg).to_owned()));
    line
}

impl Placement for InProcess {
    type Worker = RunningWorker;

    async fn start(id: &str, bus: On<'_>, args: &[&str]) -> RunningWorker {
        let line = command_line(id, bus, args);
        let cli = Cli::try_parse_from(std::iter::once("fanout".to_owned()).chain(line))
            .unwrap_or_else(|e| panic!("worker {id}: bad arguments: {e}"));
        let config = cli.worker;
        let bus = match bus {
            On::SharedMemory(bus) => Bus::Memory(bus.clone()),
            On::OwnMemory | On::Redis(_) => {
                Bus::from_config(&config).unwrap_or_else(|e| panic!("worker {id}: {e:#}"))
            }
        };
        fanout_app::start(&config, bus)
            .await
            .unwrap_or_else(|e| panic!("worker {id} did not start: {e:#}"))
    }
}

impl Placement for Process {
    type Worker = WorkerProcess;

    async fn start(id: &str, bus: On<'_>, args: &[&str]) -> WorkerProcess {
        let line = process_line(id, bus, args);
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        WorkerProcess::start(id, &line).await
    }
}

impl Placement for ProcessRefusedIoUring {
    type Worker = WorkerProcess;

    async fn start(id: &str, bus: On<'_>, args: &[&str]) -> WorkerProcess {
        let line = process_line(id, bus, args);
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        WorkerProcess::start_refusing_io_uring(id, &line).await
    }
}

/// The command line of a worker process (a memory bus cannot be shared with another process).
fn process_line(id: &str, bus: On<'_>, args: &[&str]) -> Vec<String> {
    assert!(
        !matches!(bus, On::SharedMemory(_)),
        "worker {id}: a memory bus cannot be shared with another process"
    );
    command_line(id, bus, args)
}

/// A started worker's address, whichever its placement.
pub trait Address {
    fn address(&self) -> SocketAddr;
}

impl Address for RunningWorker {
    fn address(&self) -> SocketAddr {
        self.addr()
    }
}

impl Address for WorkerProcess {
    fn address(&self) -> SocketAddr {
        self.addr
    }
}

/// `count` clients of `worker`, each greeted (past `hello` and `snapshot`).
pub async fn clients(worker: &impl Address, count: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(Client::connect(worker.address()).await);
    }
    clients
}

/// The worker's WebSocket URL, as `fanout-client` takes it.
pub fn ws_url(worker: &impl Address) -> String {
    format!("ws://{}", worker.address())
}

/// The worker's HTTP URL, as `fanout-client`'s `Publisher` takes it.
pub fn http_url(worker: &impl Address) -> String {
    format!("http://{}", worker.address())
}
