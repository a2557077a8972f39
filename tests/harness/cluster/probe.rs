//! Asking one node of a Cluster topology what it believes: `CLUSTER SLOTS`, `CLUSTER SHARDS`,
//! `CLUSTER NODES`, `CLUSTER INFO` and `INFO replication`, parsed into plain structs, and the key
//! slot a name hashes to. Every question goes through [`query`] (1 s to connect, 1 s to answer),
//! so a dead or frozen node is an error, never a hang. Each node answers from its own view of the
//! cluster, which lags the others' by up to a few gossip rounds: callers compare views, or poll.

use std::collections::HashMap;

use redis::Value;

use crate::harness::sentinel::query;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// One line of `CLUSTER SLOTS`: a range of slots, the master serving it, and its replicas, each
/// "ip:port" as the node announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: String,
    pub replicas: Vec<String>,
}

/// One shard of `CLUSTER SHARDS`: its slot ranges (inclusive) and its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub slots: Vec<(u16, u16)>,
    pub nodes: Vec<ShardNode>,
}

/// A node as `CLUSTER SHARDS` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardNode {
    pub id: String,
    /// "ip:port".
    pub addr: String,
    /// The `endpoint` field (what clients are told to connect to), with the port: "endpoint:port".
    pub endpoint: String,
    /// "master" or "replica".
    pub role: String,
    /// "online", "failed" or "loading".
    pub health: String,
}

/// A line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: String,
    /// "ip:port", without the bus port.
    pub addr: String,
    /// e.g. `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`.
    pub flags: Vec<String>,
    /// The id of the master it replicates, if it is a replica.
    pub master_id: Option<String>,
    /// The node's link to this one is `connected`.
    pub connected: bool,
    /// The slot fields as printed ("0-5460", "42", "[...]" for slots being migrated).
    pub slots: Vec<String>,
}

impl NodeEntry {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// `CLUSTER SLOTS` on `addr`.
pub async fn cluster_slots(addr: &str) -> Result<Vec<SlotRange>, String> {
    let answer = query(addr, &["CLUSTER", "SLOTS"]).await?;
    let Value::Array(ranges) = answer else {
        return Err(format!("CLUSTER SLOTS on {addr}: not an array: {answer:?}"));
    };
    ranges
        .iter()
        .map(|range| {
            parse_slot_range(range).ok_or_else(|| format!("CLUSTER SLOTS on {addr}: {range:?}"))
        })
        .collect()
}

fn parse_slot_range(range: &Value) -> Option<SlotRange> {
    let Value::Array(fields) = range else {
        return None;
    };
    let start = u16::try_from(int(fields.first()?)?).ok()?;
    let end = u16::try_from(int(fields.get(1)?)?).ok()?;
    let mut nodes = fields[2..].iter().map(|node| {
        let Value::Array(node) = node else {
            return None;
        };
        Some(format!("{}:{}", text(node.first()?)?, int(node.get(1)?)?))
    });
    let master = nodes.next()??;
    let replicas = nodes.collect::<Option<Vec<String>>>()?;
    Some(SlotRange {
        start,
        end,
        master,
        replicas,
    })
}

/// `CLUSTER SHARDS` on `addr`.
pub async fn cluster_shards(addr: &str) -> Result<Vec<Shard>, String> {
    let answer = query(addr, &["CLUSTER", "SHARDS"]).await?;
    let Value::Array(shards) = answer else {
        return Err(format!(
            "CLUSTER SHARDS on {addr}: not an array: {answer:?}"
        ));
    };
    shards
        .iter()
        .map(|shard| {
            parse_shard(shard).ok_or_else(|| format!("CLUSTER SHARDS on {addr}: {shard:?}"))
        })
        .collect()
}

fn parse_shard(shard: &Value) -> Option<Shard> {
    let fields = pairs(shard)?;
    let Value::Array(slots) = fields.get("slots")? else {
        return None;
    };
    let slots = slots
        .chunks(2)
        .map(|pair| {
            let start = u16::try_from(int(pair.first()?)?).ok()?;
            let end = u16::try_from(int(pair.get(1)?)?).ok()?;
            Some((start, end))
        })
        .collect::<Option<Vec<_>>>()?;
    let Value::Array(nodes) = fields.get("nodes")? else {
        return None;
    };
    let nodes = nodes
        .iter()
        .map(|node| {
            let node = pairs(node)?;
            let port = int(node.get("port")?)?;
            Some(ShardNode {
                id: text(node.get("id")?)?,
                addr: format!("{}:{port}", text(node.get("ip")?)?),
                endpoint: format!("{}:{port}", text(node.get("endpoint")?)?),
                role: text(node.get("role")?)?,
                health: text(node.get("health")?)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Shard { slots, nodes })
}

/// `CLUSTER NODES` on `addr`.
pub async fn cluster_nodes(addr: &str) -> Result<Vec<NodeEntry>, String> {
    let answer = query(addr, &["CLUSTER", "NODES"]).await?;
    let listing = text(&answer).ok_or_else(|| format!("CLUSTER NODES on {addr}: {answer:?}"))?;
    listing
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            parse_node_line(line).ok_or_else(|| format!("CLUSTER NODES on {addr}: {line:?}"))
        })
        .collect()
}

fn parse_node_line(line: &str) -> Option<NodeEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let addr = fields.get(1)?.split(['@', ',']).next()?.to_owned();
    let master = *fields.get(3)?;
    Some(NodeEntry {
        id: (*fields.first()?).to_owned(),
        addr,
        flags: fields.get(2)?.split(',').map(str::to_owned).collect(),
        master_id: (master != "-").then(|| master.to_owned()),
        connected: *fields.get(7)? == "connected",
        slots: fields[8..].iter().map(|slot| (*slot).to_owned()).collect(),
    })
}

/// The `field:value` lines of an `INFO`-like answer (`CLUSTER INFO`, `INFO replication`).
pub async fn info_fields(addr: &str, args: &[&str]) -> Result<HashMap<String, String>, String> {
    let answer = query(addr, args).await?;
    let listing = text(&answer).ok_or_else(|| format!("{args:?} on {addr}: {answer:?}"))?;
    Ok(listing
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(field, value)| (field.to_owned(), value.to_owned()))
        .collect())
}

/// The node serving `slot` in a `CLUSTER SLOTS` answer.
pub(super) fn owner(ranges: &[SlotRange], slot: u16) -> Option<String> {
    ranges
        .iter()
        .find(|range| range.start <= slot && slot <= range.end)
        .map(|range| range.master.clone())
}

/// The slot ranges `addr` serves in a `CLUSTER SLOTS` answer.
pub(super) fn ranges_of(ranges: &[SlotRange], addr: &str) -> Vec<(u16, u16)> {
    ranges
        .iter()
        .filter(|range| range.master == addr)
        .map(|range| (range.start, range.end))
        .collect()
}

/// The one node other than `old_master` that serves both ends of every range in `held`, in a
/// `CLUSTER SLOTS` answer; `None` while any of them is unserved or served by `old_master`.
pub(super) fn taken_over_by(
    ranges: &[SlotRange],
    held: &[(u16, u16)],
    old_master: &str,
) -> Option<String> {
    let mut owners = held
        .iter()
        .flat_map(|(start, end)| [owner(ranges, *start), owner(ranges, *end)]);
    let new = owners.next()??;
    (new != old_master && owners.all(|other| other.as_ref() == Some(&new))).then_some(new)
}

/// One command on `addr`; an error reply (e.g. `-MOVED`) or a dead node is an `Err`.
pub async fn try_command(addr: &str, args: &[&str]) -> Result<Value, String> {
    match query(addr, args).await? {
        Value::ServerError(error) => Err(format!("{args:?} on {addr}: {error}")),
        value => Ok(value),
    }
}

/// Every address `addr` hands out, "host:port": in `CLUSTER SLOTS`, `CLUSTER SHARDS` (ip and
/// endpoint) and `CLUSTER NODES`. Panics if it does not answer.
pub(super) async fn addresses_handed_out_by(addr: &str) -> Vec<String> {
    let mut addrs = Vec::new();
    for range in cluster_slots(addr).await.unwrap_or_else(|e| panic!("{e}")) {
        addrs.push(range.master);
        addrs.extend(range.replicas);
    }
    for shard in cluster_shards(addr).await.unwrap_or_else(|e| panic!("{e}")) {
        for node in shard.nodes {
            addrs.push(node.addr);
            addrs.push(node.endpoint);
        }
    }
    for entry in cluster_nodes(addr).await.unwrap_or_else(|e| panic!("{e}")) {
        addrs.push(entry.addr);
    }
    addrs
}

/// The slot Redis Cluster maps `key` (or a sharded channel name) to: CRC16-XMODEM of the key, or
/// of the first non-empty `{...}` hash tag in it, modulo 16384.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|byte| *byte == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|byte| *byte == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16, polynomial 0x1021, initial value 0, no reflection: what Redis's `crc16.c` computes.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The fields of a RESP2 flat array of name/value pairs (or a RESP3 map), by name.
fn pairs(value: &Value) -> Option<HashMap<String, &Value>> {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .map(|pair| Some((text(pair.first()?)?, pair.get(1)?)))
            .collect(),
        Value::Map(items) => items
            .iter()
            .map(|(name, value)| Some((text(name)?, value)))
            .collect(),
        _ => None,
    }
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(number) => Some(*number),
        _ => text(value)?.parse().ok(),
    }
}
