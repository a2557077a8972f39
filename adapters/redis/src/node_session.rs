//! One node session of the sharded subscriber: a dedicated RESP3 connection to one master,
//! `SSUBSCRIBE`d to the channels that master serves, that delivers until it fails.
//!
//! Its channels change while it lives: the supervisor sends the new set when slots move
//! (`SSUBSCRIBE`/`SUNSUBSCRIBE` of the difference), a server-side `sunsubscribe` (the slot moved
//! away; redis-rs hands it over as a push) drops that channel alone, and a channel answered
//! `MOVED` is dropped alone: the master's other channels never pause. Each dropped channel is
//! reported so that the supervisor finds its master again.
//!
//! It ends on any other error: the connection lost, a `PING` unanswered within the command
//! timeout, a reply that is not the one asked for (a server push taken by redis-rs for the reply
//! of the command in flight, after which replies no longer pair up), or no channel left. Then it
//! marks its channels down (only those still marked with its own session number) and tells the
//! supervisor.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fanout_domain::{AlertFeed, AlertLog};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::SessionKey;
use crate::connect::hedged;
use crate::inbox::{ConnectionLog, Inbox, NoLog, SessionError, MIN_PONG_WAIT};
use crate::sharded::{node_info, Ended, Event, Shared};

/// Runs one node session until it ends or is cancelled, then marks its channels down and tells
/// the supervisor.
#[allow(clippy::too_many_arguments)] // one spawn site; a struct would only rename them
pub(crate) async fn node_session(
    shared: Arc<Shared>,
    key: SessionKey,
    channels: Vec<usize>,
    session: u64,
    recovering: bool,
    cancel: CancellationToken,
    changes: mpsc::UnboundedReceiver<Vec<usize>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let master = key.master.as_str();
    let mut held = channels;
    let error = tokio::select! {
        _ = cancel.cancelled() => SessionError::after(format!("the slot map moved every channel off {master}")),
        error = subscribed_on(&shared, &key, &mut held, session, recovering, &cancel, changes, &events) => error,
    };
    let why = format!("{master}: {}", error.message);
    shared
        .status
        .change_as_listener(&shared.listener, |status| {
            status.channels_down(&held, session, why);
        });
    let _ = events.send(Event::Ended(Ended {
        key,
        session,
        error,
    }));
}

/// One node's connection: `SSUBSCRIBE` every channel, catch up on alerts if it carries them,
/// then deliver until an error; returns only with the error that ended it. `held` is kept to
/// the channels it holds.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn subscribed_on(
    shared: &Shared,
    key: &SessionKey,
    held: &mut Vec<usize>,
    session: u64,
    recovering: bool,
    cancel: &CancellationToken,
    changes: mpsc::UnboundedReceiver<Vec<usize>>,
    events: &mpsc::UnboundedSender<Event>,
) -> SessionError {
    let run = Session {
        shared,
        key,
        session,
        cancel,
        events,
    };
    match run.subscribed_on(held, recovering, changes).await {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

/// What one session is, for the steps of its life.
struct Session<'a> {
    shared: &'a Shared,
    key: &'a SessionKey,
    session: u64,
    /// This node session's token: a child of the listener's, also cancelled when the slot map
    /// moves every channel off the node.
    cancel: &'a CancellationToken,
    events: &'a mpsc::UnboundedSender<Event>,
}

/// How one `SSUBSCRIBE` or `SUNSUBSCRIBE` went.
enum Answer {
    Confirmed,
    /// `MOVED` (or another refusal for this channel alone).
    Refused(String),
}

impl Session<'_> {
    /// Sends `command` for one channel (in RESP3 its single confirmation is the reply).
    async fn one_channel(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        command: &str,
        channel: usize,
    ) -> Result<Answer, SessionError> {
        let timeout = self.shared.config.command_timeout;
        let name = self.shared.channels.name(channel);
        let expected = if command == "SSUBSCRIBE" {
            PushKind::SSubscribe
        } else {
            PushKind::SUnsubscribe
        };
        let reply = tokio::time::timeout(
            timeout,
            redis::cmd(command)
                .arg(name)
                .query_async::<Value>(connection),
        )
        .await
        .map_err(|_| SessionError::after(format!("{command} took longer than {timeout:?}")))?;
        match reply {
            Ok(Value::Push { kind, data })
                if kind == expected
                    && matches!(data.first(), Some(Value::BulkString(n)) if n == name.as_bytes()) =>
            {
                Ok(Answer::Confirmed)
            }
            Ok(other) => Err(SessionError::after(format!(
                "{command} {name} was answered {other:?}: replies no longer pair up"
            ))),
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) =>
            {
                Ok(Answer::Refused(error.to_string()))
            }
            Err(error) => Err(SessionError::after(format!("{command} {name}: {error}"))),
        }
    }

    /// `channel` is no longer held here: marked down, and the supervisor told.
    fn dropped(&self, held: &mut Vec<usize>, channel: usize, why: String) {
        held.retain(|&c| c != channel);
        self.down(channel, why);
        let _ = self.events.send(Event::Dropped {
            key: self.key.clone(),
            session: self.session,
            channel,
        });
    }
    async fn subscribed_on(
        &self,
        held: &mut Vec<usize>,
        recovering: bool,
        mut changes: mpsc::UnboundedReceiver<Vec<usize>>,
    ) -> Result<std::convert::Infallible, SessionError> {
        let shared = self.shared;
        let master = self.key.master.as_str();
        let session = self.session;
        let timeout = shared.config.command_timeout;
        let info = node_info(master, &shared.settings).map_err(SessionError::before)?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.clone().set_redis_settings(resp3))
            .map_err(SessionError::before)?;
        let (pushes_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let connection_config = AsyncConnectionConfig::new()
            .set_push_sender(pushes_tx)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut connection = tokio::time::timeout(
            timeout,
            hedged(|| client.get_multiplexed_async_connection_with_config(&connection_config)),
        )
        .await
        .map_err(|_| SessionError::before(format!("connect took longer than {timeout:?}")))?
        .map_err(SessionError::before)?;

        let carries_alerts = self.key.alerts;
        let mut feed = None;
        let mut log: Option<ConnectionLog> = None;
        if carries_alerts {
            let mut held = Arc::clone(&shared.feed).lock_owned().await;
            let log_client = redis::Client::open(info).map_err(SessionError::before)?;
            let alert_log = ConnectionLog::connect(log_client, shared.keys.clone(), timeout)
                .await
                .map_err(SessionError::before)?;
            if held.is_none() {
                let head = alert_log.head().await.map_err(SessionError::before)?;
                *held = Some(AlertFeed::new(head));
            }
            feed = Some(held);
            log = Some(alert_log);
        }

        // One channel per command: in RESP3 its single confirmation is the command's reply. A channel
        // this master does not serve (MOVED: the map moved on) is dropped alone.
        for channel in held.clone() {
            match self
                .one_channel(&mut connection, "SSUBSCRIBE", channel)
                .await
            {
                Ok(Answer::Confirmed) => {}
                Ok(Answer::Refused(why)) => self.dropped(held, channel, why),
                Err(error) => return Err(SessionError::before(error.message)),
            }
        }
        if held.is_empty() {
            return Err(SessionError::before(format!(
                "{master} serves none of the channels asked of it"
            )));
        }

        let mut inbox = Inbox::new(Arc::clone(&shared.status), Arc::clone(&shared.delivery));
        let no_log = NoLog;
        let alert_log: &dyn fanout_domain::AlertLog = match &log {
            Some(log) => log,
            None => &no_log,
        };
        if let Some(feed) = feed.as_mut().and_then(|held| held.as_mut()) {
            // Live alerts wait on the connection while the missed ones are delivered; the feed
            // recognises their live copies.
            let caught = feed
                .catch_up(alert_log, shared.delivery.as_ref())
                .await
                .map_err(SessionError::before)?;
            inbox.report_gap(caught, feed);
        }
        let live_on: Arc<str> = Arc::from(master);
        self.live(held, &live_on)?;
        if recovering {
            shared.status.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(
            master,
            channels = ?held.iter().map(|&c| shared.channels.name(c)).collect::<Vec<_>>(),
            session,
            "Redis Cluster subscriber subscribed"
        );

        let pong_wait = timeout
            .saturating_sub(shared.config.ping_interval)
            .max(MIN_PONG_WAIT);
        let mut ping = tokio::time::interval(shared.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return Err(SessionError::after("the connection closed"));
                    };
                    match push.kind {
                        PushKind::SMessage => {
                            let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
                                (push.data.first(), push.data.get(1))
                            else {
                                continue;
                            };
                            let name = String::from_utf8_lossy(name);
                            let channel = shared.channels.channel_of(&name);
                            let feed = feed.as_mut().and_then(|held| held.as_mut());
                            inbox
                                .handle(channel, &name, payload, feed, alert_log)
                                .await
                                .map_err(SessionError::after)?;
                        }
                        PushKind::SUnsubscribe => {
                            // Unasked (no command of ours was in flight): the slot moved away.
                            let name = match push.data.first() {
                                Some(Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
                                _ => String::new(),
                            };
                            if let Some(channel) = held.iter().copied().find(|&c| shared.channels.name(c) == name) {
                                self.dropped(held, channel, format!("{master} unsubscribed {name}: its slot moved"));
                                if held.is_empty() {
                                    return Err(SessionError::after(format!("{master} serves none of this session's channels any more")));
                                }
                            }
                        }
                        PushKind::Disconnection => {
                            return Err(SessionError::after("the connection closed"));
                        }
                        // Confirmations (also the replies above), and anything else.
                        _ => {}
                    }
                }
                wanted = changes.recv() => {
                    // The supervisor dropped its end: it is ending this session.
                    let Some(wanted) = wanted else {
                        return Err(SessionError::after("the supervisor let this session go"));
                    };
                    for channel in held.clone() {
                        if !wanted.contains(&channel) {
                            if let Answer::Refused(why) = self.one_channel(&mut connection, "SUNSUBSCRIBE", channel).await? {
                                tracing::debug!(channel = shared.channels.name(channel), %why, "SUNSUBSCRIBE refused");
                            }
                            self.dropped_quietly(held, channel);
                        }
                    }
                    for &channel in &wanted {
                        if held.contains(&channel) {
                            continue;
                        }
                        match self.one_channel(&mut connection, "SSUBSCRIBE", channel).await? {
                            Answer::Confirmed => {
                                held.push(channel);
                                self.live(&[channel], &live_on)?;
                            }
                            Answer::Refused(why) => {
                                let _ = self.events.send(Event::Dropped { key: self.key.clone(), session, channel });
                                tracing::debug!(channel = shared.channels.name(channel), %why, "SSUBSCRIBE refused");
                            }
                        }
                    }
                    if held.is_empty() {
                        return Err(SessionError::after(format!("{master} serves none of this session's channels any more")));
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        pong_wait,
                        redis::cmd("PING").query_async::<Value>(&mut connection),
                    )
                    .await;
                    match pong {
                        Ok(Ok(Value::Push { .. })) => {
                            // A push taken for the PONG: replies no longer pair up.
                            return Err(SessionError::after(format!("{master} unsubscribed a channel while a PING was in flight")));
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(SessionError::after(format!("PING failed: {error}"))),
                        Err(_) => return Err(SessionError::after(format!("no PONG within {pong_wait:?}: the node hangs or the link is cut"))),
                    }
                }
            }
        }
    }

    /// `channel` is no longer held here because the supervisor moved it: marked down (unless its
    /// new session took it already), no report needed.
    fn dropped_quietly(&self, held: &mut Vec<usize>, channel: usize) {
        held.retain(|&c| c != channel);
        let why = format!(
            "{} moved to another master",
            self.shared.channels.name(channel)
        );
        self.down(channel, why);
    }

    /// `channels` are live on this session, unless it was cancelled: a node session of a dropped
    /// subscription (or one the slot map moved off its node) must not mark anything live.
    fn live(&self, channels: &[usize], master: &Arc<str>) -> Result<(), SessionError> {
        let marked = self
            .shared
            .status
            .change_as_listener(self.cancel, |status| {
                status.channels_live(channels, self.session, master);
            });
        if marked {
            Ok(())
        } else {
            Err(SessionError::after(format!(
                "{} was told to stop",
                self.key.master
            )))
        }
    }

    /// `channel` is down on this session (unless another took it), as long as the subscription
    /// was not dropped: a dropped one's is already idle.
    fn down(&self, channel: usize, why: String) {
        self.shared
            .status
            .change_as_listener(&self.shared.listener, |status| {
                status.channels_down(&[channel], self.session, why);
            });
    }
}
