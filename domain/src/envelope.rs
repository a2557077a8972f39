//! The envelope that travels between workers, and its JSON wire form.
//!
//! The wire form is also the frame a WebSocket client receives, so one encoding serves both:
//! `{"type":"metrics","origin":"w1","seq":7,"published_at_us":…,"data":[…]}` or
//! `{"type":"alert",…,"data":{…}}`. Outside publishers may leave out everything but `type` and
//! `data`; such messages are attributed to [`EXTERNAL_ORIGIN`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Alert, AlertId, Channel, InvalidMessage, Metric, WorkerId};

/// Origin given to messages that arrive on the bus without one (published by an outside system).
pub const EXTERNAL_ORIGIN: &str = "external";

/// What a message carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// A batch of metrics published together.
    Metrics(Vec<Metric>),
    Alert(Alert),
}

/// One message on the bus.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// For alerts that went through the bus's alert log: their cluster-wide position in it.
    pub id: Option<AlertId>,
    /// The worker that published it.
    pub origin: WorkerId,
    /// Per-origin sequence number, increasing in publish-call order (0 for outside publishers).
    pub seq: u64,
    /// When the origin published it, in Unix microseconds (end-to-end latency is measured from it).
    pub published_at_us: u64,
    pub payload: Payload,
}

/// Why bytes from the bus are not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a {kind} message cannot travel on channel {channel}")]
    WrongChannel {
        kind: &'static str,
        channel: &'static str,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
}

#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<AlertId>,
    origin: &'a WorkerId,
    seq: u64,
    published_at_us: u64,
    data: WireData<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireData<'a> {
    Metrics(&'a [Metric]),
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
    #[serde(default)]
    id: Option<AlertId>,
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

    /// Decodes and validates bytes received on `channel`.
    pub fn from_json(channel: Channel, bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireIn<'_> = serde_json::from_slice(bytes)?;
        let origin = wire
            .origin
            .unwrap_or_else(|| WorkerId(EXTERNAL_ORIGIN.to_owned()));
        let payload = match (wire.kind, channel) {
            (WireKind::Metrics, Channel::Metrics) => {
                let metrics: Vec<Metric> = serde_json::from_str(wire.data.get())?;
                for (index, metric) in metrics.iter().enumerate() {
                    metric.validate(&format!("data[{index}]"))?;
                }
                Payload::Metrics(metrics)
            }
            (WireKind::Alert, Channel::Alerts) => {
                let alert: Alert = serde_json::from_str(wire.data.get())?;
                alert.validate("data")?;
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
            id: wire.id,
            origin,
            seq: wire.seq,
            published_at_us: wire.published_at_us,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    fn worker() -> WorkerId {
        WorkerId::new("w1").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn round_trips_through_the_wire_form() {
        let envelope = Envelope {
            id: None,
            origin: worker(),
            seq: 9,
            published_at_us: 1_700_000_000_000_000,
            payload: Payload::Metrics(vec![Metric::new("cpu", 12.5).with_label("host", "a")]),
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
    fn an_alert_log_id_travels_first_and_round_trips() {
        let envelope = Envelope {
            id: Some(AlertId::new(17, 2)),
            origin: worker(),
            seq: 1,
            published_at_us: 5,
            payload: Payload::Alert(Alert::new(Severity::Info, "x")),
        };
        let json = envelope.to_json();
        assert!(
            json.starts_with(r#"{"type":"alert","id":"17-2","#),
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
        assert_eq!(
            decoded,
            Some((
                EXTERNAL_ORIGIN.to_owned(),
                Payload::Alert(Alert::new(Severity::Warning, "slow"))
            ))
        );
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
    use std::collections::BTreeMap;

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
            .prop_map(|(name, value, unit, labels)| Metric {
                name,
                value,
                unit,
                labels,
                timestamp: Some(1),
                source: None,
            })
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        let metrics = proptest::collection::vec(metric(), 1..4).prop_map(Payload::Metrics);
        let alert = ("[a-zA-Z][ -~]{0,39}", proptest::option::of(-1e6f64..1e6)).prop_map(
            |(message, value)| {
                let mut alert = Alert::new(Severity::Warning, message);
                alert.value = value;
                alert.labels = BTreeMap::new();
                Payload::Alert(alert)
            },
        );
        (
            prop_oneof![metrics, alert],
            any::<u64>(),
            proptest::option::of((any::<u64>(), any::<u64>())),
        )
            .prop_map(|(payload, seq, id)| Envelope {
                id: id.map(|(ms, seq)| AlertId::new(ms, seq)),
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
