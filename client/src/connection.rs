//! One WebSocket session with one worker: the handshake (token, resume position, subscription)
//! and the frames that follow, until the connection ends; the client's requests (`subscribe`,
//! `unsubscribe`) are sent on it and answered among those frames. No reconnection: that is
//! [`crate::Watch`]'s job, built on this.
//!
//! Over 400 lines on purpose: one session's handshake, frames and requests are one concept; its tests are in connection/tests.rs.

use fanout_domain::{LogEpoch, LogId};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::publish::at;
use crate::subscribe::unsubscribe_frame;
use crate::{CloseCode, FrameError, QueryError, ServerFrame, Subscription};

/// The socket under a [`Connection`].
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A frame's text as the server wrote it: a `str` (by `Deref`), shared with the read buffer's
/// frame rather than copied out of it.
pub type Text = tungstenite::Utf8Bytes;

/// The memory a [`Connection`] holds for its frames, whatever it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffers {
    /// Bytes of the read buffer, allocated when the session opens.
    pub read: usize,
    /// Bytes of outgoing frames gathered before they are written to the socket; 0 writes each
    /// frame at once.
    pub write: usize,
}

impl Buffers {
    /// What [`ConnectOptions::default`], [`Connection::open`] and [`Connection::open_over`] use:
    /// 128 KiB each, for a few connections that read a lot.
    pub const DEFAULT: Self = Self {
        read: 128 * 1024,
        write: 128 * 1024,
    };

    /// 8 KiB to read, nothing gathered to write: for a process that holds tens of thousands of
    /// connections (a load tool), where the default buffers would cost gigabytes.
    pub const SMALL: Self = Self {
        read: 8 * 1024,
        write: 0,
    };

    /// The WebSocket configuration: these sizes, every other setting at the library's default
    /// (message and frame size limits, an unbounded write buffer on write errors).
    fn config(self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read)
            .write_buffer_size(self.write)
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The route every worker serves the stream on.
const ROUTE: &str = "/ws/performance";

/// A position in the alert log to resume from: the `id` and `epoch` of the last alert frame
/// received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The `id` of the last alert received: the worker replays the alerts after it.
    pub id: LogId,
    /// The identity of the log `id` belongs to. Without it a reset log whose new ids pass `id`
    /// goes unnoticed.
    pub epoch: Option<LogEpoch>,
}

/// How to open a session: [`Connection::connect`] and [`Connection::connect_over`] take one.
/// [`ConnectOptions::default`] is a fresh session without a token, receiving everything, with
/// [`Buffers::DEFAULT`].
///
/// ```no_run
/// use fanout_client::{ConnectOptions, Connection, Subscription};
///
/// # async fn run() -> Result<(), fanout_client::ConnectError> {
/// let alerts_only = Subscription::default().no_metrics();
/// let connection = Connection::connect(
///     "ws://127.0.0.1:8080",
///     &ConnectOptions {
///         subscription: Some(&alerts_only),
///         ..ConnectOptions::default()
///     },
/// )
/// .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions<'a> {
    /// Sent as `Authorization: Bearer token`.
    pub token: Option<&'a str>,
    /// Resume after this position (`?last_alert_id=&epoch=`) instead of starting fresh.
    pub resume: Option<&'a Position>,
    /// The connection's first subscription, `default`, as query parameters
    /// (`metrics=&where=&alerts=&interval=`); `None` receives everything. The snapshot and a
    /// resume's replay hold only what it matches.
    pub subscription: Option<&'a Subscription>,
    /// The memory the connection holds for its frames.
    pub buffers: Buffers,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `url` is not a worker URL (`ws://` or `wss://`, no query or fragment), the token is not a
    /// valid header value, or [`Watch`](crate::Watch) was given no URL. Retrying will not help.
    #[error("invalid worker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (empty when there was none).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The subscription cannot be carried in the connect-time query (a term holds a `,`).
    /// Retrying will not help; connect without it and send it with
    /// [`Connection::subscribe`].
    #[error(transparent)]
    Subscription(#[from] QueryError),
    /// The worker answered the upgrade with an HTTP status: 401 (no valid token), 403 (the token
    /// allows no channel, or the origin is not allowed), 503 (at its connection limit, or
    /// shutting down), 400 (a malformed position, or a malformed subscription: `field` names the
    /// query parameter, `metrics`, `where`, `alerts` or `interval`).
    #[error("the worker refused the connection with {status}: {error}{}", at(.field))]
    Refused {
        /// The HTTP status the worker answered with.
        status: u16,
        /// The worker's reason, from its `{"error"}` body; empty when it gave none.
        error: String,
        /// Where the problem is, from its `{"field"}` body (`metrics`, `last_alert_id`); `None`
        /// when it named no place.
        field: Option<String>,
    },
    /// The TCP connection or the WebSocket handshake failed (refused, reset, TLS): the worker
    /// may be down; try again later or another worker.
    #[error("cannot connect: {0}")]
    Transport(#[source] tungstenite::Error),
    /// Only from [`Watch`](crate::Watch): the attempt, handshake included, took longer than the
    /// watch's connect timeout (this `Duration`); the next attempt goes to the next URL.
    #[error("the worker did not answer within {0:?}")]
    TimedOut(std::time::Duration),
}

/// How a session ended, or why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The server closed the connection, with the code of PROTOCOL.md's table when it gave one.
    #[error("the server closed the connection with {}: {reason}", describe(.code))]
    Closed {
        /// The close code; `None` when the close frame carried none.
        code: Option<CloseCode>,
        /// The close frame's reason; empty when it gave none.
        reason: String,
    },
    /// The connection failed or ended without a close frame.
    #[error("the connection was lost: {0}")]
    Lost(#[source] tungstenite::Error),
    /// The socket yields no more frames: the session is already over (a read after `Closed` or
    /// `Lost`).
    #[error("the connection ended without a close frame")]
    Ended,
    /// A frame that is not a protocol frame; the connection is still open.
    #[error(transparent)]
    Malformed(#[from] FrameError),
    /// The server sent a binary frame, which the protocol never does; the connection is still
    /// open.
    #[error("the server sent a binary frame")]
    Binary,
}

/// A request could not be sent: the connection is closed or lost (the next read says how).
#[derive(Debug, thiserror::Error)]
#[error("cannot send the request: {0}")]
pub struct SendError(#[source] pub tungstenite::Error);

fn describe(code: &Option<CloseCode>) -> String {
    code.map_or_else(|| "no code".to_owned(), |code| code.to_string())
}

impl ReadError {
    /// Whether the connection is over (as opposed to one bad frame on a live connection).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::Lost(_) | Self::Ended)
    }
}

/// One open session with a worker, over a TCP stream (`S`, the default: plain or TLS) or any
/// stream the caller opened ([`Connection::connect_over_stream`]).
pub struct Connection<S = MaybeTlsStream<TcpStream>> {
    socket: WebSocketStream<S>,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Connection {
    /// Opens a session with the worker at `url` (`ws://host:port`, or the full
    /// `ws://host:port/ws/performance`; `wss://` too), with `Authorization: Bearer token` when
    /// given, resuming after `resume` when given.
    pub async fn open(
        url: &str,
        token: Option<&str>,
        resume: Option<&Position>,
    ) -> Result<Self, ConnectError> {
        let options = ConnectOptions {
            token,
            resume,
            ..ConnectOptions::default()
        };
        Self::connect(url, &options).await
    }

    /// Opens a session with the worker at `url` (`ws://host:port`, or the full
    /// `ws://host:port/ws/performance`; `wss://` too) as `options` say: token, resume position,
    /// subscription, buffers.
    pub async fn connect(url: &str, options: &ConnectOptions<'_>) -> Result<Self, ConnectError> {
        let request = request(url, options)?;
        let (socket, _) = tokio_tungstenite::connect_async_with_config(
            request,
            Some(options.buffers.config()),
            false,
        )
        .await
        .map_err(refused)?;
        Ok(Self { socket })
    }

    /// Opens a session over a TCP stream the caller connected (to set socket options first, or
    /// bind a source address). Plain `ws://` only.
    pub async fn open_over(
        tcp: TcpStream,
        url: &str,
        token: Option<&str>,
        resume: Option<&Position>,
    ) -> Result<Self, ConnectError> {
        Self::open_over_with(tcp, url, token, resume, Buffers::DEFAULT).await
    }

    /// [`Connection::open_over`] with the given [`Buffers`] (`Buffers::SMALL` for many
    /// connections in one process).
    pub async fn open_over_with(
        tcp: TcpStream,
        url: &str,
        token: Option<&str>,
        resume: Option<&Position>,
        buffers: Buffers,
    ) -> Result<Self, ConnectError> {
        let options = ConnectOptions {
            token,
            resume,
            subscription: None,
            buffers,
        };
        Self::connect_over(tcp, url, &options).await
    }

    /// [`Connection::connect`] over a TCP stream the caller connected (to set socket options
    /// first, or bind a source address). Plain `ws://` only.
    pub async fn connect_over(
        tcp: TcpStream,
        url: &str,
        options: &ConnectOptions<'_>,
    ) -> Result<Self, ConnectError> {
        Connection::connect_over_stream(MaybeTlsStream::Plain(tcp), url, options).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// [`Connection::connect`] over a stream the caller opened and connected (one that records
    /// what it reads, say). Plain `ws://` only: TLS, if any, is the stream's.
    pub async fn connect_over_stream(
        stream: S,
        url: &str,
        options: &ConnectOptions<'_>,
    ) -> Result<Self, ConnectError> {
        let request = request(url, options)?;
        let (socket, _) = tokio_tungstenite::client_async_with_config(
            request,
            stream,
            Some(options.buffers.config()),
        )
        .await
        .map_err(refused)?;
        Ok(Self { socket })
    }

    /// The stream under the session (read it only through the session: bytes taken from it
    /// directly are frames the session never sees).
    pub fn stream(&self) -> &S {
        self.socket.get_ref()
    }

    /// Sends a `subscribe` request: adds `subscription` as `id` (1–64 bytes), or replaces the
    /// subscription with that `id` (`default` is the connect-time one). The answer arrives through
    /// [`Connection::next_frame`], in the order of the requests: [`ServerFrame::Subscribed`] and a
    /// [`ServerFrame::Snapshot`] of what the subscription matches, or a [`ServerFrame::Error`]
    /// naming the field at fault (the subscriptions are then unchanged). Frames read before the
    /// answer may still follow the previous subscriptions.
    pub async fn subscribe(
        &mut self,
        id: &str,
        subscription: &Subscription,
    ) -> Result<(), SendError> {
        self.send(subscription.subscribe_frame(id)).await
    }

    /// Sends an `unsubscribe` request: removes the subscription `id`. Answered through
    /// [`Connection::next_frame`] with [`ServerFrame::Unsubscribed`], or [`ServerFrame::Error`]
    /// when the connection holds no such id. With no subscription left, no metrics and no alerts
    /// arrive until the next `subscribe`.
    pub async fn unsubscribe(&mut self, id: &str) -> Result<(), SendError> {
        self.send(unsubscribe_frame(id)).await
    }

    async fn send(&mut self, frame: String) -> Result<(), SendError> {
        self.socket
            .send(Message::text(frame))
            .await
            .map_err(SendError)
    }

    /// The next frame. Pings are answered while reading (so a client that stops calling this is
    /// closed by the worker with 4001 after `--client-timeout`).
    pub async fn next_frame(&mut self) -> Result<ServerFrame, ReadError> {
        Ok(ServerFrame::from_json(&self.next_text().await?)?)
    }

    /// The next frame's text as the server wrote it, neither decoded nor copied (to forward it,
    /// to look for something in it, or to decode it some other way). Never
    /// [`ReadError::Malformed`].
    pub async fn next_text(&mut self) -> Result<Text, ReadError> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Binary(_))) => return Err(ReadError::Binary),
                Some(Ok(Message::Close(frame))) => {
                    return Err(ReadError::Closed {
                        code: frame.as_ref().map(|f| CloseCode::from(u16::from(f.code))),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    })
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(error)) => return Err(ReadError::Lost(error)),
                None => return Err(ReadError::Ended),
            }
        }
    }

    /// Closes the session: sends a close frame and reads until the server acknowledges it
    /// (bounded by `wait`), so the close is complete on both sides.
    pub async fn close(mut self, wait: std::time::Duration) {
        let _ = self.socket.close(None).await;
        let drained = async { while let Some(Ok(_)) = self.socket.next().await {} };
        let _ = tokio::time::timeout(wait, drained).await;
    }

    /// The socket itself, for what the protocol does not need (tests that send a server bad
    /// input, for one).
    pub fn socket_mut(&mut self) -> &mut WebSocketStream<S> {
        &mut self.socket
    }
}

/// The URL of a session: the worker's route, with the resume position in the query.
pub fn session_url(url: &str, resume: Option<&Position>) -> Result<String, ConnectError> {
    url_with(url, resume, None)
}

/// [`session_url`], with the subscription's parameters after the resume position's.
fn url_with(
    url: &str,
    resume: Option<&Position>,
    subscription: Option<&Subscription>,
) -> Result<String, ConnectError> {
    let invalid = |reason: &str| ConnectError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(invalid("expected ws:// or wss://"));
    }
    if url.contains(['?', '#']) {
        return Err(invalid("a worker URL has no query or fragment"));
    }
    let base = url.trim_end_matches('/');
    let mut session = if base.ends_with(ROUTE) {
        base.to_owned()
    } else {
        format!("{base}{ROUTE}")
    };
    // A LogId is digits and '-', an epoch letters, digits, '-' and '_': nothing to escape.
    if let Some(position) = resume {
        session.push_str(&format!("?last_alert_id={}", position.id));
        if let Some(epoch) = &position.epoch {
            session.push_str(&format!("&epoch={}", epoch.as_str()));
        }
    }
    if let Some(subscription) = subscription {
        let query = subscription.query()?;
        if !query.is_empty() {
            session.push(if resume.is_some() { '&' } else { '?' });
            session.push_str(&query);
        }
    }
    Ok(session)
}

fn request(
    url: &str,
    options: &ConnectOptions<'_>,
) -> Result<tungstenite::handshake::client::Request, ConnectError> {
    let session = url_with(url, options.resume, options.subscription)?;
    let mut request =
        session
            .as_str()
            .into_client_request()
            .map_err(|error| ConnectError::InvalidUrl {
                url: url.to_owned(),
                reason: error.to_string(),
            })?;
    if let Some(token) = options.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ConnectError::InvalidUrl {
                url: url.to_owned(),
                reason: "the token is not a valid header value".to_owned(),
            }
        })?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

/// An upgrade the worker answered with a status becomes [`ConnectError::Refused`] with the
/// reason and the place from its `{"error","field"}` body.
fn refused(error: tungstenite::Error) -> ConnectError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok());
            let text = |name: &str| {
                body.as_ref()
                    .and_then(|body| body.get(name)?.as_str().map(str::to_owned))
            };
            ConnectError::Refused {
                status,
                error: text("error").unwrap_or_default(),
                field: text("field"),
            }
        }
        other => ConnectError::Transport(other),
    }
}

#[cfg(test)]
mod tests;
