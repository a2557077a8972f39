//! The load tool's report, as a table for people and JSON for scripts (`scripts/bench` reads the
//! JSON: its field names are the script's interface).

use std::time::Duration;

use serde::Serialize;

use crate::config::BenchConfig;
use crate::tally::Tally;

/// What a run did and saw.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub clients: usize,
    pub connected: usize,
    pub connect_seconds: f64,
    pub still_connected: usize,
    pub rate: u32,
    pub duration_seconds: f64,
    pub publish_seconds: f64,
    pub published: u64,
    pub refused: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub deliveries_per_second: f64,
    pub latency_ms: Latency,
    #[serde(skip)]
    pub first_to_last: Duration,
}

/// End-to-end latency quantiles, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Report {
    pub fn new(
        config: &BenchConfig,
        clients: usize,
        connected: usize,
        connect_time: Duration,
    ) -> Self {
        Self {
            clients,
            connected,
            connect_seconds: connect_time.as_secs_f64(),
            rate: config.rate,
            duration_seconds: config.duration.as_secs_f64(),
            ..Self::default()
        }
    }

    /// Takes in what the clients saw. Loss is counted against `expected`; deliveries per second
    /// over the longer of the publishing time and the first-to-last receipt (at least 1 ms).
    pub fn absorb(&mut self, totals: &Tally) {
        self.received = totals.received;
        self.duplicated = totals.duplicates;
        self.lost = self.expected.saturating_sub(self.received);
        let window = self
            .first_to_last
            .as_secs_f64()
            .max(self.publish_seconds)
            .max(1e-3);
        self.deliveries_per_second = if self.received > 0 {
            self.received as f64 / window
        } else {
            0.0
        };
        let h = &totals.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        if !h.is_empty() {
            self.latency_ms = Latency {
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                p999: ms(h.value_at_quantile(0.999)),
                max: ms(h.max()),
            };
        }
    }

    pub fn print(&self) {
        let rows = [
            (
                "clients connected",
                format!(
                    "{} / {} in {:.2} s",
                    self.connected, self.clients, self.connect_seconds
                ),
            ),
            ("still connected", self.still_connected.to_string()),
            (
                "published",
                format!(
                    "{} ({} refused) at {}/s for {:.1} s",
                    self.published, self.refused, self.rate, self.publish_seconds
                ),
            ),
            ("expected deliveries", self.expected.to_string()),
            ("received", self.received.to_string()),
            ("lost", self.lost.to_string()),
            ("duplicated", self.duplicated.to_string()),
            ("deliveries/s", format!("{:.0}", self.deliveries_per_second)),
            (
                "latency ms",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
                    self.latency_ms.p50,
                    self.latency_ms.p90,
                    self.latency_ms.p99,
                    self.latency_ms.p999,
                    self.latency_ms.max
                ),
            ),
        ];
        println!();
        for (name, value) in rows {
            println!("{name:<20} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Sighting;

    fn totals(received: u64, latency_us: u64) -> Tally {
        let mut tally = Tally::new();
        for sequence in 0..received {
            tally.record(
                Sighting {
                    sequence,
                    published_at_us: 1_000_000,
                },
                1_000_000 + latency_us,
            );
        }
        tally
    }

    #[test]
    fn loss_is_what_was_expected_and_not_received() {
        let mut report = Report {
            expected: 1_000,
            publish_seconds: 1.0,
            ..Report::default()
        };
        report.absorb(&totals(990, 500));
        assert_eq!(
            (report.received, report.lost, report.duplicated),
            (990, 10, 0)
        );
        let mut report = Report {
            expected: 10,
            ..Report::default()
        };
        report.absorb(&totals(12, 500));
        assert_eq!(report.lost, 0, "more than expected is not negative loss");
    }

    #[test]
    fn deliveries_per_second_use_the_longer_of_publishing_and_receiving() {
        let mut report = Report {
            publish_seconds: 2.0,
            first_to_last: Duration::from_secs(4),
            ..Report::default()
        };
        report.absorb(&totals(1_000, 500));
        assert_eq!(report.deliveries_per_second, 250.0);
        let mut report = Report {
            publish_seconds: 2.0,
            first_to_last: Duration::from_secs(1),
            ..Report::default()
        };
        report.absorb(&totals(1_000, 500));
        assert_eq!(report.deliveries_per_second, 500.0);
        let mut report = Report::default();
        report.absorb(&totals(0, 500));
        assert_eq!(report.deliveries_per_second, 0.0);
    }

    #[test]
    fn latency_quantiles_are_in_milliseconds() {
        let mut report = Report::default();
        report.absorb(&totals(100, 2_000));
        for quantile in [
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.max,
        ] {
            assert!((quantile - 2.0).abs() < 0.01, "{quantile} ms");
        }
    }

    #[test]
    fn no_receipts_leave_the_latency_at_zero() {
        let mut report = Report::default();
        report.absorb(&totals(0, 0));
        assert_eq!(report.latency_ms.p99, 0.0);
    }
}
