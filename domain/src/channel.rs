//! The bus channels. Their names are part of the public contract (other publishers use them).

use std::fmt;

/// A bus channel. Every worker subscribes to all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `performance:metrics`: batches of metrics, latest-value data.
    Metrics,
    /// `performance:alerts`: one alert per message (a worker also appends those it publishes
    /// to the alert log; outside publishers' alerts are not logged).
    Alerts,
}

impl Channel {
    /// Every channel: what each worker subscribes to.
    pub const ALL: [Channel; 2] = [Channel::Metrics, Channel::Alerts];

    /// The channel's name on the bus. Never change it: outside publishers use it.
    pub const fn name(self) -> &'static str {
        match self {
            Channel::Metrics => "performance:metrics",
            Channel::Alerts => "performance:alerts",
        }
    }

    /// The channel called `name` on the bus; `None` for a name that is not one of fanout's.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|channel| channel.name() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for channel in Channel::ALL {
            assert_eq!(Channel::from_name(channel.name()), Some(channel));
        }
        assert_eq!(Channel::from_name("performance:other"), None);
        assert_eq!(Channel::Metrics.name(), "performance:metrics");
        assert_eq!(Channel::Alerts.name(), "performance:alerts");
    }
}
