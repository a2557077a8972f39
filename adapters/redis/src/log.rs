//! The alert log: a Redis stream, appended to atomically with the Pub/Sub publish, trimmed to a
//! bounded length, read back by workers and clients that were away.
//!
//! Two keys make the log: the stream (`--alert-retention` entries) and its epoch, a random token
//! created by the first writer or reader that finds none (`SET NX`). A Redis that lost its data
//! (restart without persistence, `FLUSHALL`, another server behind the address) has no epoch, so
//! the next touch creates a new one and readers holding positions of the old log notice.
//!
//! Trimming deletes the oldest entries one by one with `XDEL`, not with `XADD MAXLEN ~`: only
//! `XDEL` moves the stream's `max-deleted-entry-id`, which is what tells a reader exactly whether
//! anything after its position was trimmed (`MAXLEN` trimming leaves it at `0-0`).

use fanout_domain::{AlertHistory, Channel, Envelope, HistoryError, LogEpoch, LogId, LogPosition};
use redis::aio::ConnectionLike;
use redis::Script;

/// One XRANGE entry: its id and its field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The stream field that holds the envelope's JSON.
const FIELD: &str = "envelope";

/// Most entries one append trims (a retention lowered a lot is reached over several appends, so
/// no single script runs long).
const MAX_TRIM_PER_APPEND: usize = 1000;

/// The Redis keys of one alert log.
#[derive(Clone, Debug)]
pub(crate) struct LogKeys {
    pub(crate) stream: String,
    pub(crate) epoch: String,
}

impl LogKeys {
    pub(crate) fn new(stream: &str) -> Self {
        Self {
            stream: stream.to_owned(),
            epoch: format!("{stream}:epoch"),
        }
    }
}

/// A candidate epoch for a log that has none yet.
fn fresh_epoch() -> String {
    LogEpoch::from_random(rand::random()).to_string()
}

/// Appends an alert and publishes it, atomically: `XADD`, trim the oldest beyond the retention
/// with `XDEL`, then `PUBLISH` with the new id and the log's epoch spliced in after `type`.
/// Every alert on the channel is in the log, and no subscriber sees a later id before an earlier.
/// On a Redis Cluster it publishes with `SPUBLISH` on the alert channel, which is in the log's
/// slot, so the script runs on one node.
pub(crate) struct AppendScript(Script);

/// The first lines of a publishing script whose last argument is a deadline in Redis's clock
/// (Unix microseconds; 0 for none): past it, the script refuses to run. A master frozen with a
/// publish in its input (the publisher long gave up: 503) runs it when it is let go, still taking
/// itself for the master, and sharded Pub/Sub hands the message to its shard (the promoted
/// replica): it would arrive seconds late, after newer ones.
pub(crate) const LATE_CHECK: &str = r#"
local deadline = tonumber(ARGV[#ARGV])
if deadline > 0 then
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000000 + tonumber(now[2]) > deadline then
    return redis.error_reply('LATE the publish reached Redis after its deadline')
  end
end"#;

/// The prefix every alert envelope starts with; the script splices id and epoch in after it.
pub(crate) const ALERT_PREFIX: &str = r#"{"type":"alert","#;

impl AppendScript {
    pub(crate) fn new(sharded: bool) -> Self {
        let publish = if sharded { "SPUBLISH" } else { "PUBLISH" };
        Self(Script::new(&format!(
            r#"
{LATE_CHECK}
redis.call('SET', KEYS[2], ARGV[4], 'NX')
local epoch = redis.call('GET', KEYS[2])
local id = redis.call('XADD', KEYS[1], '*', '{FIELD}', ARGV[2])
local excess = math.min(redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1]), {MAX_TRIM_PER_APPEND})
if excess > 0 then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)) do
    redis.call('XDEL', KEYS[1], entry[1])
  end
end
redis.call('{publish}', ARGV[3], '{{"type":"alert","id":"' .. id .. '","epoch":"' .. epoch .. '",' .. string.sub(ARGV[2], {}))
return {{id, epoch}}
"#,
            ALERT_PREFIX.len() + 1
        )))
    }

    /// Runs the script; returns the alert's position. `deadline_us` (Redis's clock, 0 for none):
    /// after it the script refuses to run (see [`LATE_CHECK`]).
    pub(crate) async fn append<C: ConnectionLike>(
        &self,
        connection: &mut C,
        keys: &LogKeys,
        retention: usize,
        envelope_json: &str,
        deadline_us: u64,
    ) -> redis::RedisResult<(LogId, LogEpoch)> {
        debug_assert!(envelope_json.starts_with(ALERT_PREFIX));
        let (id, epoch): (String, String) = self
            .0
            .key(&keys.stream)
            .key(&keys.epoch)
            .arg(retention)
            .arg(envelope_json)
            .arg(Channel::Alerts.name())
            .arg(fresh_epoch())
            .arg(deadline_us)
            .invoke_async(connection)
            .await?;
        match (id.parse(), LogEpoch::new(epoch)) {
            (Ok(id), Ok(epoch)) => Ok((id, epoch)),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the alert log script returned a malformed id or epoch",
            ))),
        }
    }
}

/// Reads the log's epoch (creating it when missing), up to `ARGV[2]` entries after the exclusive
/// start `ARGV[1]`, the newest id trimmed and the newest id ever assigned, in one atomic step.
pub(crate) struct ReadScript(Script);

impl ReadScript {
    pub(crate) fn new() -> Self {
        Self(Script::new(
            r#"
redis.call('SET', KEYS[2], ARGV[3], 'NX')
local epoch = redis.call('GET', KEYS[2])
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
local deleted, head = '0-0', '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1]
    elseif info[i] == 'last-generated-id' then head = info[i + 1] end
  end
end
return {epoch, deleted, head, entries}
"#,
        ))
    }

    async fn read<C: ConnectionLike>(
        &self,
        connection: &mut C,
        keys: &LogKeys,
        after: LogId,
        limit: usize,
    ) -> Result<LogRead, HistoryError> {
        let (epoch, deleted, head, entries): (String, String, String, Vec<StreamEntry>) = self
            .0
            .key(&keys.stream)
            .key(&keys.epoch)
            .arg(format!("({after}"))
            .arg(limit)
            .arg(fresh_epoch())
            .invoke_async(connection)
            .await
            .map_err(|e| HistoryError::caused_by("reading the alert log failed", e))?;
        let malformed = |what: &str| HistoryError::unavailable(format!("the alert log {what}"));
        Ok(LogRead {
            epoch: LogEpoch::new(epoch).map_err(|_| malformed("epoch is malformed"))?,
            max_deleted: deleted
                .parse()
                .map_err(|_| malformed("reported a malformed deleted id"))?,
            head: head
                .parse()
                .map_err(|_| malformed("reported a malformed newest id"))?,
            entries,
        })
    }

    /// At most `limit` alerts after `after`, and whether the log still holds everything after it.
    pub(crate) async fn alerts_after<C: ConnectionLike>(
        &self,
        connection: &mut C,
        keys: &LogKeys,
        after: LogId,
        limit: usize,
    ) -> Result<AlertHistory, HistoryError> {
        // Nothing can follow the greatest id, and `XRANGE (MAX` is an error: read no entries.
        let limit = if after == LogId::MAX { 0 } else { limit };
        let read = self.read(connection, keys, after, limit).await?;
        let mut alerts = Vec::with_capacity(read.entries.len());
        for (id, fields) in read.entries {
            let Some((_, json)) = fields.iter().find(|(field, _)| field == FIELD) else {
                continue;
            };
            let (Ok(id), Ok(mut envelope)) = (
                id.parse::<LogId>(),
                Envelope::from_json(Channel::Alerts, json),
            ) else {
                tracing::warn!(%id, "skipping an alert log entry that is not a valid alert envelope");
                continue;
            };
            envelope.id = Some(id);
            envelope.epoch = Some(read.epoch.clone());
            alerts.push(envelope);
        }
        Ok(AlertHistory {
            epoch: read.epoch,
            alerts,
            // Trimmed after the position, or a position this log never reached (another log's).
            complete: after >= read.max_deleted && after <= read.head,
        })
    }

    /// The log's epoch and newest id: where a new reader starts.
    pub(crate) async fn head<C: ConnectionLike>(
        &self,
        connection: &mut C,
        keys: &LogKeys,
    ) -> Result<LogPosition, HistoryError> {
        let read = self.read(connection, keys, LogId::ZERO, 0).await?;
        Ok(LogPosition {
            epoch: Some(read.epoch),
            id: read.head,
        })
    }
}

struct LogRead {
    epoch: LogEpoch,
    max_deleted: LogId,
    head: LogId,
    entries: Vec<StreamEntry>,
}
