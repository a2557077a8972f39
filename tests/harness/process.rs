//! Real `fanout` worker processes of the built binary.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::within;

/// A `fanout` process; killed when dropped.
pub struct WorkerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub id: String,
    /// Every line it logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The `fanout` binary: `FANOUT_TEST_BIN` when set (a copy of this checkout's build, for when
/// several checkouts share one target directory and overwrite each other's `target/debug/fanout`),
/// else the one Cargo built for this test.
fn binary() -> std::ffi::OsString {
    std::env::var_os("FANOUT_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_fanout").into())
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("FANOUT_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Collects the process's log lines; reports the address of the first "worker listening" line.
fn collect_log(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, oneshot::Receiver<SocketAddr>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (listening_tx, listening) = oneshot::channel();
    let stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| unreachable!("stderr is piped"));
    let lines_log = Arc::clone(&log);
    tokio::spawn(async move {
        let mut listening_tx = Some(listening_tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("worker listening") {
                let addr = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("addr="))
                    .and_then(|addr| addr.parse().ok());
                if let (Some(addr), Some(tx)) = (addr, listening_tx.take()) {
                    let _ = tx.send(addr);
                }
            }
            if std::env::var_os("FANOUT_TEST_LOGS").is_some() {
                eprintln!("{line}");
            }
            lines_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        }
    });
    (log, listening)
}

impl WorkerProcess {
    /// Starts one worker with these command-line flags (see `worker::start_worker`, which builds them)
    /// and waits until it listens.
    pub async fn start(id: &str, args: &[&str]) -> WorkerProcess {
        let child = command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fanout: {e}"));
        Self::started(id, child).await
    }

    /// [`WorkerProcess::start`] where the kernel refuses the worker `io_uring`, as Docker's default
    /// seccomp profile does: its `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail
    /// with `EPERM`. The seccomp filter is installed on a thread of its own that then spawns the
    /// worker (a filter holds for the thread that installs it and is inherited by what it spawns),
    /// so the test process itself is not filtered.
    pub async fn start_refusing_io_uring(id: &str, args: &[&str]) -> WorkerProcess {
        let mut command = command(args);
        let runtime = tokio::runtime::Handle::current();
        let child = std::thread::spawn(move || {
            // `tokio::process` registers the child with this runtime.
            let _runtime = runtime.enter();
            refuse_io_uring();
            command.spawn()
        })
        .join()
        .unwrap_or_else(|_| panic!("the spawning thread panicked"))
        .unwrap_or_else(|e| panic!("cannot start fanout: {e}"));
        Self::started(id, child).await
    }

    /// Waits until a spawned worker listens.
    async fn started(id: &str, mut child: Child) -> WorkerProcess {
        let (log, listening) = collect_log(&mut child);
        let addr = within("the worker to listen", listening)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker {id} exited before listening: {:?}",
                    log.lock().map(|l| l.clone())
                )
            });
        WorkerProcess {
            child,
            addr,
            id: id.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `kill -9`: no shutdown, no close frames.
    pub async fn kill(&mut self) {
        self.child
            .kill()
            .await
            .unwrap_or_else(|e| panic!("kill: {e}"));
    }

    /// The process's resident memory, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("worker {} has exited", self.id));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Makes the calling thread's `io_uring_*` system calls (and those of the processes it spawns from
/// now on) fail with `EPERM`; everything else is allowed.
fn refuse_io_uring() {
    let refused = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    let arch = std::env::consts::ARCH
        .try_into()
        .unwrap_or_else(|e| panic!("no seccomp filter for {}: {e}", std::env::consts::ARCH));
    let filter = SeccompFilter::new(
        refused.into_iter().map(|call| (call, Vec::new())).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .unwrap_or_else(|e| panic!("seccomp filter: {e}"));
    let program: BpfProgram = filter
        .try_into()
        .unwrap_or_else(|e| panic!("seccomp program: {e}"));
    seccompiler::apply_filter(&program).unwrap_or_else(|e| panic!("seccomp: {e}"));
}

/// `fanout --workers N`: the supervisor process.
pub struct Supervisor {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Supervisor {
    pub fn start(args: &[&str]) -> Supervisor {
        let mut child = command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fanout: {e}"));
        let (log, _) = collect_log(&mut child);
        Supervisor { child, log }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or_else(|| panic!("no pid"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("kill: {e}"));
        within("the supervisor to exit", self.child.wait())
            .await
            .unwrap_or_else(|e| panic!("wait: {e}"))
    }
}
