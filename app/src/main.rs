//! The `fanout` binary: parse the configuration, then run one worker, or supervise several.

use anyhow::Context;
use clap::CommandFactory;
use clap::Parser;
use fanout_app::{
    config::Command, config_file, default_worker_id, start, supervisor, telemetry, Bus, Cli,
};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = config_file::path_from(&args) {
        for (name, value) in config_file::environment_from(&path)? {
            // Still single-threaded here: no other thread reads the environment.
            std::env::set_var(name, value);
        }
    }
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(run(cli));
    if let Err(error) = &outcome {
        // Once logging is set up, a fatal error is a log line like every other (the worker id
        // and pid, JSON with `--log-format json`), not a bare `Error:` text after them.
        if tracing::dispatcher::has_been_set() {
            tracing::error!(error = format!("{error:#}"), "fatal error: exiting");
            drop(runtime);
            std::process::exit(1);
        }
    }
    outcome
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None | Some(Command::Serve) => {}
        Some(Command::CheckConfig) => return check_config(&cli),
    }
    cli.validate().map_err(anyhow::Error::msg)?;
    fanout_app::limits::raise_open_files();
    if cli.workers > 1 {
        telemetry::init("supervisor", cli.log_format);
        let base_id = cli.worker.worker_id.as_ref().map(ToString::to_string);
        return supervisor::run(cli.workers, base_id, cli.threads).await;
    }
    let mut config = cli.worker;
    let worker_id = config.worker_id.clone().unwrap_or_else(default_worker_id);
    config.worker_id = Some(worker_id.clone());
    telemetry::init(worker_id.as_str(), cli.log_format);
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

/// `fanout check-config`: validates everything a start would, then prints each setting with its
/// source (default, env, flag); secrets are masked.
fn check_config(cli: &Cli) -> anyhow::Result<()> {
    cli.validate().map_err(anyhow::Error::msg)?;
    Bus::from_config(&cli.worker)?;
    fanout_app::check_access(&cli.worker)?;
    let matches = Cli::command().get_matches();
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let Some(values) = matches.get_raw(id) else {
            println!("{id:<24} (unset)");
            continue;
        };
        let joined = values
            .map(|v| v.to_string_lossy())
            .collect::<Vec<_>>()
            .join(", ");
        let shown = if id.contains("secret") || id.contains("password") {
            "***".to_owned()
        } else if id == "redis_url" {
            fanout_redis::redact_url(&joined)
        } else {
            joined
        };
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) => "env or file",
            _ => "default",
        };
        println!("{id:<24} {shown}   [{source}]");
    }
    println!("configuration is valid");
    Ok(())
}
