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

    /// Redis Cluster: the sharded channel of metrics partition `partition`,
    /// `performance:metrics:{N}`. The hash tag `{N}` puts each partition in its own slot, so the
    /// partitions spread over the cluster's masters. Never change it: outside publishers use it.
    pub fn metrics_partition(partition: u16) -> String {
        format!("{}:{{{partition}}}", Channel::Metrics.name())
    }

    /// Redis Cluster: the channel a sharded channel name belongs to — a metrics partition below
    /// `partitions`, or the alert channel (which keeps its name: it is sharded as it is, in the
    /// alert log's slot). `None` for any other name.
    pub fn from_sharded_name(name: &str, partitions: u16) -> Option<Self> {
        if name == Channel::Alerts.name() {
            return Some(Channel::Alerts);
        }
        let partition = name
            .strip_prefix(Channel::Metrics.name())?
            .strip_prefix(":{")?
            .strip_suffix('}')?;
        // Digits only, canonical: "{01}" or "{+1}" is another slot, not partition 1.
        let canonical = !partition.starts_with('0') || partition == "0";
        match partition.parse::<u16>() {
            Ok(n)
                if n < partitions && canonical && partition.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(Channel::Metrics)
            }
            _ => None,
        }
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

    #[test]
    fn sharded_names_round_trip_and_refuse_lookalikes() {
        assert_eq!(Channel::metrics_partition(7), "performance:metrics:{7}");
        for partition in 0..16 {
            let name = Channel::metrics_partition(partition);
            assert_eq!(
                Channel::from_sharded_name(&name, 16),
                Some(Channel::Metrics)
            );
            assert_eq!(Channel::from_sharded_name(&name, partition), None);
        }
        assert_eq!(
            Channel::from_sharded_name("performance:alerts", 16),
            Some(Channel::Alerts)
        );
        for other in [
            "performance:metrics",
            "performance:metrics:{01}",
            "performance:metrics:{+1}",
            "performance:metrics:{}",
            "performance:metrics:{1",
            "performance:metrics:1",
        ] {
            assert_eq!(Channel::from_sharded_name(other, 16), None, "{other}");
        }
    }
}
