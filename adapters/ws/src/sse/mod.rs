//! Server-Sent Events: `GET /sse/performance`, the WebSocket stream for clients that cannot or
//! need not speak WebSocket (curl, proxies that break upgrades, a browser's `EventSource`).
//!
//! An SSE client is an ordinary client of the worker, not a second fan-out: the same admission
//! (before any byte of the stream), the same registry and filters, the same bounded
//! `ClientQueue` with its slow-consumer policy, the same connection task and lifecycle (`hello`
//! once the subscription is live, snapshot, resume, drain). Only its socket differs: an
//! [`EventPipe`] that turns each WebSocket frame it is given into its SSE event (`event`) and
//! hands the parts to the response body through a bounded pipe (`pipe`). The fan-out does not
//! know: it writes the same shared frame to a WebSocket's TCP socket or to an SSE client's pipe,
//! through the one `Socket` call it always makes.
//!
//! SSE is one-way: there are no requests (the selectors come from the query string) and no
//! pongs, so the connection task does not close an SSE client for silence; a write that makes no
//! progress for the client timeout ends it, as for a WebSocket.
//!
//! It must never decide admission differently from a WebSocket upgrade, nor queue or encode
//! anything of its own on the per-message path.

mod event;
mod pipe;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::admission::{ResumeFrom, LAST_EVENT_ID};
use crate::{client, ConnectParams, ConnectionManager, HangUp};

pub(crate) use pipe::{Departure, EventPipe};

/// `X-Accel-Buffering: no`: proxies that buffer responses (nginx) pass the events on at once.
const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Admits the request as a WebSocket upgrade would be, then answers `200 text/event-stream`
/// whose body is the client's events; the connection task owns its slot. A request from a
/// browser page (`Origin`) gets the CORS header that lets the page read the answer, refusals
/// included: the origin allowlist has decided already (a disallowed origin is refused with 403),
/// so a page on another origin reads the stream exactly when a WebSocket from it would connect.
pub(crate) async fn stream(
    State(manager): State<Arc<ConnectionManager>>,
    RawQuery(query): RawQuery,
    hang_up: Option<Extension<HangUp>>,
    headers: HeaderMap,
) -> Response {
    let mut response = answer(manager, query, hang_up, &headers);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let answer_headers = response.headers_mut();
        answer_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        answer_headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

fn answer(
    manager: Arc<ConnectionManager>,
    query: Option<String>,
    hang_up: Option<Extension<HangUp>>,
    headers: &HeaderMap,
) -> Response {
    let params = match ConnectParams::parse(query.as_deref()) {
        Ok(params) => params,
        Err((reason, field)) => return crate::bad_request(&reason, field),
    };
    // An EventSource sends no header while its last id is empty; an empty one means the same.
    let last_event_id = match headers.get(LAST_EVENT_ID).map(HeaderValue::to_str) {
        None | Some(Ok("")) => None,
        Some(Ok(value)) => Some(value.trim()),
        Some(Err(_)) => {
            return crate::bad_request("Last-Event-ID is not visible ASCII text", LAST_EVENT_ID)
        }
    };
    let resume = match last_event_id {
        Some(value) => ResumeFrom::LastEventId(value),
        None => ResumeFrom::Query {
            last_alert_id: params.last_alert_id.as_deref(),
            epoch: params.epoch.as_deref(),
        },
    };
    let request = params.request(headers, resume);
    let start = match manager.admit(&request) {
        Ok(admitted) => Box::new(admitted),
        Err(refusal) => return refusal.into_response(),
    };
    let (pipe, body, departure) = pipe::pipe();
    let lingering = body.lingering();
    tokio::spawn(async move {
        client::serve_events(Arc::clone(&manager), pipe, departure, start).await;
        // The stream is over on this side; the body ends once the client has read the rest. One
        // that reads nothing of it within the client timeout is hung up on.
        let linger = manager.limits().client_timeout;
        if let Some(Extension(hang_up)) = hang_up {
            if tokio::time::timeout(linger, lingering.gone())
                .await
                .is_err()
            {
                manager.registry().count_hang_up();
                tracing::debug!("an SSE client read nothing of its stream's end: hung up");
                hang_up.hang_up();
            }
        }
    });
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
