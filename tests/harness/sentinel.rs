//! A Redis Sentinel topology in containers: one master, one replica and three sentinels, from the
//! same locally built image as [`super::redis`] (`FANOUT_REDIS_IMAGE`).
//!
//! Every container runs with host networking, bound to 127.0.0.1 on a port of its own, and
//! announces 127.0.0.1 (`replica-announce-ip`, `sentinel announce-ip`): every address Redis or
//! Sentinel hands out is `127.0.0.1:PORT`, so tests never touch a container bridge address. Nodes
//! are named by those addresses ("127.0.0.1:P") throughout.
//!
//! Timings are shortened for tests (master down after 1 s, failover timeout 3 s, quorum 2). The
//! harness never decides who is master: it asks the sentinels, and checks the answer with `ROLE`.
//! It never sleeps to synchronise: every wait polls a condition with a deadline.
//!
//! What Redis does here that a test must allow for:
//! - a sentinel rewrites its configuration file (at start and on every failover), and Sentinel
//!   sends `CONFIG REWRITE` to the nodes it reconfigures: each gets a writable file in /data;
//! - a sentinel learns replicas from the master's `INFO`, read every 10 s: the sentinels start
//!   only once the replica is attached, and other sentinels are learnt from hellos every 2 s;
//! - a restarted old master answers as an empty master (no persistence) until Sentinel converts
//!   it, 8 s after it came back; restarted before the failover, it would wipe the replica;
//! - a sentinel does not fail the same master over again within 2 × failover-timeout (6 s).
//!
//! Over 400 lines on purpose: the topology, its operations (kill, pause, failover) and their waits are one harness.

mod node;
mod probe;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use testcontainers::bollard::Docker;
use testcontainers::{ContainerAsync, GenericImage};

use super::WAIT;
use node::{address, distinct_free_ports, start_data_node, start_sentinel, DataNode};
pub use probe::{command_on, query, role, Role};
use probe::{master_addr_from, ping};

/// The name the sentinels monitor the master under (`--redis-sentinel-master`).
pub const MASTER_NAME: &str = "fanout-master";

/// How many times [`SentinelTopology::start`] tries, on new ports each time.
const START_ATTEMPTS: usize = 3;

/// Longest wait for a restarted node to be turned into a replica: Sentinel converts an old master
/// only after it has reported itself master for 8 s (4 hello periods), then it must resync.
const REJOIN_WAIT: Duration = Duration::from_secs(60);

pub struct SentinelTopology {
    docker: Docker,
    data_nodes: Vec<DataNode>,
    sentinels: Vec<ContainerAsync<GenericImage>>,
    sentinel_addrs: Vec<String>,
}

impl SentinelTopology {
    /// Starts a master, a replica and three sentinels, and returns once the replica is in sync,
    /// and every sentinel knows the replica and the two other sentinels (`SENTINEL CKQUORUM` is
    /// OK): from then on, killing the master leads to a failover.
    ///
    /// Ports are picked free and then bound by Redis, so another process may take one in between;
    /// a topology that does not come up is dropped whole (its containers removed) and started
    /// again on new ports, at most [`START_ATTEMPTS`] times, each failure printed.
    pub async fn start() -> SentinelTopology {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match SentinelTopology::try_start().await {
                Ok(topology) => return topology,
                Err(failure) => {
                    eprintln!("sentinel topology, attempt {attempt}: {failure}");
                    failures.push(failure);
                }
            }
        }
        panic!("the sentinel topology did not start: {failures:?}; run scripts/redis-image first")
    }

    /// One attempt: no panic before every container is owned, so that a failure drops (removes)
    /// all of them rather than leaving one half-created by an interrupted `join!`.
    ///
    /// The sentinels start once the replica is in sync: a sentinel learns replicas from the
    /// master's `INFO`, which it reads every 10 s, so one that asked before the replica attached
    /// would not know it for 10 s (and could not fail over).
    async fn try_start() -> Result<SentinelTopology, String> {
        let ports = distinct_free_ports(5);
        let (master_port, replica_port) = (ports[0], ports[1]);
        let (master, replica) = tokio::join!(
            start_data_node(master_port, None),
            start_data_node(replica_port, Some(master_port)),
        );
        let data_nodes = vec![master?, replica?];
        replica_synced_to(&data_nodes[1].addr, &data_nodes[0].addr).await?;
        let (first, second, third) = tokio::join!(
            start_sentinel(ports[2], master_port),
            start_sentinel(ports[3], master_port),
            start_sentinel(ports[4], master_port),
        );
        let docker = Docker::connect_with_defaults()
            .map_err(|e| format!("cannot reach Docker to kill containers later: {e}"))?;
        let topology = SentinelTopology {
            docker,
            data_nodes,
            sentinels: vec![first?, second?, third?],
            sentinel_addrs: ports[2..].iter().map(|port| address(*port)).collect(),
        };
        topology.sentinels_ready_within(WAIT).await?;
        Ok(topology)
    }

    /// The sentinels' addresses, "127.0.0.1:P".
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinel_addrs.clone()
    }

    /// The value for `--redis-sentinel`: the sentinels' addresses joined by commas.
    pub fn sentinel_flag(&self) -> String {
        self.sentinel_addrs.join(",")
    }

    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// The master and replica addresses, whatever their role now, in start order (the first one
    /// started as master).
    pub fn data_node_addrs(&self) -> Vec<String> {
        self.data_nodes
            .iter()
            .map(|node| node.addr.clone())
            .collect()
    }

    /// The master as the sentinels report it (`SENTINEL get-master-addr-by-name`): the first
    /// sentinel that answers wins. Panics if none answers within [`WAIT`].
    pub async fn master_addr(&self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for sentinel in &self.sentinel_addrs {
                if let Some(addr) = master_addr_from(sentinel).await {
                    return addr;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no sentinel of {:?} names the master {MASTER_NAME}",
                self.sentinel_addrs
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What each sentinel reports as the master, in the order of [`Self::sentinel_addrs`]
    /// (`None` where a sentinel does not answer).
    pub async fn master_addr_per_sentinel(&self) -> Vec<Option<String>> {
        let mut answers = Vec::new();
        for sentinel in &self.sentinel_addrs {
            answers.push(master_addr_from(sentinel).await);
        }
        answers
    }

    /// Every address the topology hands out now, "host:port": each sentinel's master, replicas
    /// and fellow sentinels, and the replicas the master lists in `ROLE`. Tests check these are
    /// all on 127.0.0.1 and among the topology's own ports.
    pub async fn addresses_handed_out(&self) -> Vec<String> {
        let mut addrs = Vec::new();
        for sentinel in &self.sentinel_addrs {
            addrs.extend(master_addr_from(sentinel).await);
            for kind in ["REPLICAS", "SENTINELS"] {
                let answer = command_on(sentinel, &["SENTINEL", kind, MASTER_NAME]).await;
                let entries: Vec<HashMap<String, String>> = redis::from_redis_value(answer)
                    .unwrap_or_else(|e| panic!("SENTINEL {kind} on {sentinel}: {e}"));
                for entry in entries {
                    addrs.push(format!("{}:{}", entry["ip"], entry["port"]));
                }
            }
        }
        let master = self.master_addr().await;
        if let Value::Array(fields) = command_on(&master, &["ROLE"]).await {
            if let Some(replicas) = fields.get(2) {
                let replicas: Vec<(String, String, String)> = redis::from_redis_value_ref(replicas)
                    .unwrap_or_else(|e| panic!("ROLE on {master}: {e}"));
                addrs.extend(
                    replicas
                        .into_iter()
                        .map(|(ip, port, _)| format!("{ip}:{port}")),
                );
            }
        }
        addrs
    }

    /// SIGKILLs (`docker kill`) the current master's container: its connections get a reset,
    /// nothing is flushed or handed over. Returns the address it had.
    pub async fn kill_master(&self) -> String {
        let addr = self.master_addr().await;
        assert!(
            matches!(role(&addr).await, Some(Role::Master { .. })),
            "the sentinels name {addr} as master but it does not answer ROLE as master"
        );
        self.kill(&addr).await;
        addr
    }

    /// SIGKILLs the container of the master or replica at `addr`.
    pub async fn kill(&self, addr: &str) {
        let node = self.data_node(addr);
        self.docker
            .kill_container(node.container.id(), None)
            .await
            .unwrap_or_else(|e| panic!("cannot kill the Redis at {addr}: {e}"));
        node.alive.store(false, Ordering::SeqCst);
    }

    /// Freezes the container of the master or replica at `addr`: its connections stay open and
    /// nothing is answered, as a hung or partitioned Redis.
    pub async fn pause(&self, addr: &str) {
        let node = self.data_node(addr);
        node.container
            .pause()
            .await
            .unwrap_or_else(|e| panic!("cannot pause the Redis at {addr}: {e}"));
    }

    /// Lets a paused node go on; an old master comes back still a master until the sentinels
    /// turn it into a replica.
    pub async fn unpause(&self, addr: &str) {
        let node = self.data_node(addr);
        node.container
            .unpause()
            .await
            .unwrap_or_else(|e| panic!("cannot unpause the Redis at {addr}: {e}"));
    }

    /// Starts a killed node again, on the same port and with its start-up configuration (and an
    /// empty dataset: there is no persistence), and waits until the sentinels have turned it into
    /// a replica of the current master and it is in sync. This takes some 10 s: Sentinel converts
    /// an old master only after it has reported itself master for 8 s. Until then it answers as an
    /// empty master that no sentinel names.
    pub async fn start_again(&self, addr: &str) {
        let node = self.data_node(addr);
        node.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start the Redis at {addr} again: {e}"));
        wait_for(
            Duration::from_secs(15),
            &format!("{addr} answers PING"),
            || ping(addr),
        )
        .await;
        node.alive.store(true, Ordering::SeqCst);
        let master = self.master_addr().await;
        assert_ne!(
            master, addr,
            "the sentinels name a node that was just restarted"
        );
        wait_for(
            REJOIN_WAIT,
            &format!("{addr} is a connected replica of {master}"),
            || async {
                matches!(role(addr).await,
                    Some(Role::Replica { master: of, connected: true, .. }) if of == master)
            },
        )
        .await;
        self.wait_replicas_synced().await;
    }

    /// Waits until every sentinel names a master other than `old`, and that master answers `ROLE`
    /// as master. Returns its address. Bounded by [`WAIT`].
    pub async fn wait_for_failover(&self, old: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let answers = self.master_addr_per_sentinel().await;
            if let Some(Some(new)) = answers.first() {
                let agreed = answers.iter().all(|answer| answer.as_ref() == Some(new));
                if agreed && new != old && matches!(role(new).await, Some(Role::Master { .. })) {
                    return new.clone();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failover away from {old} within {WAIT:?}; the sentinels say {answers:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every live node other than the master is a connected replica of it and has
    /// processed the master's replication stream up to the master's offset when this was called.
    pub async fn wait_replicas_synced(&self) {
        self.replicas_synced_within(WAIT)
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
    }

    async fn replicas_synced_within(&self, limit: Duration) -> Result<(), String> {
        let master = self.master_addr().await;
        for node in &self.data_nodes {
            if node.addr != master && node.alive.load(Ordering::SeqCst) {
                replica_synced_to_within(limit, &node.addr, &master).await?;
            }
        }
        Ok(())
    }

    /// Runs one command on the current master (as the sentinels name it).
    pub async fn command(&self, args: &[&str]) -> Value {
        let master = self.master_addr().await;
        command_on(&master, args).await
    }

    /// `ROLE` of the node at `addr` (master, replica or sentinel); `None` if it does not answer.
    pub async fn role(&self, addr: &str) -> Option<Role> {
        role(addr).await
    }

    fn data_node(&self, addr: &str) -> &DataNode {
        self.data_nodes
            .iter()
            .find(|node| node.addr == addr)
            .unwrap_or_else(|| panic!("{addr} is not a master or replica of this topology"))
    }

    async fn sentinels_ready_within(&self, limit: Duration) -> Result<(), String> {
        for sentinel in &self.sentinel_addrs {
            poll_until(
                limit,
                &format!("sentinel {sentinel} knows the replica and a quorum of sentinels"),
                || async {
                    let quorum = query(sentinel, &["SENTINEL", "CKQUORUM", MASTER_NAME]).await;
                    let replicas = query(sentinel, &["SENTINEL", "REPLICAS", MASTER_NAME]).await;
                    let known_sentinels =
                        query(sentinel, &["SENTINEL", "SENTINELS", MASTER_NAME]).await;
                    quorum.is_ok()
                        && matches!(replicas, Ok(Value::Array(list)) if list.len() == 1)
                        && matches!(known_sentinels, Ok(Value::Array(list)) if list.len() == 2)
                },
            )
            .await?;
        }
        Ok(())
    }
}

/// Waits until the node at `replica` is a connected replica of `master` and has processed its
/// stream up to the offset `master` had when this was called.
async fn replica_synced_to(replica: &str, master: &str) -> Result<(), String> {
    replica_synced_to_within(WAIT, replica, master).await
}

async fn replica_synced_to_within(
    limit: Duration,
    replica: &str,
    master: &str,
) -> Result<(), String> {
    let Some(Role::Master { offset: target }) = role(master).await else {
        return Err(format!("{master} does not answer ROLE as master"));
    };
    poll_until(
        limit,
        &format!("{replica} has replicated {master} up to offset {target}"),
        || async {
            matches!(role(replica).await,
                Some(Role::Replica { master: of, connected: true, offset })
                    if of == master && offset >= target)
        },
    )
    .await
}

/// Polls `condition` every 20 ms; panics naming `what` after `limit`.
async fn wait_for<F, Fut>(limit: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(limit, what, condition)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
}

/// Polls `condition` every 20 ms; an error naming `what` after `limit`.
pub(crate) async fn poll_until<F, Fut>(
    limit: Duration,
    what: &str,
    mut condition: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting until {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
