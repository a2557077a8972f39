//! Limits that must hold under concurrency, checked from the outside against real `fanout`
//! processes: the connection cap with simultaneous upgrades, and the per-credential publish rate
//! across workers that share one Redis.

mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use harness::auth::{valid_token, SECRET};
use harness::http::health;
use harness::redis::RedisServer;
use harness::{start_worker, wait_until, within, On, Process};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What one upgrade attempt got: the open connection (101), or the refusal's status.
enum Upgrade {
    Accepted(Box<Socket>),
    Refused(u16),
}

/// Opens `count` TCP connections, then sends all their upgrade requests at the same instant (a
/// barrier releases them together), so every request reaches the worker before any connection
/// is registered.
async fn upgrade_together(addr: SocketAddr, count: usize) -> Vec<Upgrade> {
    let barrier = Arc::new(Barrier::new(count));
    let mut attempts = Vec::new();
    for _ in 0..count {
        let tcp = within("TCP connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        let barrier = Arc::clone(&barrier);
        attempts.push(tokio::spawn(async move {
            barrier.wait().await;
            let url = format!("ws://{addr}/ws/performance");
            match within(
                "the upgrade",
                tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
            )
            .await
            {
                Ok((socket, _)) => Upgrade::Accepted(Box::new(socket)),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    Upgrade::Refused(response.status().as_u16())
                }
                Err(other) => panic!("upgrade failed without an HTTP status: {other}"),
            }
        }));
    }
    let mut outcomes = Vec::new();
    for attempt in attempts {
        outcomes.push(
            attempt
                .await
                .unwrap_or_else(|e| panic!("upgrade task: {e}")),
        );
    }
    outcomes
}

/// Splits the outcomes into the accepted connections and the refusals' statuses.
fn accepted_and_refused(outcomes: Vec<Upgrade>) -> (Vec<Socket>, Vec<u16>) {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for outcome in outcomes {
        match outcome {
            Upgrade::Accepted(socket) => accepted.push(*socket),
            Upgrade::Refused(status) => refused.push(status),
        }
    }
    (accepted, refused)
}

/// Reads until the `hello` frame: the worker registered the connection and holds it.
async fn hello(socket: &mut Socket) -> Value {
    loop {
        let message = within("hello", socket.next())
            .await
            .unwrap_or_else(|| panic!("connection ended before hello"))
            .unwrap_or_else(|e| panic!("connection failed before hello: {e}"));
        if let Message::Text(text) = message {
            let frame: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
            assert_eq!(frame["type"], "hello", "first frame must be hello: {frame}");
            return frame;
        }
    }
}

/// Closes a connection and drains it until the worker acknowledged the close.
async fn close(mut socket: Socket) {
    let _ = socket.close(None).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(harness::WAIT, socket.next()).await {}
}

#[tokio::test]
async fn the_connection_cap_holds_when_clients_upgrade_at_the_same_instant() {
    // On the Redis bus the first client of an idle worker waits for the subscription: the
    // widest window for upgrades that pass the check before anyone is registered.
    let redis = RedisServer::start().await;
    let worker =
        start_worker::<Process>("w1", On::Redis(&redis.url()), &["--max-connections", "3"]).await;

    let (mut held, refused) = accepted_and_refused(upgrade_together(worker.addr, 8).await);
    assert_eq!(
        (held.len(), refused.as_slice()),
        (3, [503; 5].as_slice()),
        "8 simultaneous upgrades on a worker capped at 3"
    );
    for socket in &mut held {
        hello(socket).await;
    }
    assert_eq!(health(worker.addr).await["connections"], 3);
    // A full worker is not ready: the load balancer sends new clients elsewhere.
    assert_eq!(readyz_status(worker.addr).await, 503);

    // Every slot is given back when its connection ends.
    for socket in held {
        close(socket).await;
    }
    let addr = worker.addr;
    wait_until("the worker has no connection", || async {
        health(addr).await["connections"] == 0
    })
    .await;
    assert_eq!(readyz_status(worker.addr).await, 200);
    let (mut again, refused) = accepted_and_refused(upgrade_together(worker.addr, 3).await);
    assert_eq!(
        (again.len(), refused.len()),
        (3, 0),
        "the 3 released slots: {refused:?}"
    );
    for socket in &mut again {
        hello(socket).await;
    }
    let (extra, refused) = accepted_and_refused(upgrade_together(worker.addr, 1).await);
    assert_eq!(
        (extra.len(), refused),
        (0, vec![503]),
        "a 4th while 3 are held"
    );
}

const PUBLISH_RATE: u32 = 5;

fn publisher_token(subject: &str) -> String {
    valid_token(json!({ "sub": subject, "publish": true }))
}

#[tokio::test]
async fn the_publish_rate_is_per_credential_across_workers() {
    let redis = RedisServer::start().await;
    let rate = PUBLISH_RATE.to_string();
    let args = ["--publish-rate", rate.as_str(), "--auth-secret", SECRET];
    let mut workers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        workers.push(start_worker::<Process>(id, On::Redis(&redis.url()), &args).await);
    }
    let token = publisher_token("one-publisher");
    let http = reqwest::Client::new();
    let body = json!({ "name": "rate", "value": 1 }).to_string();

    // One credential, round-robin over the 3 workers, as fast as it can for a bounded burst.
    let burst = Duration::from_secs(1);
    let started = Instant::now();
    let mut accepted = 0_u32;
    let mut throttled = 0_u32;
    let mut round = 0_usize;
    while started.elapsed() < burst {
        let worker = &workers[round % workers.len()];
        round += 1;
        let response = within(
            "a publish",
            http.post(format!("http://{}/api/metrics", worker.addr))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send(),
        )
        .await
        .unwrap_or_else(|e| panic!("POST to {}: {e}", worker.id));
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let retry_after = harness::http::header(&response, "retry-after")
                    .and_then(|v| v.parse::<u64>().ok());
                assert!(
                    retry_after.is_some_and(|seconds| seconds >= 1),
                    "429 without Retry-After from {}",
                    worker.id
                );
                throttled += 1;
            }
            other => panic!(
                "unexpected {other} from {}: {}",
                worker.id,
                response.text().await.unwrap_or_default()
            ),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    // GCRA: a burst of `rate`, then `rate` per second, whichever worker answers.
    let bound = f64::from(PUBLISH_RATE) + (f64::from(PUBLISH_RATE) * elapsed).ceil();
    assert!(
        f64::from(accepted) <= bound,
        "{accepted} publishes accepted in {elapsed:.2}s over 3 workers; one credential's bound \
         is {bound} ({throttled} throttled, {round} sent)"
    );
    assert!(
        accepted >= PUBLISH_RATE,
        "the burst of {PUBLISH_RATE} must be accepted: {accepted} accepted, {throttled} throttled"
    );
    assert!(throttled > 0, "nothing was throttled in {round} publishes");
}

#[tokio::test]
async fn a_publish_is_refused_with_503_and_a_reason_when_the_quota_cannot_be_checked() {
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>(
        "w1",
        On::Redis(&redis.url()),
        &["--publish-rate", "5", "--redis-timeout", "500ms"],
    )
    .await;
    let (status, _) = harness::http::post(
        worker.addr,
        "/api/metrics",
        "application/json",
        json!({ "name": "before", "value": 1 }).to_string(),
    )
    .await;
    assert_eq!(status, 202, "with Redis up");
    redis.stop().await;
    let (status, body) = harness::http::post(
        worker.addr,
        "/api/metrics",
        "application/json",
        json!({ "name": "during", "value": 1 }).to_string(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.contains("publish rate limit unavailable")),
        "the refusal says the quota could not be checked: {body}"
    );
}

/// OPERATIONS.md: every publish request counts against `--publish-rate`, "also one then refused
/// with 503 because the bus could not take it". The worker's Redis user loses `SUBSCRIBE` and its
/// subscriber is cut, so the subscriber cannot come back while Redis answers everything else (the
/// quota's script included): a metric is then admitted by the quota and refused with 503 (its
/// clients could miss it), and the next one, within the same second at `--publish-rate 1`, gets
/// 429 — the 503 was counted. Once `SUBSCRIBE` is allowed again, publishes are taken again.
#[tokio::test]
async fn a_publish_the_bus_refused_with_503_still_counts_against_the_publish_rate() {
    let redis = RedisServer::start().await;
    let user = [
        "ACL",
        "SETUSER",
        "limited",
        "on",
        ">limited-secret",
        "~*",
        "&*",
        "+@all",
    ];
    assert_eq!(redis.command(&user).await, redis::Value::Okay);
    let url = redis
        .url()
        .replace("redis://", "redis://limited:limited-secret@");
    let worker = start_worker::<Process>(
        "w1",
        On::Redis(&url),
        &["--publish-rate", "1", "--redis-timeout", "300ms"],
    )
    .await;
    // A client, so that the worker needs its subscription.
    let _client = harness::Client::connect(worker.addr).await;
    let post = |name: &'static str| {
        harness::http::post(
            worker.addr,
            "/api/metrics",
            "application/json",
            json!({ "name": name, "value": 1 }).to_string(),
        )
    };

    let no_subscribe = ["ACL", "SETUSER", "limited", "-subscribe"];
    assert_eq!(redis.command(&no_subscribe).await, redis::Value::Okay);
    redis
        .command(&["CLIENT", "KILL", "USER", "limited", "TYPE", "pubsub"])
        .await;
    wait_until("the subscriber to be cut", || async {
        health(worker.addr).await["bus"]["state"] != "subscribed"
    })
    .await;
    let (status, body) = post("refused by the bus").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("bus unavailable")),
        "refused by the bus (the subscription is not back), not by the quota: {body}"
    );
    let (status, body) = post("over the rate").await;
    assert_eq!(
        status, 429,
        "the 503 just before did not count against --publish-rate 1: {body}"
    );

    let subscribe_again = ["ACL", "SETUSER", "limited", "+subscribe"];
    assert_eq!(redis.command(&subscribe_again).await, redis::Value::Okay);
    wait_until("the subscriber to be back", || async {
        health(worker.addr).await["bus"]["state"] == "subscribed"
    })
    .await;
    wait_until("a publish to be taken again", || async {
        post("taken").await.0 == 202
    })
    .await;
}

async fn readyz_status(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|response| response.status().as_u16())
        .unwrap_or_else(|e| panic!("GET /readyz on {addr} failed: {e}"))
}
