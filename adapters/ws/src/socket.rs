//! A client's socket, as the hot path and the connection's task write to it and tungstenite
//! reads from it.
//!
//! Served by fanout's own HTTP server, an upgraded connection is a `TcpStream`: the hot path then
//! writes with one non-blocking `send(2)` on its descriptor ([`SEND_FLAGS`]), without a waker, a
//! lock, tokio's cooperative budget or tokio's readiness bookkeeping (`TcpStream::try_write`
//! reads, and on push-back clears, state the runtime's other thread sets). Bypassing tokio is
//! sound because nothing waits on what the `send` learns: a socket that pushes back gets the frame
//! queued and its task woken, and the task's own write goes through tokio, finds the socket full,
//! clears the stale readiness and waits for the next edge. Any other upgraded connection
//! (another server, a test's duplex) works too, through its `AsyncWrite` polled with a waker that does nothing. A socket is handed
//! whole frames (their shared bytes), not bytes alone, so that a socket that is not a WebSocket
//! stream — an SSE client's event stream (`sse`) — can turn each frame into its own form without
//! copying the payload.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::protocol::Frame;

/// The flags of every direct send, one by one or through the ring (`ring.rs`): it never waits,
/// and a peer gone is an `EPIPE` (the task's own write then ends the connection, as with tokio's),
/// not a SIGPIPE.
pub(crate) const SEND_FLAGS: MsgFlags = MsgFlags::MSG_DONTWAIT.union(MsgFlags::MSG_NOSIGNAL);

/// Most frames one vectored write hands the socket.
const WRITE_SLICES: usize = 64;

/// Where a client's frames are written.
pub(crate) trait Socket: Send {
    /// Writes what the socket takes of `frame` now, without waiting: the bytes of its wire form
    /// taken, or `WouldBlock` when it takes nothing.
    fn try_write(&mut self, frame: &Frame) -> io::Result<usize>;

    /// Writes as much of `frames`, in order, as the socket takes (one `writev` of up to
    /// [`WRITE_SLICES`] frames), the first from byte `started` of its wire form on; or registers
    /// `cx` to be woken when it can take more. Returns the wire bytes taken.
    fn poll_write_frames(
        &mut self,
        cx: &mut Context<'_>,
        frames: &VecDeque<Frame>,
        started: usize,
    ) -> Poll<io::Result<usize>>;

    /// The descriptor a frame may be sent to with a plain non-blocking `send` from outside (the
    /// fan-out's `io_uring` batch, `ring.rs`): a TCP socket's; `None` for any other socket, which
    /// is written through [`Socket::try_write`] only.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Fills `slices` with the wire bytes of the first `frames` (the first from `started`); returns
/// how many it filled.
fn wire_slices<'a>(
    frames: &'a VecDeque<Frame>,
    started: usize,
    slices: &mut [IoSlice<'a>; WRITE_SLICES],
) -> usize {
    let mut count = 0;
    for (slice, frame) in slices.iter_mut().zip(frames.iter()) {
        let skip = if count == 0 { started } else { 0 };
        *slice = IoSlice::new(frame.wire.get(skip..).unwrap_or_default());
        count += 1;
    }
    count
}

/// A TCP connection, shared by its reader and its writer.
pub(crate) struct Tcp(pub(crate) Arc<TcpStream>);

impl Socket for Tcp {
    fn try_write(&mut self, frame: &Frame) -> io::Result<usize> {
        nix::sys::socket::send(self.0.as_raw_fd(), &frame.wire, SEND_FLAGS).map_err(io::Error::from)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }

    fn poll_write_frames(
        &mut self,
        cx: &mut Context<'_>,
        frames: &VecDeque<Frame>,
        started: usize,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let count = wire_slices(frames, started, &mut slices);
        let slices = &slices[..count];
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(slices) {
                // Readiness was stale; it is cleared, and the next poll registers `cx`.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }
}

/// The reading side of a shared TCP connection.
pub(crate) struct TcpReader(pub(crate) Arc<TcpStream>);

impl AsyncRead for TcpReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

/// Any writer: an upgraded connection that is not a `TcpStream`, or a test's.
pub(crate) struct Writer<W>(pub(crate) W);

impl<W: AsyncWrite + Send + Unpin> Socket for Writer<W> {
    fn try_write(&mut self, frame: &Frame) -> io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.0).poll_write(&mut cx, &frame.wire) {
            Poll::Ready(written) => written,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn poll_write_frames(
        &mut self,
        cx: &mut Context<'_>,
        frames: &VecDeque<Frame>,
        started: usize,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let count = wire_slices(frames, started, &mut slices);
        Pin::new(&mut self.0).poll_write_vectored(cx, &slices[..count])
    }
}
