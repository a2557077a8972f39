//! The axum WebSocket transport: `GET /ws/performance`, the per-worker [`ConnectionManager`],
//! and each client's bounded queue and writer; and the same stream as Server-Sent Events,
//! `GET /sse/performance`, for clients that do not speak WebSocket (`sse`).
//!
//! It implements the domain's [`fanout_domain::LocalDelivery`] port: every bus message is encoded
//! once per worker and the bytes are shared by every client. It never publishes and never talks
//! to a bus directly; it only holds the worker's subscription through the
//! [`fanout_domain::BusSubscriber`] port.
//!
//! Where things are: `admission` decides an upgrade request (and `slots` holds the connection
//! cap); `manager` is the connection lifecycle (subscription, register, greeting, replay,
//! drain); `registry` is the hot path (clients, fan-out, counters); `snapshot` keeps the latest
//! metrics; `queue` is one client's bounded queue; `client` is one connection's task; `protocol`
//! holds every frame and close code the server writes; `sse` serves a client's frames as
//! Server-Sent Events.

#![warn(missing_docs, unreachable_pub)]

mod admission;
mod client;
mod conflate;
mod filter;
mod hang_up;
mod manager;
mod protocol;
mod queue;
mod registry;
mod request_rate;
#[cfg(target_os = "linux")]
mod ring;
mod slots;
mod snapshot;
mod socket;
mod sse;
#[cfg(test)]
mod subscriptions_model;
mod upgrade;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fanout_domain::SelectorLimits;

use crate::admission::{ResumeFrom, UpgradeRequest};
use crate::upgrade::{NotUpgrade, Upgrade};

pub use admission::Admission;
pub use hang_up::HangUp;
pub use manager::{ConnectionManager, Refused};
pub use protocol::CloseReason;
pub use queue::QueueLimits;
pub use registry::DeliveryStats;

/// The WebSocket endpoint's path.
pub const PATH: &str = "/ws/performance";

/// The Server-Sent Events endpoint's path: the same stream, the same query.
pub const SSE_PATH: &str = "/sse/performance";

/// Per-client bounds and timers.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// The bounds of each client's outgoing queue (see [`QueueLimits`]).
    pub queue: QueueLimits,
    /// Largest message a client may send; larger ones close the connection with 1009.
    pub max_incoming_message: usize,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// A client silent this long (no pong, no frame) is closed with 4001; a write that takes this
    /// long ends the connection.
    pub client_timeout: Duration,
    /// Bounds on what a client may subscribe to.
    pub subscriptions: SubscriptionLimits,
}

/// Bounds on a connection's subscriptions (docs/PROTOCOL.md, "Subscriptions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Most subscriptions one connection may hold (`--max-subscriptions`).
    pub max_per_connection: usize,
    /// Bounds on each selector (`--max-selector-terms`, `--max-pattern-bytes`).
    pub selector: SelectorLimits,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        Self {
            max_per_connection: 16,
            selector: SelectorLimits::default(),
        }
    }
}

/// The routes of this transport, to be merged into the worker's router.
pub fn router(manager: Arc<ConnectionManager>) -> Router {
    Router::new()
        .route(PATH, get(upgrade))
        .route(SSE_PATH, get(sse::stream))
        .with_state(manager)
}

/// A `400` naming the query parameter or header at fault.
fn bad_request(reason: &str, field: &str) -> Response {
    let body = serde_json::json!({ "error": reason, "field": field });
    (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// Query parameters of the upgrade request.
#[derive(Default)]
struct ConnectParams {
    /// The last alert-log id the client saw: it is sent every retained alert after it first.
    last_alert_id: Option<String>,
    /// The epoch that id belongs to (from the same alert frame): a log reset since is detected.
    epoch: Option<String>,
    /// The access token, for browsers that cannot set `Authorization`.
    token: Option<String>,
    /// The first subscription's metric name patterns, comma-separated.
    metrics: Option<String>,
    /// The first subscription's label matchers, comma-separated.
    where_: Option<String>,
    /// The first subscription's minimum alert severity, or `none`.
    alerts: Option<String>,
    /// The first subscription's conflation interval.
    interval: Option<String>,
}

impl ConnectParams {
    /// The admission request these parameters and `headers` make, resuming from `resume`.
    fn request<'a>(&'a self, headers: &'a HeaderMap, resume: ResumeFrom<'a>) -> UpgradeRequest<'a> {
        UpgradeRequest {
            token: bearer_token(headers, self.token.as_deref()),
            origin: headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()),
            resume,
            metrics: self.metrics.as_deref(),
            where_: self.where_.as_deref(),
            alerts: self.alerts.as_deref(),
            interval: self.interval.as_deref(),
        }
    }

    /// Reads the query string; a parameter given twice is refused, naming it. Unknown
    /// parameters are ignored (an older server ignores a newer client's).
    fn parse(query: Option<&str>) -> Result<Self, (String, &'static str)> {
        let mut params = Self::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let (slot, name) = match key.as_ref() {
                "last_alert_id" => (&mut params.last_alert_id, "last_alert_id"),
                "epoch" => (&mut params.epoch, "epoch"),
                "token" => (&mut params.token, "token"),
                "metrics" => (&mut params.metrics, "metrics"),
                "where" => (&mut params.where_, "where"),
                "alerts" => (&mut params.alerts, "alerts"),
                "interval" => (&mut params.interval, "interval"),
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err((format!("the parameter {name} is given twice"), name));
            }
        }
        Ok(params)
    }
}

/// The bearer token of a request: `Authorization: Bearer …`, else the `token` query parameter.
pub fn bearer_token<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(fanout_domain::bearer_token_of)
        .or(query_token)
}

/// Admits the request (see `admission`), then upgrades it; the connection task owns its slot.
async fn upgrade(
    State(manager): State<Arc<ConnectionManager>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<Upgrade, NotUpgrade>,
) -> Response {
    // Every refusal has a JSON body, including the extractor's own (a request that is not a
    // WebSocket upgrade).
    let refuse = |status: axum::http::StatusCode, reason: String| {
        (status, axum::Json(serde_json::json!({ "error": reason }))).into_response()
    };
    let params = match ConnectParams::parse(query.as_deref()) {
        Ok(params) => params,
        Err((reason, field)) => return bad_request(&reason, field),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(NotUpgrade(status, reason)) => return refuse(status, reason.to_string()),
    };
    let request = params.request(
        &headers,
        ResumeFrom::Query {
            last_alert_id: params.last_alert_id.as_deref(),
            epoch: params.epoch.as_deref(),
        },
    );
    let start = match manager.admit(&request) {
        Ok(admitted) => Box::new(admitted),
        Err(refusal) => return refusal.into_response(),
    };
    upgrade.on_upgrade(move |upgraded| client::serve(manager, upgraded, start))
}

#[cfg(test)]
mod tests {
    use super::ConnectParams;

    #[test]
    fn query_parameters_are_decoded_and_a_repeated_one_is_named() {
        let params = ConnectParams::parse(Some("metrics=api.*%2Chost.cpu&where=k%3Da%7Cb&x=1"))
            .unwrap_or_else(|(reason, _)| panic!("{reason}"));
        assert_eq!(params.metrics.as_deref(), Some("api.*,host.cpu"));
        assert_eq!(params.where_.as_deref(), Some("k=a|b"));
        assert!(ConnectParams::parse(None).is_ok());
        let Err((reason, field)) = ConnectParams::parse(Some("where=a%3Db&where=c%3Dd")) else {
            panic!("a repeated parameter was accepted");
        };
        assert_eq!(field, "where");
        assert_eq!(reason, "the parameter where is given twice");
    }
}

/// The fan-out hot path without sockets, for the Criterion benchmarks. Not a public API.
#[doc(hidden)]
pub mod bench_support {
    use std::sync::Arc;

    use fanout_domain::{Envelope, LocalDelivery};

    use crate::queue::ClientQueue;
    use crate::registry::ClientRegistry;
    use crate::QueueLimits;

    /// A registry with `clients` queues and nobody writing them.
    pub struct Fanout {
        registry: Arc<ClientRegistry>,
        queues: Vec<Arc<ClientQueue>>,
    }

    impl Fanout {
        pub fn new(clients: usize) -> Self {
            let registry = ClientRegistry::new();
            let limits = QueueLimits {
                max_messages: 1024,
                max_bytes: 1024 * 1024,
            };
            let queues: Vec<_> = (0..clients)
                .map(|_| Arc::new(ClientQueue::new(limits)))
                .collect();
            for (id, queue) in queues.iter().enumerate() {
                registry.insert(id as u64, Arc::clone(queue));
            }
            Self { registry, queues }
        }

        /// Encodes `envelope` once and queues it for every client.
        pub fn deliver(&self, envelope: &Envelope) {
            self.registry.deliver(envelope);
        }

        /// Encodes and frames `envelope` once, as the fan-out does per message: its bytes' length.
        pub fn frame(envelope: &Envelope) -> usize {
            crate::protocol::Frame::for_envelope(crate::protocol::FrameKind::Metrics, envelope)
                .wire
                .len()
        }

        /// Empties every queue (what the writers would do), returning how many frames were taken.
        pub fn drain(&self) -> usize {
            let mut batch = Vec::new();
            let mut taken = 0;
            for queue in &self.queues {
                queue.drain_now(&mut batch);
                taken += batch.len();
                batch.clear();
            }
            taken
        }
    }

    /// A registry whose `clients` are live over loopback TCP, read by one thread: the direct
    /// write path, socket writes included.
    pub struct LiveFanout {
        registry: Arc<ClientRegistry>,
        /// Bytes the clients have read, all together.
        read: Arc<std::sync::atomic::AtomicU64>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        reader: Option<std::thread::JoinHandle<()>>,
        /// The runtime whose I/O driver tells the sockets' readiness.
        _runtime: tokio::runtime::Runtime,
    }

    impl LiveFanout {
        /// `ring`: a message's direct sends in one `io_uring` submission (the default), or one
        /// `send(2)` each.
        pub fn new(clients: usize, ring: bool) -> std::io::Result<Self> {
            use std::sync::atomic::{AtomicBool, AtomicU64};

            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_io()
                .build()?;
            let _entered = runtime.enter();
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let registry = ClientRegistry::new();
            if !ring {
                registry.without_ring();
            }
            let mut readers = Vec::new();
            for id in 0..clients {
                let client = std::net::TcpStream::connect(listener.local_addr()?)?;
                client.set_nonblocking(true)?;
                readers.push(client);
                let (server, _) = listener.accept()?;
                server.set_nonblocking(true)?;
                server.set_nodelay(true)?;
                let server = tokio::net::TcpStream::from_std(server)?;
                // Registered with the runtime as a connection's would be before its first write.
                runtime.block_on(server.writable())?;
                let socket = crate::socket::Tcp(Arc::new(server));
                let queue = Arc::new(ClientQueue::new(QueueLimits {
                    max_messages: 1024,
                    max_bytes: 1024 * 1024,
                }));
                queue.attach(Box::new(socket));
                queue.go_live(Vec::new(), None);
                registry.insert(id as u64, queue);
            }
            let read = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (read, stop) = (Arc::clone(&read), Arc::clone(&stop));
                std::thread::spawn(move || read_all(&mut readers, &read, &stop))
            };
            Ok(Self {
                registry,
                read,
                stop,
                reader: Some(reader),
                _runtime: runtime,
            })
        }

        /// Hands `envelope` to every client and waits until they have read `bytes` more in all.
        /// Panics after 10 s: a frame was queued, not written (nothing here writes queues).
        pub fn deliver(&self, envelope: &Envelope, bytes: u64) {
            use std::sync::atomic::Ordering;
            let before = self.read.load(Ordering::Acquire);
            self.registry.deliver(envelope);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self.read.load(Ordering::Acquire) < before + bytes {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a frame was queued instead of written"
                );
                std::hint::spin_loop();
            }
        }
    }

    impl Drop for LiveFanout {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Release);
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        }
    }

    fn read_all(
        clients: &mut [std::net::TcpStream],
        read: &std::sync::atomic::AtomicU64,
        stop: &std::sync::atomic::AtomicBool,
    ) {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let mut buffer = [0u8; 64 * 1024];
        while !stop.load(Ordering::Acquire) {
            for client in clients.iter_mut() {
                while let Ok(n @ 1..) = client.read(&mut buffer) {
                    read.fetch_add(n as u64, Ordering::AcqRel);
                }
            }
        }
    }
}
