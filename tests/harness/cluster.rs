//! A Redis Cluster topology in containers: three masters (slots 0-5460, 5461-10922,
//! 10923-16383) with one replica each, from the same locally built image as [`super::redis`]
//! (`FANOUT_REDIS_IMAGE`). The image has no `redis-cli`: the harness builds the cluster itself
//! with `CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET` and `CLUSTER REPLICATE`.
//!
//! Every container runs with host networking, bound to 127.0.0.1 on a port P of its own (and the
//! cluster bus on P + 10000), and announces 127.0.0.1 (`cluster-announce-ip`): every address
//! Redis hands out (`CLUSTER SLOTS`, `SHARDS`, `NODES`, `-MOVED`) is `127.0.0.1:P`, so tests never
//! touch a container bridge address. Nodes are named by those addresses ("127.0.0.1:P").
//!
//! The harness never remembers who is master: it asks a live node, and checks the answer with
//! `ROLE`. It never sleeps to synchronise: every wait polls a condition with a deadline.
//!
//! What Redis does here that a test must allow for:
//! - there is no central view: each node answers `CLUSTER SLOTS` from its own gossip, which lags
//!   the others' by up to a few hundred milliseconds; the harness asks live nodes, in order;
//! - failover is the cluster's own (no sentinels): a master that does not answer for
//!   `cluster-node-timeout` (1 s here) is flagged `fail?`, then `fail` once a majority of masters
//!   agree; its replica waits 500-1000 ms more before asking for votes, so a promotion takes some
//!   2-3 s after a kill, and during it the dead master's slots are served by nobody
//!   (`cluster_state:fail` while `cluster-require-full-coverage` is yes, the default);
//! - a node that stops serving a slot (it became a replica, or the slot moved) sends each
//!   `SSUBSCRIBE`r of a channel in that slot a `sunsubscribe` by itself;
//! - a restarted node keeps its `nodes.conf` (the container's /data survives `docker kill`), so
//!   it rejoins as the same node and, when its slots were taken over, as a replica of the new owner;
//! - Redis rewrites `nodes.conf` on every topology change: each node has it in a writable /data.
//!
//! Over 400 lines on purpose: the one type every cluster test drives, with each wait documented
//! where it is; its parsing, forming and probing already live in `cluster/`.

mod formation;
mod node;
mod probe;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::Value;
use testcontainers::bollard::Docker;

pub use crate::harness::sentinel::Role;
use crate::harness::sentinel::{command_on, poll_until, query, role};
use node::{free_cluster_ports, start_cluster_node, ClusterNode};
use probe::{addresses_handed_out_by, owner, ranges_of, taken_over_by, try_command};
pub use probe::{
    cluster_nodes, cluster_shards, cluster_slots, info_fields, slot_of, NodeEntry, Shard,
    ShardNode, SlotRange, SLOTS,
};
pub use subscriber::{ShardedEvent, ShardedSubscriber, SubscribeOn};

/// How many times [`ClusterTopology::start`] tries, on new ports each time.
const START_ATTEMPTS: usize = 3;

/// Bound on [`ClusterTopology::wait_for_failover`] and on a restarted node's rejoining.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// How long one manual failover is given before it is asked for again: Redis gives up on one
/// after 5 s.
const MANUAL_FAILOVER_WAIT: Duration = Duration::from_secs(6);

/// How many times a manual failover is asked for.
const MANUAL_FAILOVER_ATTEMPTS: usize = 5;

pub struct ClusterTopology {
    docker: Docker,
    /// Masters first (in [`formation::MASTER_SLOTS`] order), then their replicas in the same order.
    nodes: Vec<ClusterNode>,
    /// The slot ranges a node served when [`Self::kill`] or [`Self::pause`] hit it, so that
    /// [`Self::wait_for_failover`] knows what to look for once nobody reports it any more.
    slots_at_fault: Mutex<HashMap<String, Vec<(u16, u16)>>>,
}

impl ClusterTopology {
    /// Starts six nodes, gives three of them the slots, joins them, makes each of the other three
    /// a replica of one master, and returns once every node says `cluster_state:ok`, every replica's
    /// link is up, and every node's `CLUSTER SLOTS` and `CLUSTER SHARDS` show each master with its
    /// replica (online): from then on, killing a master leads to a failover.
    ///
    /// Ports are picked free and then bound by Redis, so another process may take one in between;
    /// a topology that does not come up is dropped whole (its containers removed) and started
    /// again on new ports, at most [`START_ATTEMPTS`] times, each failure printed.
    pub async fn start() -> ClusterTopology {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match ClusterTopology::try_start().await {
                Ok(topology) => return topology,
                Err(failure) => {
                    eprintln!("cluster topology, attempt {attempt}: {failure}");
                    failures.push(failure);
                }
            }
        }
        panic!("the cluster topology did not start: {failures:?}; run scripts/redis-image first")
    }

    /// One attempt: no panic before every container is owned, so that a failure drops (removes)
    /// all of them.
    async fn try_start() -> Result<ClusterTopology, String> {
        let ports = free_cluster_ports(6);
        let started =
            futures_util::future::join_all(ports.iter().map(|port| start_cluster_node(*port)))
                .await;
        let mut nodes = Vec::new();
        let mut failures = Vec::new();
        for result in started {
            match result {
                Ok(node) => nodes.push(node),
                Err(failure) => failures.push(failure),
            }
        }
        if !failures.is_empty() {
            return Err(failures.join("; "));
        }
        let docker = Docker::connect_with_defaults()
            .map_err(|e| format!("cannot reach Docker to kill containers later: {e}"))?;
        let topology = ClusterTopology {
            docker,
            nodes,
            slots_at_fault: Mutex::new(HashMap::new()),
        };
        formation::form(&topology.node_addrs()).await?;
        Ok(topology)
    }

    /// Every node's address, "127.0.0.1:P": the three first-started masters, then their replicas
    /// in the same order (whatever their roles are now).
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.addr.clone()).collect()
    }

    /// The value for `--redis-cluster`: every node's address joined by commas.
    pub fn seeds(&self) -> String {
        self.node_addrs().join(",")
    }

    /// The nodes neither killed nor paused by the harness, in start order.
    pub fn live_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|node| node.alive.load(Ordering::SeqCst) && !node.paused.load(Ordering::SeqCst))
            .map(|node| node.addr.clone())
            .collect()
    }

    /// `CLUSTER SLOTS` as the first live node that answers sees it. Panics if none answers
    /// within [`FAILOVER_WAIT`].
    pub async fn slots(&self) -> Vec<SlotRange> {
        let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
        let mut failures = Vec::new();
        loop {
            for addr in self.live_addrs() {
                match cluster_slots(&addr).await {
                    Ok(ranges) if !ranges.is_empty() => return ranges,
                    Ok(_) => failures.push(format!("{addr}: no slots")),
                    Err(failure) => failures.push(failure),
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no live node answers CLUSTER SLOTS: {failures:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The masters that serve slots now, as a live node reports them (`CLUSTER SLOTS`), sorted.
    pub async fn masters(&self) -> Vec<String> {
        let mut masters: Vec<String> = self
            .slots()
            .await
            .into_iter()
            .map(|range| range.master)
            .collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// The node serving `slot` now, as a live node reports it (`CLUSTER SLOTS`). Panics if the
    /// slot is served by nobody.
    pub async fn master_for_slot(&self, slot: u16) -> String {
        let ranges = self.slots().await;
        owner(&ranges, slot)
            .unwrap_or_else(|| panic!("slot {slot} is served by nobody: {ranges:?}"))
    }

    /// The replicas of the master serving `slot` now, as a live node reports them.
    pub async fn replicas_for_slot(&self, slot: u16) -> Vec<String> {
        let ranges = self.slots().await;
        ranges
            .into_iter()
            .find(|range| range.start <= slot && slot <= range.end)
            .map(|range| range.replicas)
            .unwrap_or_default()
    }

    /// The slot Redis Cluster maps a key or sharded channel to (hash tags included).
    pub fn slot_of(key_or_channel: &str) -> u16 {
        slot_of(key_or_channel)
    }

    /// Runs one command on the node at `addr`, as an operator's `redis-cli -p P` would. Panics on
    /// an error reply (e.g. `-MOVED`); use [`Self::try_command`] to see it.
    pub async fn command(&self, addr: &str, args: &[&str]) -> Value {
        command_on(addr, args).await
    }

    /// Runs one command on the node at `addr`; an error reply or a dead node is an `Err`.
    pub async fn try_command(&self, addr: &str, args: &[&str]) -> Result<Value, String> {
        try_command(addr, args).await
    }

    /// `ROLE` of the node at `addr`; `None` if it does not answer.
    pub async fn role(&self, addr: &str) -> Option<Role> {
        role(addr).await
    }

    /// SIGKILLs (`docker kill`) the container of the node at `addr`: its connections get a reset,
    /// nothing is flushed or handed over. The slots it served are noted first, for
    /// [`Self::wait_for_failover`].
    pub async fn kill(&self, addr: &str) {
        let node = self.node(addr);
        self.note_slots_at_fault(addr).await;
        self.docker
            .kill_container(node.container.id(), None)
            .await
            .unwrap_or_else(|e| panic!("cannot kill the Redis at {addr}: {e}"));
        node.alive.store(false, Ordering::SeqCst);
    }

    /// Freezes the container of the node at `addr` (`docker pause`): its connections stay open and
    /// nothing is answered, as a hung or partitioned Redis. After `cluster-node-timeout` the
    /// others fail it over as if it were dead.
    pub async fn pause(&self, addr: &str) {
        let node = self.node(addr);
        self.note_slots_at_fault(addr).await;
        node.container
            .pause()
            .await
            .unwrap_or_else(|e| panic!("cannot pause the Redis at {addr}: {e}"));
        node.paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused node go on. A master that was failed over meanwhile still believes it serves
    /// its slots until it hears from the others (within a gossip round or two), then turns into a
    /// replica of the new owner and sends `sunsubscribe` to its sharded subscribers.
    pub async fn unpause(&self, addr: &str) {
        let node = self.node(addr);
        node.container
            .unpause()
            .await
            .unwrap_or_else(|e| panic!("cannot unpause the Redis at {addr}: {e}"));
        node.paused.store(false, Ordering::SeqCst);
    }

    /// Starts a killed node again on the same port, with its `nodes.conf` (and an empty dataset:
    /// there is no persistence), and waits until it is a connected replica of a master whose
    /// link is up (its old slots' new owner if it was a failed-over master). Bounded by
    /// [`FAILOVER_WAIT`].
    pub async fn start_again(&self, addr: &str) {
        let node = self.node(addr);
        node.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start the Redis at {addr} again: {e}"));
        poll_until(
            FAILOVER_WAIT,
            &format!("{addr} is a replica with its link up"),
            || async {
                matches!(
                    role(addr).await,
                    Some(Role::Replica {
                        connected: true,
                        ..
                    })
                ) && info_fields(addr, &["INFO", "replication"])
                    .await
                    .is_ok_and(|info| info.get("master_link_status").is_some_and(|s| s == "up"))
            },
        )
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
        node.alive.store(true, Ordering::SeqCst);
    }

    /// A manual failover (`CLUSTER FAILOVER`) run on the replica at `replica`: it and its master
    /// agree to swap roles with no data lost. Waits until `replica` answers `ROLE` as master and a
    /// live node other than it reports it as the owner of its slots.
    pub async fn promote(&self, replica: &str) {
        let Some(Role::Replica { master, .. }) = role(replica).await else {
            panic!("{replica} is not a replica");
        };
        // A manual failover needs the replica in sync: a master just demoted is a replica before
        // its link to the new master is up, and Redis drops a failover asked for then (after 5 s).
        poll_until(
            FAILOVER_WAIT,
            &format!("{replica} is a replica with its link up"),
            || async {
                info_fields(replica, &["INFO", "replication"])
                    .await
                    .is_ok_and(|info| info.get("master_link_status").is_some_and(|s| s == "up"))
            },
        )
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
        // A master votes for one failover of a shard per 2 × cluster-node-timeout: a manual
        // failover asked for sooner after the last one gets no votes and is dropped after 5 s
        // (CLUSTER_MF_TIMEOUT). Ask again until it happens.
        let mut last_failure = String::new();
        for _ in 0..MANUAL_FAILOVER_ATTEMPTS {
            self.command(replica, &["CLUSTER", "FAILOVER"]).await;
            let took_over = poll_until(
                MANUAL_FAILOVER_WAIT,
                &format!("{replica} took over from {master}"),
                || async {
                    if !matches!(role(replica).await, Some(Role::Master { .. })) {
                        return false;
                    }
                    match cluster_slots(&master).await {
                        Ok(ranges) => {
                            ranges.iter().any(|range| range.master == replica)
                                && !ranges.iter().any(|range| range.master == master)
                        }
                        Err(_) => false,
                    }
                },
            )
            .await;
            match took_over {
                Ok(()) => return,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("{last_failure} (asked {MANUAL_FAILOVER_ATTEMPTS} times)");
    }

    /// Waits until a live node reports every slot that `old_master` served (when it was killed or
    /// paused, or now if the harness did neither) as served by one other node, and that node
    /// answers `ROLE` as master; returns its address and when this was first seen. Then waits
    /// until every live node reports it (each learns it by gossip, a little later), so that what
    /// the harness answers next is the same whichever node it asks. Bounded by [`FAILOVER_WAIT`].
    pub async fn wait_for_failover(&self, old_master: &str) -> (String, Instant) {
        let held = self.slots_held_by(old_master).await;
        assert!(
            !held.is_empty(),
            "{old_master} served no slots: nothing to fail over"
        );
        let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
        let mut last_seen = Vec::new();
        let (new_master, first_seen) = 'found: loop {
            for addr in self.live_addrs() {
                let Ok(ranges) = cluster_slots(&addr).await else {
                    continue;
                };
                if let Some(new) = taken_over_by(&ranges, &held, old_master) {
                    if matches!(role(&new).await, Some(Role::Master { .. })) {
                        break 'found (new, Instant::now());
                    }
                }
                last_seen = ranges;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failover of {held:?} away from {old_master} within {FAILOVER_WAIT:?}; \
                 last CLUSTER SLOTS: {last_seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for addr in self.live_addrs() {
            poll_until(
                FAILOVER_WAIT,
                &format!("{addr} reports {new_master} serving {held:?}"),
                || async {
                    cluster_slots(&addr).await.is_ok_and(|ranges| {
                        taken_over_by(&ranges, &held, old_master).as_ref() == Some(&new_master)
                    })
                },
            )
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        }
        (new_master, first_seen)
    }

    /// Every address the cluster hands out now, "host:port", as each live node reports it in
    /// `CLUSTER SLOTS`, `CLUSTER SHARDS` (ip and endpoint) and `CLUSTER NODES`. Tests check these
    /// are all on 127.0.0.1 and among the topology's own ports.
    pub async fn addresses_handed_out(&self) -> Vec<String> {
        let mut addrs = Vec::new();
        for addr in self.live_addrs() {
            addrs.extend(addresses_handed_out_by(&addr).await);
        }
        addrs
    }

    async fn slots_held_by(&self, addr: &str) -> Vec<(u16, u16)> {
        let noted = self
            .slots_at_fault
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(addr)
            .cloned();
        match noted {
            Some(held) => held,
            None => ranges_of(&self.slots().await, addr),
        }
    }

    async fn note_slots_at_fault(&self, addr: &str) {
        let held = ranges_of(&self.slots().await, addr);
        self.slots_at_fault
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(addr.to_owned(), held);
    }

    fn node(&self, addr: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.addr == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }
}
