//! One `io_uring` submission for all of a message's direct writes: the fan-out hands the kernel
//! a non-blocking `send` per client at once and reaps the outcomes, instead of one `send(2)` system
//! call per client. The frame and the sockets are the same as for the one-by-one sends
//! (`socket.rs`): only the entry into the kernel is shared. Measured against one `send` each at
//! this project's load A (PERFORMANCE.md): 11% less CPU per delivery in the floor, ~5% in a
//! worker (which pays a second lock per client to lend the frame). Used for groups of 16
//! clients or more (`registry.rs`): below, the submission costs more than it saves.
//!
//! The crate's only `unsafe` code, and why it is sound: a submitted `send` reads the frame's bytes
//! and uses the socket's descriptor until its completion arrives. [`Ring::send_all`] borrows both
//! (the bytes by `&[u8]`, the descriptors through the caller's live sockets) and does not return
//! before every entry it submitted has completed: the kernel never touches them after the borrow
//! ends. Should the ring fail in a way that leaves entries unreaped (an `io_uring_enter` error
//! other than an interruption or a full completion queue, never seen), the ring is retired and
//! the caller leaks the bytes and keeps the descriptors open for good (`registry.rs`), so that a
//! late completion still finds them valid; the worker goes on with one `send` each.
//!
//! Where the kernel refuses `io_uring` (a container's seccomp profile, `io_uring_disabled`, a
//! kernel before 5.6, whose ring has no `send`), [`Ring::new`] fails and the fan-out keeps its
//! one `send` per client.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring, Probe};

/// Submission entries per batch: a message to more clients goes in several submissions.
const ENTRIES: u32 = 256;

/// A fan-out's `io_uring`: owned by the registry, used under its lock (one message at a time).
pub(crate) struct Ring {
    ring: IoUring,
}

impl Ring {
    /// A ring whose kernel knows `IORING_OP_SEND` (Linux 5.6 and later).
    pub(crate) fn new() -> io::Result<Self> {
        let ring = IoUring::new(ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Send::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring has no send operation",
            ));
        }
        Ok(Self { ring })
    }

    /// Writes `wire` to each of `sockets` with one non-blocking `send` (`socket::SEND_FLAGS`),
    /// submitted together; `results[i]` is what `sockets[i]` took: its byte count
    /// (whole, part, or `WouldBlock` when full), or its error. Returns `Err` only when the ring
    /// itself failed: then some sends may still be in the kernel's hands, and the caller must
    /// leak `wire` and keep every descriptor open for good, and not use the ring again.
    pub(crate) fn send_all(
        &mut self,
        wire: &[u8],
        sockets: &[RawFd],
        results: &mut Vec<io::Result<usize>>,
    ) -> Result<(), RingFailed> {
        results.clear();
        results.resize_with(sockets.len(), || Err(io::ErrorKind::WouldBlock.into()));
        // Larger than a `send` takes: no entry at all; the connection's task writes it.
        let Ok(length) = u32::try_from(wire.len()) else {
            return Ok(());
        };
        let flags = crate::socket::SEND_FLAGS.bits();
        for (batch, chunk) in sockets.chunks(ENTRIES as usize).enumerate() {
            let first = batch * ENTRIES as usize;
            let mut submitted = 0;
            {
                let mut queue = self.ring.submission();
                for (offset, &fd) in chunk.iter().enumerate() {
                    let entry = opcode::Send::new(types::Fd(fd), wire.as_ptr(), length)
                        .flags(flags)
                        .build()
                        .user_data((first + offset) as u64);
                    // SAFETY: `wire` and the descriptors stay valid until every entry submitted
                    // here has completed: the loop below reaps them all before returning, and a
                    // ring failure makes the caller leak both (see the module's header).
                    if unsafe { queue.push(&entry) }.is_err() {
                        // The queue is full (it is empty at each batch's start, so never): the
                        // rest of the batch stays `WouldBlock`, written by the clients' tasks.
                        break;
                    }
                    submitted += 1;
                }
            }
            let mut reaped = 0;
            while reaped < submitted {
                match self.ring.submit_and_wait(submitted - reaped) {
                    Ok(_) => {}
                    Err(error) if retryable(&error) => {}
                    Err(error) => return Err(RingFailed(error)),
                }
                for completion in self.ring.completion() {
                    let Some(result) = usize::try_from(completion.user_data())
                        .ok()
                        .and_then(|index| results.get_mut(index))
                    else {
                        continue;
                    };
                    let outcome = completion.result();
                    *result = match usize::try_from(outcome) {
                        Ok(written) => Ok(written),
                        Err(_) => Err(io::Error::from_raw_os_error(-outcome)),
                    };
                    reaped += 1;
                }
            }
        }
        Ok(())
    }
}

/// The ring failed with sends possibly still in the kernel (see [`Ring::send_all`]).
#[derive(Debug, thiserror::Error)]
#[error("io_uring failed: {0}")]
pub(crate) struct RingFailed(pub(crate) io::Error);

/// An `io_uring_enter` error after which waiting again is right: interrupted, or the completion
/// queue is full until reaped (`EBUSY`), or the kernel is short of memory for now (`EAGAIN`).
fn retryable(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Interrupted
        || matches!(
            error.raw_os_error(),
            Some(code) if code == nix::libc::EBUSY || code == nix::libc::EAGAIN
        )
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    /// A connected pair: (the server's non-blocking end, the client's end).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = TcpStream::connect(address).unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        server
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        (server, client)
    }

    /// The ring, or `None` where the kernel refuses one and `FANOUT_TEST_WITHOUT_IO_URING` says
    /// that is expected (a container's seccomp profile): a missing ring is a failure otherwise.
    fn ring() -> Option<Ring> {
        match Ring::new() {
            Ok(ring) => Some(ring),
            Err(error) if std::env::var_os("FANOUT_TEST_WITHOUT_IO_URING").is_some() => {
                eprintln!("io_uring unavailable here ({error}): not tested");
                None
            }
            Err(error) => panic!(
                "io_uring unavailable ({error}); set FANOUT_TEST_WITHOUT_IO_URING=1 where that is expected"
            ),
        }
    }

    #[test]
    fn every_socket_of_a_batch_larger_than_the_ring_gets_the_bytes() {
        let Some(mut ring) = ring() else { return };
        let pairs: Vec<_> = (0..ENTRIES as usize + 3).map(|_| pair()).collect();
        let fds: Vec<RawFd> = pairs.iter().map(|(server, _)| server.as_raw_fd()).collect();
        let mut results = Vec::new();
        ring.send_all(b"frame", &fds, &mut results)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(results.len(), fds.len());
        for (result, (_, mut client)) in results.into_iter().zip(pairs) {
            assert_eq!(result.unwrap_or_else(|e| panic!("{e}")), 5);
            let mut bytes = [0; 5];
            client
                .read_exact(&mut bytes)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&bytes, b"frame");
        }
    }

    #[test]
    fn a_full_socket_takes_part_or_nothing_and_a_gone_one_is_an_error() {
        let Some(mut ring) = ring() else { return };
        let (full, _full_client) = pair();
        let (gone, gone_client) = pair();
        let (fine, mut fine_client) = pair();
        drop(gone_client);
        let big = vec![1u8; 256 * 1024];
        // Until the socket takes nothing more.
        let mut results = Vec::new();
        for _ in 0..64 {
            ring.send_all(&big, &[full.as_raw_fd()], &mut results)
                .unwrap_or_else(|e| panic!("{e}"));
            if matches!(&results[0], Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                break;
            }
        }
        assert!(
            matches!(&results[0], Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the socket never pushed back: {results:?}"
        );
        // On loopback the peer's reset comes back within the first send; the second fails.
        let fds = [full.as_raw_fd(), gone.as_raw_fd(), fine.as_raw_fd()];
        for round in 0..2 {
            ring.send_all(b"x", &fds, &mut results)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                matches!(&results[0], Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "round {round}: {results:?}"
            );
            assert!(matches!(results[2], Ok(1)), "round {round}: {results:?}");
        }
        assert!(
            results[1].is_err(),
            "a closed peer never failed a send: {results:?}"
        );
        let mut bytes = [0; 2];
        fine_client
            .read_exact(&mut bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&bytes, b"xx");
    }
}
