//! The cluster-wide position of an alert in the alert log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An alert's position in the bus's alert log, ordered cluster-wide: `MILLISECONDS-SEQUENCE`,
/// the form of a Redis stream entry id (the in-memory bus uses the same form).
///
/// Clients pass the last one they saw back when they reconnect, to receive what they missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AlertId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid alert id {0:?}: expected MILLISECONDS-SEQUENCE, e.g. 1764380000123-0")]
pub struct InvalidAlertId(pub String);

impl AlertId {
    pub const ZERO: AlertId = AlertId { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }
}

impl FromStr for AlertId {
    type Err = InvalidAlertId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidAlertId(text.to_owned());
        let (ms, seq) = text.split_once('-').ok_or_else(invalid)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

impl TryFrom<String> for AlertId {
    type Error = InvalidAlertId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<AlertId> for String {
    fn from(id: AlertId) -> Self {
        id.to_string()
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_orders_and_prints_like_redis_stream_ids() {
        let a: AlertId = "1764380000123-0".parse().unwrap_or(AlertId::ZERO);
        let b: AlertId = "1764380000123-1".parse().unwrap_or(AlertId::ZERO);
        let c: AlertId = "1764380000200-0".parse().unwrap_or(AlertId::ZERO);
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1764380000123-1");
        for bad in ["", "12", "a-1", "1-", "-1", "1-2-3"] {
            assert!(bad.parse::<AlertId>().is_err(), "{bad}");
        }
    }
}
