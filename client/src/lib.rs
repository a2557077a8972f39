//! The Rust client of fanout's protocol (docs/PROTOCOL.md).
//!
//! - [`ServerFrame`]: every frame a worker sends, decoded into the domain's validated types
//!   ([`Metric`](fanout_domain::Metric), [`Alert`](fanout_domain::Alert),
//!   [`LogId`](fanout_domain::LogId), [`LogEpoch`](fanout_domain::LogEpoch)), and [`CloseCode`].
//! - [`Connection`]: one WebSocket session with one worker (token, resume position,
//!   subscription: [`ConnectOptions`]), no reconnection; over a TCP stream the caller connected,
//!   with small [`Buffers`] for processes holding many connections; frames decoded or as their
//!   raw [`Text`]; `subscribe` and `unsubscribe` requests sent on it, answered among the frames
//!   ([`ServerFrame::Subscribed`], [`ServerFrame::Unsubscribed`], [`ServerFrame::Error`]).
//! - [`Subscription`]: what a connection receives (metric name patterns, label matchers, a
//!   minimum alert severity, an interval), as the connect-time query or a `subscribe` frame.
//! - [`Watch`] → [`Events`]: a `Stream` of [`Event`]s that reconnects with a jittered
//!   exponential [`Backoff`], rotating through several workers, and resumes after the last alert
//!   received, reporting a resume that could not replay everything; with a [`Subscription`]
//!   given, every connection it opens asks for it.
//! - [`Publisher`]: `POST /api/metrics` and `POST /api/alerts`, with a [`PublishError`] for
//!   every documented status.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use fanout_client::{Event, Watch};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut events = Watch::new(["ws://127.0.0.1:8080", "ws://127.0.0.1:8081"]).start()?;
//! while let Some(event) = events.next().await {
//!     if let Event::Alert(frame) = event {
//!         println!("{}", frame.alert.message());
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! This crate speaks the protocol from the outside: it depends on the domain's types and never
//! on the server's crates (axum, the adapters, the app).

#![warn(missing_docs, unreachable_pub)]

mod backoff;
mod close;
mod connection;
mod frame;
mod publish;
mod subscribe;
mod watch;

pub use backoff::Backoff;
pub use close::CloseCode;
pub use connection::{
    session_url, Buffers, ConnectError, ConnectOptions, Connection, Position, ReadError, SendError,
    Socket, Text,
};
pub use frame::{
    AlertFrame, BusReport, ErrorFrame, FrameError, Hello, MetricsFrame, Resume, ServerFrame,
};
pub use publish::{PublishError, Publisher, Receipt};
pub use subscribe::{unsubscribe_frame, QueryError, Subscription};
pub use watch::{Event, Events, Watch};

#[cfg(test)]
mod test_server;
