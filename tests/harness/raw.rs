//! Hand-written WebSocket upgrade requests, for what `fanout-client` deliberately never sends:
//! any header (a browser's `Origin`, a token in `Authorization` next to one in the query) and a
//! query written as a user would type it, not encoded. Only the answer to the upgrade is kept.

use std::net::SocketAddr;

use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error;

use super::within;

/// The status a worker answers `GET /ws/performance{query}` with these headers (101 when it
/// upgraded, the connection then dropped), and the JSON body of a refusal (Null otherwise).
pub async fn upgrade(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = format!("ws://{addr}/ws/performance{query}")
        .into_client_request()
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, value) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName =
            name.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        let value = HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}"));
        request.headers_mut().insert(name, value);
    }
    match within("upgrade", tokio_tungstenite::connect_async(request)).await {
        Ok(_) => (101, Value::Null),
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice(body).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("{query}: the upgrade failed without an HTTP answer: {other}"),
    }
}

/// [`upgrade`]'s status alone.
pub async fn upgrade_status(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> u16 {
    upgrade(addr, query, headers).await.0
}
