//! `fanout --workers N`: starts N worker processes of this binary on one listening address
//! (SO_REUSEPORT spreads new connections over them, as `uvicorn --workers N` does), forwards
//! SIGTERM/SIGINT to them and waits for them. A worker that dies is started again after a short
//! pause, so a crash costs its clients one reconnect, not the worker slot; one that keeps dying
//! right after its start makes the supervisor give up (exit with an error).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause before a dead worker is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A worker that dies this soon after its start, [`QUICK_DEATHS`] times in a row, cannot run
/// here (its address is taken by another program, say): the supervisor stops every worker and
/// exits with an error rather than restart it forever.
const QUICK_DEATH: Duration = Duration::from_secs(5);
const QUICK_DEATHS: u32 = 5;

/// Flags the supervisor sets itself for each worker (through the environment).
const SUPERVISOR_FLAGS: [&str; 2] = ["--workers", "--worker-id"];

/// The arguments for a worker process: ours, without the flags the supervisor sets per worker.
fn worker_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if SUPERVISOR_FLAGS.contains(&arg.as_str()) {
            skip_value = true;
            continue;
        }
        let is_flag_with_value = SUPERVISOR_FLAGS.iter().any(|flag| {
            arg.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
        });
        if !is_flag_with_value {
            kept.push(arg);
        }
    }
    kept
}

/// Runtime threads for each of `workers` processes when neither `--threads` nor `FANOUT_THREADS`
/// says: the CPUs shared out among them, at least one each. N workers on N CPUs then run a thread
/// each rather than N each, and no runtime wakes a second thread of its own to steal work the
/// other workers' threads would have run anyway: 2 workers on 2 CPUs on Redis at 2,000 clients ×
/// 100 msg/s spent 4.94 µs per delivery against 5.74 with two threads each (1.03× the floor
/// against 1.19×, 3 interleaved rounds; p99 84–121 ms against 101–142); at 200 × 50/s no
/// difference (PERFORMANCE.md).
fn default_threads(workers: u16) -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u16::try_from(cpus / usize::from(workers.max(1)))
        .unwrap_or(u16::MAX)
        .max(1)
}

fn spawn_worker(index: u16, base_id: Option<&str>, threads: Option<u16>) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the fanout executable")?;
    let mut command = Command::new(exe);
    command
        .args(worker_args(std::env::args().skip(1)))
        .env("FANOUT_WORKERS", "1")
        .env("FANOUT_REUSE_PORT", "true")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(base) = base_id {
        command.env("FANOUT_WORKER_ID", format!("{base}-{index}"));
    }
    if let Some(threads) = threads {
        command.env("FANOUT_THREADS", threads.to_string());
    }
    let child = command.spawn().context("cannot start a worker process")?;
    // `child_pid`: every line's `pid` is the supervisor's own (telemetry stamps it).
    tracing::info!(index, child_pid = child.id(), "worker process started");
    Ok(child)
}

/// Waits for one worker process; on `stop`, forwards SIGTERM to it and waits for it to exit.
/// Reports an exit that nobody asked for on `died`.
async fn watch_worker(
    index: u16,
    mut child: Child,
    stop: CancellationToken,
    died: mpsc::UnboundedSender<u16>,
) {
    let pid = child.id().and_then(|id| i32::try_from(id).ok());
    tokio::select! {
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            tracing::error!(index, child_pid = pid, %status, "worker process died");
            let _ = died.send(index);
        }
        _ = stop.cancelled() => {
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            tracing::info!(index, child_pid = pid, %status, "worker process exited");
        }
    }
}

/// Runs `count` workers until SIGTERM or SIGINT, then stops them and returns once all exited.
/// `threads`: `--threads` as given (the workers then get it as they get every other flag), or
/// `None` for [`default_threads`].
pub async fn run(count: u16, base_id: Option<String>, threads: Option<u16>) -> anyhow::Result<()> {
    let threads = threads.is_none().then(|| default_threads(count));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (died_tx, mut died) = mpsc::unbounded_channel();
    // Per worker (index - 1): when it was last started, and how many times in a row it died
    // within `QUICK_DEATH` of its start.
    let mut started = vec![Instant::now(); usize::from(count)];
    let mut quick_deaths = vec![0u32; usize::from(count)];
    for index in 1..=count {
        let child = spawn_worker(index, base_id.as_deref(), threads)?;
        tracker.spawn(watch_worker(index, child, stop.clone(), died_tx.clone()));
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let outcome = loop {
        tokio::select! {
            _ = terminate.recv() => break Ok(()),
            _ = interrupt.recv() => break Ok(()),
            Some(index) = died.recv() => {
                let slot = usize::from(index - 1);
                if started[slot].elapsed() < QUICK_DEATH {
                    quick_deaths[slot] += 1;
                } else {
                    quick_deaths[slot] = 0;
                }
                if quick_deaths[slot] >= QUICK_DEATHS {
                    tracing::error!(
                        index,
                        quick_deaths = quick_deaths[slot],
                        "a worker process keeps dying right after its start; giving up"
                    );
                    break Err(anyhow::anyhow!(
                        "worker process {index} died within {QUICK_DEATH:?} of its start \
                         {QUICK_DEATHS} times in a row (see its log above)"
                    ));
                }
                tokio::time::sleep(RESTART_DELAY).await;
                let child = spawn_worker(index, base_id.as_deref(), threads)?;
                started[slot] = Instant::now();
                tracker.spawn(watch_worker(index, child, stop.clone(), died_tx.clone()));
            }
        }
    };
    tracing::info!("stopping worker processes");
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_args_drop_the_flags_the_supervisor_sets() {
        let args = [
            "--workers",
            "3",
            "--listen",
            "127.0.0.1:1",
            "--worker-id=x",
            "--bus",
            "redis",
            "--worker-id",
            "y",
        ];
        let kept = worker_args(args.iter().map(|a| a.to_string()));
        assert_eq!(kept, ["--listen", "127.0.0.1:1", "--bus", "redis"]);
    }
}
