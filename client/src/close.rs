//! The close codes a worker ends a connection with (docs/PROTOCOL.md, "Close codes").

use std::fmt;

/// Why the server closed the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the worker is shutting down; reconnect (to any worker).
    GoingAway,
    /// 1003: the client sent a binary frame.
    UnsupportedData,
    /// 1007: the client sent a text frame that is not valid UTF-8.
    InvalidPayload,
    /// 1008: the client broke the WebSocket protocol.
    PolicyViolation,
    /// 1009: the client sent a message larger than the worker's `--max-client-message`.
    MessageTooBig,
    /// 1013: the alert log could not be read to resume; reconnect later with the same position.
    TryAgainLater,
    /// 4001: the client did not answer pings within the worker's `--client-timeout`.
    PingTimeout,
    /// 4003: the client's token expired; reconnect with a fresh one.
    TokenExpired,
    /// 4008: the client read too slowly; reconnect (resuming, to get the alerts it missed).
    SlowConsumer,
    /// A code the protocol does not document (1000 when the client closed, for one).
    Other(u16),
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        match code {
            1001 => Self::GoingAway,
            1003 => Self::UnsupportedData,
            1007 => Self::InvalidPayload,
            1008 => Self::PolicyViolation,
            1009 => Self::MessageTooBig,
            1013 => Self::TryAgainLater,
            4001 => Self::PingTimeout,
            4003 => Self::TokenExpired,
            4008 => Self::SlowConsumer,
            other => Self::Other(other),
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        match code {
            CloseCode::GoingAway => 1001,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::TryAgainLater => 1013,
            CloseCode::PingTimeout => 4001,
            CloseCode::TokenExpired => 4003,
            CloseCode::SlowConsumer => 4008,
            CloseCode::Other(other) => other,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({self:?})", u16::from(*self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_round_trips_and_none_is_other() {
        for code in [1001, 1003, 1007, 1008, 1009, 1013, 4001, 4003, 4008] {
            let typed = CloseCode::from(code);
            assert!(!matches!(typed, CloseCode::Other(_)), "{code}");
            assert_eq!(u16::from(typed), code);
        }
    }

    #[test]
    fn an_undocumented_code_is_kept() {
        assert_eq!(CloseCode::from(1000), CloseCode::Other(1000));
        assert_eq!(u16::from(CloseCode::Other(4999)), 4999);
    }
}
