//! The command line of `fanout-bench`, parsed once into typed values.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::rendezvous::Loader;
use crate::sources::SourceAddresses;
use crate::workload::{parse_interval, Workload};

/// fanout-bench: the load tool of fanout. Opens WebSocket clients against running workers,
/// publishes at a fixed rate, and reports deliveries, loss, duplicates and latency.
#[derive(Clone, Debug, Parser)]
#[command(name = "fanout-bench", version, long_about = None)]
pub struct BenchConfig {
    /// Worker base URL, repeatable; clients and publishes are spread over them round-robin.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,

    /// WebSocket clients to open.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Messages published per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,

    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Publish through the HTTP API, or straight into Redis.
    #[arg(long, value_enum, default_value_t = PublishVia::Http)]
    pub publish: PublishVia,

    /// Redis URL for `--publish redis` (the workers' Redis).
    #[arg(
        long,
        env = "FANOUT_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Publish into this Redis Cluster with `--publish redis` (HOST:PORT of some of its nodes,
    /// comma-separated; the others are learnt from them) instead of --redis-url's Redis: each
    /// message with `SPUBLISH` on one of the --redis-partitions sharded channels, as the workers'
    /// `--redis-cluster` reads them. No credentials, no TLS.
    #[arg(long, env = "FANOUT_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,

    /// With --redis-cluster: the sharded channels `performance:metrics:{0}` … `{P-1}` the
    /// workers read (the same P as theirs); message N goes on partition N mod P, so the load
    /// spreads over every partition.
    #[arg(long, env = "FANOUT_REDIS_PARTITIONS", default_value_t = DEFAULT_PARTITIONS, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub redis_partitions: u16,

    /// The control address of `fanout-floor` for `--publish floor` (the clients connect to its
    /// WebSocket address, given as --url).
    #[arg(long, default_value = "127.0.0.1:8079")]
    pub floor: SocketAddr,

    /// Clients connecting at once during the ramp.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Connects started per second at most during the ramp (by this process); without it, as
    /// fast as --connect-concurrency lets them.
    #[arg(long)]
    pub connect_rate: Option<NonZeroU32>,

    /// Idle mode: open this many clients, publish nothing, hold them for `--hold`, report the
    /// connect time (for memory measurements of the server).
    #[arg(long)]
    pub idle: Option<usize>,

    /// How long idle clients are held.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub hold: Duration,

    /// Spread the clients round-robin over K distinct selectors, each taking 10% of the series
    /// (10 globs `bench.sXY*`); needs `--series` a power of ten ≥ 100 (default 1000). At most 100.
    /// 0: no selectors, every client takes everything.
    #[arg(long, default_value_t = 0)]
    pub selectors: u64,

    /// Publish N series, `bench.s0…` (zero-padded), consecutive items 11+ series apart; without
    /// it (and without `--selectors`) the single metric `bench.load`.
    #[arg(long)]
    pub series: Option<u64>,

    /// Metrics per published message (one `POST /api/metrics` array); more than 1 needs
    /// `--series`.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,

    /// Clients conflate: they subscribe with this interval (milliseconds, or `1s`, `250ms`) and
    /// are checked for the latest value of each series they take, not every item.
    #[arg(long, value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Local addresses the clients connect from, round-robin (each gives ~28k ports towards one
    /// server address): a count N (127.0.0.1 … 127.0.0.N), a range (`127.0.0.2-127.0.0.21`), or
    /// a comma-separated list of ranges and addresses.
    #[arg(long, default_value = "4", value_parser = SourceAddresses::parse)]
    pub source_addresses: SourceAddresses,

    /// Be loader I of N (`2/4`) of one run split over N processes (one process holds as many
    /// clients as it may open files), each given the same flags but its own --clients and
    /// --json, and the same --rendezvous: loader 1 publishes once every loader's clients are
    /// connected; the others publish nothing, and count what their clients got against what it
    /// published. `--merge` makes the run's report of theirs.
    #[arg(long, value_parser = Loader::parse, requires = "rendezvous")]
    pub loader: Option<Loader>,

    /// With --loader: the directory the loaders of a run meet in, fresh for each run.
    #[arg(long, requires = "loader")]
    pub rendezvous: Option<PathBuf>,

    /// Make nothing: read the --json reports of the loaders of one run (every loader's, 1 to N),
    /// and print and write (--json) the run's: counts summed, latency histograms merged,
    /// connect time from the first loader's first connect to the last loader's last.
    #[arg(long, num_args = 1.., conflicts_with_all = ["loader", "idle"])]
    pub merge: Vec<PathBuf>,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The workers' default `--redis-partitions` (the tool must not depend on the server's crates,
/// so it is repeated here; PROTOCOL.md makes it part of the contract).
pub const DEFAULT_PARTITIONS: u16 = 16;

/// Where the tool publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    /// `POST /api/metrics` on the workers, round-robin.
    Http,
    /// `PUBLISH` on the workers' Redis, as a worker would (`SPUBLISH` with `--redis-cluster`).
    Redis,
    /// To `fanout-floor` (`--floor`), in place of the workers: each message the frame text a
    /// worker would write for it, stamped by the tool. Every client gets every message (no
    /// selectors, no interval).
    Floor,
}

/// The Redis that `--publish redis` publishes into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis (or a Sentinel's master given by URL): `PUBLISH` on `performance:metrics`.
    Single { url: String },
    /// A Redis Cluster: `SPUBLISH` on `performance:metrics:{N}`, N = message number mod
    /// `partitions`.
    Cluster {
        /// `redis://HOST:PORT` of each node given.
        nodes: Vec<String>,
        partitions: u16,
    },
}

impl BenchConfig {
    /// The WebSocket addresses behind the worker base URLs.
    pub fn targets(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.urls.iter().map(|url| websocket_addr(url)).collect()
    }

    /// The Redis `--publish redis` publishes into: the cluster when `--redis-cluster` is given,
    /// else `--redis-url`'s.
    pub fn redis_target(&self) -> anyhow::Result<RedisTarget> {
        if self.redis_cluster.is_empty() {
            return Ok(RedisTarget::Single {
                url: self.redis_url.clone(),
            });
        }
        let nodes = self
            .redis_cluster
            .iter()
            .map(|node| cluster_node_url(node))
            .collect::<anyhow::Result<_>>()?;
        Ok(RedisTarget::Cluster {
            nodes,
            partitions: self.redis_partitions,
        })
    }

    /// What is published and subscribed to, checked.
    pub fn workload(&self) -> anyhow::Result<Workload> {
        Workload::new(self.series, self.batch, self.selectors, self.interval)
    }
}

/// The WebSocket address behind a worker base URL.
fn websocket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = url
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default();
    authority
        .parse()
        .with_context(|| format!("--url {url}: expected http://IP:PORT"))
}

/// `redis://HOST:PORT` for one `--redis-cluster` node given as `HOST:PORT`.
fn cluster_node_url(node: &str) -> anyhow::Result<String> {
    let node = node.trim();
    match node.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(format!("redis://{node}"))
        }
        _ => anyhow::bail!("--redis-cluster {node:?}: expected HOST:PORT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        BenchConfig::command().debug_assert();
    }

    #[test]
    fn every_flag_of_the_former_fanout_bench_is_accepted() {
        let config = BenchConfig::try_parse_from([
            "fanout-bench",
            "--url",
            "http://127.0.0.1:8080",
            "--url",
            "http://127.0.0.1:8081/",
            "--clients",
            "2000",
            "--rate",
            "100",
            "--duration",
            "30s",
            "--publish",
            "redis",
            "--redis-url",
            "redis://db:1",
            "--connect-concurrency",
            "64",
            "--idle",
            "10",
            "--hold",
            "2s",
            "--source-addresses",
            "8",
            "--json",
            "out.json",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.clients, 2000);
        assert_eq!(config.rate, 100);
        assert_eq!(config.duration, Duration::from_secs(30));
        assert_eq!(config.publish, PublishVia::Redis);
        assert_eq!(config.redis_url, "redis://db:1");
        assert_eq!(config.connect_concurrency, 64);
        assert_eq!(config.idle, Some(10));
        assert_eq!(config.hold, Duration::from_secs(2));
        assert_eq!(
            config.source_addresses.to_string(),
            "8 addresses, 127.0.0.1 … 127.0.0.8"
        );
        assert_eq!(config.json, Some(PathBuf::from("out.json")));
        let targets = config.targets().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            targets,
            [
                SocketAddr::from(([127, 0, 0, 1], 8080)),
                SocketAddr::from(([127, 0, 0, 1], 8081))
            ]
        );
    }

    #[test]
    fn a_loader_needs_a_rendezvous_and_merging_makes_no_load() {
        let config = BenchConfig::try_parse_from([
            "fanout-bench",
            "--loader",
            "2/3",
            "--rendezvous",
            "/tmp/run",
            "--source-addresses",
            "127.0.0.2-127.0.0.21",
            "--connect-rate",
            "5000",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.loader, Some(Loader { index: 2, of: 3 }));
        assert_eq!(
            config.source_addresses.to_string(),
            "20 addresses, 127.0.0.2 … 127.0.0.21"
        );
        assert_eq!(config.connect_rate.map(NonZeroU32::get), Some(5_000));
        let alone = BenchConfig::try_parse_from(["fanout-bench", "--loader", "1/2"]).err();
        assert!(alone.is_some_and(|e| e.to_string().contains("--rendezvous")));
        let merge = BenchConfig::try_parse_from(["fanout-bench", "--merge", "a.json", "b.json"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(merge.merge.len(), 2);
        let both = ["fanout-bench", "--merge", "a.json", "--idle", "3"];
        assert!(BenchConfig::try_parse_from(both).is_err());
    }

    #[test]
    fn the_subscription_flags_make_a_workload() {
        let config = BenchConfig::try_parse_from([
            "fanout-bench",
            "--selectors",
            "100",
            "--batch",
            "10",
            "--interval",
            "1000",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let workload = config.workload().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (workload.selectors(), workload.series(), workload.batch()),
            (100, 1_000, 10)
        );
        assert_eq!(workload.interval(), Some(Duration::from_secs(1)));
        let broadcast = BenchConfig::try_parse_from(["fanout-bench"])
            .unwrap_or_else(|e| panic!("{e}"))
            .workload()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((broadcast.selectors(), broadcast.series()), (0, 1));
    }

    #[test]
    fn a_url_without_an_ip_and_port_is_refused_with_the_flag_named() {
        let error = websocket_addr("http://localhost/").err();
        assert!(error.is_some_and(|e| e.to_string().contains("--url http://localhost/")));
    }

    #[test]
    fn without_redis_cluster_the_tool_publishes_into_redis_url() {
        let config = BenchConfig::try_parse_from(["fanout-bench", "--redis-url", "redis://db:1"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.redis_target().unwrap_or_else(|e| panic!("{e}")),
            RedisTarget::Single {
                url: "redis://db:1".to_owned()
            }
        );
    }

    #[test]
    fn redis_cluster_takes_comma_separated_nodes_and_sixteen_partitions_by_default() {
        let config = BenchConfig::try_parse_from([
            "fanout-bench",
            "--publish",
            "redis",
            "--redis-cluster",
            "127.0.0.1:7000,10.0.0.2:7001",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.redis_target().unwrap_or_else(|e| panic!("{e}")),
            RedisTarget::Cluster {
                nodes: vec![
                    "redis://127.0.0.1:7000".to_owned(),
                    "redis://10.0.0.2:7001".to_owned()
                ],
                partitions: 16,
            }
        );
    }

    #[test]
    fn redis_partitions_is_read_and_zero_is_refused() {
        let config = BenchConfig::try_parse_from([
            "fanout-bench",
            "--redis-cluster",
            "db:7000",
            "--redis-partitions",
            "3",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.redis_partitions, 3);
        let zero = BenchConfig::try_parse_from(["fanout-bench", "--redis-partitions", "0"]).err();
        assert!(zero.is_some_and(|e| e.to_string().contains("--redis-partitions")));
    }

    #[test]
    fn a_cluster_node_without_a_port_is_refused_with_the_flag_named() {
        let config = BenchConfig::try_parse_from(["fanout-bench", "--redis-cluster", "db"])
            .unwrap_or_else(|e| panic!("{e}"));
        let error = config.redis_target().err();
        assert!(error.is_some_and(|e| e.to_string().contains("--redis-cluster \"db\"")));
    }
}
