//! A real Redis in a container (testcontainers), on a host port pinned to 127.0.0.1 so that it
//! can be stopped and started again on the same address.
//!
//! The image is `FANOUT_REDIS_IMAGE` (default `fanout-redis:7.0-debian`, built locally by
//! `scripts/redis-image`); set it to e.g. `redis:7-alpine` to use an official image.

use std::collections::HashMap;
use std::time::Duration;

use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::{free_port, wait_until};

pub const DEFAULT_IMAGE: &str = "fanout-redis:7.0-debian";

pub struct RedisServer {
    container: ContainerAsync<GenericImage>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let image =
            std::env::var("FANOUT_REDIS_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
        let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
        let port = free_port();
        let container = GenericImage::new(name, tag)
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_host_config_modifier(move |config: &mut HostConfig| {
                let binding = PortBinding {
                    host_ip: Some("127.0.0.1".to_owned()),
                    host_port: Some(port.to_string()),
                };
                config.port_bindings = Some(HashMap::from([(
                    "6379/tcp".to_owned(),
                    Some(vec![binding]),
                )]));
                config.publish_all_ports = Some(false);
            })
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot start Redis from image {image} ({e}); run scripts/redis-image first")
            });
        let server = RedisServer { container, port };
        server.wait_ready().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the container: connections get a FIN, new ones are refused.
    pub async fn stop(&self) {
        self.container
            .stop_with_timeout(Some(0))
            .await
            .unwrap_or_else(|e| panic!("cannot stop Redis: {e}"));
    }

    /// Starts it again on the same port and waits until it answers.
    pub async fn start_again(&self) {
        self.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start Redis again: {e}"));
        self.wait_ready().await;
    }

    /// Starts it again on the same port without waiting (the caller measures when it answers).
    pub async fn start_again_unwaited(&self) {
        self.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start Redis again: {e}"));
    }

    /// Runs one command, as an operator's `redis-cli` would.
    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap_or_else(|e| panic!("{e}"));
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Redis: {e}"));
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// Freezes Redis: connections stay open but nothing is answered (a hang, not a disconnect).
    pub async fn pause(&self) {
        self.container
            .pause()
            .await
            .unwrap_or_else(|e| panic!("cannot pause Redis: {e}"));
    }

    pub async fn unpause(&self) {
        self.container
            .unpause()
            .await
            .unwrap_or_else(|e| panic!("cannot unpause Redis: {e}"));
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn wait_ready(&self) {
        wait_until("Redis answers PING", || async { self.ping().await }).await;
    }

    pub async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(Ok(mut connection)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok()
    }

    /// PUBLISHes raw bytes, as an outside publisher would; returns how many subscribers got it.
    pub async fn publish_raw(&self, channel: &str, payload: &str) -> i64 {
        let client = redis::Client::open(self.url()).unwrap_or_else(|e| panic!("{e}"));
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Redis: {e}"));
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("PUBLISH failed: {e}"))
    }
}
