//! The `fanout` binary: parse the configuration, then run one worker, or supervise several.

use anyhow::Context;
use clap::Parser;
use fanout_app::{config::Command, default_worker_id, start, supervisor, telemetry, Bus, Cli};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None | Some(Command::Serve) => {}
        Some(Command::Bench(bench)) => return fanout_app::bench::run(bench).await.map(drop),
    }
    fanout_app::limits::raise_open_files();
    if cli.workers > 1 {
        telemetry::init("supervisor");
        if cli.worker.listen.port() == 0 {
            anyhow::bail!(
                "--workers needs a fixed port in --listen: port 0 gives each worker its own port"
            );
        }
        let base_id = cli.worker.worker_id.as_ref().map(ToString::to_string);
        return supervisor::run(cli.workers, base_id).await;
    }
    let mut config = cli.worker;
    let worker_id = config.worker_id.clone().unwrap_or_else(default_worker_id);
    config.worker_id = Some(worker_id.clone());
    telemetry::init(worker_id.as_str());
    let bus = Bus::from_config(&config)?;
    let worker = start(&config, bus).await?;

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    worker.shutdown();
    worker.wait().await
}
