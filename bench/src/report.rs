//! The load tool's report, as a table for people and JSON for scripts (`scripts/bench` reads the
//! JSON: its field names are the script's interface). A loader of a run split over several
//! processes (`--loader`) adds to its JSON what `--merge` needs to make the run's report of them
//! ([`ForMerge`]); the merged report is again a [`Report`].

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::BenchConfig;
use crate::tally::Tally;
use crate::workload::{Owed, Workload};

/// What a run did and saw.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub clients: usize,
    /// Distinct selectors the clients were spread over (0: none, broadcast).
    pub selectors: u64,
    /// Series published (1: the single `bench.load`).
    pub series: u64,
    /// Metrics per message.
    pub batch: u64,
    /// The clients' conflation interval, when they conflate.
    pub interval_ms: Option<u64>,
    /// What clients were owed: `every item` their selector takes, or with conflation the
    /// `latest value per series`; `expected` and `lost` count those.
    pub owed: String,
    pub connected: usize,
    /// From the first connect to the last client's connect or failure (of every loader, merged).
    pub connect_seconds: f64,
    /// Each client's TCP connect and WebSocket handshake, from when it was let start (the ramp's
    /// concurrency and rate aside) to the open session.
    pub connect_latency_ms: Latency,
    pub still_connected: usize,
    pub rate: u32,
    pub duration_seconds: f64,
    pub publish_seconds: f64,
    pub published: u64,
    pub refused: u64,
    pub expected: u64,
    /// Items received that the client's selector takes, each counted once per client.
    pub received: u64,
    /// Frames holding bench items (one per item unless batches or conflation group them).
    pub frames: u64,
    /// Items a client received that its selector does not take.
    pub unexpected: u64,
    /// Owed items (`expected`) that never arrived, summed per client.
    pub lost: u64,
    pub duplicated: u64,
    /// Items received per second.
    pub deliveries_per_second: f64,
    pub frames_per_second: f64,
    pub latency_ms: Latency,
    /// From the stamp to the kernel's arrival time at the client's socket (`SO_TIMESTAMPNS`):
    /// `latency_ms` less the tool's own wait to read, which on a shared machine is the tool's
    /// queueing, not the server's.
    pub arrival_latency_ms: Latency,
    /// Items `arrival_latency_ms` counts: those read with the kernel's stamp (all but the few
    /// read before the kernel turned stamping on).
    pub arrival_stamped: u64,
    /// `I/N` for loader I of N (`--loader`); `N merged` for their merged report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader: Option<String>,
    /// What `--merge` needs of a loader's report (only with `--loader`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_merge: Option<ForMerge>,
    #[serde(skip)]
    pub first_to_last: Duration,
}

/// Latency quantiles, in milliseconds.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The quantiles of a histogram of microseconds; zeros when it is empty.
    pub fn of(histogram: &Histogram<u32>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Self {
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
        }
    }
}

/// What a loader's report carries for `--merge`, beside its counts: its histograms whole, and
/// its times on the wall clock (Unix microseconds), which the loaders share.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ForMerge {
    pub connect_started_unix_us: u64,
    pub connect_ended_unix_us: u64,
    /// The first and the last bench item any of its clients received (none: none received).
    pub receipts_unix_us: Option<(u64, u64)>,
    /// End-to-end latency, µs: `[value, count]` per bucket (`tally::histogram_pairs`).
    pub latency_us: Vec<[u64; 2]>,
    /// Latency to the arrival, µs, the same way (absent from older reports).
    #[serde(default)]
    pub arrival_latency_us: Vec<[u64; 2]>,
    /// Connect latency, µs, the same way.
    pub connect_latency_us: Vec<[u64; 2]>,
}

impl Report {
    pub fn new(
        config: &BenchConfig,
        workload: &Workload,
        clients: usize,
        connected: usize,
        connect_time: Duration,
    ) -> Self {
        Self {
            clients,
            selectors: workload.selectors(),
            series: workload.series(),
            batch: workload.batch(),
            interval_ms: workload.interval().map(|i| i.as_millis() as u64),
            owed: match workload.owed() {
                Owed::EveryItem => "every item",
                Owed::LatestValues => "latest value per series",
            }
            .to_owned(),
            connected,
            connect_seconds: connect_time.as_secs_f64(),
            rate: config.rate,
            duration_seconds: config.duration.as_secs_f64(),
            ..Self::default()
        }
    }

    /// Takes in what the clients saw, each settled against what it was owed; deliveries per
    /// second over the longer of the publishing time and the first-to-last receipt (at least
    /// 1 ms).
    pub fn absorb(&mut self, totals: &Tally) {
        self.expected = totals.expected;
        self.received = totals.received;
        self.frames = totals.frames;
        self.unexpected = totals.unexpected;
        self.lost = totals.lost;
        self.duplicated = totals.duplicates;
        let window = self
            .first_to_last
            .as_secs_f64()
            .max(self.publish_seconds)
            .max(1e-3);
        self.deliveries_per_second = self.received as f64 / window;
        self.frames_per_second = self.frames as f64 / window;
        self.latency_ms = Latency::of(&totals.latency_us);
        self.arrival_latency_ms = Latency::of(&totals.arrival_latency_us);
        self.arrival_stamped = totals.arrival_latency_us.len();
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
            ("connect latency ms", self.connect_latency_ms.to_string()),
            ("still connected", self.still_connected.to_string()),
            (
                "published",
                format!(
                    "{} ({} refused) at {}/s for {:.1} s",
                    self.published, self.refused, self.rate, self.publish_seconds
                ),
            ),
            (
                "workload",
                format!(
                    "{} selectors, {} series, {} per message, interval {}",
                    self.selectors,
                    self.series,
                    self.batch,
                    self.interval_ms
                        .map_or("off".to_owned(), |ms| format!("{ms} ms"))
                ),
            ),
            ("expected", format!("{} ({})", self.expected, self.owed)),
            (
                "received",
                format!(
                    "{} items in {} frames ({} unexpected)",
                    self.received, self.frames, self.unexpected
                ),
            ),
            ("lost", self.lost.to_string()),
            ("duplicated", self.duplicated.to_string()),
            (
                "deliveries/s",
                format!(
                    "{:.0} items, {:.0} frames",
                    self.deliveries_per_second, self.frames_per_second
                ),
            ),
            ("latency ms", self.latency_ms.to_string()),
            (
                "to arrival ms",
                format!(
                    "{}  ({} items stamped)",
                    self.arrival_latency_ms, self.arrival_stamped
                ),
            ),
        ];
        println!();
        if let Some(loader) = &self.loader {
            println!("{:<20} {loader}", "loader");
        }
        for (name, value) in rows {
            println!("{name:<20} {value}");
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::Taken;

    /// `received` items owed to one client, each in its own frame.
    fn totals(received: u64, latency_us: u64) -> Tally {
        let mut tally = Tally::new();
        for item in 0..received {
            tally.frame();
            tally.record(item, Taken::Yes, 1_000_000, 1_000_000 + latency_us);
        }
        tally
    }

    #[test]
    fn loss_and_expectations_are_the_settled_tallies() {
        let mut tally = totals(990, 500);
        tally.record(5_000, Taken::No, 0, 1);
        tally.settle(&(0..1_000).collect::<Vec<_>>(), 1_000);
        let mut report = Report {
            publish_seconds: 1.0,
            ..Report::default()
        };
        report.absorb(&tally);
        assert_eq!(
            (
                report.expected,
                report.received,
                report.lost,
                report.unexpected
            ),
            (1_000, 990, 10, 1)
        );
        assert_eq!(report.frames, 990);
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
        assert_eq!(report.frames_per_second, 250.0);
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
