//! The fan-out threads: each owns a share of the clients' sockets and writes every message's
//! frame to each of them with one non-blocking `write`, from a plain loop.
//!
//! This is the floor's hot path, and it must stay the least a server can do per delivery: no
//! task, waker, timer, lock or allocation per client per message, no framing per client (the
//! frame arrives built, see `frame`). A thread that falls behind (frames queued while it wrote)
//! writes what queued in one pass, one write per client, and says so on stderr once messages stop
//! (see [`QUIET`]). A socket that cannot take a whole frame keeps the rest in its own backlog, written before anything newer (so nothing is lost or reordered), retried
//! every [`RETRY`] until empty; a client whose backlog passes [`BACKLOG_MAX`] is dropped (its
//! loss then shows in the load tool's report).

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// Messages queued for one fan-out thread at most; the control reader blocks beyond it, which
/// holds back the load tool's publishes (never drops one).
const QUEUED_MESSAGES: usize = 1_024;

/// How long a thread with a backlog waits for the next message before it retries the backlog.
const RETRY: Duration = Duration::from_millis(1);

/// After this long without a message, a thread that coalesced frames says how many (once a run:
/// short enough to be said before `scripts/bench` stops the floor after the drain).
const QUIET: Duration = Duration::from_millis(250);

/// The most bytes of queued frames one pass writes (a behind thread's coalescing).
const PASS_MAX: usize = 64 * 1024;

/// The most bytes one client may have waiting for its socket (fanout's default queue bound).
const BACKLOG_MAX: usize = 1 << 20;

/// The way in to one fan-out thread.
pub struct FanOut {
    messages: SyncSender<Arc<[u8]>>,
    /// Sockets handed over since the thread last looked: taken at its next message, so a client
    /// gets every message sent after it joined. Bounded by the open-files limit.
    joining: Arc<Mutex<Vec<TcpStream>>>,
}

impl FanOut {
    /// Starts a fan-out thread named `name`.
    pub fn start(name: String) -> std::io::Result<Self> {
        let (messages, received) = sync_channel(QUEUED_MESSAGES);
        let joining = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&joining);
        let thread_name = name.clone();
        thread::Builder::new()
            .name(name)
            .spawn(move || run(&received, &shared, &thread_name))?;
        Ok(Self { messages, joining })
    }

    /// Hands over a client's socket (non-blocking, after the handshake).
    pub fn join(&self, socket: TcpStream) {
        self.joining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(socket);
    }

    /// Queues `frame` for every client of this thread; waits while [`QUEUED_MESSAGES`] are
    /// queued. Fails only when the thread has ended.
    pub fn deliver(&self, frame: Arc<[u8]>) -> Result<(), FanOutEnded> {
        self.messages.send(frame).map_err(|_| FanOutEnded)
    }
}

/// A fan-out thread is gone (it only ends by panicking).
#[derive(Debug, thiserror::Error)]
#[error("a fan-out thread has ended")]
pub struct FanOutEnded;

/// One client as its fan-out thread sees it.
struct Client {
    socket: TcpStream,
    /// What the socket has not taken yet, oldest first; empty but for a slow reader.
    backlog: Vec<u8>,
}

/// What became of a write.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Open,
    /// The client is gone or hopelessly behind: drop it.
    Gone,
}

impl Client {
    /// Writes `frame` with one `write` (after the backlog, if there is one).
    fn send(&mut self, frame: &[u8]) -> Outcome {
        if !self.backlog.is_empty() {
            self.backlog.extend_from_slice(frame);
            return self.flush();
        }
        match self.socket.write(frame) {
            Ok(written) if written == frame.len() => Outcome::Open,
            Ok(written) => self.keep(&frame[written..]),
            Err(error) if error.kind() == ErrorKind::WouldBlock => self.keep(frame),
            Err(error) if error.kind() == ErrorKind::Interrupted => self.send(frame),
            Err(_) => Outcome::Gone,
        }
    }

    fn keep(&mut self, rest: &[u8]) -> Outcome {
        self.backlog.extend_from_slice(rest);
        self.bounded()
    }

    /// Writes as much of the backlog as the socket takes.
    fn flush(&mut self) -> Outcome {
        match self.socket.write(&self.backlog) {
            Ok(written) => {
                self.backlog.drain(..written);
                self.bounded()
            }
            Err(error)
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
            {
                self.bounded()
            }
            Err(_) => Outcome::Gone,
        }
    }

    fn bounded(&self) -> Outcome {
        if self.backlog.len() > BACKLOG_MAX {
            Outcome::Gone
        } else {
            Outcome::Open
        }
    }
}

/// The thread: every message to every client, until the sending side is gone.
fn run(messages: &Receiver<Arc<[u8]>>, joining: &Mutex<Vec<TcpStream>>, name: &str) {
    let mut clients: Vec<Client> = Vec::new();
    let mut behind = 0usize;
    // Frames that queued while the previous pass was writing, written together (reused).
    let mut coalesced: Vec<u8> = Vec::new();
    let mut counts = Counts::default();
    loop {
        let next = if behind == 0 {
            match messages.recv_timeout(QUIET) {
                Err(RecvTimeoutError::Timeout) => {
                    counts.report_if_coalesced(name);
                    messages.recv().map_err(|_| RecvTimeoutError::Disconnected)
                }
                received => received,
            }
        } else {
            messages.recv_timeout(RETRY)
        };
        take_joining(joining, &mut clients);
        let pass = match next {
            Ok(frame) => Some(next_pass(frame, messages, &mut coalesced, &mut counts)),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        behind = 0;
        clients.retain_mut(|client| {
            let outcome = match &pass {
                Some(pass) => client.send(pass.bytes(&coalesced)),
                None if client.backlog.is_empty() => Outcome::Open,
                None => client.flush(),
            };
            if outcome == Outcome::Gone {
                let _ = client.socket.shutdown(Shutdown::Both);
                return false;
            }
            behind += usize::from(!client.backlog.is_empty());
            true
        });
    }
}

/// What one pass writes to every client: one frame, or several that queued meanwhile.
enum Pass {
    One(Arc<[u8]>),
    /// In the thread's `coalesced` buffer.
    Coalesced,
}

impl Pass {
    fn bytes<'a>(&'a self, coalesced: &'a [u8]) -> &'a [u8] {
        match self {
            Pass::One(frame) => frame,
            Pass::Coalesced => coalesced,
        }
    }
}

/// `first`, and every frame queued behind it up to [`PASS_MAX`] bytes: a thread that falls
/// behind (the machine is saturated) writes what queued in one write per client, as a server's
/// writer that finds several frames in a client's queue does; one that keeps up writes each
/// frame on its own.
fn next_pass(
    first: Arc<[u8]>,
    messages: &Receiver<Arc<[u8]>>,
    coalesced: &mut Vec<u8>,
    counts: &mut Counts,
) -> Pass {
    counts.passes += 1;
    counts.frames += 1;
    let Ok(second) = messages.try_recv() else {
        return Pass::One(first);
    };
    coalesced.clear();
    coalesced.extend_from_slice(&first);
    coalesced.extend_from_slice(&second);
    counts.frames += 1;
    while coalesced.len() < PASS_MAX {
        let Ok(frame) = messages.try_recv() else {
            break;
        };
        coalesced.extend_from_slice(&frame);
        counts.frames += 1;
    }
    Pass::Coalesced
}

/// Frames and passes of one thread, to tell whether it wrote one frame per write.
#[derive(Default)]
struct Counts {
    frames: u64,
    passes: u64,
    reported_frames: u64,
}

impl Counts {
    /// Says how many frames went out in how many passes, when some were coalesced since the
    /// last time it said so (a thread that kept up says nothing: one write per frame).
    fn report_if_coalesced(&mut self, name: &str) {
        if self.frames > self.passes && self.frames != self.reported_frames {
            eprintln!(
                "floor: {name}: {} frames in {} passes so far (frames that queued while it wrote went out together)",
                self.frames, self.passes
            );
            self.reported_frames = self.frames;
        }
    }
}

fn take_joining(joining: &Mutex<Vec<TcpStream>>, clients: &mut Vec<Client>) {
    let mut joining = joining.lock().unwrap_or_else(PoisonError::into_inner);
    clients.extend(joining.drain(..).map(|socket| Client {
        socket,
        backlog: Vec::new(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Instant;

    /// A connected pair: (the floor's non-blocking end, the client's end).
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

    fn read_exactly(client: &mut TcpStream, length: usize) -> Vec<u8> {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = vec![0; length];
        client
            .read_exact(&mut bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        bytes
    }

    #[test]
    fn every_client_gets_every_frame_in_order() {
        let fan_out = FanOut::start("test-fan-out".to_owned()).unwrap_or_else(|e| panic!("{e}"));
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (server, client) = pair();
            fan_out.join(server);
            readers.push(client);
        }
        for frame in [b"one".as_slice(), b"two", b"three"] {
            fan_out
                .deliver(Arc::from(frame))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for reader in &mut readers {
            assert_eq!(read_exactly(reader, 11), b"onetwothree");
        }
    }

    #[test]
    fn frames_that_queued_meanwhile_go_out_in_one_pass() {
        let (sender, messages) = sync_channel(8);
        let mut coalesced = Vec::new();
        let mut counts = Counts::default();
        let first: Arc<[u8]> = Arc::from(b"one".as_slice());
        let alone = next_pass(Arc::clone(&first), &messages, &mut coalesced, &mut counts);
        assert_eq!(alone.bytes(&coalesced), b"one");
        for frame in [b"two".as_slice(), b"three"] {
            sender
                .send(Arc::from(frame))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let together = next_pass(first, &messages, &mut coalesced, &mut counts);
        assert_eq!(together.bytes(&coalesced), b"onetwothree");
        assert_eq!((counts.frames, counts.passes), (4, 2));
    }

    #[test]
    fn a_reader_that_falls_behind_gets_everything_once_it_reads() {
        let (server, mut client) = pair();
        let mut slow = Client {
            socket: server,
            backlog: Vec::new(),
        };
        // Until the socket buffers are full (their size is the kernel's), then a few more.
        let frame = vec![7u8; 64 * 1024];
        let mut frames = 0;
        while slow.backlog.is_empty() {
            assert!(frames < 1_000, "the socket never pushed back");
            assert_eq!(slow.send(&frame), Outcome::Open);
            frames += 1;
        }
        for _ in 0..3 {
            assert_eq!(slow.send(&frame), Outcome::Open);
            frames += 1;
        }
        let reader = thread::spawn(move || read_exactly(&mut client, frame.len() * frames));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !slow.backlog.is_empty() {
            assert!(Instant::now() < deadline, "the backlog never emptied");
            assert_eq!(slow.flush(), Outcome::Open);
            thread::sleep(Duration::from_millis(1));
        }
        let received = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
        assert!(received.iter().all(|&byte| byte == 7));
    }

    #[test]
    fn a_reader_past_the_backlog_bound_is_dropped() {
        let (server, _client) = pair();
        let mut stuck = Client {
            socket: server,
            backlog: Vec::new(),
        };
        let frame = vec![0u8; 256 * 1024];
        let sent = (0..64)
            .map(|_| stuck.send(&frame))
            .take_while(|outcome| *outcome == Outcome::Open)
            .count();
        assert!(sent < 64, "never dropped");
        assert!(stuck.backlog.len() > BACKLOG_MAX);
    }
}
