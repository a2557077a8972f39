//! Publishing and health checks over real HTTP.

use std::net::SocketAddr;

use serde_json::Value;

/// POSTs `body` with the given content type; returns the status and the JSON body (or Null).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} to {addr} failed: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// POSTs JSON and asserts it was accepted (202); returns the receipt.
pub async fn publish(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let (status, receipt) = post(addr, path, "application/json", body.to_string()).await;
    assert_eq!(status, 202, "publish to {addr}{path} refused: {receipt}");
    receipt
}

pub async fn health(addr: SocketAddr) -> Value {
    reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap_or_else(|e| panic!("GET /healthz on {addr} failed: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("/healthz on {addr} is not JSON: {e}"))
}

/// A response header as text, if it is there and is text.
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
