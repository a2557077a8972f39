//! The alert log: a Redis stream, appended to atomically with the Pub/Sub publish, trimmed to a
//! bounded length, read back by workers and clients that were away.

use fanout_domain::{AlertHistory, AlertId, Channel, Envelope, HistoryError};
use redis::aio::ConnectionLike;
use redis::Script;

/// One XRANGE entry: its id and its field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The stream field that holds the envelope's JSON.
const FIELD: &str = "envelope";

/// XADD the envelope to the log (approximately trimmed to `ARGV[1]` entries) and PUBLISH it on the
/// alerts channel with its new id as the first field, in one atomic step: every alert on the
/// channel is in the log, and no subscriber can see a later id before an earlier one.
pub(crate) fn publish_alert_script() -> Script {
    Script::new(
        r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'envelope', ARGV[2])
redis.call('PUBLISH', ARGV[3], '{"type":"alert","id":"' .. id .. '",' .. string.sub(ARGV[2], 17))
return id
"#,
    )
}

/// The prefix every alert envelope starts with; the script splices the id in after it.
pub(crate) const ALERT_PREFIX: &str = r#"{"type":"alert","#;

/// Reads at most `limit` alerts after `after`, and whether the log still held everything after it.
pub(crate) async fn alerts_after<C: ConnectionLike>(
    connection: &mut C,
    key: &str,
    after: AlertId,
    limit: usize,
) -> Result<AlertHistory, HistoryError> {
    let unavailable = |e: redis::RedisError| HistoryError::Unavailable(e.to_string());
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(key)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(limit)
        .query_async(connection)
        .await
        .map_err(unavailable)?;
    let mut alerts = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let Some((_, json)) = fields.iter().find(|(field, _)| field == FIELD) else {
            continue;
        };
        let (Ok(id), Ok(mut envelope)) = (
            id.parse::<AlertId>(),
            Envelope::from_json(Channel::Alerts, json),
        ) else {
            tracing::warn!(%id, "skipping an alert log entry that is not a valid alert envelope");
            continue;
        };
        envelope.id = Some(id);
        alerts.push(envelope);
    }
    let complete = after >= max_deleted(connection, key).await.map_err(unavailable)?;
    Ok(AlertHistory { alerts, complete })
}

/// The newest id trimmed from the stream (`XINFO STREAM`'s `max-deleted-entry-id`, Redis 7+);
/// zero when the stream does not exist or the server does not report it.
async fn max_deleted<C: ConnectionLike>(
    connection: &mut C,
    key: &str,
) -> redis::RedisResult<AlertId> {
    let info: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(connection)
        .await;
    let info = match info {
        Ok(info) => info,
        Err(error) if error.to_string().contains("no such key") => return Ok(AlertId::ZERO),
        Err(error) => return Err(error),
    };
    let fields: Vec<redis::Value> = match info {
        redis::Value::Array(items) => items,
        redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Ok(AlertId::ZERO),
    };
    let text = |value: &redis::Value| -> Option<String> {
        match value {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            redis::Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    };
    for pair in fields.chunks(2) {
        if let [name, value] = pair {
            if text(name).as_deref() == Some("max-deleted-entry-id") {
                return Ok(text(value)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(AlertId::ZERO));
            }
        }
    }
    Ok(AlertId::ZERO)
}

/// The newest id in the log (zero when it is empty): the point a new subscriber starts from.
pub(crate) async fn head<C: ConnectionLike>(
    connection: &mut C,
    key: &str,
) -> redis::RedisResult<AlertId> {
    let newest: Vec<StreamEntry> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(newest
        .first()
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or(AlertId::ZERO))
}
