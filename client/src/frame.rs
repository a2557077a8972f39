//! Every frame a worker sends on `/ws/performance`, decoded into the domain's types: the client
//! side of docs/PROTOCOL.md ("Server → client frames").
//!
//! `metrics` and `alert` frames are the bus envelope's wire form, so they are decoded by the
//! domain's own [`Envelope::from_json`], with the same validation the server applies: a frame
//! that decodes holds valid [`Metric`]s and [`Alert`]s. The control frames (`hello`, `snapshot`,
//! `resume`) and the answers to a client's requests (`subscribed`, `unsubscribed`, `error`) are
//! plain structs here. Unknown fields are ignored, so a newer server's additions do
//! not break an older client; an unknown `type` is an error the caller sees.
//!
//! Over 400 lines on purpose: every server frame's client-side type, in one place like the server's protocol module; a third is its tests.

use fanout_domain::{
    Alert, Channel, DecodeError, Envelope, LogEpoch, LogId, Metric, Payload, SubscriberState,
    WorkerId,
};
use serde::{Deserialize, Serialize};

/// One frame from the server.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerFrame {
    /// The first frame: the worker's bus subscription is live.
    Hello(Hello),
    /// The second frame: the latest value of each metric series the worker has seen.
    Snapshot(Vec<Metric>),
    /// The third frame of a resuming connection, before the replayed alerts.
    Resume(Resume),
    /// A batch of metrics published together.
    Metrics(MetricsFrame),
    /// One alert: live, or replayed after a `Resume`.
    Alert(AlertFrame),
    /// The answer to a `subscribe` request: the subscription with this id is in place. A
    /// `Snapshot` of the series it matches follows; every live frame after this one follows the
    /// connection's new set of subscriptions.
    Subscribed(String),
    /// The answer to an `unsubscribe` request: the subscription with this id is removed.
    Unsubscribed(String),
    /// The answer to a request that could not be carried out; the connection stays open and its
    /// subscriptions are unchanged.
    Error(ErrorFrame),
}

/// `hello`: sent once the worker's bus subscription is live; from then on every message
/// published reaches this connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The worker this connection is with (`web-1-4242`).
    pub worker: WorkerId,
    /// Connections the worker held when it greeted this one.
    pub connections: usize,
    /// The worker's bus subscriber; its `state` is always `subscribed` in `hello`.
    pub bus: BusReport,
}

/// The worker's bus subscriber as `hello` and `/healthz` report it (the domain's `BusStatus`, as
/// a client receives it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BusReport {
    /// `memory` or `redis`.
    pub bus: String,
    /// What the subscriber is doing: always `subscribed` in `hello`; in `/healthz` also `idle`
    /// (no clients, so no subscription), `connecting` or `reconnecting` (the bus is unreachable).
    pub state: SubscriberState,
    /// Recoveries: times the subscriber was subscribed again after losing its connection.
    pub reconnects: u64,
    /// Connection attempts that failed (several per outage, one per backoff step).
    pub failed_attempts: u64,
    /// Why the latest failed attempt or lost connection failed, kept after recovery; `None` when
    /// nothing has failed yet.
    pub last_error: Option<String>,
    /// Messages the worker received from the bus and handed to its clients.
    pub received: u64,
    /// Messages on the bus that were not valid envelopes (dropped).
    pub malformed: u64,
    /// Times the worker found alerts it could not deliver: trimmed from the log before it caught
    /// up, the log reset, or an in-memory bus it lagged behind.
    pub lost: u64,
    /// Alerts on the bus whose `id` the alert log did not assign (delivered without it).
    pub foreign_ids: u64,
    /// Second copies of a message that the bus delivered to the worker again (dropped); 0 from
    /// a worker too old to report it.
    #[serde(default)]
    pub duplicates: u64,
    /// Metrics that arrived after a newer message of the same publisher (dropped); 0 from a
    /// worker too old to report it.
    #[serde(default)]
    pub late: u64,
    /// The Redis the worker subscribed on, `HOST:PORT` (with Sentinel, the master it was
    /// named); absent for the in-memory bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

/// `resume`: what the worker could replay after the position the client resumed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The position the client resumed from.
    pub after: LogId,
    /// The alert log's identity now: the one the replayed and live alerts' ids belong to.
    pub epoch: Option<LogEpoch>,
    /// How many alerts follow as `alert` frames.
    pub replayed: usize,
    /// `false` when alerts after `after` are missing (trimmed, or the log was reset): the client
    /// missed alerts that cannot be replayed.
    pub complete: bool,
}

/// `metrics`: a batch published together.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsFrame {
    /// The worker that published it (`external` for outside publishers).
    pub origin: WorkerId,
    /// Per-origin sequence number.
    pub seq: u64,
    /// When the origin published it, Unix microseconds.
    pub published_at_us: u64,
    /// The batch, in the order published: at least one metric, each with `source` set to
    /// `origin`.
    pub metrics: Vec<Metric>,
}

/// `alert`: one alert, with its position in the alert log when it went through the log.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertFrame {
    /// The alert's position in the cluster-wide alert log: keep the last one to resume from.
    /// `None` for an alert that did not go through the log (put on Redis by another system): it
    /// cannot be replayed.
    pub id: Option<LogId>,
    /// The identity of the log `id` belongs to.
    pub epoch: Option<LogEpoch>,
    /// The worker that published it (`external` for outside publishers).
    pub origin: WorkerId,
    /// Per-origin sequence number (0 from outside publishers). Alerts are ordered by `id`, not
    /// by `seq`.
    pub seq: u64,
    /// When the origin published it, Unix microseconds (0 from outside publishers unless set).
    pub published_at_us: u64,
    /// The alert itself, its `source` set to `origin`.
    pub alert: Alert,
}

/// `error`: why a request (`subscribe`, `unsubscribe`, or a frame that is none of them) could not
/// be carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The `id` of the request at fault; `None` when it had none or was not JSON.
    pub id: Option<String>,
    /// The worker's reason (`pattern "a**" …`).
    pub error: String,
    /// The request field at fault (`metrics[0]`, `where[1]`, `interval`); `None` when the frame
    /// as a whole is.
    pub field: Option<String>,
}

/// Why a text frame is not a frame of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, no `type`, or a control frame (`hello`, `snapshot`, `resume`, `subscribed`,
    /// `unsubscribed`, `error`) of the wrong shape.
    #[error("frame is not the JSON of a protocol frame: {0}")]
    Json(#[from] serde_json::Error),
    /// A `type` this client does not know (a newer server's frame, say).
    #[error("frame has an unknown type {0:?}")]
    UnknownType(String),
    /// A `metrics` or `alert` frame the domain refuses: not of the envelope's shape, or a
    /// metric or alert that breaks a rule of the domain.
    #[error(transparent)]
    Envelope(#[from] DecodeError),
}

#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SnapshotWire {
    data: Vec<Metric>,
}

/// `subscribed` and `unsubscribed`.
#[derive(Serialize, Deserialize)]
struct Answer {
    id: String,
}

#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    frame: &'a T,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: &'a [Metric],
}

impl ServerFrame {
    /// Decodes one text frame.
    pub fn from_json(text: &str) -> Result<Self, FrameError> {
        let tag: Tag = serde_json::from_str(text)?;
        match tag.kind.as_str() {
            "hello" => Ok(Self::Hello(serde_json::from_str(text)?)),
            "snapshot" => Ok(Self::Snapshot(
                serde_json::from_str::<SnapshotWire>(text)?.data,
            )),
            "resume" => Ok(Self::Resume(serde_json::from_str(text)?)),
            "metrics" => Ok(Self::from_envelope(Envelope::from_json(
                Channel::Metrics,
                text.as_bytes(),
            )?)),
            "alert" => Ok(Self::from_envelope(Envelope::from_json(
                Channel::Alerts,
                text.as_bytes(),
            )?)),
            "subscribed" => Ok(Self::Subscribed(serde_json::from_str::<Answer>(text)?.id)),
            "unsubscribed" => Ok(Self::Unsubscribed(serde_json::from_str::<Answer>(text)?.id)),
            "error" => Ok(Self::Error(serde_json::from_str(text)?)),
            _ => Err(FrameError::UnknownType(tag.kind)),
        }
    }

    fn from_envelope(envelope: Envelope) -> Self {
        match envelope.payload {
            Payload::Metrics(metrics) => Self::Metrics(MetricsFrame {
                origin: envelope.origin,
                seq: envelope.seq,
                published_at_us: envelope.published_at_us,
                metrics,
            }),
            Payload::Alert(alert) => Self::Alert(AlertFrame {
                id: envelope.id,
                epoch: envelope.epoch,
                origin: envelope.origin,
                seq: envelope.seq,
                published_at_us: envelope.published_at_us,
                alert,
            }),
        }
    }

    /// The frame's wire form, as the server wrote it (up to the order of fields), for logging or
    /// forwarding.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: string keys, and every float was validated
        // finite when the frame was decoded or built.
        let text = match self {
            Self::Hello(hello) => serde_json::to_string(&Tagged {
                kind: "hello",
                frame: hello,
            }),
            Self::Snapshot(metrics) => serde_json::to_string(&SnapshotOut {
                kind: "snapshot",
                data: metrics,
            }),
            Self::Resume(resume) => serde_json::to_string(&Tagged {
                kind: "resume",
                frame: resume,
            }),
            Self::Metrics(frame) => return frame.envelope().to_json(),
            Self::Alert(frame) => return frame.envelope().to_json(),
            Self::Subscribed(id) => serde_json::to_string(&Tagged {
                kind: "subscribed",
                frame: &Answer { id: id.clone() },
            }),
            Self::Unsubscribed(id) => serde_json::to_string(&Tagged {
                kind: "unsubscribed",
                frame: &Answer { id: id.clone() },
            }),
            Self::Error(error) => serde_json::to_string(&Tagged {
                kind: "error",
                frame: error,
            }),
        };
        text.unwrap_or_default()
    }

    /// The frame's `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Snapshot(_) => "snapshot",
            Self::Resume(_) => "resume",
            Self::Metrics(_) => "metrics",
            Self::Alert(_) => "alert",
            Self::Subscribed(_) => "subscribed",
            Self::Unsubscribed(_) => "unsubscribed",
            Self::Error(_) => "error",
        }
    }
}

impl MetricsFrame {
    fn envelope(&self) -> Envelope {
        Envelope {
            id: None,
            epoch: None,
            origin: self.origin.clone(),
            seq: self.seq,
            published_at_us: self.published_at_us,
            payload: Payload::Metrics(self.metrics.clone()),
        }
    }
}

impl AlertFrame {
    fn envelope(&self) -> Envelope {
        Envelope {
            id: self.id,
            epoch: self.epoch.clone(),
            origin: self.origin.clone(),
            seq: self.seq,
            published_at_us: self.published_at_us,
            payload: Payload::Alert(self.alert.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use fanout_domain::Severity;

    use super::*;

    fn decode(text: &str) -> ServerFrame {
        ServerFrame::from_json(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    // The examples of docs/PROTOCOL.md, verbatim.
    const HELLO: &str = r#"{"type":"hello","worker":"web-1-4242","connections":12,
 "bus":{"bus":"redis","state":"subscribed","reconnects":0,"failed_attempts":0,"last_error":null,"received":0,"malformed":0,"lost":0,"foreign_ids":0,"duplicates":0,"late":0}}"#;
    const SNAPSHOT: &str = r#"{"type":"snapshot","data":[{"name":"host.cpu_percent","value":12.5,"unit":"%","labels":{"worker":"web-1-4242"},"timestamp":1764380000123,"source":"web-1-4242"}]}"#;
    const RESUME: &str = r#"{"type":"resume","after":"1764380000456-0","epoch":"3f9a0c1e5b7d2468","replayed":3,"complete":true}"#;
    const METRICS: &str = r#"{"type":"metrics","origin":"web-1-4242","seq":17,"published_at_us":1764380000123456,
 "data":[{"name":"host.cpu_percent","value":93.5,"unit":"%","labels":{"worker":"web-1-4242"},
          "timestamp":1764380000123,"source":"web-1-4242"}]}"#;
    const ALERT: &str = r#"{"type":"alert","id":"1764380000456-0","epoch":"3f9a0c1e5b7d2468","origin":"web-3-4250","seq":4,"published_at_us":1764380000456789,
 "data":{"id":"web-3-4250-4","severity":"critical","message":"host.cpu_percent is 97% (> 90%) for 3 samples",
         "metric":"host.cpu_percent","value":97.0,"threshold":90.0,"labels":{},"timestamp":1764380000456,
         "source":"web-3-4250"}}"#;
    const SUBSCRIBED: &str = r#"{"type":"subscribed","id":"s1"}"#;
    const UNSUBSCRIBED: &str = r#"{"type":"unsubscribed","id":"s1"}"#;
    // Verbatim too, the reason elided with "…" as the documentation has it.
    const ERROR: &str =
        r#"{"type":"error","id":"s1","error":"pattern \"a**\" …","field":"metrics[0]"}"#;

    #[test]
    fn the_documented_hello_decodes() {
        let ServerFrame::Hello(hello) = decode(HELLO) else {
            panic!("not a hello");
        };
        assert_eq!(hello.worker.as_str(), "web-1-4242");
        assert_eq!(hello.connections, 12);
        assert_eq!(hello.bus.bus, "redis");
        assert_eq!(hello.bus.state, SubscriberState::Subscribed);
        assert_eq!(hello.bus.last_error, None);
    }

    #[test]
    fn the_documented_snapshot_decodes_into_valid_metrics() {
        let ServerFrame::Snapshot(metrics) = decode(SNAPSHOT) else {
            panic!("not a snapshot");
        };
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].name(), "host.cpu_percent");
        assert_eq!(metrics[0].value(), 12.5);
        assert_eq!(
            metrics[0].source().map(WorkerId::as_str),
            Some("web-1-4242")
        );
    }

    #[test]
    fn the_documented_resume_decodes() {
        let ServerFrame::Resume(resume) = decode(RESUME) else {
            panic!("not a resume");
        };
        assert_eq!(resume.after, LogId::new(1_764_380_000_456, 0));
        assert_eq!(
            resume.epoch.as_ref().map(LogEpoch::as_str),
            Some("3f9a0c1e5b7d2468")
        );
        assert_eq!(resume.replayed, 3);
        assert!(resume.complete);
    }

    #[test]
    fn an_incomplete_resume_without_an_epoch_decodes() {
        let frame =
            decode(r#"{"type":"resume","after":"0-0","epoch":null,"replayed":0,"complete":false}"#);
        let ServerFrame::Resume(resume) = frame else {
            panic!("not a resume");
        };
        assert_eq!(resume.epoch, None);
        assert!(!resume.complete);
    }

    #[test]
    fn the_documented_metrics_frame_decodes() {
        let ServerFrame::Metrics(frame) = decode(METRICS) else {
            panic!("not metrics");
        };
        assert_eq!(frame.origin.as_str(), "web-1-4242");
        assert_eq!(frame.seq, 17);
        assert_eq!(frame.published_at_us, 1_764_380_000_123_456);
        assert_eq!(frame.metrics[0].value(), 93.5);
        assert_eq!(frame.metrics[0].unit(), Some("%"));
    }

    #[test]
    fn the_documented_alert_frame_decodes_with_its_position_and_epoch() {
        let ServerFrame::Alert(frame) = decode(ALERT) else {
            panic!("not an alert");
        };
        assert_eq!(frame.id, Some(LogId::new(1_764_380_000_456, 0)));
        assert_eq!(
            frame.epoch.as_ref().map(LogEpoch::as_str),
            Some("3f9a0c1e5b7d2468")
        );
        assert_eq!(frame.origin.as_str(), "web-3-4250");
        assert_eq!(frame.alert.id(), Some("web-3-4250-4"));
        assert_eq!(frame.alert.severity(), Severity::Critical);
        assert_eq!(frame.alert.threshold(), Some(90.0));
    }

    #[test]
    fn every_documented_frame_encodes_back_to_the_same_frame() {
        for text in [
            HELLO,
            SNAPSHOT,
            RESUME,
            METRICS,
            ALERT,
            SUBSCRIBED,
            UNSUBSCRIBED,
            ERROR,
        ] {
            let frame = decode(text);
            assert_eq!(decode(&frame.to_json()), frame, "{text}");
        }
    }

    #[test]
    fn documented_frames_encode_back_to_the_same_json() {
        // Not the alert example: it shows `"labels":{}`, which the server leaves out.
        for text in [
            HELLO,
            SNAPSHOT,
            RESUME,
            METRICS,
            SUBSCRIBED,
            UNSUBSCRIBED,
            ERROR,
        ] {
            let expected: serde_json::Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
            let encoded: serde_json::Value =
                serde_json::from_str(&decode(text).to_json()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(encoded, expected, "{text}");
        }
    }

    #[test]
    fn the_documented_answers_decode() {
        assert_eq!(decode(SUBSCRIBED), ServerFrame::Subscribed("s1".to_owned()));
        assert_eq!(
            decode(UNSUBSCRIBED),
            ServerFrame::Unsubscribed("s1".to_owned())
        );
        assert_eq!(
            decode(ERROR),
            ServerFrame::Error(ErrorFrame {
                id: Some("s1".to_owned()),
                error: "pattern \"a**\" …".to_owned(),
                field: Some("metrics[0]".to_owned()),
            })
        );
    }

    #[test]
    fn an_error_about_a_request_without_an_id_or_a_field_decodes() {
        let frame = decode(r#"{"type":"error","id":null,"error":"not JSON","field":null}"#);
        assert_eq!(
            frame,
            ServerFrame::Error(ErrorFrame {
                id: None,
                error: "not JSON".to_owned(),
                field: None,
            })
        );
        assert_eq!(
            frame.to_json(),
            r#"{"type":"error","id":null,"error":"not JSON","field":null}"#
        );
    }

    #[test]
    fn an_answer_without_its_id_is_refused() {
        assert!(matches!(
            ServerFrame::from_json(r#"{"type":"subscribed"}"#),
            Err(FrameError::Json(_))
        ));
    }

    #[test]
    fn an_unknown_type_is_named() {
        let error = ServerFrame::from_json(r#"{"type":"goodbye"}"#).err();
        assert!(
            matches!(&error, Some(FrameError::UnknownType(kind)) if kind == "goodbye"),
            "{error:?}"
        );
    }

    #[test]
    fn an_invalid_metric_is_refused_by_the_domain() {
        let text = r#"{"type":"metrics","origin":"w","seq":1,"published_at_us":1,"data":[{"name":"","value":1}]}"#;
        assert!(matches!(
            ServerFrame::from_json(text),
            Err(FrameError::Envelope(_))
        ));
    }

    #[test]
    fn a_frame_that_is_not_json_is_refused() {
        assert!(matches!(
            ServerFrame::from_json("not json"),
            Err(FrameError::Json(_))
        ));
    }
}
