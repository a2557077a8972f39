//! One node session of the sharded subscriber: a dedicated RESP3 connection to one master,
//! `SSUBSCRIBE`d to exactly the channels that master serves, that delivers until it fails.
//!
//! It ends on any error: the connection lost, a `PING` unanswered within the command timeout, a
//! server-side `sunsubscribe` (the slot moved; redis-rs hands it over as a push), a `MOVED`
//! answer to `SSUBSCRIBE`. Then it marks its channels down (only those still marked with its own
//! session number) and tells the supervisor in `sharded.rs`, which finds the channels' masters
//! again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fanout_domain::{AlertFeed, AlertLog};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::SessionKey;
use crate::connect::{hedged, multiplexed};
use crate::inbox::{ConnectionLog, Inbox, NoLog, SessionError, MIN_PONG_WAIT};
use crate::log::ReadScript;
use crate::sharded::{node_info, Ended, Shared};

/// Runs one node session until it ends or is cancelled, then marks its channels down and tells
/// the supervisor.
pub(crate) async fn node_session(
    shared: Arc<Shared>,
    key: SessionKey,
    channels: Vec<usize>,
    session: u64,
    recovering: bool,
    cancel: CancellationToken,
    ended: mpsc::UnboundedSender<Ended>,
) {
    let master = key.master.as_str();
    let error = tokio::select! {
        _ = cancel.cancelled() => SessionError::after(format!("the slot map moved channels off {master}")),
        error = subscribed_on(&shared, master, &channels, session, recovering) => error,
    };
    shared
        .status
        .channels_down(&channels, session, format!("{master}: {}", error.message));
    let _ = ended.send(Ended {
        key,
        session,
        error,
    });
}

/// One node's connection: `SSUBSCRIBE` every channel, catch up on alerts if it carries them,
/// then deliver until an error; returns only with the error that ended it.
async fn subscribed_on(
    shared: &Shared,
    master: &str,
    channels: &[usize],
    session: u64,
    recovering: bool,
) -> SessionError {
    match subscribed_on_inner(shared, master, channels, session, recovering).await {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

async fn subscribed_on_inner(
    shared: &Shared,
    master: &str,
    channels: &[usize],
    session: u64,
    recovering: bool,
) -> Result<std::convert::Infallible, SessionError> {
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

    let carries_alerts = channels.contains(&shared.channels.alerts());
    let mut feed = None;
    let mut log: Option<ConnectionLog> = None;
    if carries_alerts {
        let mut held = Arc::clone(&shared.feed).lock_owned().await;
        let log_client = redis::Client::open(info).map_err(SessionError::before)?;
        let log_connection = tokio::time::timeout(timeout, multiplexed(&log_client, timeout))
            .await
            .map_err(|_| SessionError::before(format!("connect took longer than {timeout:?}")))?
            .map_err(SessionError::before)?;
        let alert_log = ConnectionLog {
            connection: log_connection,
            keys: shared.keys.clone(),
            read: ReadScript::new(),
            timeout,
        };
        if held.is_none() {
            let head = alert_log.head().await.map_err(SessionError::before)?;
            *held = Some(AlertFeed::new(head));
        }
        feed = Some(held);
        log = Some(alert_log);
    }

    // One channel per command: in RESP3 its single confirmation is the command's reply.
    for &channel in channels {
        let name = shared.channels.name(channel);
        let reply = tokio::time::timeout(
            timeout,
            redis::cmd("SSUBSCRIBE")
                .arg(name)
                .query_async::<Value>(&mut connection),
        )
        .await
        .map_err(|_| SessionError::before(format!("SSUBSCRIBE took longer than {timeout:?}")))?
        .map_err(|error| SessionError::before(format!("SSUBSCRIBE {name}: {error}")))?;
        if !matches!(
            reply,
            Value::Push {
                kind: PushKind::SSubscribe,
                ..
            }
        ) {
            return Err(SessionError::before(format!(
                "SSUBSCRIBE {name} was answered {reply:?}"
            )));
        }
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
    shared
        .status
        .channels_live(channels, session, &Arc::from(master));
    if recovering {
        shared.status.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        master,
        channels = ?channels.iter().map(|&c| shared.channels.name(c)).collect::<Vec<_>>(),
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
                        return Err(SessionError::after(format!(
                            "{master} unsubscribed {:?}: its slot moved",
                            push.data.first()
                        )));
                    }
                    PushKind::Disconnection => {
                        return Err(SessionError::after("the connection closed"));
                    }
                    // Confirmations (also the replies above), and anything else.
                    _ => {}
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
                        return Err(SessionError::after(format!("{master} unsubscribed a channel: its slot moved")));
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return Err(SessionError::after(format!("PING failed: {error}"))),
                    Err(_) => return Err(SessionError::after(format!("no PONG within {pong_wait:?}: the node hangs or the link is cut"))),
                }
            }
        }
    }
}
