//! The worker's HTTP/1.1 server: accepts connections and serves the router on each with hyper,
//! upgrades allowed, until shutdown.
//!
//! It replaces `axum::serve` for one reason: axum serves through hyper-util's protocol-sniffing
//! builder, which wraps each connection in a private type, so an upgraded WebSocket connection
//! cannot be taken back as the `TcpStream` it is. Served here, hyper's `Upgraded::downcast`
//! gives the WebSocket transport the socket itself, and the hot path writes to it with one
//! `try_write`, without layers, locks or tokio's cooperative budget in between (fanout-ws's
//! `socket` module; docs/PERFORMANCE.md "Hot path" has the measurement). WebSockets need
//! HTTP/1.1 anyway; HTTP/2 is not served.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use fanout_ws::HangUp;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener`, each accepted socket first given to `tune`, until `shutdown`
/// resolves; then stops accepting and waits, at most `grace`, for the responses in flight to be
/// written (upgraded connections are not waited for: their owner closes them). A response still
/// unwritten after `grace` — an SSE stream whose client stopped reading, whose `close` event
/// cannot get through — has its connection dropped: a client that reads nothing cannot hold the
/// worker's shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tune: impl Fn(&TcpStream),
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tune(&tcp);
        let hang_up = HangUp::new();
        let request_hang_up = hang_up.clone();
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(request_hang_up.clone());
                request
            },
        ));
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                // A response asked for its connection to be closed (an SSE stream whose client
                // reads nothing): dropping the connection closes the socket.
                () = hang_up.requested() => Ok(()),
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(grace, connection).await {
                        Ok(served) => served,
                        Err(_) => {
                            tracing::debug!("a response was still unwritten at shutdown: dropped");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// A failed accept: a connection that went away before it was accepted is nothing; anything
/// else (out of open files, say) is logged and waited out, as hyper and axum do.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection; trying again in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
