//! Building a cluster out of six empty nodes, as `redis-cli --cluster create` would (the image has
//! no `redis-cli`): slots to the first three, `CLUSTER MEET`, `CLUSTER REPLICATE` for the other
//! three, then waiting until every node's view agrees. It must never return before a killed
//! master would be failed over: every replica in sync and known to every node.

use std::time::Duration;

use redis::Value;

use super::probe::try_command;
use super::probe::{cluster_nodes, cluster_shards, cluster_slots, info_fields};
use crate::harness::sentinel::poll_until;

/// Bound on each phase of building the cluster (handshakes, replication, slot propagation).
const CONVERGE_WAIT: Duration = Duration::from_secs(30);

/// The slot ranges the three masters are given, in start order.
pub(super) const MASTER_SLOTS: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// Builds the cluster out of six empty nodes, as `redis-cli --cluster create` would.
pub(super) async fn form(addrs: &[String]) -> Result<(), String> {
    let (masters, replicas) = addrs.split_at(3);
    for (master, (start, end)) in masters.iter().zip(MASTER_SLOTS) {
        try_command(
            master,
            &[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &start.to_string(),
                &end.to_string(),
            ],
        )
        .await?;
    }
    for other in &addrs[1..] {
        let port = other
            .rsplit_once(':')
            .map(|(_, port)| port)
            .unwrap_or_default();
        try_command(&addrs[0], &["CLUSTER", "MEET", "127.0.0.1", port]).await?;
    }
    for addr in addrs {
        poll_until(
            CONVERGE_WAIT,
            &format!("{addr} knows all 6 nodes"),
            || async { knows_all(addr, addrs.len()).await },
        )
        .await?;
    }
    for (replica, master) in replicas.iter().zip(masters) {
        let Value::BulkString(id) = try_command(master, &["CLUSTER", "MYID"]).await? else {
            return Err(format!("CLUSTER MYID on {master}: not a string"));
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        try_command(replica, &["CLUSTER", "REPLICATE", &id]).await?;
    }
    let expected: Vec<(u16, u16, String, String)> = MASTER_SLOTS
        .iter()
        .zip(masters.iter().zip(replicas))
        .map(|((start, end), (master, replica))| (*start, *end, master.clone(), replica.clone()))
        .collect();
    for replica in replicas {
        poll_until(
            CONVERGE_WAIT,
            &format!("{replica}'s master link is up"),
            || async {
                info_fields(replica, &["INFO", "replication"])
                    .await
                    .is_ok_and(|info| info.get("master_link_status").is_some_and(|s| s == "up"))
            },
        )
        .await?;
    }
    for addr in addrs {
        poll_until(
            CONVERGE_WAIT,
            &format!("{addr} reports cluster_state:ok and every master with its replica"),
            || async { sees_whole_cluster(addr, &expected).await },
        )
        .await?;
    }
    Ok(())
}

/// `CLUSTER NODES` on `addr` lists `count` nodes, each with an address, past its handshake,
/// not failing, and (but itself) with its link connected.
async fn knows_all(addr: &str, count: usize) -> bool {
    let Ok(entries) = cluster_nodes(addr).await else {
        return false;
    };
    entries.len() == count
        && entries.iter().all(|entry| {
            !["handshake", "noaddr", "fail", "fail?"]
                .iter()
                .any(|flag| entry.has_flag(flag))
                && (entry.has_flag("myself") || entry.connected)
        })
}

/// `addr` says `cluster_state:ok`, and its `CLUSTER SLOTS` and `CLUSTER SHARDS` show exactly the
/// `expected` ranges, each served by its master with its one replica, all online.
async fn sees_whole_cluster(addr: &str, expected: &[(u16, u16, String, String)]) -> bool {
    let Ok(info) = info_fields(addr, &["CLUSTER", "INFO"]).await else {
        return false;
    };
    if info.get("cluster_state").map(String::as_str) != Some("ok") {
        return false;
    }
    let Ok(mut ranges) = cluster_slots(addr).await else {
        return false;
    };
    ranges.sort_by_key(|range| range.start);
    let slots_match = ranges.len() == expected.len()
        && ranges
            .iter()
            .zip(expected)
            .all(|(range, (start, end, master, replica))| {
                range.start == *start
                    && range.end == *end
                    && &range.master == master
                    && range.replicas == [replica.clone()]
            });
    let Ok(shards) = cluster_shards(addr).await else {
        return false;
    };
    let shards_match = shards.len() == expected.len()
        && expected.iter().all(|(start, end, master, replica)| {
            shards.iter().any(|shard| {
                shard.slots == [(*start, *end)]
                    && shard.nodes.len() == 2
                    && shard.nodes.iter().all(|node| node.health == "online")
                    && shard
                        .nodes
                        .iter()
                        .any(|node| &node.addr == master && node.role == "master")
                    && shard
                        .nodes
                        .iter()
                        .any(|node| &node.addr == replica && node.role == "replica")
            })
        });
    slots_match && shards_match
}
