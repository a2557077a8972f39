//! One worker: the composition of the domain service, the chosen bus, the HTTP API and the
//! WebSocket transport on one listening socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fanout_domain::{
    AlertLog, Broadcaster, BusSubscriber, Clock, PerformanceService, PublishQuota, RuleEngine,
    SelectorLimits, WorkerId,
};
use std::num::NonZeroU32;

use fanout_auth::{JwtAccess, Key};
use fanout_domain::{AccessControl, OpenAccess};
use fanout_http::ApiConfig;
use fanout_memory::{MemoryBus, MemoryQuota};
use fanout_redis::{ClusterConfig, RedisBus, RedisConfig, RedisQuota, SentinelConfig};
use fanout_ws::{Admission, ClientLimits, ConnectionManager, QueueLimits, SubscriptionLimits};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::config::{BusKind, WorkerConfig};
use crate::report::WorkerStatus;
use crate::{monitor, outbox};

/// The bus a worker is given. The in-memory bus is shared by the workers of one process.
#[derive(Clone)]
pub enum Bus {
    Memory(MemoryBus),
    Redis(Box<RedisConfig>),
}

impl Bus {
    /// The bus the configuration asks for; `memory` is a new bus for this process.
    pub fn from_config(config: &WorkerConfig) -> anyhow::Result<Self> {
        Ok(match config.bus {
            BusKind::Memory => {
                Bus::Memory(MemoryBus::with_retention(config.alert_retention as usize))
            }
            BusKind::Redis => {
                let mut redis = RedisConfig::new(config.redis_url.clone());
                redis.pool_size = usize::from(config.redis_pool_size);
                redis.command_timeout = config.redis_timeout;
                // Half the timeout between PINGs, half to wait for the PONG: a hang is noticed
                // within --redis-timeout.
                redis.ping_interval = config.redis_timeout / 2;
                redis.alert_retention = config.alert_retention as usize;
                redis.alert_min_replicas = config.alert_min_replicas;
                if !config.redis_sentinel.is_empty() {
                    redis.sentinel = Some(SentinelConfig {
                        sentinels: config.redis_sentinel.clone(),
                        master_name: config
                            .redis_sentinel_master
                            .clone()
                            .context("--redis-sentinel needs --redis-sentinel-master")?,
                        username: config.redis_sentinel_username.clone(),
                        password: config.redis_sentinel_password.clone(),
                        tls: config.redis_sentinel_tls,
                    });
                }
                if !config.redis_cluster.is_empty() {
                    redis.cluster = Some(ClusterConfig {
                        nodes: config.redis_cluster.clone(),
                        partitions: config.redis_partitions,
                    });
                    // In the alert channel's slot, so that one script appends and publishes.
                    redis.alert_log_key = "{performance:alerts}:log".to_owned();
                }
                redis.validate().with_context(|| {
                    format!(
                        "invalid Redis configuration (--redis-url {})",
                        fanout_redis::redact_url(&redis.url)
                    )
                })?;
                Bus::Redis(Box::new(redis))
            }
        })
    }

    #[allow(clippy::type_complexity)] // the four ports one bus adapter builds, named once here
    fn ports(
        &self,
    ) -> anyhow::Result<(
        Arc<dyn Broadcaster>,
        Arc<dyn BusSubscriber>,
        Arc<dyn AlertLog>,
    )> {
        Ok(match self {
            Bus::Memory(bus) => (
                Arc::new(bus.clone()),
                Arc::new(bus.subscriber()),
                Arc::new(bus.clone()),
            ),
            Bus::Redis(config) => {
                // One publisher (and its pool) serves publishing and reading the alert log; it
                // shares the subscriber's view of the bus's health.
                let bus = RedisBus::new(RedisConfig::clone(config))?;
                (bus.publisher.clone(), bus.subscriber, bus.publisher)
            }
        })
    }

    /// Where `--publish-rate` is counted: in Redis, so that the rate holds per credential across
    /// every worker on it; in this worker for the in-memory bus.
    fn publish_quota(&self, rate: NonZeroU32) -> anyhow::Result<Arc<dyn PublishQuota>> {
        Ok(match self {
            Bus::Memory(_) => Arc::new(MemoryQuota::new(rate)),
            Bus::Redis(config) => Arc::new(RedisQuota::new(RedisConfig::clone(config), rate)?),
        })
    }
}

/// The wall clock.
struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default()
    }
}

/// The default worker id: `HOSTNAME-PID`.
pub fn default_worker_id() -> WorkerId {
    let host = sysinfo::System::host_name().unwrap_or_else(|| "fanout".to_owned());
    let host: String = host
        .chars()
        .filter(|c| !c.is_whitespace())
        .take(100)
        .collect();
    WorkerId::new(format!("{host}-{}", std::process::id())).unwrap_or_else(|_| {
        WorkerId::new(format!("fanout-{}", std::process::id()))
            .unwrap_or_else(|e| unreachable!("{e}"))
    })
}

/// Checks the access settings (keys readable and valid) without starting anything.
pub fn check_access(config: &WorkerConfig) -> anyhow::Result<()> {
    access_control(config).map(drop)
}

/// Open access, or JWT verification when a secret or public key is configured.
fn access_control(config: &WorkerConfig) -> anyhow::Result<Arc<dyn AccessControl>> {
    let key = match (&config.auth_secret, &config.auth_public_key) {
        (None, None) => return Ok(Arc::new(OpenAccess)),
        (Some(_), Some(_)) => anyhow::bail!("give --auth-secret or --auth-public-key, not both"),
        (Some(secret), None) => Key::Secret(secret.as_bytes().to_vec()),
        (None, Some(path)) => Key::PublicKeyPem(
            std::fs::read(path)
                .with_context(|| format!("cannot read --auth-public-key {}", path.display()))?,
        ),
    };
    Ok(Arc::new(JwtAccess::new(key)?))
}

/// A running worker.
pub struct RunningWorker {
    addr: SocketAddr,
    worker: WorkerId,
    manager: Arc<ConnectionManager>,
    service: Arc<PerformanceService>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Where it listens (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn worker_id(&self) -> &WorkerId {
        &self.worker
    }

    pub fn connections(&self) -> usize {
        self.manager.connections()
    }

    /// The domain service, for embedding callers that publish in-process.
    pub fn service(&self) -> &Arc<PerformanceService> {
        &self.service
    }

    /// Starts a graceful shutdown: stop accepting, close every client with 1001.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits for the worker to finish (after [`RunningWorker::shutdown`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("worker task panicked")?
    }
}

/// Binds the listening socket and starts serving.
pub async fn start(config: &WorkerConfig, bus: Bus) -> anyhow::Result<RunningWorker> {
    config.validate().map_err(anyhow::Error::msg)?;
    let worker = config.worker_id.clone().unwrap_or_else(default_worker_id);
    let (broadcaster, subscriber, history) = bus.ports()?;
    let service = Arc::new(PerformanceService::new(
        worker.clone(),
        broadcaster,
        Arc::new(SystemClock),
        RuleEngine::new(config.rules()),
        config.outbox_capacity as usize,
    ));
    let limits = ClientLimits {
        queue: QueueLimits {
            max_messages: config.client_queue_messages as usize,
            max_bytes: config.client_queue_bytes as usize,
        },
        max_incoming_message: config.max_client_message as usize,
        ping_interval: config.ping_interval,
        client_timeout: config.client_timeout,
        subscriptions: SubscriptionLimits {
            max_per_connection: config.max_subscriptions as usize,
            selector: SelectorLimits {
                max_terms: config.max_selector_terms as usize,
                max_pattern_bytes: config.max_pattern_bytes as usize,
            },
        },
    };
    let access = access_control(config)?;
    let manager = Arc::new(
        ConnectionManager::new(
            worker.clone(),
            subscriber,
            history,
            Arc::clone(&access),
            limits,
        )
        .with_admission(Admission {
            allowed_origins: config.allowed_origins.clone(),
            max_connections: config.max_connections.map(|max| max as usize),
        })
        .with_io_uring(!config.no_io_uring),
    );
    let publish_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
    let report = Arc::new(WorkerStatus {
        manager: Arc::clone(&manager),
        service: Arc::clone(&service),
        publish_latency: publish_latency.clone(),
        started: Instant::now(),
    });
    let api = ApiConfig {
        max_body_bytes: config.max_body_bytes as usize,
        publish_quota: config
            .publish_rate
            .and_then(NonZeroU32::new)
            .map(|rate| bus.publish_quota(rate))
            .transpose()?,
        publish_latency,
        otlp_max_points: config.otlp_max_points as usize,
    };
    let app = fanout_http::router(Arc::clone(&service), report, access, api)
        .merge(fanout_ws::router(Arc::clone(&manager)))
        .fallback(fanout_http::not_found)
        .method_not_allowed_fallback(fanout_http::method_not_allowed)
        .layer(TraceLayer::new_for_http().on_failure(log_failure));

    let listener = bind(config.listen, config.reuse_port)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    if !config.metrics_interval.is_zero() {
        tokio::spawn(monitor::run(
            Arc::clone(&service),
            Arc::clone(&manager),
            config.metrics_interval,
            stop.clone(),
        ));
    }
    tokio::spawn(outbox::run(Arc::clone(&service), stop.clone()));
    let bus_name = match bus {
        Bus::Memory(_) => "memory".to_owned(),
        Bus::Redis(redis) => match (&redis.sentinel, &redis.cluster) {
            (Some(sentinel), _) => format!(
                "redis through sentinels {} (master {})",
                sentinel.sentinels.join(","),
                sentinel.master_name
            ),
            (None, Some(cluster)) => format!(
                "redis cluster {} ({} metrics partitions)",
                cluster.nodes.join(","),
                cluster.partitions
            ),
            (None, None) => format!("redis {}", fanout_redis::redact_url(&redis.url)),
        },
    };
    tracing::info!(%addr, bus = %bus_name, "worker listening");

    let serve_manager = Arc::clone(&manager);
    let serve_stop = stop.clone();
    let shutdown_timeout = config.shutdown_timeout;
    let send_buffer = config.client_send_buffer.map(|bytes| bytes as usize);
    let task = tokio::spawn(async move {
        let shutdown = {
            let manager = Arc::clone(&serve_manager);
            let stop = serve_stop.clone();
            async move {
                stop.cancelled().await;
                // Upgraded WebSocket connections are not tracked by the HTTP server's graceful
                // shutdown: close them ourselves.
                manager.shutdown();
            }
        };
        // Frames are small and latency matters more than packet count.
        let tune = move |tcp: &tokio::net::TcpStream| {
            let _ = tcp.set_nodelay(true);
            if let Some(bytes) = send_buffer {
                let _ = socket2::SockRef::from(tcp).set_send_buffer_size(bytes);
            }
        };
        crate::http_server::serve(listener, app, tune, shutdown, shutdown_timeout).await;
        if tokio::time::timeout(shutdown_timeout, serve_manager.wait_until_empty())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = serve_manager.connections(),
                "shutdown timeout: some clients did not acknowledge the close frame"
            );
        }
        tracing::info!("worker stopped");
        Ok(())
    });
    Ok(RunningWorker {
        addr,
        worker,
        manager,
        service,
        stop,
        task,
    })
}

/// A listening socket, shared with other processes when `reuse_port` is set.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// tower-http's line for an answer that failed: at `ERROR` for an internal error, at `DEBUG` for
/// a refusal the worker chose (`503` while the bus is down or the worker drains), which is
/// logged with its reason where it is decided (`publish refused: …` at `WARN`): one more `ERROR`
/// line per refused publish during an outage was noise where an operator looks for faults.
fn log_failure(
    failure: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass;
    let refused = matches!(
        failure,
        ServerErrorsFailureClass::StatusCode(status)
            if status == axum::http::StatusCode::SERVICE_UNAVAILABLE
    );
    let latency_ms = latency.as_millis() as u64;
    if refused {
        tracing::debug!(classification = %failure, latency_ms, "response failed");
    } else {
        tracing::error!(classification = %failure, latency_ms, "response failed");
    }
}
