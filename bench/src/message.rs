//! The bench message: what the tool publishes and what its clients look for in the frames they
//! get. Both sides of the tool use it (the publisher builds it, the clients recognize it), so it
//! lives here and neither imports the other.
//!
//! A bench message is one realistic metric of about 200 bytes named [`METRIC_NAME`], numbered by
//! its value, built with the domain's types so that what the tool sends is valid by construction.
//! Recognizing it must stay cheap (tens of thousands of clients read every frame): it finds two
//! numbers in the text without parsing the frame, and must never allocate per frame.

use std::time::{SystemTime, UNIX_EPOCH};

use fanout_domain::{Envelope, InvalidMessage, Metric, Payload, WorkerId};

/// The name of every metric the tool publishes; clients ignore every other frame.
pub const METRIC_NAME: &str = "bench.load";

/// How a `metrics` frame starts: the domain's wire form (`Envelope::to_json`).
const METRICS_FRAME_START: &str = r#"{"type":"metrics","#;

/// Now, in Unix microseconds: the clock of `published_at_us`.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_micros() as u64)
        .unwrap_or_default()
}

/// The bench metric numbered `sequence`.
pub fn metric(sequence: u64) -> Result<Metric, InvalidMessage> {
    Metric::new(METRIC_NAME, sequence as f64)?
        .with_unit("ms")?
        .with_label("host", "bench-host-01")?
        .with_label("region", "eu-west-1")?
        .with_label("service", "checkout")?
        .with_label("endpoint", "/api/v1/orders")
}

/// The bench metric numbered `sequence` as a whole bus message from `origin`, stamped now: what
/// `--publish redis` puts on the bus in place of a worker.
pub fn envelope(origin: &WorkerId, sequence: u64) -> Result<Envelope, InvalidMessage> {
    Ok(Envelope {
        id: None,
        epoch: None,
        origin: origin.clone(),
        seq: sequence,
        published_at_us: now_us(),
        payload: Payload::Metrics(vec![metric(sequence)?]),
    })
}

/// A bench message as a client read it from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub sequence: u64,
    pub published_at_us: u64,
}

impl Sighting {
    /// The bench message in a frame's text, if the frame is one.
    pub fn in_frame(text: &str) -> Option<Self> {
        if !text.starts_with(METRICS_FRAME_START) || !text.contains(METRIC_NAME) {
            return None;
        }
        Some(Self {
            sequence: number_after(text, "\"value\":")?,
            published_at_us: number_after(text, "\"published_at_us\":")?,
        })
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
    use fanout_domain::Channel;

    fn origin() -> WorkerId {
        WorkerId::new("bench").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn finds_numbers_without_parsing_the_frame() {
        let frame = r#"{"type":"metrics","origin":"w","seq":3,"published_at_us":1764380000123456,"data":[{"name":"bench.load","value":42.0}]}"#;
        assert_eq!(
            Sighting::in_frame(frame),
            Some(Sighting {
                sequence: 42,
                published_at_us: 1_764_380_000_123_456
            })
        );
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
        let sent = envelope(&origin(), 123_456).unwrap_or_else(|e| panic!("{e}"));
        let json = sent.to_json();
        // A worker decodes the bus message (filling source and timestamp) and re-encodes it.
        let frame = Envelope::from_json(Channel::Metrics, json.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
            .to_json();
        assert_eq!(
            Sighting::in_frame(&frame),
            Some(Sighting {
                sequence: 123_456,
                published_at_us: sent.published_at_us
            }),
            "{frame}"
        );
    }

    #[test]
    fn the_metric_is_about_200_bytes_as_clients_receive_it() {
        let sent = envelope(&origin(), 1_000_000).unwrap_or_else(|e| panic!("{e}"));
        // As a worker delivers it: with the server-filled timestamp and source.
        let delivered = Envelope::from_json(Channel::Metrics, sent.to_json().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let Payload::Metrics(metrics) = &delivered.payload else {
            panic!("not metrics: {delivered:?}");
        };
        let body = serde_json::to_string(&metrics[0]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            (180..=220).contains(&body.len()),
            "{} bytes: {body}",
            body.len()
        );
        assert!(body.contains(r#""name":"bench.load""#), "{body}");
    }
}
