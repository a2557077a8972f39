//! A loopback WebSocket server for the crate's unit tests: accepts one connection and tells the
//! request's target (path and query), so a test can see what a client asked for.

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::WebSocketStream;

/// Accepts one WebSocket connection on `listener`: the socket and the request's target.
#[expect(
    clippy::result_large_err,
    reason = "tungstenite's handshake callback returns its ErrorResponse by value"
)]
pub(crate) async fn accept(listener: &TcpListener) -> (WebSocketStream<TcpStream>, String) {
    let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
    let mut target = String::new();
    let callback = |request: &Request, response: Response| {
        target = request.uri().to_string();
        Ok::<_, ErrorResponse>(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (socket, target)
}
