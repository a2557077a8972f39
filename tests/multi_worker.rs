//! The mission, end to end: real `fanout` worker processes sharing one real Redis
//! (testcontainers), real WebSocket clients spread over them.
//!
//! Over 400 lines on purpose: a list of independent scenarios on one subject, each readable on
//! its own; what they share lives in `harness/`.

mod harness;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use harness::http::{health, publish};
use harness::process::{Supervisor, WorkerProcess};
use harness::redis::RedisServer;
use harness::{free_port, start_worker, wait_until, within, Client, On, Process};
use serde_json::{json, Value};

const CLIENTS_PER_WORKER: usize = 10;

async fn workers(redis: &RedisServer, count: usize) -> Vec<WorkerProcess> {
    let mut workers = Vec::new();
    for index in 1..=count {
        workers.push(
            start_worker::<Process>(&format!("w{index}"), On::Redis(&redis.url()), &[]).await,
        );
    }
    workers
}

async fn connect(worker: &WorkerProcess, count: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let client = Client::connect(worker.addr).await;
        assert_eq!(client.hello["worker"], worker.id.as_str());
        assert_eq!(
            client.hello["bus"]["state"], "subscribed",
            "{}",
            client.hello
        );
        clients.push(client);
    }
    clients
}

/// Reads frames until one whose `data[0].name` (metrics) or `data.message` (alert) is `marker`;
/// returns the frames before it.
async fn frames_until(client: &mut Client, marker: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.next_frame().await;
        let label = frame["data"][0]["name"]
            .as_str()
            .or(frame["data"]["message"].as_str());
        if label == Some(marker) {
            return frames;
        }
        frames.push(frame);
    }
}

#[tokio::test]
async fn messages_from_any_worker_reach_every_client_of_every_worker_once_and_in_order() {
    let redis = RedisServer::start().await;
    let workers = workers(&redis, 3).await;
    let mut clients = Vec::new();
    for worker in &workers {
        clients.extend(connect(worker, CLIENTS_PER_WORKER).await);
    }
    assert_eq!(clients.len(), 30);

    // Five metrics posted to worker 1 and five alerts produced on worker 3, interleaved.
    for index in 0..5 {
        publish(
            workers[0].addr,
            "/api/metrics",
            &json!({ "name": format!("m{index}"), "value": index }),
        )
        .await;
        publish(
            workers[2].addr,
            "/api/alerts",
            &json!({ "severity": "warning", "message": format!("a{index}") }),
        )
        .await;
    }
    // Published after every one of the above was accepted by Redis, so Redis delivers it last.
    publish(
        workers[1].addr,
        "/api/metrics",
        &json!({ "name": "end", "value": 0 }),
    )
    .await;

    for client in &mut clients {
        let frames = frames_until(client, "end").await;
        let metrics: Vec<&str> = frames
            .iter()
            .filter(|f| f["type"] == "metrics")
            .filter_map(|f| f["data"][0]["name"].as_str())
            .collect();
        let alerts: Vec<&str> = frames
            .iter()
            .filter(|f| f["type"] == "alert")
            .filter_map(|f| f["data"]["message"].as_str())
            .collect();
        // Exactly once each, in each publisher's order.
        assert_eq!(metrics, ["m0", "m1", "m2", "m3", "m4"], "{frames:?}");
        assert_eq!(alerts, ["a0", "a1", "a2", "a3", "a4"], "{frames:?}");
        assert!(frames
            .iter()
            .filter(|f| f["type"] == "metrics")
            .all(|f| f["origin"] == "w1"));
        assert!(frames
            .iter()
            .filter(|f| f["type"] == "alert")
            .all(|f| f["origin"] == "w3"));
        let seqs: Vec<u64> = frames
            .iter()
            .filter(|f| f["origin"] == "w3")
            .filter_map(|f| f["seq"].as_u64())
            .collect();
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "seq out of order: {seqs:?}"
        );
    }

    // Every log line carries the worker id and pid; connection counts are logged.
    for worker in &workers {
        let lines = worker.log_lines();
        let prefix = format!("worker={} pid=", worker.id);
        assert!(
            lines.iter().all(|line| line.starts_with(&prefix)),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|line| line.contains("connections=10")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|line| line.contains("subscribed")),
            "{lines:?}"
        );
    }
}

#[tokio::test]
async fn a_message_published_straight_into_redis_reaches_every_client() {
    let redis = RedisServer::start().await;
    let workers = workers(&redis, 3).await;
    let mut clients = Vec::new();
    for worker in &workers {
        clients.extend(connect(worker, CLIENTS_PER_WORKER).await);
    }

    let garbage = redis.publish_raw("performance:alerts", "{not json").await;
    assert_eq!(garbage, 3, "every worker's subscriber should hear it");
    let payload = r#"{"type":"alert","data":{"severity":"critical","message":"from outside"}}"#;
    assert_eq!(redis.publish_raw("performance:alerts", payload).await, 3);

    for client in &mut clients {
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "alert");
        assert_eq!(frame["origin"], "external");
        assert_eq!(frame["data"]["message"], "from outside");
    }
    // The garbage was counted, not delivered, and nothing died.
    for worker in &workers {
        let health = health(worker.addr).await;
        assert_eq!(health["bus"]["malformed"], 1, "{health}");
        assert_eq!(health["bus"]["state"], "subscribed", "{health}");
    }
}

#[tokio::test]
async fn a_worker_without_clients_stops_its_subscriber_and_the_next_client_gets_the_next_message() {
    let redis = RedisServer::start().await;
    let workers = workers(&redis, 3).await;
    let mut on_first = connect(&workers[0], CLIENTS_PER_WORKER).await;
    let on_second = connect(&workers[1], CLIENTS_PER_WORKER).await;
    assert_eq!(health(workers[2].addr).await["bus"]["state"], "idle");

    for client in on_second {
        client.close().await;
    }
    let second = workers[1].addr;
    wait_until("worker 2 has no clients and no subscriber", || async {
        let health = health(second).await;
        health["connections"] == 0 && health["bus"]["state"] == "idle"
    })
    .await;
    assert_eq!(health(workers[0].addr).await["connections"], 10);

    let mut newcomer = Client::connect(second).await;
    assert_eq!(newcomer.hello["bus"]["state"], "subscribed");
    publish(
        workers[2].addr,
        "/api/metrics",
        &json!({ "name": "next", "value": 1 }),
    )
    .await;
    assert_eq!(newcomer.next_frame().await["data"][0]["name"], "next");
    for client in &mut on_first {
        assert_eq!(client.next_frame().await["data"][0]["name"], "next");
    }
}

#[tokio::test]
async fn workers_recover_by_themselves_when_redis_restarts() {
    let redis = RedisServer::start().await;
    let workers = workers(&redis, 3).await;
    let mut clients = Vec::new();
    for worker in &workers {
        clients.extend(connect(worker, CLIENTS_PER_WORKER).await);
    }

    redis.stop().await;
    for worker in &workers {
        let addr = worker.addr;
        wait_until("/healthz shows the outage", || async {
            let health = health(addr).await;
            health["status"] == "degraded" && health["bus"]["state"] != "subscribed"
        })
        .await;
    }
    // Publishing while Redis is down is refused, not silently lost.
    let refused = harness::http::post(
        workers[0].addr,
        "/api/metrics",
        "application/json",
        r#"{"name":"x","value":1}"#,
    )
    .await;
    assert_eq!(refused.0, 503, "{}", refused.1);

    redis.start_again().await;
    let back = Instant::now();
    for worker in &workers {
        let addr = worker.addr;
        wait_until("/healthz shows the recovery", || async {
            let health = health(addr).await;
            health["status"] == "ok"
                && health["bus"]["state"] == "subscribed"
                && health["bus"]["reconnects"].as_u64() >= Some(1)
        })
        .await;
    }
    let recovery = back.elapsed();
    eprintln!("all 3 workers resubscribed {recovery:?} after Redis answered again");
    assert!(
        recovery < Duration::from_secs(6),
        "recovery took {recovery:?}"
    );

    for worker in &workers {
        assert_eq!(
            health(worker.addr).await["connections"],
            10,
            "clients must stay connected"
        );
    }
    publish(
        workers[1].addr,
        "/api/metrics",
        &json!({ "name": "after-restart", "value": 1 }),
    )
    .await;
    for client in &mut clients {
        assert_eq!(
            client.next_frame().await["data"][0]["name"],
            "after-restart"
        );
    }
}

#[tokio::test]
async fn fanout_workers_3_shares_one_port_and_reaches_clients_of_every_worker() {
    let redis = RedisServer::start().await;
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let supervisor = Supervisor::start(&[
        "--workers",
        "3",
        "--listen",
        &listen,
        "--bus",
        "redis",
        "--redis-url",
        &redis.url(),
        "--metrics-interval",
        "0s",
        "--worker-id",
        "multi",
    ]);
    let addr = listen.parse().unwrap_or_else(|e| panic!("{e}"));
    let mut clients = Vec::new();
    let mut seen = HashSet::new();
    within("clients to land on all 3 workers", async {
        while seen.len() < 3 {
            // The port answers as soon as the first worker listens; connect until each answered.
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => {}
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            let client = Client::connect(addr).await;
            seen.insert(
                client.hello["worker"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            clients.push(client);
        }
    })
    .await;
    assert_eq!(
        seen,
        HashSet::from([
            "multi-1".to_owned(),
            "multi-2".to_owned(),
            "multi-3".to_owned()
        ])
    );

    publish(
        addr,
        "/api/metrics",
        &json!({ "name": "to-all", "value": 1 }),
    )
    .await;
    for client in &mut clients {
        assert_eq!(client.next_frame().await["data"][0]["name"], "to-all");
    }
    // README: without --threads, the CPUs are shared out among the workers, at least one each.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let expected = (cpus / 3).max(1);
    let supervisor_pid = supervisor.child.id().unwrap_or_else(|| panic!("no pid"));
    let workers = child_pids(supervisor_pid);
    assert_eq!(workers.len(), 3, "worker processes: {workers:?}");
    // Every line's `pid` is its writer's (README): the supervisor names a child's `child_pid`.
    let started: Vec<String> = supervisor
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|line| line.contains("worker process started"))
        .cloned()
        .collect();
    assert_eq!(started.len(), 3, "{started:?}");
    for line in &started {
        let pids: Vec<&str> = line
            .split_whitespace()
            .filter(|field| field.starts_with("pid="))
            .collect();
        assert_eq!(pids, [format!("pid={supervisor_pid}")], "{line}");
        let child = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("child_pid="))
            .and_then(|pid| pid.parse::<u32>().ok());
        assert!(child.is_some_and(|pid| workers.contains(&pid)), "{line}");
    }
    for worker in workers {
        assert_eq!(
            environment(worker, "FANOUT_THREADS"),
            Some(expected.to_string()),
            "worker process {worker}"
        );
    }
    let status = supervisor.terminate().await;
    assert!(status.success(), "supervisor exited with {status}");
}

/// A worker that cannot run here (its address is held by another program, without
/// SO_REUSEPORT) is not restarted forever: once one died right after its start 5 times in a row,
/// the supervisor stops the others and exits with an error that says why.
#[tokio::test]
async fn the_supervisor_gives_up_on_a_worker_that_dies_right_after_each_start() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let listen = holder
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let mut supervisor = Supervisor::start(&[
        "--workers",
        "2",
        "--listen",
        &listen,
        "--bus",
        "redis",
        "--redis-url",
        "redis://127.0.0.1:1",
        "--metrics-interval",
        "0s",
    ]);
    let status = within("the supervisor to give up", supervisor.child.wait())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.success(), "exited with {status}");
    // Its last lines may still be on their way through the pipe.
    let log = std::sync::Arc::clone(&supervisor.log);
    wait_until("the supervisor to say it gave up", || {
        let said = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|line| line.contains("giving up"));
        async move { said }
    })
    .await;
    drop(holder);
}

/// The processes `pid` started, whichever of its threads started them (Linux's
/// `/proc/PID/task/TID/children`).
fn child_pids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("threads of {pid}: {e}"))
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .map(|child| child.parse().unwrap_or_else(|e| panic!("{child}: {e}")))
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The value of `name` in process `pid`'s environment as it started (`/proc/PID/environ`).
fn environment(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("environment of {pid}: {e}"));
    environ.split(|&byte| byte == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        let (key, value) = entry.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}
