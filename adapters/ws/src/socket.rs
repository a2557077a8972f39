//! A client's socket, as the hot path and the connection's task write to it and tungstenite
//! reads from it.
//!
//! Served by fanout's own HTTP server, an upgraded connection is a `TcpStream`: the hot path then
//! writes with one `try_write` (a readiness check and the `send`), without a waker, a lock or
//! tokio's cooperative budget. Any other upgraded connection (another server, a test's duplex)
//! works too, through its `AsyncWrite` polled with a waker that does nothing.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Where a client's frames are written.
pub(crate) trait Socket: Send {
    /// Writes what the socket takes now, without waiting: `WouldBlock` when it takes nothing.
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize>;

    /// Writes as much of `slices`, in order, as the socket takes (one `writev`), or registers `cx`
    /// to be woken when it can take more.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;
}

/// A TCP connection, shared by its reader and its writer.
pub(crate) struct Tcp(pub(crate) Arc<TcpStream>);

impl Socket for Tcp {
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.try_write(bytes)
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut self.0).poll_write(&mut Context::from_waker(Waker::noop()), bytes) {
            Poll::Ready(written) => written,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, slices)
    }
}
