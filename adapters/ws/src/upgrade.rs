//! The WebSocket opening handshake (RFC 6455 §4.2) on axum's request, answered with `101` and
//! hyper's upgraded connection.
//!
//! axum's own `WebSocketUpgrade` hands over a `WebSocket` that owns its socket: every frame is
//! then framed and buffered per client by tungstenite and written by the connection's task. Here
//! the connection's write half goes to the client's queue instead, so that the hot path writes
//! each message's shared, pre-framed bytes straight to the socket (see `queue`), and tungstenite
//! only reads (client frames: masking, fragmentation, UTF-8, size limits, close and ping).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};

/// An accepted WebSocket handshake, before the response is sent.
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

/// Why a request is not a WebSocket handshake: a status and a reason.
#[derive(Debug)]
pub(crate) struct NotUpgrade(pub(crate) StatusCode, pub(crate) &'static str);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl<S: Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotUpgrade(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket handshake must be a GET request",
            ));
        }
        let has_token = |name: header::HeaderName, token: &str| {
            parts.headers.get_all(name).iter().any(|value| {
                value.to_str().is_ok_and(|value| {
                    value
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case(token))
                })
            })
        };
        if !has_token(header::CONNECTION, "upgrade") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !has_token(header::UPGRADE, "websocket") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v != "13")
        {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "WebSocket version 13 is the only one supported (Sec-WebSocket-Version: 13)",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header is missing",
            ));
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let Ok(accept) = HeaderValue::from_str(&accept) else {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header is malformed",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(NotUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded (WebSocket needs HTTP/1.1)",
            ));
        };
        Ok(Self { on_upgrade, accept })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` response; `serve` gets the connection once it is sent.
    pub(crate) fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(upgraded).await,
                Err(error) => tracing::debug!(%error, "the WebSocket upgrade failed"),
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, self.accept),
            ],
        )
            .into_response()
    }
}
