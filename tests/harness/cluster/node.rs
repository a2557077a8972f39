//! The containers of a Cluster topology: one Redis per node, on the host network, bound to
//! 127.0.0.1 on its own port (and the cluster bus on port + 10000), announcing 127.0.0.1, with
//! its configuration and its `nodes.conf` in a writable /data. It must never pick a bridge
//! address, a default port, or a port whose bus port is taken.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::harness::redis::DEFAULT_IMAGE;
use crate::harness::sentinel::{poll_until, query};
use crate::harness::{free_port, WAIT};

/// Redis listens for the cluster bus on the client port plus this.
const BUS_PORT_OFFSET: u16 = 10000;

/// One Redis of the cluster: a container that may be killed, paused and started again on the
/// same port (host networking: the port is the one Redis binds, no mapping to lose).
pub(super) struct ClusterNode {
    pub(super) container: ContainerAsync<GenericImage>,
    pub(super) addr: String,
    /// False once [`super::ClusterTopology::kill`] killed it, until it is started again.
    pub(super) alive: AtomicBool,
    /// True while it is frozen by [`super::ClusterTopology::pause`].
    pub(super) paused: AtomicBool,
}

/// The image to run, split as testcontainers wants it.
fn image() -> (String, String) {
    let image = std::env::var("FANOUT_REDIS_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    (name.to_owned(), tag.to_owned())
}

/// A cluster-enabled Redis on `port` with no persistence but its `nodes.conf` (which Redis
/// rewrites on every topology change, so it lives in the writable /data beside the
/// configuration file). Returns once it answers PING.
pub(super) async fn start_cluster_node(port: u16) -> Result<ClusterNode, String> {
    // repl-diskless-sync-delay: Redis 7 waits 5 s by default for more replicas before a full sync.
    // cluster-require-full-coverage no: as OPERATIONS.md asks, so that the masters that stay up
    // serve their slots while another one fails over.
    let conf = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         protected-mode no\n\
         dir /data\n\
         save \"\"\n\
         appendonly no\n\
         cluster-enabled yes\n\
         cluster-config-file /data/nodes-{port}.conf\n\
         cluster-node-timeout 1000\n\
         cluster-require-full-coverage no\n\
         cluster-announce-ip 127.0.0.1\n\
         repl-diskless-sync yes\n\
         repl-diskless-sync-delay 0\n"
    );
    let (name, tag) = image();
    let path = "/data/redis.conf".to_owned();
    let container = GenericImage::new(&name, &tag)
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_network("host")
        .with_copy_to(path.clone(), conf.into_bytes())
        .with_cmd(vec![path])
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .map_err(|e| {
            format!("cannot start a cluster node on {port} from image {name}:{tag}: {e}")
        })?;
    let addr = address(port);
    poll_until(WAIT, &format!("{addr} answers PING"), || async {
        query(&addr, &["PING"]).await.is_ok()
    })
    .await?;
    Ok(ClusterNode {
        container,
        addr,
        alive: AtomicBool::new(true),
        paused: AtomicBool::new(false),
    })
}

pub(super) fn address(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// `count` client ports, each free a moment ago together with its bus port (port + 10000), and
/// no port of one node equal to a port of another.
pub(super) fn free_cluster_ports(count: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    let mut tries = 0;
    while ports.len() < count {
        tries += 1;
        assert!(
            tries < 10_000,
            "cannot find {count} free port pairs P, P+{BUS_PORT_OFFSET} (found {ports:?})"
        );
        let port = free_port();
        let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else {
            continue;
        };
        let clashes = ports.iter().any(|taken| {
            let taken_bus = taken + BUS_PORT_OFFSET;
            [port, bus].iter().any(|p| *p == *taken || *p == taken_bus)
        });
        if !clashes && std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            ports.push(port);
        }
    }
    ports
}
