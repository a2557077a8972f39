//! Positions in the alert log ([`LogId`]) and the log's identity ([`LogEpoch`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An alert's position in the bus's alert log, ordered cluster-wide: `MILLISECONDS-SEQUENCE`,
/// the form of a Redis stream entry id (the in-memory bus uses the same form).
///
/// Clients pass the last one they saw back when they reconnect, to receive what they missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogId {
    /// Compared first. In Redis, the server's clock (Unix milliseconds) when the entry was
    /// added; always 0 in the in-memory bus.
    pub ms: u64,
    /// Orders entries with the same `ms`: in Redis, within one millisecond; in the in-memory
    /// bus, every alert, counting from 1.
    pub seq: u64,
}

/// Text that is not an alert-log id (e.g. a client's `last_alert_id`), kept as given for the
/// error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid alert id {0:?}: expected MILLISECONDS-SEQUENCE, e.g. 1764380000123-0")]
pub struct InvalidLogId(pub String);

impl LogId {
    /// Before every entry (Redis's `0-0`, which no entry has): reading after it reads the whole
    /// retained log.
    pub const ZERO: LogId = LogId { ms: 0, seq: 0 };

    /// The greatest id: nothing comes after it (Redis refuses it as an exclusive start).
    pub const MAX: LogId = LogId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// The id `MS-SEQ`. Every pair is well-formed; whether the log holds it is the log's to say.
    pub fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }
}

impl FromStr for LogId {
    type Err = InvalidLogId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidLogId(text.to_owned());
        let (ms, seq) = text.split_once('-').ok_or_else(invalid)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

impl TryFrom<String> for LogId {
    type Error = InvalidLogId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<LogId> for String {
    fn from(id: LogId) -> Self {
        id.to_string()
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The identity of one alert log. Positions ([`LogId`]) compare only within one epoch: a log
/// that was lost or reset (Redis restarted without persistence, `FLUSHALL`, another Redis behind
/// the same address, a restarted in-memory bus) starts a new epoch, so a reader coming back with
/// a position from the old one is recognised and told that it may have missed alerts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogEpoch(String);

/// Longest epoch accepted.
const MAX_EPOCH_LEN: usize = 64;

/// Text that is not a log epoch (1 to 64 ASCII letters, digits, `-` or `_`), kept as given for
/// the error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log epoch {0:?}: expected 1 to 64 letters, digits, '-' or '_'")]
pub struct InvalidLogEpoch(pub String);

impl LogEpoch {
    /// An epoch from its text form (as the server sent it).
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidLogEpoch> {
        let text = text.into();
        let valid = !text.is_empty()
            && text.len() <= MAX_EPOCH_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(text))
        } else {
            Err(InvalidLogEpoch(text))
        }
    }

    /// A new epoch from 64 random bits (the caller brings the randomness: the domain has none).
    pub fn from_random(bits: u64) -> Self {
        Self(format!("{bits:016x}"))
    }

    /// The text form, as clients receive it in alert frames and send it back to resume.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LogEpoch {
    type Err = InvalidLogEpoch;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

impl TryFrom<String> for LogEpoch {
    type Error = InvalidLogEpoch;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<LogEpoch> for String {
    fn from(epoch: LogEpoch) -> Self {
        epoch.0
    }
}

impl fmt::Display for LogEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl LogId {
    /// The id right before this one, for reading the log from exactly this id on; `None` for
    /// [`LogId::ZERO`], which no entry has.
    pub fn predecessor(self) -> Option<LogId> {
        match (self.ms, self.seq) {
            (0, 0) => None,
            (ms, 0) => Some(LogId::new(ms - 1, u64::MAX)),
            (ms, seq) => Some(LogId::new(ms, seq - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_short_plain_tokens() {
        assert!(LogEpoch::new("0123abcd-_Z").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65), "a\n"] {
            assert!(LogEpoch::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(LogEpoch::from_random(255).as_str(), "00000000000000ff");
    }

    #[test]
    fn the_predecessor_is_the_greatest_smaller_id() {
        assert_eq!(LogId::ZERO.predecessor(), None);
        assert_eq!(LogId::new(5, 2).predecessor(), Some(LogId::new(5, 1)));
        assert_eq!(
            LogId::new(5, 0).predecessor(),
            Some(LogId::new(4, u64::MAX))
        );
    }

    #[test]
    fn parses_orders_and_prints_like_redis_stream_ids() {
        let a: LogId = "1764380000123-0".parse().unwrap_or(LogId::ZERO);
        let b: LogId = "1764380000123-1".parse().unwrap_or(LogId::ZERO);
        let c: LogId = "1764380000200-0".parse().unwrap_or(LogId::ZERO);
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1764380000123-1");
        for bad in ["", "12", "a-1", "1-", "-1", "1-2-3"] {
            assert!(bad.parse::<LogId>().is_err(), "{bad}");
        }
    }
}
