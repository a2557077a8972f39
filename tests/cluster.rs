//! The Redis Cluster topology itself, before any worker uses it: three masters with a replica
//! each, every address on 127.0.0.1, key slots as Redis computes them, sharded Pub/Sub (also from
//! a Lua script), a killed master failed over to its replica, and what a sharded subscriber sees
//! when its node gains or loses a slot. Prints how long start-up and the failovers took.

mod harness;

use std::time::{Duration, Instant};

use harness::cluster::{
    cluster_nodes, cluster_shards, slot_of, ClusterTopology, Role, ShardedEvent, ShardedSubscriber,
    SubscribeOn, SLOTS,
};
use redis::Value;

#[test]
fn slot_of_is_crc16_xmodem_of_the_hash_tag() {
    // The CRC16-XMODEM check value, and the examples of the Redis Cluster specification.
    assert_eq!(slot_of("123456789"), 0x31C3);
    assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_ne!(
        slot_of("foo{}{bar}"),
        slot_of("bar"),
        "an empty tag hashes the whole key"
    );
    assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_eq!(slot_of("foo{bar}{zap}"), slot_of("bar"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_with_a_replica_each_serve_every_slot_on_loopback() {
    let started = Instant::now();
    let cluster = ClusterTopology::start().await;
    println!("cluster topology ready in {:?}", started.elapsed());
    let nodes = cluster.node_addrs();
    assert_eq!(nodes.len(), 6);
    assert_eq!(cluster.seeds(), nodes.join(","));

    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let mut ranges = cluster.slots().await;
    ranges.sort_by_key(|range| range.start);
    let mut next = 0u32;
    for range in &ranges {
        assert_eq!(
            u32::from(range.start),
            next,
            "a gap or an overlap in {ranges:?}"
        );
        assert_eq!(range.replicas.len(), 1, "{range:?}");
        next = u32::from(range.end) + 1;
    }
    assert_eq!(
        next,
        u32::from(SLOTS),
        "not every slot is served: {ranges:?}"
    );

    let mut roles = (0, 0);
    for node in &nodes {
        match cluster.role(node).await {
            Some(Role::Master { .. }) => roles.0 += 1,
            Some(Role::Replica {
                master,
                connected: true,
                ..
            }) => {
                assert!(masters.contains(&master), "{node} replicates {master}");
                roles.1 += 1;
            }
            other => panic!("{node} answers ROLE {other:?}"),
        }
    }
    assert_eq!(roles, (3, 3), "(masters, replicas)");

    for node in &nodes {
        let shards = cluster_shards(node).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shards.len(), 3, "{node}: {shards:?}");
        assert_eq!(
            cluster_nodes(node)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .len(),
            6
        );
    }
    let handed_out = cluster.addresses_handed_out().await;
    assert!(!handed_out.is_empty());
    for addr in handed_out {
        assert!(
            nodes.contains(&addr),
            "{addr} is handed out but is none of {nodes:?}"
        );
    }

    let mut names = vec![
        "performance:alerts".to_owned(),
        "{performance:alerts}:log".to_owned(),
    ];
    names.extend((0..16).map(|shard| format!("performance:metrics:{{{shard}}}")));
    for name in &names {
        let answer = cluster
            .command(&nodes[0], &["CLUSTER", "KEYSLOT", name])
            .await;
        assert_eq!(
            answer,
            Value::Int(i64::from(ClusterTopology::slot_of(name))),
            "CLUSTER KEYSLOT {name}"
        );
    }
    assert_eq!(
        slot_of("performance:alerts"),
        slot_of("{performance:alerts}:log")
    );
    let metric_slots: Vec<u16> = names[2..].iter().map(|name| slot_of(name)).collect();
    println!("slots of performance:metrics:{{0..15}}: {metric_slots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_reaches_the_slot_owners_subscriber_also_from_a_script() {
    let cluster = ClusterTopology::start().await;

    let channel = "performance:metrics:{3}";
    let owner = cluster.master_for_slot(slot_of(channel)).await;
    let mut subscriber = ShardedSubscriber::connect(&owner, &[channel], SubscribeOn::Master).await;
    let receivers = cluster
        .command(&owner, &["SPUBLISH", channel, "cpu=0.5"])
        .await;
    assert_eq!(receivers, Value::Int(1));
    assert_eq!(subscriber.expect_message(channel).await, "cpu=0.5");

    // A node that does not serve the slot redirects the subscription.
    let other = cluster
        .masters()
        .await
        .into_iter()
        .find(|master| *master != owner)
        .unwrap_or_else(|| panic!("only one master"));
    let mut misdirected =
        ShardedSubscriber::connect_unconfirmed(&other, &[channel], SubscribeOn::Master).await;
    let answer = misdirected.next_event().await;
    println!("SSUBSCRIBE {channel} on {other} (not the owner {owner}): {answer:?}");
    assert!(
        matches!(&answer, ShardedEvent::Error(error) if error.contains("MOVED") && error.contains(&owner)),
        "{answer:?}"
    );

    // One script writes the alert log and publishes the alert: both names hash to one slot.
    let alerts = "performance:alerts";
    let log = "{performance:alerts}:log";
    let alert_owner = cluster.master_for_slot(slot_of(log)).await;
    let mut alert_subscriber =
        ShardedSubscriber::connect(&alert_owner, &[alerts], SubscribeOn::Master).await;
    let script = "local id = redis.call('XADD', KEYS[1], '*', 'alert', ARGV[1]) \
                  local receivers = redis.call('SPUBLISH', ARGV[2], ARGV[1]) \
                  return {id, receivers}";
    let answer = cluster
        .try_command(
            &alert_owner,
            &["EVAL", script, "1", log, "disk full", alerts],
        )
        .await;
    println!("EVAL XADD {log} + SPUBLISH {alerts} on {alert_owner}: {answer:?}");
    let answer = answer.unwrap_or_else(|e| panic!("the script failed: {e}"));
    let Value::Array(fields) = answer else {
        panic!("the script answered {answer:?}");
    };
    assert_eq!(fields.get(1), Some(&Value::Int(1)), "one subscriber got it");
    assert_eq!(alert_subscriber.expect_message(alerts).await, "disk full");
    assert_eq!(
        cluster.command(&alert_owner, &["XLEN", log]).await,
        Value::Int(1)
    );

    // The same script publishing on a channel of another slot. Served by another node, it is
    // refused at the SPUBLISH, after the XADD, which stays (no rollback). Served by the same node,
    // Redis 7.0 lets it through: it checks that a script's keys and channels are local to the
    // node, not that they share the declared keys' slot (so such a script breaks only once the
    // slots are spread differently).
    let elsewhere = "performance:metrics:{3}";
    assert_ne!(
        cluster.master_for_slot(slot_of(elsewhere)).await,
        alert_owner
    );
    let answer = cluster
        .try_command(
            &alert_owner,
            &["EVAL", script, "1", log, "other node", elsewhere],
        )
        .await;
    println!("EVAL XADD {log} + SPUBLISH {elsewhere} (another node's slot): {answer:?}");
    assert!(answer.is_err(), "{answer:?}");
    let mut same_node_other_slot = None;
    for shard in 0..64 {
        let channel = format!("performance:metrics:{{{shard}}}");
        let slot = slot_of(&channel);
        if slot != slot_of(log) && cluster.master_for_slot(slot).await == alert_owner {
            same_node_other_slot = Some(channel);
            break;
        }
    }
    let nearby = same_node_other_slot.unwrap_or_else(|| panic!("no channel on {alert_owner}"));
    let answer = cluster
        .try_command(
            &alert_owner,
            &["EVAL", script, "1", log, "same node", &nearby],
        )
        .await;
    println!("EVAL XADD {log} + SPUBLISH {nearby} (another slot of the same node): {answer:?}");
    assert!(answer.is_ok(), "{answer:?}");
    let entries = cluster.command(&alert_owner, &["XLEN", log]).await;
    println!("XLEN {log} after the three scripts: {entries:?}");
    assert_eq!(
        entries,
        Value::Int(3),
        "the XADD before a refused SPUBLISH stays"
    );
    let leaked = alert_subscriber
        .next_event_within(Duration::from_millis(500))
        .await;
    assert_eq!(leaked, None, "the subscriber of {alerts} got {leaked:?}");
}

/// Kills the master of the alert log's slot: its replica is promoted, keeps the data, and a
/// sharded subscriber that was connected to the replica before (READONLY) is served by the new
/// master. The killed master, started again, rejoins as a replica of the promoted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_master_promotes_its_replica() {
    let cluster = ClusterTopology::start().await;
    let log = "{performance:alerts}:log";
    let alerts = "performance:alerts";
    let slot = slot_of(log);
    let old_master = cluster.master_for_slot(slot).await;
    let replicas = cluster.replicas_for_slot(slot).await;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    let replica = replicas[0].clone();

    cluster
        .command(&old_master, &["XADD", log, "*", "alert", "before"])
        .await;
    assert_eq!(
        cluster.command(&old_master, &["WAIT", "1", "5000"]).await,
        Value::Int(1)
    );

    let mut on_replica =
        ShardedSubscriber::connect(&replica, &[alerts], SubscribeOn::Replica).await;
    let mut on_master =
        ShardedSubscriber::connect(&old_master, &[alerts], SubscribeOn::Master).await;
    let receivers = cluster
        .command(&old_master, &["SPUBLISH", alerts, "before the kill"])
        .await;
    println!("SPUBLISH on the master before the kill: {receivers:?} receivers on the master");
    assert_eq!(on_master.expect_message(alerts).await, "before the kill");
    let on_replica_before = on_replica.next_event_within(Duration::from_secs(2)).await;
    println!("the replica's subscriber, for an SPUBLISH on the master: {on_replica_before:?}");

    let killed_at = Instant::now();
    cluster.kill(&old_master).await;
    let (new_master, seen_at) = cluster.wait_for_failover(&old_master).await;
    println!(
        "failover: {new_master} serves slot {slot} and answers ROLE master {:?} after the kill of {old_master}",
        seen_at.duration_since(killed_at)
    );
    assert_eq!(new_master, replica, "the only replica is promoted");
    assert_eq!(cluster.master_for_slot(slot).await, replica);
    assert!(!cluster.masters().await.contains(&old_master));
    assert_eq!(
        cluster.command(&new_master, &["XLEN", log]).await,
        Value::Int(1)
    );

    let on_master_after = on_master.next_event().await;
    println!("the killed master's subscriber: {on_master_after:?}");
    assert!(matches!(on_master_after, ShardedEvent::Closed(_)));

    let receivers = cluster
        .command(&new_master, &["SPUBLISH", alerts, "after the kill"])
        .await;
    println!("SPUBLISH on the promoted replica: {receivers:?} receivers");
    let mut seen = Vec::new();
    while let Some(event) = on_replica.next_event_within(Duration::from_secs(2)).await {
        seen.push(event);
    }
    println!("the subscriber connected to the replica before its promotion saw: {seen:?}");
    assert!(
        seen.contains(&ShardedEvent::Message {
            channel: alerts.to_owned(),
            payload: "after the kill".to_owned()
        }),
        "{seen:?}"
    );

    let restarted_at = Instant::now();
    cluster.start_again(&old_master).await;
    println!(
        "{old_master} back as a replica {:?} after its restart",
        restarted_at.elapsed()
    );
    assert!(matches!(
        cluster.role(&old_master).await,
        Some(Role::Replica { master, .. }) if master == new_master
    ));
}

/// A manual failover moves a slot away from a master: what its sharded subscriber and its
/// replica's (READONLY) subscriber see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_loses_its_slot_tells_its_sharded_subscribers() {
    let cluster = ClusterTopology::start().await;
    let channel = "performance:metrics:{7}";
    let slot = slot_of(channel);
    let old_master = cluster.master_for_slot(slot).await;
    let replica = cluster.replicas_for_slot(slot).await[0].clone();
    let mut on_master =
        ShardedSubscriber::connect(&old_master, &[channel], SubscribeOn::Master).await;
    let mut on_replica =
        ShardedSubscriber::connect(&replica, &[channel], SubscribeOn::Replica).await;

    let promoted_at = Instant::now();
    cluster.promote(&replica).await;
    println!(
        "CLUSTER FAILOVER: {replica} took over from {old_master} in {:?}",
        promoted_at.elapsed()
    );
    assert_eq!(cluster.master_for_slot(slot).await, replica);

    let mut seen_on_master = Vec::new();
    while let Some(event) = on_master.next_event_within(Duration::from_secs(2)).await {
        seen_on_master.push(event);
    }
    println!("the old master's subscriber saw: {seen_on_master:?}");

    let receivers = cluster
        .command(&replica, &["SPUBLISH", channel, "after"])
        .await;
    println!("SPUBLISH on the new master: {receivers:?} receivers");
    let mut seen_on_replica = Vec::new();
    while let Some(event) = on_replica.next_event_within(Duration::from_secs(2)).await {
        seen_on_replica.push(event);
    }
    println!("the promoted replica's subscriber saw: {seen_on_replica:?}");

    assert!(
        seen_on_master.contains(&ShardedEvent::Unsubscribed {
            channel: channel.to_owned(),
            count: 0
        }),
        "{seen_on_master:?}"
    );
    assert!(
        seen_on_replica.contains(&ShardedEvent::Message {
            channel: channel.to_owned(),
            payload: "after".to_owned()
        }),
        "{seen_on_replica:?}"
    );
}

/// A frozen master is failed over like a dead one; once it runs again it learns it lost its
/// slot, becomes a replica of the promoted node and unsubscribes its sharded subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_is_failed_over_and_rejoins_as_a_replica() {
    let cluster = ClusterTopology::start().await;
    let channel = "performance:metrics:{11}";
    let slot = slot_of(channel);
    let old_master = cluster.master_for_slot(slot).await;
    let mut on_master =
        ShardedSubscriber::connect(&old_master, &[channel], SubscribeOn::Master).await;

    let paused_at = Instant::now();
    cluster.pause(&old_master).await;
    let (new_master, seen_at) = cluster.wait_for_failover(&old_master).await;
    println!(
        "failover of the paused {old_master} to {new_master} {:?} after the pause",
        seen_at.duration_since(paused_at)
    );

    cluster.unpause(&old_master).await;
    harness::wait_until(
        "the unpaused master is a replica of the promoted one",
        || async {
            matches!(cluster.role(&old_master).await,
            Some(Role::Replica { master, .. }) if master == new_master)
        },
    )
    .await;
    let mut seen = Vec::new();
    while let Some(event) = on_master.next_event_within(Duration::from_secs(2)).await {
        seen.push(event);
    }
    println!("the paused master's subscriber saw: {seen:?}");
    assert!(
        seen.contains(&ShardedEvent::Unsubscribed {
            channel: channel.to_owned(),
            count: 0
        }),
        "{seen:?}"
    );
}
