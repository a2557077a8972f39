//! A response's way to end its HTTP connection.

use std::sync::Arc;

use tokio::sync::Notify;

/// Ends one HTTP connection from inside a response. The worker's HTTP server puts one in the
/// extensions of every request it serves on a connection and closes the connection when it is
/// used: an SSE stream that ended on the server's side (its client given up: 4008, or its writes
/// stalled) uses it when the client has not read the rest within the client timeout, so that a
/// client that reads nothing holds no connection, no buffer and no file descriptor.
#[derive(Clone, Debug, Default)]
pub struct HangUp(Arc<Notify>);

impl HangUp {
    /// A new one, for one connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the server to close the connection (kept until it listens).
    pub fn hang_up(&self) {
        self.0.notify_one();
    }

    /// Resolves once the connection is to be closed.
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}
