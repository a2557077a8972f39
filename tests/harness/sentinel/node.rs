//! The containers of a Sentinel topology: a master or replica, or a sentinel, each on the host
//! network, bound to 127.0.0.1 on its own port and announcing 127.0.0.1, with a writable
//! configuration file in /data. It must never pick a bridge address or a default port.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::probe::ping;
use super::{poll_until, MASTER_NAME};
use crate::harness::redis::DEFAULT_IMAGE;
use crate::harness::{free_port, WAIT};

/// A master or a replica: a container that may be killed and started again on the same port.
pub(super) struct DataNode {
    pub(super) container: ContainerAsync<GenericImage>,
    pub(super) addr: String,
    pub(super) alive: AtomicBool,
}

/// The image to run, split as testcontainers wants it.
fn image() -> (String, String) {
    let image = std::env::var("FANOUT_REDIS_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    (name.to_owned(), tag.to_owned())
}

/// A container of the Redis image on the host network, running `redis-server <conf> <extra>`
/// with `conf` copied (writable) to `/data/<file>`: Sentinel rewrites its configuration file,
/// and Redis rewrites its own when Sentinel reconfigures it (`CONFIG REWRITE`).
async fn start_container(
    file: &str,
    conf: String,
    extra: &[&str],
    ready: &str,
) -> Result<ContainerAsync<GenericImage>, String> {
    let (name, tag) = image();
    let path = format!("/data/{file}");
    let mut cmd = vec![path.clone()];
    cmd.extend(extra.iter().map(|arg| (*arg).to_owned()));
    GenericImage::new(&name, &tag)
        .with_wait_for(WaitFor::message_on_stdout(ready))
        .with_network("host")
        .with_copy_to(path, conf.into_bytes())
        .with_cmd(cmd)
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .map_err(|e| format!("cannot start {file} from image {name}:{tag}: {e}"))
}

/// A master (`master_port` None) or a replica of 127.0.0.1:`master_port`, with no persistence.
pub(super) async fn start_data_node(
    port: u16,
    master_port: Option<u16>,
) -> Result<DataNode, String> {
    // repl-diskless-sync-delay: Redis 7 waits 5 s by default for more replicas before a full sync.
    let mut conf = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         protected-mode no\n\
         save \"\"\n\
         appendonly no\n\
         repl-diskless-sync yes\n\
         repl-diskless-sync-delay 0\n\
         replica-announce-ip 127.0.0.1\n\
         replica-announce-port {port}\n"
    );
    if let Some(master_port) = master_port {
        conf.push_str(&format!("replicaof 127.0.0.1 {master_port}\n"));
    }
    let container = start_container("redis.conf", conf, &[], "Ready to accept connections").await?;
    let addr = address(port);
    poll_until(WAIT, &format!("{addr} answers PING"), || ping(&addr)).await?;
    Ok(DataNode {
        container,
        addr,
        alive: AtomicBool::new(true),
    })
}

/// A sentinel on `port` monitoring 127.0.0.1:`master_port` as [`MASTER_NAME`], quorum 2.
pub(super) async fn start_sentinel(
    port: u16,
    master_port: u16,
) -> Result<ContainerAsync<GenericImage>, String> {
    let conf = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         protected-mode no\n\
         sentinel announce-ip 127.0.0.1\n\
         sentinel announce-port {port}\n\
         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
         sentinel failover-timeout {MASTER_NAME} 3000\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n"
    );
    let container =
        start_container("sentinel.conf", conf, &["--sentinel"], "Sentinel ID is").await?;
    let addr = address(port);
    poll_until(WAIT, &format!("sentinel {addr} answers PING"), || {
        ping(&addr)
    })
    .await?;
    Ok(container)
}

pub(super) fn address(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// `count` ports free a moment ago, all different (two calls to [`free_port`] may agree).
pub(super) fn distinct_free_ports(count: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < count {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}
