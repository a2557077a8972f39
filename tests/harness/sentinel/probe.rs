//! Asking one node of a Sentinel topology: a command on a fresh connection, `ROLE` parsed, the
//! master a sentinel names. Every call is bounded (1 s to connect, 1 s to answer) so that a dead
//! or frozen node is an answer (`None` or an error), never a hang.

use std::time::Duration;

use redis::Value;

use super::MASTER_NAME;

/// What `ROLE` answers, as far as the tests care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Master {
        /// The master's replication offset.
        offset: i64,
    },
    Replica {
        /// The master it follows, "127.0.0.1:P".
        master: String,
        /// The link is up ("connected" in `ROLE`).
        connected: bool,
        /// How far it has processed its master's stream.
        offset: i64,
    },
    Sentinel,
}

/// One command on the node at `addr`, with a fresh connection; connecting and answering are each
/// bounded by 1 s so that a dead or hung node is an error, not a hang.
pub async fn query(addr: &str, args: &[&str]) -> Result<Value, String> {
    let client = redis::Client::open(format!("redis://{addr}")).map_err(|e| e.to_string())?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| format!("connecting to {addr} timed out"))?
    .map_err(|e| e.to_string())?;
    tokio::time::timeout(
        Duration::from_secs(1),
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut connection),
    )
    .await
    .map_err(|_| format!("{args:?} on {addr} timed out"))?
    .map_err(|e| e.to_string())
}

/// Runs one command on the node at `addr`, as an operator's `redis-cli -p P` would.
pub async fn command_on(addr: &str, args: &[&str]) -> Value {
    query(addr, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} on {addr} failed: {e}"))
}

pub(super) async fn ping(addr: &str) -> bool {
    query(addr, &["PING"]).await.is_ok()
}

/// `SENTINEL get-master-addr-by-name` on one sentinel, as "127.0.0.1:P".
pub(super) async fn master_addr_from(sentinel: &str) -> Option<String> {
    let answer = query(
        sentinel,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
    )
    .await
    .ok()?;
    let (host, port): (String, u16) = redis::from_redis_value(answer).ok()?;
    Some(format!("{host}:{port}"))
}

/// `ROLE` of the node at `addr`, parsed; `None` if it does not answer or answers oddly.
pub async fn role(addr: &str) -> Option<Role> {
    let Ok(Value::Array(fields)) = query(addr, &["ROLE"]).await else {
        return None;
    };
    let kind: String = redis::from_redis_value_ref(fields.first()?).ok()?;
    match kind.as_str() {
        "master" => Some(Role::Master {
            offset: redis::from_redis_value_ref(fields.get(1)?).ok()?,
        }),
        "slave" => {
            let host: String = redis::from_redis_value_ref(fields.get(1)?).ok()?;
            let port: u16 = redis::from_redis_value_ref(fields.get(2)?).ok()?;
            let state: String = redis::from_redis_value_ref(fields.get(3)?).ok()?;
            Some(Role::Replica {
                master: format!("{host}:{port}"),
                connected: state == "connected",
                offset: redis::from_redis_value_ref(fields.get(4)?).ok()?,
            })
        }
        "sentinel" => Some(Role::Sentinel),
        _ => None,
    }
}
