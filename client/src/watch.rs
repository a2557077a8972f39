//! The reconnecting, resuming stream of events from a set of workers.
//!
//! [`Watch::start`] spawns one task that holds one [`Connection`] at a time. When it ends (the
//! worker shut down with 1001, the client was too slow (4008), the connection was lost, …) the
//! task waits a jittered exponential [`Backoff`] and connects to the next URL of the list,
//! resuming after the last alert it received (its `id` and `epoch`), so no alert the log still
//! holds is lost or delivered twice. A resume that could not replay everything is reported as
//! [`Event::ResumeIncomplete`].
//!
//! With [`Watch::subscription`], every connection it opens carries the subscription in its query
//! (the connection's `default` subscription), so a reconnect, to any worker, keeps it; the
//! snapshot and a resume's replay hold only what it matches. The stream sends no requests on the
//! connection, so the answers to them (`subscribed`, `unsubscribed`, `error`) are not expected; a
//! worker that sends one anyway is reported as [`Event::Unrequested`] and otherwise ignored. A
//! subscription the worker refuses (400, naming the parameter) is a [`Event::ConnectFailed`]
//! with [`ConnectError::Refused`], retried like any other refusal.
//!
//! The events go through a bounded channel of `buffer` events: a consumer that stops reading
//! stops the task from reading its socket, and the worker then treats the client as any slow
//! consumer (drops its oldest metrics, closes it with 4008 and the task resumes elsewhere). The
//! task never buffers without bound.
//!
//! Over 400 lines on purpose: the reconnect, resume and failover logic of the event stream is one state machine; a third is its tests.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use fanout_domain::{LogId, Metric};
use futures_util::Stream;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::connection::session_url;
use crate::{
    AlertFrame, Backoff, CloseCode, ConnectError, ConnectOptions, Connection, FrameError, Hello,
    MetricsFrame, Position, ReadError, Resume, ServerFrame, Subscription,
};

/// What happened on the stream: a frame, or a change of connection.
#[derive(Debug)]
pub enum Event {
    /// A session is open and greeted: from now on every message published (that the
    /// subscription matches, when the watch has one) reaches it.
    Connected {
        /// The worker's URL, as given to [`Watch::new`].
        url: String,
        /// The worker's greeting.
        hello: Hello,
    },
    /// The latest value of each metric series the worker has seen (after each `Connected`; only
    /// the series the subscription matches, when the watch has one).
    Snapshot(Vec<Metric>),
    /// A resume replayed every alert after the last one received; they follow as `Alert`s.
    Resumed(Resume),
    /// A resume could not replay everything after the last alert received (trimmed from the log,
    /// or the log was reset): alerts were missed. What could be replayed follows as `Alert`s.
    ResumeIncomplete(Resume),
    /// A batch of metrics published together.
    Metrics(MetricsFrame),
    /// One alert, live or replayed; the next resume starts after the last one with an `id`.
    Alert(AlertFrame),
    /// A protocol frame the stream did not ask for: an answer (`subscribed`, `unsubscribed`,
    /// `error`) to a request it never sends. Reported, not acted on; the session goes on.
    Unrequested {
        /// The worker that sent it.
        url: String,
        /// The frame.
        frame: ServerFrame,
    },
    /// A frame that is not a protocol frame, skipped; the session goes on.
    Malformed {
        /// The worker that sent it.
        url: String,
        /// Why it is not a protocol frame.
        error: FrameError,
    },
    /// The session ended; the next attempt starts after `retry_in`.
    Disconnected {
        /// The worker the session was with.
        url: String,
        /// The close code, when the server closed the connection with one.
        code: Option<CloseCode>,
        /// How the session ended: [`ReadError::Closed`], [`ReadError::Lost`] or
        /// [`ReadError::Ended`].
        error: ReadError,
        /// The backoff before the next attempt, to the next URL.
        retry_in: Duration,
    },
    /// A connection attempt failed; the next one (to the next URL) starts after `retry_in`.
    ConnectFailed {
        /// The worker that was tried.
        url: String,
        /// Why the attempt failed.
        error: ConnectError,
        /// The backoff before the next attempt, to the next URL.
        retry_in: Duration,
    },
}

/// The settings of a reconnecting stream; [`Watch::start`] starts it.
#[derive(Clone, Debug)]
pub struct Watch {
    urls: Vec<String>,
    token: Option<String>,
    backoff: Backoff,
    connect_timeout: Duration,
    resume_from: Option<Position>,
    subscription: Option<Subscription>,
    buffer: usize,
}

impl Watch {
    /// Watches the workers at `urls` (`ws://host:port`), connecting to the first and rotating
    /// through the others on every reconnection.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            token: None,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            resume_from: None,
            subscription: None,
            buffer: 1024,
        }
    }

    /// Sends `Authorization: Bearer token` with every connection.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The delays between attempts (default: 100 ms doubling up to 10 s, jittered).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long one connection attempt may take, handshake included (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Resumes the first connection after `position` (kept from an earlier run), instead of
    /// starting fresh.
    pub fn resume_from(mut self, position: Position) -> Self {
        self.resume_from = Some(position);
        self
    }

    /// Receives only what `subscription` matches: it is sent as query parameters on every
    /// connection and reconnection (default: everything). [`Watch::start`] refuses one the query
    /// cannot carry.
    pub fn subscription(mut self, subscription: Subscription) -> Self {
        self.subscription = Some(subscription);
        self
    }

    /// At most this many events wait for the consumer (default 1024, at least 1).
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }

    /// Starts the task that connects and reconnects (on the current tokio runtime). Refuses an
    /// empty list, a URL that is not `ws://` or `wss://`, or a subscription the query cannot
    /// carry ([`ConnectError::Subscription`]). Dropping the [`Events`] stops it.
    pub fn start(self) -> Result<Events, ConnectError> {
        if self.urls.is_empty() {
            return Err(ConnectError::InvalidUrl {
                url: String::new(),
                reason: "no worker URL to watch".to_owned(),
            });
        }
        for url in &self.urls {
            session_url(url, None)?;
        }
        if let Some(subscription) = &self.subscription {
            subscription.query()?;
        }
        let (sender, receiver) = mpsc::channel(self.buffer);
        let task = tokio::spawn(run(self, sender));
        Ok(Events { receiver, task })
    }
}

/// The stream of [`Event`]s; dropping it stops the connection task.
#[derive(Debug)]
pub struct Events {
    receiver: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The consumer dropped the stream.
struct Gone;

async fn run(watch: Watch, events: mpsc::Sender<Event>) {
    let Watch {
        urls,
        token,
        mut backoff,
        connect_timeout,
        resume_from,
        subscription,
        ..
    } = watch;
    let mut rng = StdRng::from_os_rng();
    let mut position = resume_from;
    for url in urls.iter().cycle() {
        let options = ConnectOptions {
            token: token.as_deref(),
            resume: position.as_ref(),
            subscription: subscription.as_ref(),
            ..ConnectOptions::default()
        };
        let attempt = Connection::connect(url, &options);
        let event = match tokio::time::timeout(connect_timeout, attempt).await {
            Ok(Ok(connection)) => {
                let Ok(error) =
                    session(url, connection, &mut position, &mut backoff, &events).await
                else {
                    return;
                };
                let code = match &error {
                    ReadError::Closed { code, .. } => *code,
                    _ => None,
                };
                Event::Disconnected {
                    url: url.clone(),
                    code,
                    error,
                    retry_in: backoff.next_delay(&mut rng),
                }
            }
            Ok(Err(error)) => Event::ConnectFailed {
                url: url.clone(),
                error,
                retry_in: backoff.next_delay(&mut rng),
            },
            Err(_) => Event::ConnectFailed {
                url: url.clone(),
                error: ConnectError::TimedOut(connect_timeout),
                retry_in: backoff.next_delay(&mut rng),
            },
        };
        let retry_in = match &event {
            Event::Disconnected { retry_in, .. } | Event::ConnectFailed { retry_in, .. } => {
                *retry_in
            }
            _ => Duration::ZERO,
        };
        if events.send(event).await.is_err() {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

/// Reads one session until it ends; returns why it ended.
async fn session(
    url: &str,
    mut connection: Connection,
    position: &mut Option<Position>,
    backoff: &mut Backoff,
    events: &mpsc::Sender<Event>,
) -> Result<ReadError, Gone> {
    loop {
        let event = match connection.next_frame().await {
            Ok(ServerFrame::Hello(hello)) => {
                backoff.reset();
                Event::Connected {
                    url: url.to_owned(),
                    hello,
                }
            }
            Ok(ServerFrame::Snapshot(metrics)) => Event::Snapshot(metrics),
            Ok(ServerFrame::Resume(resume)) => {
                follow_resume(position, &resume);
                if resume.complete {
                    Event::Resumed(resume)
                } else {
                    Event::ResumeIncomplete(resume)
                }
            }
            Ok(ServerFrame::Metrics(frame)) => Event::Metrics(frame),
            Ok(ServerFrame::Alert(frame)) => {
                if let Some(id) = frame.id {
                    *position = Some(Position {
                        id,
                        epoch: frame.epoch.clone(),
                    });
                }
                Event::Alert(frame)
            }
            Ok(
                frame @ (ServerFrame::Subscribed(_)
                | ServerFrame::Unsubscribed(_)
                | ServerFrame::Error(_)),
            ) => Event::Unrequested {
                url: url.to_owned(),
                frame,
            },
            Err(ReadError::Malformed(error)) => Event::Malformed {
                url: url.to_owned(),
                error,
            },
            Err(ReadError::Binary) => continue,
            Err(ended) => return Ok(ended),
        };
        events.send(event).await.map_err(|_| Gone)?;
    }
}

/// After a resume into another log (the log was reset): the replay is that log from its start,
/// so the position becomes its start; the replayed alerts move it on. Resuming again with the
/// old log's id would replay the new log a second time.
fn follow_resume(position: &mut Option<Position>, resume: &Resume) {
    let Some(epoch) = &resume.epoch else {
        return;
    };
    let same_log = position
        .as_ref()
        .is_some_and(|position| position.epoch.as_ref() == Some(epoch));
    if !same_log {
        *position = Some(Position {
            id: LogId::ZERO,
            epoch: Some(epoch.clone()),
        });
    }
}

#[cfg(test)]
mod tests {
    use fanout_domain::LogEpoch;

    use super::*;

    fn epoch(text: &str) -> LogEpoch {
        LogEpoch::new(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn resume(epoch_now: Option<&str>) -> Resume {
        Resume {
            after: LogId::new(5, 0),
            epoch: epoch_now.map(epoch),
            replayed: 0,
            complete: false,
        }
    }

    #[test]
    fn a_resume_in_the_same_log_keeps_the_position() {
        let kept = Position {
            id: LogId::new(5, 0),
            epoch: Some(epoch("a")),
        };
        let mut position = Some(kept.clone());
        follow_resume(&mut position, &resume(Some("a")));
        assert_eq!(position, Some(kept));
    }

    #[test]
    fn a_resume_into_a_reset_log_starts_from_its_beginning() {
        let mut position = Some(Position {
            id: LogId::new(5, 0),
            epoch: Some(epoch("a")),
        });
        follow_resume(&mut position, &resume(Some("b")));
        assert_eq!(
            position,
            Some(Position {
                id: LogId::ZERO,
                epoch: Some(epoch("b")),
            })
        );
    }

    #[test]
    fn a_resume_without_an_epoch_keeps_the_position() {
        let kept = Position {
            id: LogId::new(5, 0),
            epoch: None,
        };
        let mut position = Some(kept.clone());
        follow_resume(&mut position, &resume(None));
        assert_eq!(position, Some(kept));
    }

    #[tokio::test]
    async fn an_empty_list_of_workers_is_refused() {
        assert!(Watch::new(Vec::<String>::new()).start().is_err());
        assert!(Watch::new(["http://h:1"]).start().is_err());
    }

    /// Every wait on the loopback worker fails loudly after this.
    const WAIT: Duration = Duration::from_secs(10);

    /// Accepts one WebSocket connection, sends `frames`, closes it with 1001 and returns the
    /// request's target (path and query).
    async fn serve_once(listener: &tokio::net::TcpListener, frames: &[&str]) -> String {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as Code;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::Message;

        let (mut socket, target) = crate::test_server::accept(listener).await;
        for frame in frames {
            socket
                .send(Message::text(*frame))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let close = CloseFrame {
            code: Code::Away,
            reason: "shutting down".into(),
        };
        // The client may be gone before it acknowledges the close: not this test's concern.
        let _ = socket.close(Some(close)).await;
        target
    }

    #[tokio::test]
    async fn a_reconnect_keeps_the_subscription_after_the_resume_position() {
        use futures_util::StreamExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "ws://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let worker = tokio::spawn(async move {
            let alert = r#"{"type":"alert","id":"1764380000456-0","epoch":"3f9a0c1e5b7d2468","origin":"w","seq":4,"published_at_us":1,"data":{"severity":"critical","message":"hot","source":"w"}}"#;
            let error = r#"{"type":"error","id":null,"error":"not JSON","field":null}"#;
            let first = serve_once(&listener, &[alert, error]).await;
            let second = serve_once(&listener, &[]).await;
            (first, second)
        });
        let mut events = Watch::new([url])
            .backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(10),
            ))
            .subscription(
                Subscription::default()
                    .metrics(["api.*"])
                    .min_severity(fanout_domain::Severity::Critical),
            )
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        // Each session ends with the worker's 1001: two disconnections, then it is done.
        let mut unrequested = Vec::new();
        let mut disconnections = 0;
        tokio::time::timeout(WAIT, async {
            while disconnections < 2 {
                match events.next().await {
                    Some(Event::Unrequested { frame, .. }) => unrequested.push(frame.kind()),
                    Some(Event::Disconnected { .. }) => disconnections += 1,
                    Some(_) => {}
                    None => panic!("the stream ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the watch did not reconnect within {WAIT:?}"));
        let (first, second) = worker.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, "/ws/performance?metrics=api.*&alerts=critical");
        assert_eq!(
            second,
            "/ws/performance?last_alert_id=1764380000456-0&epoch=3f9a0c1e5b7d2468\
             &metrics=api.*&alerts=critical"
        );
        assert_eq!(unrequested, ["error"]);
    }

    #[tokio::test]
    async fn a_subscription_the_query_cannot_carry_is_refused_at_start() {
        let watch =
            Watch::new(["ws://h:1"]).subscription(Subscription::default().matcher("note=a,b"));
        assert!(matches!(watch.start(), Err(ConnectError::Subscription(_))));
    }
}
