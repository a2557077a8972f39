//! Redis Cluster failover under load, with real parts: 3 `fanout` worker processes on a cluster of
//! 3 masters and 3 replicas (`--redis-cluster`, 16 metrics partitions, `--alert-min-replicas 1`),
//! 30 WebSocket clients, 100 metrics/s POSTed round-robin to the workers, 100 more a second put
//! on every partition by an outside publisher with `SPUBLISH` (as PROTOCOL.md tells outside
//! publishers to), and alerts — while a master is killed with SIGKILL and its replica promotes
//! itself.
//!
//! What each scenario checks, and prints for RELIABILITY.md:
//! - the partitions of the masters that stay up never stop: every message published on them
//!   reaches every client, and the longest pause between two deliveries on them is printed;
//! - the killed master's partitions come back at most 2 s after the promotion on every client;
//! - every alert acknowledged with 202 is in the alert log after the failover and reached every
//!   client exactly once, in log order;
//! - every metric a worker acknowledged reached that worker's clients (but at the fault's
//!   instant: RELIABILITY.md);
//! - `/readyz` says 503 on every worker during the failover, 200 after it, and `/healthz` names
//!   the promoted master among those the worker listens on.
//!
//! Over 400 lines on purpose: one scenario with its load, its readers and every check the issue
//! lists, run against two victims; split, the checks would lose the load they are about.

mod harness;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::cluster::ClusterTopology;
use harness::http::{health, post};
use harness::process::WorkerProcess;
use harness::{clients, start_worker, wait_until, within, Client, On, Process};
use serde_json::json;
use tokio::task::JoinHandle;

const WORKERS: [&str; 3] = ["c1", "c2", "c3"];
const CLIENTS_PER_WORKER: usize = 10;
const PARTITIONS: u16 = 16;
/// A tick publishes one metric through a worker and one with `SPUBLISH` from outside; every 5th
/// tick an alert.
const TICK: Duration = Duration::from_millis(10);
/// Worker-acknowledged metrics on either side of the fault's instant that may miss their
/// clients: 100 ms.
const FAULT_WINDOW: u64 = 10;

/// One scenario at a time: each runs 6 Redis containers, 3 workers and 30 clients on 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The partition a worker publishes on: CRC16 of its id, modulo the partitions (OPERATIONS.md).
fn partition_of_worker(id: &str) -> u16 {
    ClusterTopology::slot_of(id) % PARTITIONS
}

fn partition_channel(partition: u16) -> String {
    format!("performance:metrics:{{{partition}}}")
}

async fn workers(topology: &ClusterTopology) -> Vec<WorkerProcess> {
    let seeds = topology.seeds();
    let partitions = PARTITIONS.to_string();
    let flags = [
        "--redis-cluster",
        seeds.as_str(),
        "--redis-partitions",
        partitions.as_str(),
        "--alert-min-replicas",
        "1",
        "--redis-timeout",
        "1s",
    ];
    let mut workers = Vec::new();
    for id in WORKERS {
        // With a cluster the URL's host is not used: it gives the credentials.
        workers.push(start_worker::<Process>(id, On::Redis("redis://127.0.0.1"), &flags).await);
    }
    workers
}

/// What the publishers saw.
#[derive(Default)]
struct Published {
    /// (partition, value) of each outside `SPUBLISH` that Redis answered.
    outside: Mutex<Vec<(u16, u64)>>,
    /// (index of the worker that answered 202, the metric's value).
    acknowledged_metrics: Mutex<Vec<(usize, u64)>>,
    acknowledged_alerts: Mutex<Vec<String>>,
    refused: AtomicU64,
    /// (index of the worker that refused, the metric's value) of each metric refused.
    refused_metrics: Mutex<Vec<(usize, u64)>>,
    /// Alerts refused.
    refused_alerts: AtomicU64,
    /// Publishes started and not answered yet.
    in_flight: AtomicU64,
    /// The latest tick.
    latest: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every tick, each publish in a task of its own (a publish to a failing master waits for its
/// timeout; the others must go on meanwhile).
async fn publish_load(
    addrs: Vec<SocketAddr>,
    outside: redis::cluster_async::ClusterConnection,
    stop: Arc<AtomicBool>,
    published: Arc<Published>,
) {
    let mut tick = tokio::time::interval(TICK);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        published.latest.store(n, Ordering::Relaxed);
        let worker = (n as usize) % addrs.len();
        let addr = addrs[worker];
        let partition = (n % u64::from(PARTITIONS)) as u16;
        {
            let mut outside = outside.clone();
            let published = Arc::clone(&published);
            published.in_flight.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let envelope =
                    json!({ "type": "metrics", "data": [{ "name": "outside", "value": n }] });
                let sent = tokio::time::timeout(
                    Duration::from_secs(2),
                    redis::cmd("SPUBLISH")
                        .arg(partition_channel(partition))
                        .arg(envelope.to_string())
                        .query_async::<i64>(&mut outside),
                )
                .await;
                if let Ok(Ok(_)) = sent {
                    lock(&published.outside).push((partition, n));
                }
                published.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
        {
            let published = Arc::clone(&published);
            published.in_flight.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let metric = json!({ "name": "load", "value": n }).to_string();
                let (status, _) = post(addr, "/api/metrics", "application/json", metric).await;
                if status == 202 {
                    lock(&published.acknowledged_metrics).push((worker, n));
                } else {
                    published.refused.fetch_add(1, Ordering::Relaxed);
                    lock(&published.refused_metrics).push((worker, n));
                }
                published.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
        if n.is_multiple_of(5) {
            let published = Arc::clone(&published);
            published.in_flight.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let message = format!("a{n}");
                let alert = json!({ "severity": "warning", "message": message }).to_string();
                let (status, _) = post(addr, "/api/alerts", "application/json", alert).await;
                if status == 202 {
                    lock(&published.acknowledged_alerts).push(message);
                } else {
                    published.refused.fetch_add(1, Ordering::Relaxed);
                    published.refused_alerts.fetch_add(1, Ordering::Relaxed);
                }
                published.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

/// What one client received, until the `end` metric.
#[derive(Default)]
struct Received {
    /// (log id, message) of each alert, in arrival order.
    alerts: Vec<(String, String)>,
    /// Outside metrics: value → when it arrived.
    outside: HashMap<u64, Instant>,
    /// Values of the worker-published metrics.
    load: HashSet<u64>,
}

async fn read_until_end(mut client: Client, seen: Arc<Mutex<Received>>) -> Client {
    loop {
        let frame = client.next_frame().await;
        let mut seen = lock(&seen);
        match frame["type"].as_str() {
            Some("metrics") => {
                for metric in frame["data"].as_array().into_iter().flatten() {
                    let value = metric["value"].as_f64().unwrap_or_default() as u64;
                    match metric["name"].as_str() {
                        Some("end") => return client,
                        Some("outside") => {
                            seen.outside.insert(value, Instant::now());
                        }
                        Some("load") => {
                            seen.load.insert(value);
                        }
                        _ => {}
                    }
                }
            }
            Some("alert") => {
                let message = frame["data"]["message"].as_str().unwrap_or_default();
                let id = frame["id"].as_str().unwrap_or_default().to_owned();
                seen.alerts.push((id, message.to_owned()));
            }
            _ => {}
        }
    }
}

fn ids_in_order(alerts: &[(String, String)]) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or(("0", "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    alerts
        .windows(2)
        .all(|pair| parse(&pair[0].0) < parse(&pair[1].0))
}

async fn ready(addr: SocketAddr) -> bool {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16() == 200)
        .unwrap_or(false)
}

/// Which master the scenario kills.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    /// A master serving metric partitions, but not the alert slot.
    MetricPartitions,
    /// The master of the alert channel and log's slot.
    AlertSlot,
}

async fn failover_under_load(victim: Victim) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let topology = ClusterTopology::start().await;
    let alert_slot = ClusterTopology::slot_of("performance:alerts");
    let alert_master = topology.master_for_slot(alert_slot).await;
    let mut owner = HashMap::new();
    for partition in 0..PARTITIONS {
        let slot = ClusterTopology::slot_of(&partition_channel(partition));
        owner.insert(partition, topology.master_for_slot(slot).await);
    }
    let killed = match victim {
        Victim::AlertSlot => alert_master.clone(),
        Victim::MetricPartitions => topology
            .masters()
            .await
            .into_iter()
            .find(|master| *master != alert_master && owner.values().any(|o| o == master))
            .expect("a master with partitions and without the alert slot"),
    };
    let stopped: HashSet<u16> = owner
        .iter()
        .filter(|(_, master)| **master == killed)
        .map(|(partition, _)| *partition)
        .collect();
    println!(
        "{victim:?}: killing {killed}, which serves partitions {stopped:?}; workers publish on {:?}",
        WORKERS.map(partition_of_worker)
    );

    let workers = workers(&topology).await;
    let addrs: Vec<SocketAddr> = workers.iter().map(|w| w.addr).collect();
    let mut readers = Vec::new();
    let mut received = Vec::new();
    for worker in &workers {
        for client in clients(worker, CLIENTS_PER_WORKER).await {
            let seen = Arc::new(Mutex::new(Received::default()));
            received.push(Arc::clone(&seen));
            readers.push(tokio::spawn(read_until_end(client, seen)));
        }
    }
    let outside = redis::cluster::ClusterClient::new(
        topology
            .node_addrs()
            .iter()
            .map(|node| format!("redis://{node}"))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|e| panic!("cluster client: {e}"));
    let outside = within(
        "the outside publisher connects",
        outside.get_async_connection(),
    )
    .await
    .unwrap_or_else(|e| panic!("cluster connection: {e}"));

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Published::default());
    let load = tokio::spawn(publish_load(
        addrs.clone(),
        outside,
        Arc::clone(&stop),
        Arc::clone(&published),
    ));
    wait_until("10 alerts are acknowledged before the kill", || async {
        lock(&published.acknowledged_alerts).len() >= 10
    })
    .await;

    let killed_at = Instant::now();
    let struck_from = published.latest.load(Ordering::Relaxed);
    topology.kill(&killed).await;
    let struck_to = published.latest.load(Ordering::Relaxed);
    let not_ready_seen = Arc::new(Mutex::new(HashSet::new()));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher: JoinHandle<()> = {
        let (addrs, seen, watching) = (
            addrs.clone(),
            Arc::clone(&not_ready_seen),
            Arc::clone(&watching),
        );
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                for addr in &addrs {
                    if !ready(*addr).await {
                        lock(&seen).insert(*addr);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let (promoted, promoted_at) = topology.wait_for_failover(&killed).await;
    println!(
        "{victim:?}: {promoted} promoted {:?} after the kill",
        promoted_at - killed_at
    );
    for addr in &addrs {
        let addr = *addr;
        let promoted = promoted.clone();
        wait_until(
            "every worker is ready and listens on the promoted master",
            || {
                let promoted = promoted.clone();
                async move {
                    ready(addr).await
                        && health(addr).await["bus"]["master"]
                            .as_str()
                            .is_some_and(|masters| masters.split(',').any(|m| m == promoted))
                }
            },
        )
        .await;
    }
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.await;

    // The stopped partitions come back: every client gets an outside metric published on one of
    // them after the promotion.
    let resumed = within("every client gets the stopped partitions again", async {
        loop {
            let published_after: Vec<u64> = lock(&published.outside)
                .iter()
                .filter(|(partition, _)| stopped.contains(partition))
                .map(|(_, value)| *value)
                .collect();
            let gaps: Option<Vec<Duration>> = received
                .iter()
                .map(|seen| {
                    let seen = lock(seen);
                    published_after
                        .iter()
                        .filter_map(|value| seen.outside.get(value))
                        .filter(|at| **at > promoted_at)
                        .min()
                        .map(|at| *at - promoted_at)
                })
                .collect();
            if let Some(gaps) = gaps {
                return gaps.into_iter().max().unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    println!("{victim:?}: the killed master's partitions reached every client again within {resumed:?} of the promotion");
    assert!(
        stopped.is_empty() || resumed <= Duration::from_secs(2),
        "the stopped partitions came back {resumed:?} after the promotion (at most 2 s)"
    );

    if victim == Victim::AlertSlot {
        // With its only replica promoted, the alert slot's master has none: alerts get 503 until
        // the killed node is back, as a replica; then they are acknowledged again.
        topology.start_again(&killed).await;
        let before = lock(&published.acknowledged_alerts).len();
        wait_until(
            "10 more alerts are acknowledged once a replica is back",
            || async { lock(&published.acknowledged_alerts).len() >= before + 10 },
        )
        .await;
    }
    // A second of steady load after the failover, then the end.
    let before = lock(&published.acknowledged_metrics).len();
    wait_until("100 more metrics are acknowledged", || async {
        lock(&published.acknowledged_metrics).len() >= before + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    // The publishes of the last ticks are answered (each is bounded by a timeout).
    wait_until("every publish is answered", || async {
        published.in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
    let end = json!({ "name": "end", "value": 0 }).to_string();
    for addr in &addrs {
        let addr = *addr;
        wait_until("the end metric is acknowledged", || {
            let end = end.clone();
            async move { post(addr, "/api/metrics", "application/json", end).await.0 == 202 }
        })
        .await;
    }
    for reader in readers {
        within("a client reads until the end metric", reader)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // The other partitions never stopped.
    let outside = lock(&published.outside).clone();
    let kept: Vec<&(u16, u64)> = outside
        .iter()
        .filter(|(partition, _)| !stopped.contains(partition))
        .collect();
    assert!(!kept.is_empty());
    let mut longest_pause = Duration::ZERO;
    for (index, seen) in received.iter().enumerate() {
        let seen = lock(seen);
        let missing: Vec<u64> = kept
            .iter()
            .filter(|(_, value)| !seen.outside.contains_key(value))
            .map(|(_, value)| *value)
            .collect();
        if !missing.is_empty() {
            let log = workers[index / CLIENTS_PER_WORKER].log_lines();
            let bus: Vec<&String> = log
                .iter()
                .filter(|line| line.contains("Redis") || line.contains("WARN"))
                .collect();
            panic!(
                "client {index} missed outside metrics on partitions whose master stayed up: \
                 {missing:?}; its worker's log:\n{bus:#?}"
            );
        }
        let mut arrivals: Vec<Instant> = kept
            .iter()
            .filter_map(|(_, value)| seen.outside.get(value).copied())
            .collect();
        arrivals.sort();
        for pair in arrivals.windows(2) {
            longest_pause = longest_pause.max(pair[1] - pair[0]);
        }
    }
    println!("{victim:?}: the partitions of the masters that stayed up: no message missed, longest pause between deliveries at a client {longest_pause:?}");

    // Alerts: every acknowledged one at every client, once, in log order, and in the log.
    let acknowledged: HashSet<String> = lock(&published.acknowledged_alerts)
        .iter()
        .cloned()
        .collect();
    assert!(!acknowledged.is_empty());
    for (index, seen) in received.iter().enumerate() {
        let seen = lock(seen);
        let messages: Vec<&str> = seen.alerts.iter().map(|(_, m)| m.as_str()).collect();
        let distinct: HashSet<&str> = messages.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            messages.len(),
            "client {index}: an alert twice"
        );
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|m| !distinct.contains(m.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "client {index} lost acknowledged alerts {missing:?}"
        );
        assert!(
            ids_in_order(&seen.alerts),
            "client {index}: out of log order"
        );
    }
    let logged = harness::client::logged_messages(addrs[1]).await;
    let not_logged: Vec<&String> = acknowledged.difference(&logged).collect();
    assert!(
        not_logged.is_empty(),
        "acknowledged but not in the log: {not_logged:?}"
    );

    // Worker-acknowledged metrics reached that worker's clients, but at the fault's instant.
    let acknowledged_metrics = lock(&published.acknowledged_metrics).clone();
    let mut missed_at_fault = 0;
    for (index, seen) in received.iter().enumerate() {
        let worker = index / CLIENTS_PER_WORKER;
        let seen = lock(seen);
        let missed: Vec<u64> = acknowledged_metrics
            .iter()
            .filter(|(by, value)| *by == worker && !seen.load.contains(value))
            .map(|(_, value)| *value)
            .collect();
        let (near, elsewhere): (Vec<u64>, Vec<u64>) = missed.iter().partition(|value| {
            **value + FAULT_WINDOW >= struck_from && **value <= struck_to + FAULT_WINDOW
        });
        assert!(
            elsewhere.is_empty() && near.len() <= 2,
            "client {index} of worker {worker} missed metrics its worker acknowledged: \
             {elsewhere:?} away from the fault ({struck_from}..{struck_to}), {near:?} at it"
        );
        missed_at_fault = missed_at_fault.max(near.len());
    }
    // The masters that stayed up took every publish meant for them: a worker whose partition
    // is on one, and alerts when the alert slot's master stayed up.
    for (worker, id) in WORKERS.iter().enumerate() {
        if stopped.contains(&partition_of_worker(id)) {
            continue;
        }
        let refused: Vec<u64> = lock(&published.refused_metrics)
            .iter()
            .filter(|(by, _)| *by == worker)
            .map(|(_, value)| *value)
            .collect();
        assert!(
            refused.is_empty(),
            "worker {id} publishes on a partition whose master stayed up, yet refused {refused:?}"
        );
    }
    if victim == Victim::MetricPartitions {
        assert_eq!(
            published.refused_alerts.load(Ordering::Relaxed),
            0,
            "alerts were refused though the alert slot's master stayed up"
        );
    }
    assert_eq!(
        lock(&not_ready_seen).len(),
        addrs.len(),
        "every worker said 503 on /readyz during the failover"
    );
    println!(
        "{victim:?}: {} worker metrics, {} outside metrics and {} alerts acknowledged, {} publishes refused (503); \
         at most {missed_at_fault} acknowledged metric(s) per client missed at the fault's instant; \
         {} alerts in the log after the failover",
        acknowledged_metrics.len(),
        outside.len(),
        acknowledged.len(),
        published.refused.load(Ordering::Relaxed),
        logged.len()
    );
}

/// Issue 13, cluster test 2: a master with metric partitions dies; its replica is promoted, every
/// worker resubscribes there, those partitions resume within 2 s, the others never stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_stops_only_its_partitions_and_they_resume_on_the_promoted_replica() {
    failover_under_load(Victim::MetricPartitions).await;
}

/// Issue 13, cluster test 3: the master of the alert slot dies while alerts are published with
/// `--alert-min-replicas 1`: no acknowledged alert is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_slots_master_killed_loses_no_acknowledged_alert() {
    failover_under_load(Victim::AlertSlot).await;
}
