//! The bench message: what the tool publishes and what its clients look for in the frames they
//! get. Both sides of the tool use it (the publisher builds it, the clients recognize it), so it
//! lives here and neither imports the other.
//!
//! A bench message is a batch of realistic metrics of about 200 bytes each (one, named
//! [`METRIC_NAME`], unless the [`Workload`] has series), each numbered by its value (the item
//! number), built with the domain's types so that what the tool sends is valid by construction.
//! Recognizing it must stay cheap (tens of thousands of clients read every frame): it finds the
//! numbers in the text without parsing the frame, and must never allocate per frame.

use std::time::{SystemTime, UNIX_EPOCH};

use fanout_domain::{Channel, DecodeError, Envelope, InvalidMessage, Metric, Payload, WorkerId};

use crate::workload::Workload;

/// The name of the metric the tool publishes without `--series`.
pub const METRIC_NAME: &str = "bench.load";

/// How every bench metric's name starts in a frame; clients ignore frames without one.
const NAME_START: &str = r#""name":"bench."#;

/// The key of a metric's value, which is its item number.
const VALUE_KEY: &str = r#""value":"#;

/// How a `metrics` frame starts: the domain's wire form (`Envelope::to_json`).
const METRICS_FRAME_START: &str = r#"{"type":"metrics","#;

/// Now, in Unix microseconds: the clock of `published_at_us`.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_micros() as u64)
        .unwrap_or_default()
}

/// The bench metric named `name`, numbered `item`.
pub fn metric(name: &str, item: u64) -> Result<Metric, InvalidMessage> {
    Metric::new(name, item as f64)?
        .with_unit("ms")?
        .with_label("host", "bench-host-01")?
        .with_label("region", "eu-west-1")?
        .with_label("service", "checkout")?
        .with_label("endpoint", "/api/v1/orders")
}

/// The metrics of message `sequence`: its items, named as `workload` says.
pub fn batch(workload: &Workload, sequence: u64) -> Result<Vec<Metric>, InvalidMessage> {
    workload
        .items(sequence)
        .map(|item| metric(&workload.name_of(item), item))
        .collect()
}

/// `metrics`, message `sequence`, as a whole bus message from `origin`, stamped now: what
/// `--publish redis` puts on the bus in place of a worker.
pub fn envelope(origin: &WorkerId, sequence: u64, metrics: Vec<Metric>) -> Envelope {
    Envelope {
        id: None,
        epoch: None,
        origin: origin.clone(),
        seq: sequence,
        published_at_us: now_us(),
        payload: Payload::Metrics(metrics),
    }
}

/// The text of the frame a worker writes to its clients for the bus message `envelope`: decoded
/// as a worker decodes it (each metric's `source` and `timestamp` filled) and encoded again. What
/// `--publish floor` hands the floor, so that its clients read what fanout's would.
pub fn frame_text(envelope: &Envelope) -> Result<String, DecodeError> {
    Ok(Envelope::from_json(Channel::Metrics, envelope.to_json().as_bytes())?.to_json())
}

/// A frame holding bench metrics, as a client read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting<'a> {
    pub published_at_us: u64,
    /// The frame's `data`, where the items are.
    data: &'a str,
}

impl<'a> Sighting<'a> {
    /// The bench metrics in a frame's text, if the frame holds any.
    pub fn in_frame(text: &'a str) -> Option<Self> {
        if !text.starts_with(METRICS_FRAME_START) || !text.contains(NAME_START) {
            return None;
        }
        let data = &text[text.find(r#""data":"#)?..];
        Some(Self {
            published_at_us: number_after(text, "\"published_at_us\":")?,
            data,
        })
    }

    /// The item numbers in the frame, in its order (a split or conflated frame holds several).
    pub fn items(&self) -> impl Iterator<Item = u64> + 'a {
        let data = self.data;
        data.match_indices(VALUE_KEY)
            .filter_map(move |(at, _)| number_after(&data[at..], VALUE_KEY))
    }
}

/// The integer after `key` in `text` (the integral part of a decimal number).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> WorkerId {
        WorkerId::new("bench").unwrap_or_else(|e| panic!("{e}"))
    }

    fn workload(series: Option<u64>, batch: u64) -> Workload {
        Workload::new(series, batch, 0, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A bench envelope as a worker delivers it: decoded from the bus (filling source and
    /// timestamp) and re-encoded.
    fn delivered(sent: &Envelope) -> Envelope {
        Envelope::from_json(Channel::Metrics, sent.to_json().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_floor_gets_the_frame_a_worker_writes_on_one_line() {
        let w = workload(Some(1_000), 3);
        let sent = envelope(
            &origin(),
            77,
            batch(&w, 77).unwrap_or_else(|e| panic!("{e}")),
        );
        let text = frame_text(&sent).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, delivered(&sent).to_json());
        assert!(!text.contains('\n'), "{text}");
        let sighting = Sighting::in_frame(&text).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(sighting.published_at_us, sent.published_at_us);
        assert_eq!(sighting.items().collect::<Vec<_>>(), [231, 232, 233]);
    }

    #[test]
    fn finds_numbers_without_parsing_the_frame() {
        let frame = r#"{"type":"metrics","origin":"w","seq":3,"published_at_us":1764380000123456,"data":[{"name":"bench.load","value":42.0}]}"#;
        let sighting = Sighting::in_frame(frame).unwrap_or_else(|| panic!("not seen"));
        assert_eq!(sighting.published_at_us, 1_764_380_000_123_456);
        assert_eq!(sighting.items().collect::<Vec<_>>(), [42]);
        assert_eq!(number_after(frame, "\"missing\":"), None);
    }

    #[test]
    fn a_frame_that_is_not_a_bench_metric_is_ignored() {
        let other_metric = r#"{"type":"metrics","origin":"w","seq":3,"published_at_us":1,"data":[{"name":"cpu","value":4.0}]}"#;
        let snapshot = r#"{"type":"snapshot","metrics":[{"name":"bench.load","value":4.0}]}"#;
        assert_eq!(Sighting::in_frame(other_metric), None);
        assert_eq!(Sighting::in_frame(snapshot), None);
    }

    #[test]
    fn the_frame_a_worker_makes_of_a_redis_publish_is_recognized() {
        let w = workload(None, 1);
        let batch = batch(&w, 123_456).unwrap_or_else(|e| panic!("{e}"));
        let sent = envelope(&origin(), 123_456, batch);
        let frame = delivered(&sent).to_json();
        let sighting = Sighting::in_frame(&frame).unwrap_or_else(|| panic!("{frame}"));
        assert_eq!(sighting.published_at_us, sent.published_at_us);
        assert_eq!(sighting.items().collect::<Vec<_>>(), [123_456], "{frame}");
    }

    #[test]
    fn every_item_of_a_batch_is_found() {
        let w = workload(Some(1_000), 4);
        let batch = batch(&w, 10).unwrap_or_else(|e| panic!("{e}"));
        let frame = delivered(&envelope(&origin(), 10, batch)).to_json();
        let sighting = Sighting::in_frame(&frame).unwrap_or_else(|| panic!("{frame}"));
        assert_eq!(sighting.items().collect::<Vec<_>>(), [40, 41, 42, 43]);
        assert!(
            frame.contains(&format!(r#""name":"{}""#, w.name_of(41))),
            "{frame}"
        );
    }

    #[test]
    fn the_metric_is_about_200_bytes_as_clients_receive_it() {
        for (w, name) in [
            (workload(None, 1), "bench.load"),
            (workload(Some(1_000), 1), "bench.s000"),
        ] {
            let batch = batch(&w, 1_000_000).unwrap_or_else(|e| panic!("{e}"));
            let delivered = delivered(&envelope(&origin(), 1_000_000, batch));
            let Payload::Metrics(metrics) = &delivered.payload else {
                panic!("not metrics: {delivered:?}");
            };
            let body = serde_json::to_string(&metrics[0]).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                (180..=220).contains(&body.len()),
                "{} bytes: {body}",
                body.len()
            );
            assert!(body.contains(&format!(r#""name":"{name}""#)), "{body}");
        }
    }
}
