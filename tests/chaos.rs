//! Faults, proven with real parts: Redis paused, stopped, cut off from one worker; a client that
//! moves; a worker killed with SIGKILL; a client that stops reading. Every scenario checks that
//! alerts arrive exactly once and in order, and says what was lost where loss is allowed.
//!
//! Over 400 lines on purpose: a list of independent scenarios on one subject, each readable on
//! its own; what they share lives in `harness/`.

mod harness;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use harness::http::{health, post, publish};
use harness::process::WorkerProcess;
use harness::proxy::Proxy;
use harness::redis::RedisServer;
use harness::{clients, start_worker, wait_until, Client, On, Process};
use serde_json::{json, Value};

async fn workers(redis_url: &str, ids: &[&str], extra: &[&str]) -> Vec<WorkerProcess> {
    let mut workers = Vec::new();
    for id in ids {
        workers.push(start_worker::<Process>(id, On::Redis(redis_url), extra).await);
    }
    workers
}

async fn connect_all(workers: &[WorkerProcess], per_worker: usize) -> Vec<Client> {
    let mut all = Vec::new();
    for worker in workers {
        all.extend(clients(worker, per_worker).await);
    }
    all
}

/// Alert frames until the alert whose message is `marker` (excluded); metrics are skipped.
async fn alerts_until(client: &mut Client, marker: &str) -> Vec<Value> {
    let mut alerts = Vec::new();
    loop {
        let frame = client.next_frame().await;
        if frame["type"] != "alert" {
            continue;
        }
        if frame["data"]["message"] == marker {
            return alerts;
        }
        alerts.push(frame);
    }
}

fn alert(message: &str) -> Value {
    json!({ "severity": "warning", "message": message })
}

/// Asserts the alerts carry strictly increasing log ids (cluster order, no duplicates).
fn assert_log_order(alerts: &[Value]) {
    let ids: Vec<(u64, u64)> = alerts
        .iter()
        .map(|a| {
            let id = a["id"]
                .as_str()
                .unwrap_or_else(|| panic!("alert without log id: {a}"));
            let (ms, seq) = id.split_once('-').unwrap_or_else(|| panic!("bad id {id}"));
            (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
        })
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "alert ids out of order: {ids:?}"
    );
}

fn messages(alerts: &[Value]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| a["data"]["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn wait_subscribed(worker: &WorkerProcess) {
    let addr = worker.addr;
    wait_until(&format!("{} is subscribed again", worker.id), || async {
        health(addr).await["bus"]["state"] == "subscribed"
    })
    .await;
}

async fn wait_degraded(worker: &WorkerProcess) {
    let addr = worker.addr;
    wait_until(&format!("{} reports the outage", worker.id), || async {
        health(addr).await["bus"]["state"] != "subscribed"
    })
    .await;
}

#[tokio::test]
async fn redis_hangs_while_rules_fire_and_every_client_still_gets_every_alert_once_in_order() {
    let redis = RedisServer::start().await;
    let extra = [
        "--redis-timeout",
        "500ms",
        "--alert-rule",
        "chaos>50,severity=critical",
    ];
    let workers = workers(&redis.url(), &["w1", "w2", "w3"], &extra).await;
    let mut clients = connect_all(&workers, 5).await;

    redis.pause().await;
    let paused = Instant::now();
    // Each sample is its own series (label n), so each one raises an alert inside its worker.
    join_all(workers.iter().map(|worker| async move {
        for n in 0..3 {
            let sample = json!({ "name": "chaos", "value": 100, "labels": { "n": n.to_string() } });
            let (status, body) = post(
                worker.addr,
                "/api/metrics",
                "application/json",
                sample.to_string(),
            )
            .await;
            assert_eq!(
                status, 503,
                "metrics cannot be published while Redis hangs: {body}"
            );
        }
    }))
    .await;
    for worker in &workers {
        assert_eq!(
            health(worker.addr).await["outbox"]["queued"],
            3,
            "{} must hold its 3 alerts",
            worker.id
        );
    }
    // The fault itself lasts 10 s.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(paused.elapsed())).await;
    redis.unpause().await;

    for worker in &workers {
        let addr = worker.addr;
        wait_until("the outbox is flushed", || async {
            health(addr).await["outbox"]["queued"] == 0
        })
        .await;
        wait_subscribed(worker).await;
    }
    publish(workers[0].addr, "/api/alerts", &alert("end")).await;
    for client in &mut clients {
        let alerts = alerts_until(client, "end").await;
        assert_eq!(alerts.len(), 9, "{alerts:?}");
        assert_log_order(&alerts);
        let mut per_worker: HashMap<String, Vec<String>> = HashMap::new();
        for alert in &alerts {
            let source = alert["data"]["source"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let n = alert["data"]["labels"]["n"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            per_worker.entry(source).or_default().push(n);
        }
        for worker in &workers {
            assert_eq!(
                per_worker.get(&worker.id).map(Vec::as_slice),
                Some(&["0", "1", "2"].map(String::from)[..])
            );
        }
    }
}

#[tokio::test]
async fn redis_restarts_mid_stream_and_workers_recover_well_under_the_backoff_cap() {
    let redis = RedisServer::start().await;
    let workers = workers(&redis.url(), &["w1", "w2"], &[]).await;
    let mut clients = connect_all(&workers, 5).await;
    let publisher = workers[0].addr;

    // A steady stream: one metric every 10 ms, numbered; the publisher keeps what was accepted.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stream = tokio::spawn(async move {
        let mut accepted = Vec::new();
        let mut refused = 0u64;
        let mut n = 0u64;
        while !*stop_rx.borrow_and_update() {
            let body = json!({ "name": "tick", "value": n }).to_string();
            match post(publisher, "/api/metrics", "application/json", body)
                .await
                .0
            {
                202 => accepted.push(n),
                _ => refused += 1,
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (accepted, refused)
    });

    wait_until("the stream is flowing", || async {
        health(publisher).await["delivery"]["delivered"].as_u64() > Some(50)
    })
    .await;
    redis.stop().await;
    for worker in &workers {
        wait_degraded(worker).await;
    }
    redis.start_again().await;
    let back = Instant::now();
    for worker in &workers {
        wait_subscribed(worker).await;
    }
    let recovery = back.elapsed();
    let delivered_after = health(publisher).await["delivery"]["delivered"]
        .as_u64()
        .unwrap_or(0);
    wait_until("the stream flows again", || async {
        health(publisher).await["delivery"]["delivered"].as_u64() > Some(delivered_after + 50)
    })
    .await;
    let _ = stop_tx.send(true);
    let (accepted, refused) = stream.await.unwrap_or_else(|e| panic!("{e}"));
    publish(
        publisher,
        "/api/metrics",
        &json!({ "name": "end", "value": 0 }),
    )
    .await;

    let accepted_set: HashSet<u64> = accepted.iter().copied().collect();
    let mut most_lost = 0;
    for client in &mut clients {
        let mut received = Vec::new();
        loop {
            let frame = client.next_frame().await;
            match frame["data"][0]["name"].as_str() {
                Some("end") => break,
                Some("tick") => {
                    received.push(frame["data"][0]["value"].as_f64().unwrap_or(-1.0) as u64)
                }
                _ => {}
            }
        }
        assert!(
            received.windows(2).all(|pair| pair[0] < pair[1]),
            "duplicates or reordering: {received:?}"
        );
        assert!(
            received.iter().all(|n| accepted_set.contains(n)),
            "a refused metric was delivered"
        );
        most_lost = most_lost.max(accepted.len() - received.len());
    }
    eprintln!(
        "redis restart: recovery {recovery:?} after Redis answered; {} metrics accepted, {refused} refused with 503 \
         during the outage, at most {most_lost} accepted metrics lost by a client",
        accepted.len()
    );
    assert!(
        recovery < Duration::from_secs(3),
        "recovery took {recovery:?}"
    );
}

#[tokio::test]
async fn a_worker_cut_off_from_redis_replays_every_missed_alert_to_its_clients() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    let mut all = workers(&redis.url(), &["w1", "w2"], &["--redis-timeout", "500ms"]).await;
    let proxied = format!("redis://{}", proxy.addr);
    all.push(
        start_worker::<Process>("w3", On::Redis(&proxied), &["--redis-timeout", "500ms"]).await,
    );
    let mut clients = connect_all(&all[2..], 5).await;
    let mut others = connect_all(&all[..2], 2).await;

    proxy.cut();
    wait_degraded(&all[2]).await;
    for n in 0..5 {
        publish(all[0].addr, "/api/alerts", &alert(&format!("w1-{n}"))).await;
        publish(all[1].addr, "/api/alerts", &alert(&format!("w2-{n}"))).await;
    }
    proxy.restore();
    wait_subscribed(&all[2]).await;
    publish(all[0].addr, "/api/alerts", &alert("end")).await;

    let expected: Vec<String> = (0..5)
        .flat_map(|n| [format!("w1-{n}"), format!("w2-{n}")])
        .collect();
    for client in clients.iter_mut().chain(others.iter_mut()) {
        let alerts = alerts_until(client, "end").await;
        assert_log_order(&alerts);
        assert_eq!(messages(&alerts), expected);
    }
}

#[tokio::test]
async fn a_client_that_reconnects_to_another_worker_gets_exactly_the_alerts_it_missed() {
    let redis = RedisServer::start().await;
    let workers = workers(&redis.url(), &["w1", "w2"], &[]).await;
    let mut client = Client::connect(workers[0].addr).await;
    publish(workers[0].addr, "/api/alerts", &alert("seen")).await;
    let seen = client.next_frame().await;
    let last_id = seen["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {seen}"))
        .to_owned();
    client.close().await;

    for n in 0..3 {
        publish(
            workers[1].addr,
            "/api/alerts",
            &alert(&format!("missed-{n}")),
        )
        .await;
    }
    let mut client = Client::resume(workers[1].addr, &last_id).await;
    assert_eq!(client.resume["replayed"], 3, "{}", client.resume);
    assert_eq!(client.resume["complete"], true);
    publish(workers[0].addr, "/api/alerts", &alert("end")).await;
    let alerts = alerts_until(&mut client, "end").await;
    assert_eq!(messages(&alerts), ["missed-0", "missed-1", "missed-2"]);
    assert_log_order(&alerts);
}

#[tokio::test]
async fn a_killed_worker_leaves_the_others_untouched_and_its_clients_resume_elsewhere() {
    let redis = RedisServer::start().await;
    let mut workers = workers(&redis.url(), &["w1", "w2", "w3"], &[]).await;
    let mut victims = connect_all(&workers[..1], 5).await;
    let mut survivors = connect_all(&workers[1..], 5).await;

    publish(workers[1].addr, "/api/alerts", &alert("before")).await;
    let mut last_ids = Vec::new();
    for client in &mut victims {
        let frame = client.next_frame().await;
        last_ids.push(frame["id"].as_str().unwrap_or_default().to_owned());
    }
    workers[0].kill().await;
    for client in &mut victims {
        assert_eq!(
            client.try_next_frame().await,
            None,
            "the killed worker's clients lose their connection"
        );
    }
    for n in 0..3 {
        publish(
            workers[2].addr,
            "/api/alerts",
            &alert(&format!("during-{n}")),
        )
        .await;
    }
    let mut resumed = Vec::new();
    for (index, last_id) in last_ids.iter().enumerate() {
        let target = &workers[1 + index % 2];
        resumed.push(Client::resume(target.addr, last_id).await);
    }
    publish(workers[1].addr, "/api/alerts", &alert("end")).await;
    for client in &mut resumed {
        let alerts = alerts_until(client, "end").await;
        assert_eq!(messages(&alerts), ["during-0", "during-1", "during-2"]);
    }
    for client in &mut survivors {
        let alerts = alerts_until(client, "end").await;
        assert_eq!(
            messages(&alerts),
            ["before", "during-0", "during-1", "during-2"]
        );
        assert_log_order(&alerts);
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_costs_the_others_nothing() {
    const MESSAGES: u64 = 1500;
    let redis = RedisServer::start().await;
    let extra = [
        "--client-queue-messages",
        "64",
        "--client-send-buffer",
        "8192",
        "--client-timeout",
        "30s",
        "--ping-interval",
        "10s",
    ];
    let worker = start_worker::<Process>("w1", On::Redis(&redis.url()), &extra).await;
    let addr = worker.addr;
    let mut slow = Client::connect_small_buffer(addr).await;
    let readers: Vec<_> = connect_all(std::slice::from_ref(&worker), 100)
        .await
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut values = Vec::new();
                let mut latencies = Vec::new();
                while values.len() < MESSAGES as usize {
                    let frame = client.next_frame().await;
                    if frame["data"][0]["name"] == "load" {
                        values.push(frame["data"][0]["value"].as_f64().unwrap_or(-1.0) as u64);
                        let published = frame["published_at_us"].as_u64().unwrap_or(0);
                        latencies.push(now_us().saturating_sub(published));
                    }
                }
                (values, latencies)
            })
        })
        .collect();
    let rss_before = worker.rss_bytes();

    for n in 0..MESSAGES {
        publish(
            addr,
            "/api/metrics",
            &json!({ "name": "load", "value": n, "labels": { "pad": "x".repeat(150) } }),
        )
        .await;
    }
    let mut latencies = Vec::new();
    for reader in readers {
        let (values, mut client_latencies) = reader.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            values,
            (0..MESSAGES).collect::<Vec<_>>(),
            "a reading client lost or reordered messages"
        );
        latencies.append(&mut client_latencies);
    }
    let rss_after = worker.rss_bytes();
    latencies.sort_unstable();
    let p99 = latencies[latencies.len() * 99 / 100];
    let p50 = latencies[latencies.len() / 2];
    let health = health(addr).await;
    eprintln!(
        "slow client: 100 readers got all {MESSAGES} messages, latency p50 {p50} µs p99 {p99} µs; \
         worker RSS {} KiB -> {} KiB; dropped for the slow client: {}",
        rss_before / 1024,
        rss_after / 1024,
        health["delivery"]["dropped_metrics"]
    );
    assert_eq!(health["delivery"]["slow_consumers_closed"], 1, "{health}");
    assert!(
        rss_after < rss_before + 64 * 1024 * 1024,
        "worker memory grew from {rss_before} to {rss_after}"
    );
    assert!(p99 < 500_000, "the readers' p99 latency was {p99} µs");
    // The slow client reads again: what the socket held, then the close frame with 4008.
    assert_eq!(
        slow.ended().await,
        harness::client::Ended::Close(Some(4008))
    );
}
