//! Conflation: the latest value of each series for one group of clients and one interval, sent
//! at most once per interval (a subscription's `interval`).
//!
//! The bus listener records into it without waiting (a short std mutex); a timer task per
//! conflator (spawned by the registry) takes what is pending every interval and encodes it once
//! for the whole group, one `metrics` frame per origin. Every recorded value is either sent or
//! replaced by a newer value of its series, so a client always ends up with the latest one. It
//! must never hold alerts (they are never conflated) or per-client state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fanout_domain::{Envelope, Metric, Payload, WorkerId};

use crate::protocol::Frame;
use crate::snapshot::MAX_SNAPSHOT_SERIES;

/// A series, per origin: the origin, the name and the labels.
type SeriesKey = (WorkerId, String, BTreeMap<String, String>);

#[derive(Clone)]
struct Latest {
    metric: Metric,
    seq: u64,
    published_at_us: u64,
}

/// The pending latest values of one group at one interval.
pub(crate) struct Conflator {
    interval: Duration,
    pending: Mutex<HashMap<SeriesKey, Latest>>,
}

impl Conflator {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SeriesKey, Latest>> {
        // An insert or a take leaves the map consistent, so a poisoned lock is usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `metric`, from `envelope`, as its series' pending value. A new series beyond
    /// [`MAX_SNAPSHOT_SERIES`] pending at once is not kept; returns whether it was.
    pub(crate) fn record(&self, envelope: &Envelope, metric: &Metric) -> bool {
        let key = (
            envelope.origin.clone(),
            metric.name().to_owned(),
            metric.labels().clone(),
        );
        let latest = Latest {
            metric: metric.clone(),
            seq: envelope.seq,
            published_at_us: envelope.published_at_us,
        };
        let mut pending = self.lock();
        if pending.len() >= MAX_SNAPSHOT_SERIES && !pending.contains_key(&key) {
            return false;
        }
        pending.insert(key, latest);
        true
    }

    /// Copies into this conflator the values `from` holds for series that `keep` takes and this
    /// one has none pending for (a pending value here is as new: both record the same stream).
    /// A client moving to another group keeps the latest values still owed to it.
    pub(crate) fn adopt(&self, from: &Conflator, keep: impl Fn(&Metric) -> bool) {
        let owed: Vec<(SeriesKey, Latest)> = from
            .lock()
            .iter()
            .filter(|(_, latest)| keep(&latest.metric))
            .map(|(key, latest)| (key.clone(), latest.clone()))
            .collect();
        let mut pending = self.lock();
        for (key, latest) in owed {
            if pending.len() >= MAX_SNAPSHOT_SERIES {
                break;
            }
            pending.entry(key).or_insert(latest);
        }
    }

    /// Takes every pending value, encoded: one `metrics` frame per origin, with the newest `seq`
    /// and `published_at_us` that contributed, series ordered by name.
    pub(crate) fn take_frames(&self) -> Vec<Frame> {
        let pending = std::mem::take(&mut *self.lock());
        let mut by_origin: BTreeMap<WorkerId, Vec<Latest>> = BTreeMap::new();
        for ((origin, _, _), latest) in pending {
            by_origin.entry(origin).or_default().push(latest);
        }
        by_origin
            .into_iter()
            .map(|(origin, mut values)| {
                values.sort_by(|a, b| a.metric.name().cmp(b.metric.name()));
                let header = Envelope {
                    id: None,
                    epoch: None,
                    origin,
                    seq: values.iter().map(|v| v.seq).max().unwrap_or_default(),
                    published_at_us: values
                        .iter()
                        .map(|v| v.published_at_us)
                        .max()
                        .unwrap_or_default(),
                    payload: Payload::Metrics(Vec::new()),
                };
                let metrics: Vec<&Metric> = values.iter().map(|v| &v.metric).collect();
                Frame::metrics(header.to_json_with_metrics(&metrics))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use fanout_domain::Channel;

    use super::*;

    fn envelope(origin: &str, seq: u64, metrics: Vec<Metric>) -> Envelope {
        Envelope {
            id: None,
            epoch: None,
            origin: WorkerId::new(origin).unwrap_or_else(|e| panic!("{e}")),
            seq,
            published_at_us: seq * 10,
            payload: Payload::Metrics(metrics),
        }
    }

    fn metric(name: &str, value: f64) -> Metric {
        Metric::new(name, value).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decoded(frames: &[Frame]) -> Vec<Envelope> {
        frames
            .iter()
            .map(|f| {
                Envelope::from_json(Channel::Metrics, f.text().as_bytes())
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    }

    #[test]
    fn only_the_latest_value_of_each_series_goes_out_once() {
        let conflator = Conflator::new(Duration::from_secs(1));
        for seq in 1..=100 {
            let message = envelope("w1", seq, vec![metric("cpu", seq as f64)]);
            let Payload::Metrics(metrics) = &message.payload else {
                unreachable!()
            };
            assert!(conflator.record(&message, &metrics[0]));
        }
        let frames = decoded(&conflator.take_frames());
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].seq, frames[0].published_at_us), (100, 1000));
        let Payload::Metrics(sent) = &frames[0].payload else {
            panic!("not metrics")
        };
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].value(), 100.0);
        assert!(conflator.take_frames().is_empty(), "nothing twice");
    }

    #[test]
    fn a_moving_client_keeps_what_is_owed_without_replacing_newer_values() {
        let old = Conflator::new(Duration::from_secs(1));
        let new = Conflator::new(Duration::from_secs(1));
        let message = envelope("w1", 1, Vec::new());
        old.record(&message, &metric("cpu", 1.0));
        old.record(&message, &metric("mem", 1.0));
        old.record(&message, &metric("disk", 1.0));
        new.record(&envelope("w1", 2, Vec::new()), &metric("mem", 2.0));
        new.adopt(&old, |m| m.name() != "disk");
        let frames = decoded(&new.take_frames());
        let Payload::Metrics(sent) = &frames[0].payload else {
            panic!("not metrics")
        };
        let sent: Vec<(&str, f64)> = sent.iter().map(|m| (m.name(), m.value())).collect();
        assert_eq!(sent, [("cpu", 1.0), ("mem", 2.0)]);
        assert_eq!(
            old.take_frames().len(),
            1,
            "the old group's members still get theirs"
        );
    }

    #[test]
    fn each_origin_gets_its_own_frame() {
        let conflator = Conflator::new(Duration::from_secs(1));
        for origin in ["w1", "w2"] {
            let message = envelope(origin, 1, vec![metric("cpu", 1.0)]);
            conflator.record(&message, &metric("cpu", 1.0));
        }
        let origins: Vec<String> = decoded(&conflator.take_frames())
            .iter()
            .map(|e| e.origin.to_string())
            .collect();
        assert_eq!(origins, ["w1", "w2"]);
    }
}
