//! The envelope that travels between workers, and its JSON wire form.
//!
//! The wire form is also the frame a WebSocket client receives, so one encoding serves both:
//! `{"type":"metrics","origin":"w1","seq":7,"published_at_us":…,"data":[…]}` or
//! `{"type":"alert",…,"data":{…}}`. Outside publishers may leave out everything but `type` and
//! `data`; such messages are attributed to [`EXTERNAL_ORIGIN`].
//!
//! Decoding fills what the server owns, the same way on every worker, so that clients of
//! different workers see identical messages: each item's `source` is the envelope's `origin`; a
//! missing `timestamp` comes from `published_at_us`; an alert without its own `id` gets one derived
//! from the message bytes. An `id` or `epoch` that is not a well-formed log position is ignored
//! (only the alert log assigns them; see [`crate::AlertFeed`] for how a live id is checked).
//!
//! About half of this file is its tests (examples, and properties of the codec): the wire form
//! and its decoder are one concept, and their tests sit beside them.
//!
//! Over 400 lines on purpose: see the paragraph above.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    Alert, AlertFields, Channel, InvalidMessage, LogEpoch, LogId, Metric, MetricFields, WorkerId,
};

/// Origin given to messages that arrive on the bus without one (published by an outside system).
pub const EXTERNAL_ORIGIN: &str = "external";

/// What a message carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// A batch of metrics published together.
    Metrics(Vec<Metric>),
    /// One alert.
    Alert(Alert),
}

/// One message on the bus.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// For alerts that went through the bus's alert log: their cluster-wide position in it.
    pub id: Option<LogId>,
    /// For alerts that went through the bus's alert log: the log's identity (`id`s compare only
    /// within one epoch).
    pub epoch: Option<LogEpoch>,
    /// The worker that published it.
    pub origin: WorkerId,
    /// Per-origin sequence number, increasing in publish-call order (0 for outside publishers).
    pub seq: u64,
    /// When the origin published it, in Unix microseconds (end-to-end latency is measured from it).
    pub published_at_us: u64,
    /// What it carries; it fixes the channel (see [`Envelope::channel`]).
    pub payload: Payload,
}

/// Why bytes from the bus are not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON not of the envelope's shape (an unknown `type`, no `data`, an unknown
    /// field in `data`, a value of the wrong type).
    #[error("not a valid envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// A well-formed message on the other kind's channel, e.g. an alert on the metrics channel.
    #[error("a {kind} message cannot travel on channel {channel}")]
    WrongChannel {
        /// The message's `type`: `metrics` or `alert`.
        kind: &'static str,
        /// The name of the channel it arrived on.
        channel: &'static str,
    },
    /// Decoded, but a metric or the alert breaks a rule of the domain (e.g. a non-finite value).
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
}

#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<LogId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a LogEpoch>,
    origin: &'a WorkerId,
    seq: u64,
    published_at_us: u64,
    data: WireData<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireData<'a> {
    Metrics(&'a [Metric]),
    SomeMetrics(&'a [&'a Metric]),
    Alert(&'a Alert),
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireKind {
    Metrics,
    Alert,
}

#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(rename = "type")]
    kind: WireKind,
    /// Taken as given only when it is a well-formed position; anything else is ignored.
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(default)]
    origin: Option<WorkerId>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    published_at_us: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Envelope {
    /// The channel this envelope travels on, fixed by its payload.
    pub fn channel(&self) -> Channel {
        match self.payload {
            Payload::Metrics(_) => Channel::Metrics,
            Payload::Alert(_) => Channel::Alerts,
        }
    }

    /// The `type` of the wire form: `metrics` or `alert`.
    pub fn kind(&self) -> &'static str {
        match self.payload {
            Payload::Metrics(_) => "metrics",
            Payload::Alert(_) => "alert",
        }
    }

    /// The wire form, shared by the bus and the WebSocket frame.
    pub fn to_json(&self) -> String {
        let wire = WireOut {
            kind: self.kind(),
            id: self.id,
            epoch: self.epoch.as_ref(),
            origin: &self.origin,
            seq: self.seq,
            published_at_us: self.published_at_us,
            data: match &self.payload {
                Payload::Metrics(metrics) => WireData::Metrics(metrics),
                Payload::Alert(alert) => WireData::Alert(alert),
            },
        };
        // Serializing these plain structs into a String cannot fail: every map key is a string and
        // every float was validated finite before it entered an envelope.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The wire form of this envelope's header with `metrics` as its data: a subscriber's share
    /// of a metrics batch (the same `origin`, `seq` and `published_at_us`), or conflated values.
    pub fn to_json_with_metrics(&self, metrics: &[&Metric]) -> String {
        let wire = WireOut {
            kind: "metrics",
            id: None,
            epoch: None,
            origin: &self.origin,
            seq: self.seq,
            published_at_us: self.published_at_us,
            data: WireData::SomeMetrics(metrics),
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Decodes and validates bytes received on `channel`, filling the server-owned fields (see
    /// the module doc).
    pub fn from_json(channel: Channel, bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireIn<'_> = serde_json::from_slice(bytes)?;
        let origin = wire
            .origin
            .unwrap_or_else(|| WorkerId(EXTERNAL_ORIGIN.to_owned()));
        let timestamp_ms = (wire.published_at_us > 0).then_some(wire.published_at_us / 1000);
        let payload = match (wire.kind, channel) {
            (WireKind::Metrics, Channel::Metrics) => {
                let fields: Vec<MetricFields> = serde_json::from_str(wire.data.get())?;
                if fields.is_empty() {
                    return Err(
                        InvalidMessage::new("", "data", "must hold at least one metric").into(),
                    );
                }
                let mut metrics = Vec::with_capacity(fields.len());
                for (index, fields) in fields.into_iter().enumerate() {
                    let mut metric = fields.validate(&format!("data[{index}]"))?;
                    metric.set_source(origin.clone());
                    metric.fill_timestamp(timestamp_ms);
                    metrics.push(metric);
                }
                Payload::Metrics(metrics)
            }
            (WireKind::Alert, Channel::Alerts) => {
                let fields: AlertFields = serde_json::from_str(wire.data.get())?;
                let mut alert = fields.validate("data")?;
                alert.set_source(origin.clone());
                alert.fill_timestamp(timestamp_ms);
                alert.fill_id(|| format!("{origin}-{:016x}", fnv1a(bytes)));
                Payload::Alert(alert)
            }
            (WireKind::Metrics, other) | (WireKind::Alert, other) => {
                let kind = match wire.kind {
                    WireKind::Metrics => "metrics",
                    WireKind::Alert => "alert",
                };
                return Err(DecodeError::WrongChannel {
                    kind,
                    channel: other.name(),
                });
            }
        };
        Ok(Self {
            id: wire.id.and_then(|raw| serde_json::from_str(raw.get()).ok()),
            epoch: wire
                .epoch
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
            origin,
            seq: wire.seq,
            published_at_us: wire.published_at_us,
            payload,
        })
    }

    /// This envelope without its log position: for an alert whose `id` the log did not assign.
    pub fn without_log_position(mut self) -> Self {
        self.id = None;
        self.epoch = None;
        self
    }
}

/// FNV-1a, 64 bits: a fixed, dependency-free hash, so that every worker (and every version)
/// derives the same id from the same bytes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;
    use crate::Valid;

    fn worker() -> WorkerId {
        WorkerId::new("w1").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn round_trips_through_the_wire_form() {
        let envelope = Envelope {
            id: None,
            epoch: None,
            origin: worker(),
            seq: 9,
            published_at_us: 1_700_000_000_000_000,
            payload: Payload::Metrics(vec![{
                let mut metric = Metric::new("cpu", 12.5)
                    .valid()
                    .with_label("host", "a")
                    .valid()
                    .with_timestamp(1_700_000_000_000);
                metric.set_source(worker());
                metric
            }]),
        };
        let json = envelope.to_json();
        assert!(
            json.starts_with(r#"{"type":"metrics","origin":"w1","seq":9,"#),
            "{json}"
        );
        let decoded = Envelope::from_json(Channel::Metrics, json.as_bytes()).ok();
        assert_eq!(decoded, Some(envelope));
    }

    #[test]
    fn a_share_of_a_batch_is_the_same_message_with_fewer_items() {
        let metric = |name: &str| {
            let mut metric = Metric::new(name, 1.0).valid();
            metric.set_source(worker());
            metric
        };
        let envelope = Envelope {
            id: None,
            epoch: None,
            origin: worker(),
            seq: 3,
            published_at_us: 0,
            payload: Payload::Metrics(vec![metric("a"), metric("b"), metric("c")]),
        };
        let (a, c) = (metric("a"), metric("c"));
        let share = envelope.to_json_with_metrics(&[&a, &c]);
        let decoded = Envelope::from_json(Channel::Metrics, share.as_bytes()).ok();
        assert_eq!(
            decoded,
            Some(Envelope {
                payload: Payload::Metrics(vec![a.clone(), c.clone()]),
                ..envelope.clone()
            })
        );
        let all = envelope.to_json_with_metrics(&[&a, &metric("b"), &c]);
        assert_eq!(all, envelope.to_json(), "all items: the same bytes");
    }

    #[test]
    fn an_alert_log_id_travels_first_and_round_trips() {
        let envelope = Envelope {
            id: Some(LogId::new(17, 2)),
            epoch: Some(LogEpoch::from_random(10)),
            origin: worker(),
            seq: 1,
            published_at_us: 5,
            payload: Payload::Alert({
                let mut alert = Alert::new(Severity::Info, "x").valid();
                alert.fill_id(|| "w1-1".into());
                alert.fill_timestamp(Some(0));
                alert.set_source(worker());
                alert
            }),
        };
        let json = envelope.to_json();
        assert!(
            json.starts_with(r#"{"type":"alert","id":"17-2","epoch":"000000000000000a","#),
            "{json}"
        );
        assert_eq!(
            Envelope::from_json(Channel::Alerts, json.as_bytes()).ok(),
            Some(envelope)
        );
    }

    #[test]
    fn outside_publishers_need_only_type_and_data() {
        let json = br#"{"type":"alert","data":{"severity":"warning","message":"slow"}}"#;
        let decoded = Envelope::from_json(Channel::Alerts, json).ok();
        let decoded = decoded.map(|e| (e.origin.to_string(), e.payload));
        let Some((origin, Payload::Alert(alert))) = decoded else {
            panic!("not decoded as an alert: {decoded:?}");
        };
        assert_eq!(origin, EXTERNAL_ORIGIN);
        assert_eq!(alert.severity(), Severity::Warning);
        assert_eq!(alert.message(), "slow");
    }

    #[test]
    fn what_the_server_fills_in_outside_messages_is_the_same_on_every_decode() {
        let alert = br#"{"type":"alert","published_at_us":1700000000123456,"data":{"severity":"info","message":"m","source":"w9"}}"#;
        let first = Envelope::from_json(Channel::Alerts, alert).ok();
        let again = Envelope::from_json(Channel::Alerts, alert).ok();
        assert_eq!(first, again, "every worker must fill the same values");
        let Some(Payload::Alert(filled)) = first.map(|e| e.payload) else {
            panic!("not an alert");
        };
        assert_eq!(filled.source().map(WorkerId::as_str), Some("external"));
        assert_eq!(filled.timestamp(), Some(1_700_000_000_123));
        let id = filled.id().unwrap_or_default().to_owned();
        assert!(id.starts_with("external-") && id.len() == 25, "{id}");
        let other = br#"{"type":"alert","data":{"severity":"info","message":"other"}}"#;
        let other_id = Envelope::from_json(Channel::Alerts, other)
            .ok()
            .and_then(|e| match e.payload {
                Payload::Alert(a) => a.id().map(str::to_owned),
                Payload::Metrics(_) => None,
            });
        assert_ne!(other_id, Some(id), "different messages get different ids");

        let metrics = br#"{"type":"metrics","origin":"batch-job","data":[{"name":"m","value":1,"source":"w1"},{"name":"n","value":2,"timestamp":5}]}"#;
        let Some(Payload::Metrics(metrics)) = Envelope::from_json(Channel::Metrics, metrics)
            .ok()
            .map(|e| e.payload)
        else {
            panic!("not metrics");
        };
        let filled: Vec<_> = metrics
            .iter()
            .map(|m| (m.source().map(|s| s.as_str().to_owned()), m.timestamp()))
            .collect();
        assert_eq!(
            filled,
            [
                (Some("batch-job".to_owned()), None),
                (Some("batch-job".to_owned()), Some(5))
            ]
        );
    }

    #[test]
    fn the_bus_refuses_what_the_api_refuses() {
        for refused in [
            &br#"{"type":"metrics","data":[]}"#[..],
            br#"{"type":"metrics","origin":"a\u0000b","data":[{"name":"m","value":1}]}"#,
            br#"{"type":"metrics","origin":"","data":[{"name":"m","value":1}]}"#,
        ] {
            assert!(
                Envelope::from_json(Channel::Metrics, refused).is_err(),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn an_id_or_epoch_that_is_not_a_log_position_is_ignored_not_fatal() {
        for odd in [
            r#""id":12"#,
            r#""id":"x""#,
            r#""epoch":{"a":1}"#,
            r#""id":null"#,
        ] {
            let json =
                format!(r#"{{"type":"alert",{odd},"data":{{"severity":"info","message":"m"}}}}"#);
            let decoded = Envelope::from_json(Channel::Alerts, json.as_bytes());
            assert!(
                decoded
                    .as_ref()
                    .is_ok_and(|e| e.id.is_none() && e.epoch.is_none()),
                "{odd}: {decoded:?}"
            );
        }
    }

    #[test]
    fn refuses_garbage_wrong_channel_and_invalid_content() {
        assert!(matches!(
            Envelope::from_json(Channel::Metrics, b"\xff not json"),
            Err(DecodeError::Json(_))
        ));
        let alert = br#"{"type":"alert","data":{"severity":"info","message":"m"}}"#;
        assert!(matches!(
            Envelope::from_json(Channel::Metrics, alert),
            Err(DecodeError::WrongChannel { .. })
        ));
        let empty_name = br#"{"type":"metrics","data":[{"name":"","value":1}]}"#;
        let error = Envelope::from_json(Channel::Metrics, empty_name).err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some("data[0].name: must not be empty")
        );
    }

    #[test]
    fn a_data_item_that_is_not_an_object_is_refused() {
        let metrics = br#"{"type":"metrics","data":[["cpu",5]]}"#;
        assert!(matches!(
            Envelope::from_json(Channel::Metrics, metrics),
            Err(DecodeError::Json(_))
        ));
        let alert = br#"{"type":"alert","data":["id","info","msg"]}"#;
        assert!(matches!(
            Envelope::from_json(Channel::Alerts, alert),
            Err(DecodeError::Json(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    use crate::Valid;

    use proptest::prelude::*;

    use super::*;
    use crate::Severity;

    fn metric() -> impl Strategy<Value = Metric> {
        (
            "[a-z][a-z._]{0,20}",
            -1e12f64..1e12,
            proptest::option::of("[%a-zA-Z/]{1,4}"),
            proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,12}", 0..4),
        )
            .prop_map(|(name, value, unit, labels)| {
                MetricFields {
                    name,
                    value,
                    unit,
                    labels,
                    timestamp: Some(1),
                    source: Some(WorkerId("w-1".to_owned())),
                }
                .validate("")
                .valid()
            })
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        let metrics = proptest::collection::vec(metric(), 1..4).prop_map(Payload::Metrics);
        let alert = ("[a-zA-Z][ -~]{0,39}", proptest::option::of(-1e6f64..1e6)).prop_map(
            |(message, value)| {
                let alert = AlertFields {
                    value,
                    id: Some("w-1-3".to_owned()),
                    timestamp: Some(0),
                    source: Some(WorkerId("w-1".to_owned())),
                    ..AlertFields::new(Severity::Warning, message)
                };
                Payload::Alert(alert.validate("").valid())
            },
        );
        (
            prop_oneof![metrics, alert],
            any::<u64>(),
            proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())),
        )
            .prop_map(|(payload, seq, id)| Envelope {
                id: id.map(|(ms, seq, _)| LogId::new(ms, seq)),
                epoch: id.map(|(_, _, bits)| LogEpoch::from_random(bits)),
                origin: WorkerId("w-1".to_owned()),
                seq,
                published_at_us: 7,
                payload,
            })
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for channel in Channel::ALL {
                let _ = Envelope::from_json(channel, &bytes);
            }
        }

        #[test]
        fn decoding_json_like_text_never_panics(text in r#"\{("(type|data|id|seq|origin|name|value)":(\[|\{|"[a-z]*"|-?[0-9e.]{1,6}|null|true),?){0,6}\}?\]?"#) {
            for channel in Channel::ALL {
                let _ = Envelope::from_json(channel, text.as_bytes());
            }
        }

        #[test]
        fn every_valid_envelope_round_trips(envelope in envelope()) {
            let decoded = Envelope::from_json(envelope.channel(), envelope.to_json().as_bytes());
            prop_assert_eq!(decoded.ok(), Some(envelope));
        }
    }
}
