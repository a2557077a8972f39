//! Workers on a Redis Cluster, tried the way a user who read only the docs would: outside
//! publishers on the sharded channels PROTOCOL.md names (and on names it does not), and slots
//! moved between masters 20 times under a steady publisher. Real `fanout` processes, a real
//! cluster of 3 masters and 3 replicas, real WebSocket clients.
//!
//! Over 400 lines on purpose: independent scenarios on one topology, each readable on its own, with the helpers they share.

mod harness;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::client::no_publish_refused_while_a_client_comes_and_goes;
use harness::cluster::ClusterTopology;
use harness::http::{health, post};
use harness::process::WorkerProcess;
use harness::{start_worker, wait_until, within, Client, On, Process};
use serde_json::json;

const PARTITIONS: u16 = 16;

fn partition_channel(partition: u16) -> String {
    format!("performance:metrics:{{{partition}}}")
}

async fn worker(topology: &ClusterTopology, id: &str) -> WorkerProcess {
    let seeds = topology.seeds();
    let flags = ["--redis-cluster", seeds.as_str(), "--redis-timeout", "1s"];
    start_worker::<Process>(id, On::Redis("redis://127.0.0.1"), &flags).await
}

/// Runs one command on the node serving `channel`'s slot.
async fn on_owner(topology: &ClusterTopology, channel: &str, args: &[&str]) -> redis::Value {
    let owner = topology
        .master_for_slot(ClusterTopology::slot_of(channel))
        .await;
    topology.command(&owner, args).await
}

/// Reads metric frames until every name in `expected` has arrived; returns every name seen.
async fn read_names(client: &mut Client, expected: &HashSet<String>) -> HashSet<String> {
    let mut seen = HashSet::new();
    within("every expected metric arrives", async {
        while !expected.is_subset(&seen) {
            let frame = client.next_frame().await;
            if frame["type"] == "metrics" {
                for metric in frame["data"].as_array().into_iter().flatten() {
                    if let Some(name) = metric["name"].as_str() {
                        seen.insert(name.to_owned());
                    }
                }
            }
        }
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_publishers_reach_every_worker_on_every_partition_and_nowhere_else() {
    let topology = ClusterTopology::start().await;
    let workers = [worker(&topology, "o1").await, worker(&topology, "o2").await];
    let mut clients = Vec::new();
    for worker in &workers {
        clients.push(Client::connect(worker.addr).await);
    }
    // Names PROTOCOL.md does not give: no worker listens there. Sent first, so that they would
    // have arrived before the real ones.
    let ignored = json!({ "type": "metrics", "data": [{ "name": "ignored", "value": 1 }] });
    for channel in [
        "performance:metrics:{16}",
        "performance:metrics:{03}",
        "performance:metrics",
    ] {
        on_owner(
            &topology,
            channel,
            &["SPUBLISH", channel, &ignored.to_string()],
        )
        .await;
    }
    // The classic channel is not read in cluster mode.
    let any = topology.masters().await[0].clone();
    topology
        .command(
            &any,
            &["PUBLISH", "performance:metrics", &ignored.to_string()],
        )
        .await;
    // Garbage on a real partition: counted, and the listener goes on.
    on_owner(
        &topology,
        &partition_channel(5),
        &["SPUBLISH", &partition_channel(5), "not json"],
    )
    .await;

    let mut expected = HashSet::new();
    for partition in 0..PARTITIONS {
        let channel = partition_channel(partition);
        let name = format!("p{partition}");
        // Odd but valid fields an outside system may set (PROTOCOL.md): its own origin, a seq,
        // an id fanout did not assign.
        let envelope = json!({
            "type": "metrics",
            "origin": format!("outside-{partition}"),
            "seq": partition,
            "id": "99999999999999-0",
            "published_at_us": 5,
            "data": [{ "name": name, "value": partition, "labels": { "ü": "∞" } }],
        });
        on_owner(
            &topology,
            &channel,
            &["SPUBLISH", &channel, &envelope.to_string()],
        )
        .await;
        expected.insert(name);
    }
    // The script form PROTOCOL.md recommends.
    let channel = partition_channel(9);
    let envelope = json!({ "type": "metrics", "data": [{ "name": "scripted", "value": 9 }] });
    on_owner(
        &topology,
        &channel,
        &[
            "EVAL",
            "return redis.call('SPUBLISH', KEYS[1], ARGV[1])",
            "1",
            &channel,
            &envelope.to_string(),
        ],
    )
    .await;
    expected.insert("scripted".to_owned());
    // An outside alert on the sharded alert channel.
    let alert = json!({ "type": "alert", "data": { "severity": "warning", "message": "outside" } });
    on_owner(
        &topology,
        "performance:alerts",
        &["SPUBLISH", "performance:alerts", &alert.to_string()],
    )
    .await;

    for (index, client) in clients.iter_mut().enumerate() {
        let seen = read_names(client, &expected).await;
        assert!(
            !seen.contains("ignored"),
            "client {index} got a message from a channel fanout does not use"
        );
        let alert = within("the outside alert", async {
            loop {
                let frame = client.next_frame().await;
                if frame["type"] == "alert" {
                    return frame;
                }
            }
        })
        .await;
        assert_eq!(alert["data"]["message"], "outside");
    }
    for worker in &workers {
        let addr = worker.addr;
        wait_until("the garbage is counted", || async {
            health(addr).await["bus"]["malformed"].as_u64() >= Some(1)
        })
        .await;
    }
}

/// POSTs `moved` metrics numbered 1, 2, … to one worker, each after the answer to the last.
struct SequentialPublisher {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<u64>>>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SequentialPublisher {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, acknowledged, refused) = (
                Arc::clone(&stop),
                Arc::clone(&acknowledged),
                Arc::clone(&refused),
            );
            tokio::spawn(async move {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let metric = json!({ "name": "moved", "value": n }).to_string();
                    let (status, _) = post(addr, "/api/metrics", "application/json", metric).await;
                    if status == 202 {
                        acknowledged
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(n);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self {
            stop,
            acknowledged,
            refused,
            task,
        }
    }

    fn acknowledged_count(&self) -> usize {
        self.acknowledged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stops after the publish under way; the values acknowledged with 202.
    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        within("the publisher stops", self.task)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.acknowledged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One worker under a waiting publisher, a client on it and one on another worker, both read
/// all along (a client left unread would be closed as a slow consumer).
struct OnePublisher {
    publisher: WorkerProcess,
    other: WorkerProcess,
    /// The slot of the partition the publisher publishes on.
    slot: u16,
    readers: [tokio::task::JoinHandle<Vec<u64>>; 2],
    load: SequentialPublisher,
}

/// What [`OnePublisher::finish`] found.
struct Finished {
    acknowledged: usize,
    refused: u64,
    /// Acknowledged metrics the other worker's client missed.
    missed_far: usize,
}

impl OnePublisher {
    async fn start(topology: &ClusterTopology, publisher: &str, other: &str) -> Self {
        let partition = ClusterTopology::slot_of(publisher) % PARTITIONS;
        let publisher = worker(topology, publisher).await;
        let other = worker(topology, other).await;
        let readers = [
            tokio::spawn(read_moved_until_end(Client::connect(publisher.addr).await)),
            tokio::spawn(read_moved_until_end(Client::connect(other.addr).await)),
        ];
        let load = SequentialPublisher::start(publisher.addr);
        Self {
            slot: ClusterTopology::slot_of(&partition_channel(partition)),
            publisher,
            other,
            readers,
            load,
        }
    }

    /// Stops the publisher, sends the end, and checks both clients: every metric in order (none
    /// earlier after a later one, none twice), and every acknowledged one at the publishing
    /// worker's client.
    async fn finish(self) -> Finished {
        let refused = Arc::clone(&self.load.refused);
        let acknowledged = self.load.stop().await;
        let refused = refused.load(Ordering::Relaxed);
        let end = json!({ "name": "end", "value": 0 }).to_string();
        // A 503 says retry (a let-go master's cluster may still be settling); each one is the
        // worker's own wait of up to --redis-timeout.
        let mut answers = Vec::new();
        for _ in 0..10 {
            let (status, body) = post(
                self.publisher.addr,
                "/api/metrics",
                "application/json",
                end.clone(),
            )
            .await;
            answers.push((status, body));
            if status != 503 {
                break;
            }
        }
        assert_eq!(
            answers.last().map(|(status, _)| *status),
            Some(202),
            "the end metric: {answers:?}"
        );
        let mut missed_far = 0;
        for (name, reader) in ["own", "far"].into_iter().zip(self.readers) {
            let values = within("a client reads until the end metric", reader)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let late: Vec<(u64, u64)> = values
                .windows(2)
                .filter(|pair| pair[0] >= pair[1])
                .map(|pair| (pair[0], pair[1]))
                .collect();
            let twice: Vec<u64> = late
                .iter()
                .map(|&(_, again)| again)
                .filter(|value| values.iter().filter(|v| *v == value).count() > 1)
                .collect();
            assert!(
                late.is_empty(),
                "the {name} client got metrics out of order or twice (earlier after later): \
                 {late:?}; of the later ones, these had arrived before too: {twice:?}"
            );
            let got: HashSet<u64> = values.into_iter().collect();
            let missed: Vec<u64> = acknowledged
                .iter()
                .copied()
                .filter(|value| !got.contains(value))
                .collect();
            if name == "own" {
                assert!(
                    missed.is_empty(),
                    "the publishing worker's client missed acknowledged metrics {missed:?}"
                );
            } else {
                missed_far = missed.len();
            }
        }
        Finished {
            acknowledged: acknowledged.len(),
            refused,
            missed_far,
        }
    }
}

/// The values of the `moved` metrics a client receives, in arrival order, until the `end` one.
async fn read_moved_until_end(mut client: Client) -> Vec<u64> {
    let mut values = Vec::new();
    loop {
        let frame = client.next_frame().await;
        if frame["type"] != "metrics" {
            continue;
        }
        for metric in frame["data"].as_array().into_iter().flatten() {
            match metric["name"].as_str() {
                Some("end") => return values,
                Some("moved") => values.push(metric["value"].as_f64().unwrap_or_default() as u64),
                _ => {}
            }
        }
    }
}

/// A slot moved between master and replica (`CLUSTER FAILOVER`) 20 times while one publisher
/// POSTs metrics to a worker, waiting for each answer: every metric acknowledged with 202
/// reaches that worker's client, once and in order (the worker follows each move: the old
/// master's `sunsubscribe`, and `MOVED` for a publish on it). A client of the other worker
/// gets them in order too; the ones it missed while it moved are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_moves_repeated_20_times_lose_no_acknowledged_metric_and_keep_order() {
    const MOVES: usize = 20;
    let topology = ClusterTopology::start().await;
    let run = OnePublisher::start(&topology, "m1", "m2").await;
    let (publisher, other, slot) = (&run.publisher, &run.other, run.slot);
    let acknowledged_count = || run.load.acknowledged_count();
    let mut moves = Vec::new();
    for round in 0..MOVES {
        let before = acknowledged_count();
        // The demoted master is listed as a replica once it has synced with the new one.
        wait_until("the slot's master has a replica", || async {
            !topology.replicas_for_slot(slot).await.is_empty()
        })
        .await;
        let replica = topology.replicas_for_slot(slot).await[0].clone();
        let started = Instant::now();
        println!("move {round}: promoting {replica}");
        topology.promote(&replica).await;
        for worker in [&publisher, &other] {
            let deadline = Instant::now() + harness::WAIT;
            loop {
                let bus = health(worker.addr).await["bus"].clone();
                let listening = bus["master"]
                    .as_str()
                    .is_some_and(|masters| masters.split(',').any(|m| m == replica));
                if listening && bus["state"] == "subscribed" {
                    break;
                }
                if Instant::now() > deadline {
                    let log = worker.log_lines();
                    let tail = &log[log.len().saturating_sub(30)..];
                    panic!(
                        "move {round}: a worker does not listen on the promoted master {replica}: \
                         {bus}\n{}",
                        tail.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        moves.push(started.elapsed());
        wait_until("the publisher gets answers again", || async {
            acknowledged_count() >= before + 5
        })
        .await;
    }
    let done = run.finish().await;
    let slowest = moves.iter().max().copied().unwrap_or(Duration::ZERO);
    println!(
        "{MOVES} slot moves: {} metrics acknowledged, {} refused (503); the other worker's client \
         missed {}; a move to both workers listening on the new master took at most {slowest:?}",
        done.acknowledged, done.refused, done.missed_far
    );
}

/// Found by an outside tester: a master frozen with a publish in its input (the worker gave up on
/// it: 503) ran it when it was let go, after its replica had been promoted, and sharded Pub/Sub
/// handed the message to the promoted replica's subscribers seconds late, after newer ones. A
/// publisher that waits for each answer must see its metrics arrive in order at every client,
/// across the freeze, and every acknowledged one at the publishing worker's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_frozen_and_let_go_after_its_failover_delivers_nothing_late() {
    let topology = ClusterTopology::start().await;
    let run = OnePublisher::start(&topology, "f1", "f2").await;
    let (publisher, other, slot) = (&run.publisher, &run.other, run.slot);
    let acknowledged_count = || run.load.acknowledged_count();
    wait_until("the publisher is acknowledged", || async {
        acknowledged_count() >= 20
    })
    .await;
    let frozen = topology.master_for_slot(slot).await;
    topology.pause(&frozen).await;
    // Publishes pile up in the frozen master's input until the publisher's timeout (503).
    let refused_before = run.load.refused.load(Ordering::Relaxed);
    wait_until("a publish to the frozen master is refused", || async {
        run.load.refused.load(Ordering::Relaxed) > refused_before
    })
    .await;
    let (promoted, _) = topology.wait_for_failover(&frozen).await;
    for addr in [publisher.addr, other.addr] {
        let promoted = promoted.clone();
        wait_until("both workers listen on the promoted master", || {
            let promoted = promoted.clone();
            async move {
                let bus = health(addr).await["bus"].clone();
                bus["state"] == "subscribed"
                    && bus["master"]
                        .as_str()
                        .is_some_and(|masters| masters.split(',').any(|m| m == promoted))
            }
        })
        .await;
    }
    // Let go: it runs what it held, still taking itself for the master, then learns it is not.
    topology.unpause(&frozen).await;
    let before = acknowledged_count();
    wait_until("the publisher is acknowledged again", || async {
        acknowledged_count() >= before + 50
    })
    .await;
    let mut late = Vec::new();
    for addr in [publisher.addr, other.addr] {
        late.push(health(addr).await["bus"]["late"].clone());
    }
    let done = run.finish().await;
    println!(
        "frozen master {frozen}, {promoted} promoted: {} metrics acknowledged, {} refused, none late; \
         the other worker's client missed {}; dropped as late (publisher, other): {late:?}",
        done.acknowledged, done.refused, done.missed_far
    );
}

/// PROTOCOL.md: a metric is refused (503) only when a client of the worker could miss it; its
/// first client connecting, or its last one leaving, while a publish is in flight is no reason.
/// On a Cluster the subscription is one session per master, each marking its channels live when
/// subscribed: one that belonged to a dropped subscription must not mark them live for the next.
/// RELIABILITY.md: Redis dropping the worker's ordinary connections between two publishes
/// (`CLIENT KILL TYPE normal`, an idle `timeout`, a proxy), 20 times, each right after a
/// publish, costs nothing — on a Redis Cluster too: the next metric goes once more on a new
/// connection, the next alert on a new one that has answered a `PING` (`202`), and every alert
/// arrives once, in order (a docs-only tester saw every publish after a kill answered 503 "broken
/// pipe").
#[tokio::test]
async fn dropped_ordinary_connections_cost_no_publish_a_503_on_a_cluster() {
    let topology = ClusterTopology::start().await;
    let worker = worker(&topology, "killed").await;
    let mut client = Client::connect(worker.addr).await;
    let masters = topology.masters().await;
    let kill = || async {
        for master in &masters {
            topology
                .command(master, &["CLIENT", "KILL", "TYPE", "normal"])
                .await;
        }
    };
    for round in 0..20 {
        let (status, body) = post(
            worker.addr,
            "/api/metrics",
            "application/json",
            json!({ "name": format!("kept-{round}"), "value": round }).to_string(),
        )
        .await;
        assert_eq!(
            status, 202,
            "round {round}, the metric after a kill: {body}"
        );
        kill().await;
        let (status, body) = post(
            worker.addr,
            "/api/alerts",
            "application/json",
            json!({ "severity": "warning", "message": format!("kept {round}") }).to_string(),
        )
        .await;
        assert_eq!(status, 202, "round {round}, the alert after a kill: {body}");
        kill().await;
    }
    let mut alerts = Vec::new();
    within("every alert", async {
        while alerts.last() != Some(&json!("kept 19")) {
            let frame = client.next_frame().await;
            if frame["type"] == "alert" {
                alerts.push(frame["data"]["message"].clone());
            }
        }
    })
    .await;
    let expected: Vec<_> = (0..20)
        .map(|round| json!(format!("kept {round}")))
        .collect();
    assert_eq!(alerts, expected, "every alert, once, in order");
    let bus = &health(worker.addr).await["bus"];
    assert_eq!(bus["reconnects"], 0, "the subscriptions never ended: {bus}");
}

#[tokio::test]
async fn clients_coming_and_going_on_a_cluster_never_cost_a_publish_a_503() {
    let topology = ClusterTopology::start().await;
    let worker = worker(&topology, "churn").await;
    let addr = worker.addr;
    no_publish_refused_while_a_client_comes_and_goes(addr, 1_000).await;
}
