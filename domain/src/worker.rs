//! The identity of one worker process.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Names one worker process in logs, envelopes and health reports.
///
/// Non-empty, at most 128 bytes, no whitespace or control characters: it travels in every
/// envelope, series key and log line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkerId(pub(crate) String);

/// Text that is not a worker id (see [`WorkerId`]), kept as given for the error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid worker id {0:?}: must be 1 to 128 bytes without whitespace or control characters")]
pub struct InvalidWorkerId(pub String);

impl WorkerId {
    /// `id` if it is one: non-empty, at most 128 bytes, no whitespace or control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidWorkerId> {
        let id = id.into();
        let forbidden = |c: char| c.is_whitespace() || c.is_control();
        if id.is_empty() || id.len() > 128 || id.chars().any(forbidden) {
            return Err(InvalidWorkerId(id));
        }
        Ok(Self(id))
    }

    /// The id as text, as it appears in envelopes, health reports and logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkerId {
    type Error = InvalidWorkerId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<WorkerId> for String {
    fn from(value: WorkerId) -> Self {
        value.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for WorkerId {
    type Err = InvalidWorkerId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_whitespace() {
        assert!(WorkerId::new("").is_err());
        assert!(WorkerId::new("a b").is_err());
        assert!(WorkerId::new("x".repeat(129)).is_err());
        assert_eq!(
            WorkerId::new("host-42").map(|w| w.to_string()),
            Ok("host-42".to_owned())
        );
    }

    #[test]
    fn ids_are_short_printable_tokens_on_every_path() {
        assert!(WorkerId::new("web-1-4242").is_ok());
        for bad in ["", "a b", "a\u{0}b", "a\u{1b}[31m", &"x".repeat(129)] {
            assert!(WorkerId::new(bad).is_err(), "{bad:?}");
            let json = serde_json::to_string(bad).unwrap_or_default();
            assert!(serde_json::from_str::<WorkerId>(&json).is_err(), "{bad:?}");
        }
    }
}
