//! The Sentinel topology itself, before any worker uses it: a key written on the master survives
//! the master's SIGKILL, the replica is promoted, and every address the sentinels hand out is on
//! 127.0.0.1. Prints how long start-up and the failover took.

mod harness;

use std::time::Instant;

use harness::sentinel::{Role, SentinelTopology};
use harness::wait_until;
use redis::Value;

#[tokio::test]
async fn killing_the_master_promotes_the_replica_with_the_data() {
    let started = Instant::now();
    let topology = SentinelTopology::start().await;
    println!("sentinel topology ready in {:?}", started.elapsed());

    let nodes = topology.data_node_addrs();
    let (old_master, replica) = (nodes[0].clone(), nodes[1].clone());
    assert_eq!(topology.master_addr().await, old_master);
    assert_only_own_loopback_addresses(&topology).await;
    assert!(matches!(
        topology.role(&replica).await,
        Some(Role::Replica { master, connected: true, .. }) if master == old_master
    ));

    topology
        .command(&["SET", "sentinel-smoke", "before the failover"])
        .await;
    wait_until("the replica has the key", || async {
        harness::sentinel::command_on(&replica, &["GET", "sentinel-smoke"]).await
            == Value::BulkString(b"before the failover".to_vec())
    })
    .await;

    let killed_at = Instant::now();
    let killed = topology.kill_master().await;
    assert_eq!(killed, old_master);
    let new_master = topology.wait_for_failover(&killed).await;
    println!(
        "failover: every sentinel names {new_master} and it answers ROLE master {:?} after the kill",
        killed_at.elapsed()
    );

    assert_eq!(new_master, replica, "the only replica is promoted");
    assert_eq!(
        topology.command(&["GET", "sentinel-smoke"]).await,
        Value::BulkString(b"before the failover".to_vec())
    );
    topology
        .command(&["SET", "sentinel-smoke", "after the failover"])
        .await;
    assert_only_own_loopback_addresses(&topology).await;
}

/// Two failovers in a row, back to the original master: the killed master is started again,
/// the sentinels turn it into a replica, and the second kill promotes it again.
#[tokio::test]
async fn two_failovers_in_a_row_return_to_the_original_master() {
    let topology = SentinelTopology::start().await;
    let nodes = topology.data_node_addrs();
    let (first, second) = (nodes[0].clone(), nodes[1].clone());

    topology.command(&["SET", "flap", "1"]).await;
    topology.wait_replicas_synced().await;
    let killed_at = Instant::now();
    topology.kill_master().await;
    assert_eq!(topology.wait_for_failover(&first).await, second);
    println!("first failover {:?} after the kill", killed_at.elapsed());

    let restarted_at = Instant::now();
    topology.start_again(&first).await;
    println!(
        "{first} back as a synced replica of {second} {:?} after its restart",
        restarted_at.elapsed()
    );
    topology.command(&["SET", "flap", "2"]).await;
    topology.wait_replicas_synced().await;

    let killed_at = Instant::now();
    topology.kill_master().await;
    assert_eq!(topology.wait_for_failover(&second).await, first);
    println!("second failover {:?} after the kill", killed_at.elapsed());
    assert_eq!(
        topology.command(&["GET", "flap"]).await,
        Value::BulkString(b"2".to_vec())
    );
    assert_only_own_loopback_addresses(&topology).await;
}

/// Every address the sentinels and the master hand out is 127.0.0.1 and one of the topology's
/// own ports: never a container bridge address.
async fn assert_only_own_loopback_addresses(topology: &SentinelTopology) {
    let mut own = topology.data_node_addrs();
    own.extend(topology.sentinel_addrs());
    let handed_out = topology.addresses_handed_out().await;
    assert!(!handed_out.is_empty());
    for addr in handed_out {
        assert!(
            own.contains(&addr),
            "{addr} is handed out but is none of {own:?}"
        );
    }
}
