//! The floor's WebSocket side: accepts the load tool's clients, answers their upgrade with the
//! real handshake (tokio-tungstenite), then hands a duplicate of each socket to a fan-out thread,
//! round-robin, and only watches the connection for its end.
//!
//! After the handshake nothing here runs per message: a client of the floor sends nothing but
//! its close, so the watching task is woken once, at the end, and then shuts the socket down (the
//! client sees the end at once, as after a server's close; the fan-out thread's next write
//! fails and drops it). It must never write to a socket after the handshake: the fan-out
//! thread is the only writer, so frames are never interleaved.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::fan_out::FanOut;

/// How long a connection may take to send its upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors, most likely), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts clients forever, spreading them over `fan_outs` (at least one).
pub async fn serve(listener: TcpListener, fan_outs: Arc<Vec<FanOut>>) {
    let mut next = 0usize;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("floor: accept failed: {error}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let index = next % fan_outs.len();
        next = next.wrapping_add(1);
        let fan_outs = Arc::clone(&fan_outs);
        tokio::spawn(async move {
            if let Err(error) = session(stream, &fan_outs[index]).await {
                eprintln!("floor: a client failed: {error}");
            }
        });
    }
}

/// One client: handshake, hand-over, then wait for its end.
async fn session(mut stream: TcpStream, fan_out: &FanOut) -> anyhow::Result<()> {
    // As fanout's workers do: frames go out when written, not held for an ACK.
    stream.set_nodelay(true)?;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_async(&mut stream),
    )
    .await??;
    // The same socket, non-blocking (the flag belongs to the open file both descriptors share).
    let writer = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
    fan_out.join(writer);
    // The client's close frame, its end of stream, or an error: all mean the session is over.
    let mut ignored = [0u8; 64];
    let _ = stream.read(&mut ignored).await;
    // It may be gone already; there is nothing to do about a failed shutdown of a closed socket.
    let _ = stream.into_std()?.shutdown(std::net::Shutdown::Both);
    Ok(())
}
