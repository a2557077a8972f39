//! A client's TCP stream that keeps the kernel's arrival time of what it reads
//! (`SO_TIMESTAMPNS`): the time the server's write reached this socket, before the tool's own
//! scheduling. The tool reports latency to it beside latency to the read, so that on a machine
//! where the tool's readers share the cores with the server, the server's own latency is measured
//! too (issue 14, targets 2 and 3).
//!
//! Reads go through `recvmsg(2)` into the caller's buffer, one call per read as a plain read
//! would; the timestamp is the kernel's for the last segment that read copied (so a read that
//! takes several frames stamps them all with the latest: never earlier than the truth). Once any
//! socket asks for receive timestamps, the kernel stamps every packet it receives (a clock read
//! per packet, the server's included).

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A connected TCP stream that records when the bytes it reads arrived.
pub struct ArrivalStamped {
    tcp: TcpStream,
    /// Room for one `SCM_TIMESTAMPNS` control message, reused by every read.
    control: Vec<u8>,
    /// When the kernel received the bytes of the last read, Unix µs; 0 before any stamp.
    arrived_us: u64,
}

impl ArrivalStamped {
    /// Asks the kernel to stamp what `tcp` receives.
    pub fn new(tcp: TcpStream) -> io::Result<Self> {
        setsockopt(&tcp, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
        Ok(Self {
            tcp,
            control: nix::cmsg_space!(TimeSpec),
            arrived_us: 0,
        })
    }

    /// When the bytes of the last read arrived, Unix µs; `None` when that read was not stamped:
    /// before any read, and for a short while after the first socket of the machine asks for
    /// stamps (the kernel turns stamping on in the background).
    pub fn arrived_us(&self) -> Option<u64> {
        (self.arrived_us != 0).then_some(self.arrived_us)
    }
}

/// One `recvmsg` into `into`: the bytes read and the arrival stamp, if the kernel gave one.
fn receive(
    fd: std::os::fd::RawFd,
    into: &mut [u8],
    control: &mut [u8],
) -> io::Result<(usize, Option<u64>)> {
    let mut iov = [IoSliceMut::new(into)];
    let message = recvmsg::<()>(fd, &mut iov, Some(control), MsgFlags::empty())?;
    let stamp = message.cmsgs()?.find_map(|control| match control {
        ControlMessageOwned::ScmTimestampns(at) => {
            let us = at.tv_sec() as i128 * 1_000_000 + at.tv_nsec() as i128 / 1_000;
            u64::try_from(us).ok()
        }
        _ => None,
    });
    Ok((message.bytes, stamp))
}

impl AsyncRead for ArrivalStamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let fd = this.tcp.as_raw_fd();
            let into = buf.initialize_unfilled();
            let control = &mut this.control;
            // `try_io` clears the readiness on `WouldBlock`, so the next poll waits for more.
            match this
                .tcp
                .try_io(Interest::READABLE, || receive(fd, into, control))
            {
                Ok((read, stamp)) => {
                    // A read without a stamp (see `arrived_us`) must not pass for the last one's.
                    this.arrived_us = stamp.unwrap_or(0);
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for ArrivalStamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::now_us;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What is read is what was written, and its stamp lies between the write and the read.
    #[tokio::test]
    async fn reads_carry_the_kernels_arrival_time() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("bound");
        let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
        let mut stamped =
            ArrivalStamped::new(client.expect("connected")).expect("receive timestamps on");
        let (mut server, _) = server.expect("accepted");
        assert_eq!(stamped.arrived_us(), None, "nothing read yet");
        let mut got = [0u8; 64];
        // The kernel turns stamping on in the background when the first socket asks: until
        // then reads come unstamped. No signal says when, so exchange bytes until one is stamped
        // (within 10 s).
        let deadline = now_us() + 10_000_000;
        loop {
            server.write_all(b"warm-up").await.expect("written");
            let read = stamped.read(&mut got).await.expect("read");
            assert_eq!(&got[..read], b"warm-up");
            if stamped.arrived_us().is_some() {
                break;
            }
            assert!(now_us() < deadline, "no read stamped within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }

        let before_write = now_us();
        server.write_all(b"first frame").await.expect("written");
        let read = stamped.read(&mut got).await.expect("read");
        let after_read = now_us();
        assert_eq!(&got[..read], b"first frame");
        let arrived = stamped
            .arrived_us()
            .expect("the kernel stamps what it receives");
        assert!(
            (before_write..=after_read).contains(&arrived),
            "arrived at {arrived}, written from {before_write}, read by {after_read}"
        );

        // A later write carries its own stamp, and writes go through.
        let before_second = now_us().max(arrived + 1);
        while now_us() < before_second {
            tokio::task::yield_now().await;
        }
        server.write_all(b"second").await.expect("written");
        let read = stamped.read(&mut got).await.expect("read");
        assert_eq!(&got[..read], b"second");
        assert!(stamped.arrived_us() >= Some(before_second));
        stamped.write_all(b"back").await.expect("written");
        let read = server.read(&mut got).await.expect("read");
        assert_eq!(&got[..read], b"back");
    }
}
