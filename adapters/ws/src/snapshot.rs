//! The last-value snapshot: the latest metric of each series this worker has seen, so a new
//! client's dashboard is filled at once (the `snapshot` frame).
//!
//! It is bounded by [`MAX_SNAPSHOT_SERIES`]: a publisher with unbounded label values cannot grow
//! the worker's memory. It must never hold alerts (they are replayed from the alert log, not
//! snapshotted), never encode frames (that is `protocol`'s), and never wait: the bus listener
//! records every metrics message into it under a short std mutex.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use fanout_domain::Metric;

/// Most metric series kept for the snapshot; new series beyond it are not kept (the bound keeps
/// a publisher with unbounded label values from growing the worker's memory).
pub(crate) const MAX_SNAPSHOT_SERIES: usize = 10_000;

/// A metric as its series' latest value: equal to and hashed like any metric of the same series
/// (name, labels and the worker that published it), whatever its value, so that recording one
/// replaces the kept one without building a separate key.
struct Series(Metric);

impl PartialEq for Series {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
            && self.0.labels() == other.0.labels()
            && self.0.source() == other.0.source()
    }
}

impl Eq for Series {}

impl Hash for Series {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.name().hash(state);
        self.0.labels().hash(state);
        self.0.source().hash(state);
    }
}

/// Latest value per series.
#[derive(Default)]
pub(crate) struct LatestMetrics {
    series: HashSet<Series>,
}

impl LatestMetrics {
    /// Keeps `metric` as its series' latest value; a new series only while below the bound.
    pub(crate) fn record(&mut self, metric: &Metric) {
        let series = Series(metric.clone());
        if self.series.len() < MAX_SNAPSHOT_SERIES || self.series.contains(&series) {
            self.series.replace(series);
        }
    }

    /// Every kept series' latest value, ordered by name.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<Metric> {
        self.snapshot_of(|_| true)
    }

    /// The latest value of every kept series that `takes`, ordered by name.
    pub(crate) fn snapshot_of(&self, takes: impl Fn(&Metric) -> bool) -> Vec<Metric> {
        let mut metrics: Vec<Metric> = self
            .series
            .iter()
            .map(|series| &series.0)
            .filter(|m| takes(m))
            .cloned()
            .collect();
        metrics.sort_by(|a, b| a.name().cmp(b.name()));
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_keeps_only_its_latest_value() {
        let mut latest = LatestMetrics::default();
        latest.record(&Metric::new("cpu", 1.0).unwrap_or_else(|e| panic!("{e}")));
        latest.record(&Metric::new("cpu", 2.0).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            latest.snapshot(),
            [Metric::new("cpu", 2.0).unwrap_or_else(|e| panic!("{e}"))]
        );
    }

    #[test]
    fn labels_make_distinct_series() {
        let mut latest = LatestMetrics::default();
        let eu = Metric::new("cpu", 1.0)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_label("region", "eu")
            .unwrap_or_else(|e| panic!("{e}"));
        let us = Metric::new("cpu", 2.0)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_label("region", "us")
            .unwrap_or_else(|e| panic!("{e}"));
        latest.record(&eu);
        latest.record(&us);
        let snapshot = latest.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert!(snapshot.contains(&eu) && snapshot.contains(&us));
    }

    #[test]
    fn the_snapshot_is_ordered_by_name() {
        let mut latest = LatestMetrics::default();
        for name in ["mem", "cpu", "disk"] {
            latest.record(&Metric::new(name, 0.0).unwrap_or_else(|e| panic!("{e}")));
        }
        let expected = ["cpu", "disk", "mem"]
            .map(|name| Metric::new(name, 0.0).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(latest.snapshot(), expected);
    }

    #[test]
    fn beyond_the_bound_new_series_are_not_kept_but_kept_ones_still_update() {
        let mut latest = LatestMetrics::default();
        for index in 0..MAX_SNAPSHOT_SERIES {
            latest.record(
                &Metric::new("cpu", 0.0)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .with_label("host", index.to_string())
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        latest.record(&Metric::new("one.too.many", 0.0).unwrap_or_else(|e| panic!("{e}")));
        latest.record(
            &Metric::new("cpu", 7.0)
                .unwrap_or_else(|e| panic!("{e}"))
                .with_label("host", "0")
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let snapshot = latest.snapshot();
        assert_eq!(snapshot.len(), MAX_SNAPSHOT_SERIES);
        assert!(
            !snapshot.contains(&Metric::new("one.too.many", 0.0).unwrap_or_else(|e| panic!("{e}")))
        );
        assert!(snapshot.contains(
            &Metric::new("cpu", 7.0)
                .unwrap_or_else(|e| panic!("{e}"))
                .with_label("host", "0")
                .unwrap_or_else(|e| panic!("{e}"))
        ));
    }
}
