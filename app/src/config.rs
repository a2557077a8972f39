//! The command line: every knob is a flag and a `FANOUT_*` environment variable (flags win),
//! parsed and validated once at start-up into typed values.
//!
//! Over 400 lines on purpose: every setting with its flag, variable, default and help text in
//! one place (what `--help` and `check-config` show), then the checks that relate them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fanout_domain::{AlertRule, WorkerId};

/// fanout: real-time performance metrics and alerts to every WebSocket client of every worker.
#[derive(Debug, Parser)]
#[command(name = "fanout", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub worker: WorkerConfig,

    /// Worker processes to start on the listen address (they share it with SO_REUSEPORT).
    /// With more than one, the listen port must not be 0.
    #[arg(long, env = "FANOUT_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256), global = true)]
    pub workers: u16,

    /// Async runtime threads in each worker process [default: the CPUs shared out among the
    /// `--workers`, at least one each: one per CPU for a single worker].
    #[arg(long, env = "FANOUT_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub threads: Option<u16>,

    /// TOML file of settings (keys: the long flag names). Flags and environment win over it.
    #[arg(long, env = "FANOUT_CONFIG", global = true)]
    pub config: Option<std::path::PathBuf>,

    /// Log output: human-readable text, or one JSON object per line.
    #[arg(long, env = "FANOUT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default when no subcommand is given).
    Serve,
    /// Validate the configuration (flags, environment, file) and print the effective settings,
    /// each with where it came from; secrets are masked.
    CheckConfig,
}

/// Which bus carries messages between workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BusKind {
    /// One process only: workers started in the same process share it (local development, tests).
    Memory,
    /// Redis Pub/Sub: workers in any process on any host.
    Redis,
}

/// The configuration of one worker.
///
/// Every flag is `global`: users type them on either side of a subcommand
/// (`fanout --auth-secret X check-config` and `fanout check-config --auth-secret X`).
#[derive(Clone, Debug, Args)]
pub struct WorkerConfig {
    /// Address to listen on for HTTP and WebSocket clients.
    #[arg(
        long,
        env = "FANOUT_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Let several processes listen on the same address (SO_REUSEPORT); `--workers` sets it.
    #[arg(long, env = "FANOUT_REUSE_PORT", value_parser = BoolishValueParser::new(), global = true)]
    pub reuse_port: bool,

    /// The bus between workers.
    #[arg(long, env = "FANOUT_BUS", value_enum, default_value_t = BusKind::Memory, global = true)]
    pub bus: BusKind,

    /// Redis URL for `--bus redis`: redis://[user:pass@]host:port[/db], or rediss:// for TLS.
    #[arg(
        long,
        env = "FANOUT_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        // It may hold a password: `--help` must not print the environment's value.
        hide_env_values = true,
        global = true
    )]
    pub redis_url: String,

    /// Find the Redis master through these sentinels (HOST:PORT, comma-separated) instead of at
    /// --redis-url's address, and follow its failovers; --redis-url then gives only the scheme
    /// (TLS), credentials and database of the master.
    #[arg(
        long,
        env = "FANOUT_REDIS_SENTINEL",
        value_delimiter = ',',
        requires = "redis_sentinel_master",
        global = true
    )]
    pub redis_sentinel: Vec<String>,

    /// The name the sentinels monitor the master under (with --redis-sentinel).
    #[arg(long, env = "FANOUT_REDIS_SENTINEL_MASTER", global = true)]
    pub redis_sentinel_master: Option<String>,

    /// Username for the sentinels (ACL), if they need one.
    #[arg(long, env = "FANOUT_REDIS_SENTINEL_USERNAME", global = true)]
    pub redis_sentinel_username: Option<String>,

    /// Password for the sentinels, if they need one.
    #[arg(
        long,
        env = "FANOUT_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub redis_sentinel_password: Option<String>,

    /// Talk TLS to the sentinels.
    #[arg(long, env = "FANOUT_REDIS_SENTINEL_TLS", value_parser = BoolishValueParser::new(), global = true)]
    pub redis_sentinel_tls: bool,

    /// Use this Redis Cluster (HOST:PORT of some of its nodes, comma-separated) instead of
    /// --redis-url's address: metrics over sharded Pub/Sub in --redis-partitions channels, alerts
    /// and their log in one slot. --redis-url then gives only the credentials. Redis 7 or later.
    #[arg(
        long,
        env = "FANOUT_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "redis_sentinel",
        global = true
    )]
    pub redis_cluster: Vec<String>,

    /// With --redis-cluster: sharded channels `performance:metrics:{0}` … `{P-1}` that metrics
    /// spread over (a worker publishes on one, picked from its worker id). Every worker of a
    /// deployment, and every outside publisher, must use the same P.
    #[arg(long, env = "FANOUT_REDIS_PARTITIONS", default_value_t = fanout_redis::DEFAULT_PARTITIONS, value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub redis_partitions: u16,

    /// Replicas that must hold an alert before its publish is answered 202 (WAIT after the log
    /// write; 503 when fewer do within half of --redis-timeout). 0: do not wait.
    #[arg(long, env = "FANOUT_ALERT_MIN_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16), global = true)]
    pub alert_min_replicas: u32,

    /// Most pooled Redis connections used for publishing, per worker.
    #[arg(long, env = "FANOUT_REDIS_POOL_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub redis_pool_size: u16,

    /// Bound on a Redis connect, publish or ping; a hung Redis is detected within about this long.
    #[arg(long, env = "FANOUT_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration, global = true)]
    pub redis_timeout: Duration,

    /// This worker's id in logs, messages and health reports [default: HOSTNAME-PID].
    #[arg(long, env = "FANOUT_WORKER_ID", global = true)]
    pub worker_id: Option<WorkerId>,

    /// How often the built-in monitor samples and publishes this process's metrics (0s: off).
    #[arg(long, env = "FANOUT_METRICS_INTERVAL", default_value = "2s", value_parser = parse_duration, global = true)]
    pub metrics_interval: Duration,

    /// Alert rule on the monitor's metrics, repeatable: NAME>THRESHOLD[,for=N][,severity=S].
    /// In the environment, separate rules with ';'. Replaces the default rules.
    #[arg(
        long = "alert-rule",
        env = "FANOUT_ALERT_RULES",
        value_delimiter = ';',
        global = true
    )]
    pub alert_rules: Vec<AlertRule>,

    /// Alerts kept in the bus's alert log for replay to workers and clients that were away.
    #[arg(long, env = "FANOUT_ALERT_RETENTION", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub alert_retention: u32,

    /// Alerts raised by this worker's rules kept while the bus is down; beyond it they are lost
    /// (counted and logged).
    #[arg(long, env = "FANOUT_OUTBOX_CAPACITY", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub outbox_capacity: u32,

    /// Most frames queued for one client; beyond it the oldest metrics are dropped.
    #[arg(long, env = "FANOUT_CLIENT_QUEUE_MESSAGES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub client_queue_messages: u32,

    /// Most bytes queued for one client; beyond it the oldest metrics are dropped.
    #[arg(long, env = "FANOUT_CLIENT_QUEUE_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..), global = true)]
    pub client_queue_bytes: u32,

    /// Kernel send buffer per client socket (SO_SNDBUF) [default: the OS's autotuning]. A small
    /// one bounds the kernel memory a client that stops reading can hold, and lets the worker
    /// notice it sooner.
    #[arg(long, env = "FANOUT_CLIENT_SEND_BUFFER", value_parser = clap::value_parser!(u32).range(4096..), global = true)]
    pub client_send_buffer: Option<u32>,

    /// Send a message to each client with its own `send(2)`, not one `io_uring` submission per
    /// message (io_uring is used where the kernel allows it; PERFORMANCE.md has what it saves).
    #[arg(long, env = "FANOUT_NO_IO_URING", value_parser = BoolishValueParser::new(), global = true)]
    pub no_io_uring: bool,

    /// Largest message a client may send (1009 beyond).
    #[arg(long, env = "FANOUT_MAX_CLIENT_MESSAGE", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(128..), global = true)]
    pub max_client_message: u32,

    /// Most subscriptions one WebSocket connection may hold (an error answer beyond).
    #[arg(long, env = "FANOUT_MAX_SUBSCRIPTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024), global = true)]
    pub max_subscriptions: u32,

    /// Most metric name patterns, and most label matchers, in one subscription.
    #[arg(long, env = "FANOUT_MAX_SELECTOR_TERMS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024), global = true)]
    pub max_selector_terms: u32,

    /// Longest metric name pattern, label key or label value in a subscription, in bytes.
    #[arg(long, env = "FANOUT_MAX_PATTERN_BYTES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096), global = true)]
    pub max_pattern_bytes: u32,

    /// Largest publish body accepted by the HTTP API (413 beyond).
    #[arg(long, env = "FANOUT_MAX_BODY_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(1024..), global = true)]
    pub max_body_bytes: u32,

    /// Most data points in one OTLP/HTTP metrics export (`POST /v1/metrics`); beyond it 413.
    /// Each Gauge or Sum point becomes one metric, a histogram point up to five.
    #[arg(long, env = "FANOUT_OTLP_MAX_POINTS", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub otlp_max_points: u32,

    /// How often each client is pinged.
    #[arg(long, env = "FANOUT_PING_INTERVAL", default_value = "15s", value_parser = parse_duration, global = true)]
    pub ping_interval: Duration,

    /// A client silent this long (no pong) is closed with 4001.
    #[arg(long, env = "FANOUT_CLIENT_TIMEOUT", default_value = "45s", value_parser = parse_duration, global = true)]
    pub client_timeout: Duration,

    /// Turns authentication on with HS256 tokens signed with this secret (at least 16 bytes).
    #[arg(
        long,
        env = "FANOUT_AUTH_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub auth_secret: Option<String>,

    /// Turns authentication on with RS256/ES256 tokens verified with this PEM public key file.
    #[arg(long, env = "FANOUT_AUTH_PUBLIC_KEY", global = true)]
    pub auth_public_key: Option<std::path::PathBuf>,

    /// Browser origin allowed to open WebSocket connections, repeatable (env: comma-separated);
    /// none given: any origin.
    #[arg(
        long = "allowed-origin",
        env = "FANOUT_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin,
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Most WebSocket clients on this worker; beyond it upgrades get 503.
    #[arg(long, env = "FANOUT_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_connections: Option<u32>,

    /// Publishes per second allowed per credential (token subject); beyond it 429 with
    /// Retry-After. Unlimited when not given (0 is refused: it would read as "none allowed").
    #[arg(long, env = "FANOUT_PUBLISH_RATE", value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub publish_rate: Option<u32>,

    /// How long shutdown waits for clients to acknowledge the close frame (and, before that,
    /// for an HTTP response still being written, such as an SSE stream, to be taken).
    #[arg(long, env = "FANOUT_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub shutdown_timeout: Duration,
}

/// Durations in the humane form: `250ms`, `2s`, `1m 30s`.
/// A browser origin as browsers send it in `Origin` (compared exactly): `http` or `https`, a host,
/// an optional port, nothing after. Anything else could never match, and would refuse every page.
fn parse_origin(text: &str) -> Result<String, String> {
    let example =
        "an origin is scheme://host[:port] as a browser sends it, e.g. https://dash.example.com";
    let uri: axum::http::Uri = text.parse().map_err(|_| example.to_owned())?;
    // Exactly `scheme://authority`, the authority without credentials.
    let bare = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme @ ("http" | "https")), Some(authority)) => {
            !authority.as_str().contains('@') && text == format!("{scheme}://{authority}")
        }
        _ => false,
    };
    if bare {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?}: {example}"))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 250ms, 2s, 1m)"))
}

impl Cli {
    /// Checks what clap cannot, for a start and for `check-config` alike: the worker's settings,
    /// and what `--workers N` needs of them.
    pub fn validate(&self) -> Result<(), String> {
        self.worker.validate()?;
        if self.workers > 1 {
            if self.worker.listen.port() == 0 {
                return Err(
                    "--workers needs a fixed port in --listen: port 0 gives each worker its own port"
                        .into(),
                );
            }
            if self.worker.bus == BusKind::Memory {
                return Err(
                    "--workers needs --bus redis: with --bus memory each worker process has a bus \
                     of its own, and clients of one would miss what another publishes"
                        .into(),
                );
            }
            // The supervisor names worker N `ID-N`: the longest must be a worker id too.
            if let Some(id) = &self.worker.worker_id {
                let last = format!("{id}-{}", self.workers);
                if let Err(error) = WorkerId::new(last) {
                    return Err(format!(
                        "--worker-id with --workers {}: the workers are named ID-1 … ID-{}, \
                         and {error}",
                        self.workers, self.workers
                    ));
                }
            }
        }
        Ok(())
    }
}

impl WorkerConfig {
    /// The configured rules, or the defaults when none are given.
    pub fn rules(&self) -> Vec<AlertRule> {
        if !self.alert_rules.is_empty() {
            return self.alert_rules.clone();
        }
        [
            "host.cpu_percent>90,for=3,severity=warning",
            "host.memory_used_percent>95,for=3,severity=critical",
        ]
        .iter()
        .filter_map(|rule| rule.parse().ok())
        .collect()
    }

    /// Checks what clap cannot: relations between values.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_interval.is_zero() {
            return Err("--ping-interval must be above 0".into());
        }
        if self.client_timeout <= self.ping_interval {
            return Err("--client-timeout must be longer than --ping-interval".into());
        }
        if self.redis_timeout.is_zero() {
            return Err("--redis-timeout must be above 0".into());
        }
        if self.bus == BusKind::Memory {
            let redis_only = [
                (!self.redis_sentinel.is_empty(), "--redis-sentinel"),
                (!self.redis_cluster.is_empty(), "--redis-cluster"),
                (self.alert_min_replicas > 0, "--alert-min-replicas"),
            ];
            if let Some((_, flag)) = redis_only.iter().find(|(given, _)| *given) {
                return Err(format!(
                    "{flag} needs --bus redis: with --bus memory it would do nothing"
                ));
            }
        }
        Ok(())
    }

    /// For tests and embedding: the defaults, listening on an ephemeral port.
    pub fn for_tests() -> Self {
        let cli = Cli::parse_from(["fanout", "--listen", "127.0.0.1:0"]);
        cli.worker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_need_a_fixed_port_and_the_redis_bus() {
        let check = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("fanout").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{e}"))
                .validate()
        };
        let port_0 = check(&[
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--bus",
            "redis",
        ]);
        assert!(port_0.is_err_and(|e| e.contains("fixed port")));
        let memory = check(&[
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:9000",
            "--bus",
            "memory",
        ]);
        assert!(memory.is_err_and(|e| e.contains("--bus redis")));
        assert!(check(&[
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:9000",
            "--bus",
            "redis"
        ])
        .is_ok());
        assert!(check(&["--listen", "127.0.0.1:0", "--bus", "memory"]).is_ok());
    }

    #[test]
    fn a_publish_rate_of_0_is_refused() {
        let refused = Cli::try_parse_from(["fanout", "--publish-rate", "0"]);
        assert!(refused.is_err_and(|e| e.to_string().contains("--publish-rate")));
        assert!(Cli::try_parse_from(["fanout", "--publish-rate", "1"]).is_ok());
    }

    #[test]
    fn defaults_and_humane_durations() {
        let cli = Cli::parse_from([
            "fanout",
            "--metrics-interval",
            "250ms",
            "--alert-rule",
            "cpu>1,for=2",
        ]);
        assert_eq!(cli.worker.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.worker.bus, BusKind::Memory);
        assert_eq!(cli.worker.metrics_interval, Duration::from_millis(250));
        assert_eq!(cli.worker.rules().len(), 1);
        assert_eq!(cli.workers, 1);
        assert!(cli.worker.validate().is_ok());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn worker_flags_are_accepted_on_either_side_of_a_subcommand() {
        let flags = ["--auth-secret", "sixteen-bytes-or-more", "--workers", "2"];
        let before = [&["fanout"][..], &flags, &["check-config"]].concat();
        let after = [&["fanout", "check-config"][..], &flags].concat();
        for args in [before, after] {
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(
                matches!(cli.command, Some(Command::CheckConfig)),
                "{args:?}"
            );
            assert_eq!(
                cli.worker.auth_secret.as_deref(),
                Some("sixteen-bytes-or-more"),
                "{args:?}"
            );
            assert_eq!(cli.workers, 2, "{args:?}");
        }
        let cli = Cli::try_parse_from(["fanout", "serve", "--redis-url", "redis://db:1"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.worker.redis_url, "redis://db:1");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let error = Cli::try_parse_from(["fanout", "--metrics-interval", "soon"]).err();
        assert!(error.is_some_and(|e| e.to_string().contains("--metrics-interval")));
        let error = Cli::try_parse_from(["fanout", "--alert-rule", "cpu"]).err();
        assert!(error.is_some_and(|e| e.to_string().contains("invalid alert rule")));
        let config =
            Cli::parse_from(["fanout", "--client-timeout", "1s", "--ping-interval", "2s"]).worker;
        assert!(config.validate().is_err());
    }
}
