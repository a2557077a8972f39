//! A TCP proxy the test controls: put between one worker and Redis, it can cut that link (every
//! open connection dropped, new ones refused) and restore it, or hold what Redis sends on the
//! subscriber's connections alone (those that sent a `SUBSCRIBE`), as a Redis that answers a
//! publish and stops before it writes to its subscribers would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Cancelled to drop every connection open at the time of a cut.
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
    /// While true, nothing Redis sends reaches a subscriber connection.
    hold: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let hold = tokio::sync::watch::Sender::new(false);
        let (task_cut, task_generation, task_stop, task_hold) =
            (cut.clone(), generation.clone(), stop.clone(), hold.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = task_stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if task_cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let token = task_generation
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let held = task_hold.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = relay(&mut inbound, outbound, held) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            generation,
            stop,
            hold,
        }
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        generation.cancel();
        *generation = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Holds everything Redis sends to subscriber connections (replies to the publisher's pool
    /// go on) until [`Proxy::release`].
    pub fn hold_subscribers(&self) {
        self.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }
}

/// Both directions of one connection. Client to Redis is copied as is, and marks the
/// connection a subscriber's when it carries a `SUBSCRIBE`; Redis to client waits while a
/// subscriber's connection is held.
async fn relay(
    inbound: &mut TcpStream,
    mut outbound: TcpStream,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut to_client) = inbound.split();
    let (mut from_redis, mut to_redis) = outbound.split();
    let subscriber = AtomicBool::new(false);
    let up = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = from_client.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            if buffer[..read]
                .windows(b"SUBSCRIBE".len())
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
            {
                subscriber.store(true, Ordering::SeqCst);
            }
            if to_redis.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = from_redis.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            if subscriber.load(Ordering::SeqCst) && held.wait_for(|held| !held).await.is_err() {
                return;
            }
            if to_client.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
    }
}
