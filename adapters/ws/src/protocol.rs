//! Every frame the server writes to a WebSocket client, and the codes it closes connections with:
//! the server side of docs/PROTOCOL.md ("Server → client frames", "Close codes"), in one place.
//!
//! `metrics` and `alert` frames are the envelope's own wire form (`Envelope::to_json`), encoded
//! once per message per worker and shared by every client; `hello`, `snapshot` and `resume` are
//! the control frames, encoded once per client. This module must never encode a bus message per
//! client, and never write a frame shape that PROTOCOL.md does not document: a change here is a
//! change of the wire format.
//!
//! Over 400 lines on purpose: every frame the server writes is kept in one place (a change here is a change of the wire format); a third is its tests.

use bytes::Bytes;
use fanout_domain::{BusStatus, Envelope, LogEpoch, LogId, Metric, RequestError, WorkerId};
use serde::Serialize;

use crate::wire;

/// What a frame carries, which decides what a full queue may drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    Metrics,
    Alert,
    Control,
}

/// A frame as written on the wire, header included (see `wire`). Cloning shares the bytes (one
/// encoding and framing per message per worker).
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) kind: FrameKind,
    pub(crate) wire: Bytes,
    /// The alert-log id of an alert frame, to skip live duplicates of replayed alerts.
    pub(crate) alert_id: Option<LogId>,
}

impl Frame {
    /// A `metrics` or `alert` frame: the envelope's wire form.
    pub(crate) fn for_envelope(kind: FrameKind, envelope: &Envelope) -> Self {
        Self {
            kind,
            wire: wire::text(envelope.to_json().as_bytes()),
            alert_id: envelope.id,
        }
    }

    /// The JSON text the frame carries.
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        // Every text frame is built here from a `String`.
        std::str::from_utf8(wire::payload(&self.wire)).unwrap_or_default()
    }

    /// A control frame from one of the structs below.
    /// A `metrics` frame already encoded (a subscriber's share of a batch, conflated values).
    pub(crate) fn metrics(text: String) -> Self {
        Self {
            kind: FrameKind::Metrics,
            wire: wire::text(text.as_bytes()),
            alert_id: None,
        }
    }

    fn control(value: &impl Serialize) -> Self {
        Self {
            kind: FrameKind::Control,
            // Serializing these plain structs cannot fail (string keys, finite numbers).
            wire: wire::text(&serde_json::to_vec(value).unwrap_or_default()),
            alert_id: None,
        }
    }
}

/// `hello`: the first frame, sent once the worker's bus subscription is live.
#[derive(Serialize)]
pub(crate) struct Hello<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    worker: &'a WorkerId,
    connections: usize,
    bus: BusStatus,
}

impl<'a> Hello<'a> {
    pub(crate) fn new(worker: &'a WorkerId, connections: usize, bus: BusStatus) -> Self {
        Self {
            kind: "hello",
            worker,
            connections,
            bus,
        }
    }

    pub(crate) fn frame(&self) -> Frame {
        Frame::control(self)
    }
}

/// `snapshot`: the second frame, the latest value of each metric series the worker has seen.
#[derive(Serialize)]
pub(crate) struct Snapshot<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: &'a [Metric],
}

impl<'a> Snapshot<'a> {
    pub(crate) fn new(data: &'a [Metric]) -> Self {
        Self {
            kind: "snapshot",
            data,
        }
    }

    pub(crate) fn frame(&self) -> Frame {
        Frame::control(self)
    }
}

/// `resume`: for a resuming client, before the alerts replayed after its last id.
/// The answer to a client's request: `subscribed`, `unsubscribed` or `error`.
#[derive(Serialize)]
pub(crate) struct Answer<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<Option<&'a str>>,
}

impl<'a> Answer<'a> {
    pub(crate) fn subscribed(id: &'a str) -> Self {
        Self {
            kind: "subscribed",
            id: Some(id),
            error: None,
            field: None,
        }
    }

    pub(crate) fn unsubscribed(id: &'a str) -> Self {
        Self {
            kind: "unsubscribed",
            id: Some(id),
            error: None,
            field: None,
        }
    }

    pub(crate) fn error(error: &'a RequestError) -> Self {
        Self {
            kind: "error",
            id: error.id.as_deref(),
            error: Some(&error.reason),
            field: Some(error.field.as_deref()),
        }
    }

    pub(crate) fn frame(&self) -> Frame {
        Frame::control(self)
    }
}

#[derive(Serialize)]
pub(crate) struct Resume<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    after: LogId,
    /// The log's epoch now: the one the replayed and live alerts' ids belong to.
    epoch: Option<&'a LogEpoch>,
    replayed: usize,
    /// False when an alert after `after` is not in the log: trimmed, or the log was reset
    /// (the client's epoch is not the log's): some are missed.
    complete: bool,
}

impl<'a> Resume<'a> {
    pub(crate) fn new(
        after: LogId,
        epoch: Option<&'a LogEpoch>,
        replayed: usize,
        completeness: Completeness,
    ) -> Self {
        Self {
            kind: "resume",
            after,
            epoch,
            replayed,
            complete: completeness == Completeness::Complete,
        }
    }

    pub(crate) fn frame(&self) -> Frame {
        Frame::control(self)
    }
}

/// Whether a replay holds every alert after the client's position (`complete` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completeness {
    Complete,
    /// Some were trimmed from the log, or the log was reset since.
    Incomplete,
}

/// Why the server closes a connection: a WebSocket close code and a short reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The close code; the codes and their meaning are part of the protocol (PROTOCOL.md).
    pub code: u16,
    /// A short text for people and logs; clients must act on the code, not on this.
    pub reason: &'static str,
}

impl CloseReason {
    /// The worker is shutting down: reconnect, to any worker.
    pub const GOING_AWAY: Self = Self {
        code: 1001,
        reason: "server shutting down",
    };
    /// The client sent a binary frame; the protocol is text only.
    pub const UNSUPPORTED_DATA: Self = Self {
        code: 1003,
        reason: "binary frames are not accepted",
    };
    /// The client sent a text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: Self = Self {
        code: 1007,
        reason: "text frame is not valid UTF-8",
    };
    /// The client broke the WebSocket protocol.
    pub const POLICY: Self = Self {
        code: 1008,
        reason: "protocol violation",
    };
    /// The client sent a message larger than [`crate::ClientLimits::max_incoming_message`].
    pub const TOO_BIG: Self = Self {
        code: 1009,
        reason: "message too big",
    };
    /// The alert log could not be read for a resuming client: reconnect and resume later.
    pub const TRY_AGAIN_LATER: Self = Self {
        code: 1013,
        reason: "alert history unavailable, resume later",
    };
    /// The client's token expired: reconnect with a fresh one.
    pub const TOKEN_EXPIRED: Self = Self {
        code: 4003,
        reason: "token expired",
    };
    /// The client sent nothing, not even a pong, within [`crate::ClientLimits::client_timeout`].
    pub const TIMEOUT: Self = Self {
        code: 4001,
        reason: "no pong within the client timeout",
    };
    /// The client read too slowly and an alert could not be queued: reconnect.
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        reason: "slow consumer: queue overflow",
    };

    /// The close frame that carries this reason.
    pub(crate) fn frame(self) -> Frame {
        Frame {
            kind: FrameKind::Control,
            wire: wire::close(self.code, self.reason),
            alert_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use fanout_domain::{Alert, Payload, Severity, SubscriberState};

    use super::*;

    fn worker() -> WorkerId {
        WorkerId::new("web-1-4242").unwrap_or_else(|e| panic!("{e}"))
    }

    fn epoch() -> LogEpoch {
        LogEpoch::new("3f9a0c1e5b7d2468").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hello_is_the_documented_json() {
        let bus = BusStatus {
            bus: "redis",
            state: SubscriberState::Subscribed,
            reconnects: 0,
            failed_attempts: 0,
            last_error: None,
            received: 0,
            malformed: 0,
            lost: 0,
            foreign_ids: 0,
            duplicates: 0,
            late: 0,
            master: None,
        };
        let worker = worker();
        let frame = Hello::new(&worker, 12, bus).frame();
        assert_eq!(frame.kind, FrameKind::Control);
        assert_eq!(
            frame.text(),
            r#"{"type":"hello","worker":"web-1-4242","connections":12,"bus":{"bus":"redis","state":"subscribed","reconnects":0,"failed_attempts":0,"last_error":null,"received":0,"malformed":0,"lost":0,"foreign_ids":0,"duplicates":0,"late":0}}"#
        );
    }

    #[test]
    fn snapshot_is_the_documented_json() {
        // PROTOCOL.md's example metric, read through the domain's own decoding.
        let metric: Metric = serde_json::from_str(
            r#"{"name":"host.cpu_percent","value":12.5,"unit":"%","labels":{"worker":"web-1-4242"},"timestamp":1764380000123,"source":"web-1-4242"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let frame = Snapshot::new(&[metric]).frame();
        assert_eq!(
            frame.text(),
            r#"{"type":"snapshot","data":[{"name":"host.cpu_percent","value":12.5,"unit":"%","labels":{"worker":"web-1-4242"},"timestamp":1764380000123,"source":"web-1-4242"}]}"#
        );
    }

    #[test]
    fn an_empty_snapshot_has_an_empty_data_array() {
        assert_eq!(
            Snapshot::new(&[]).frame().text(),
            r#"{"type":"snapshot","data":[]}"#
        );
    }

    #[test]
    fn answers_are_the_documented_json() {
        assert_eq!(
            Answer::subscribed("s1").frame().text(),
            r#"{"type":"subscribed","id":"s1"}"#
        );
        assert_eq!(
            Answer::unsubscribed("s1").frame().text(),
            r#"{"type":"unsubscribed","id":"s1"}"#
        );
        let error = RequestError {
            id: Some("s1".into()),
            reason: "a pattern is empty".into(),
            field: Some("metrics[0]".into()),
        };
        assert_eq!(
            Answer::error(&error).frame().text(),
            r#"{"type":"error","id":"s1","error":"a pattern is empty","field":"metrics[0]"}"#
        );
        let whole = RequestError::whole(None, "a request is a JSON object");
        assert_eq!(
            Answer::error(&whole).frame().text(),
            r#"{"type":"error","id":null,"error":"a request is a JSON object","field":null}"#
        );
    }

    #[test]
    fn resume_is_the_documented_json() {
        let after = LogId::from_str("1764380000456-0").unwrap_or_else(|e| panic!("{e}"));
        let epoch = epoch();
        let frame = Resume::new(after, Some(&epoch), 3, Completeness::Complete).frame();
        assert_eq!(
            frame.text(),
            r#"{"type":"resume","after":"1764380000456-0","epoch":"3f9a0c1e5b7d2468","replayed":3,"complete":true}"#
        );
        assert_eq!(
            frame.alert_id, None,
            "a control frame is never deduplicated"
        );
    }

    #[test]
    fn an_incomplete_resume_without_an_epoch_says_so() {
        let frame = Resume::new(LogId::ZERO, None, 0, Completeness::Incomplete).frame();
        assert_eq!(
            frame.text(),
            r#"{"type":"resume","after":"0-0","epoch":null,"replayed":0,"complete":false}"#
        );
    }

    #[test]
    fn an_alert_frame_is_the_envelope_wire_form_and_keeps_its_log_id() {
        let id = LogId::new(1_764_380_000_456, 0);
        let envelope = Envelope {
            id: Some(id),
            epoch: Some(epoch()),
            origin: worker(),
            seq: 4,
            published_at_us: 1_764_380_000_456_789,
            payload: Payload::Alert(
                Alert::new(Severity::Critical, "cpu high").unwrap_or_else(|e| panic!("{e}")),
            ),
        };
        let frame = Frame::for_envelope(FrameKind::Alert, &envelope);
        assert_eq!(frame.text(), envelope.to_json());
        assert_eq!(frame.alert_id, Some(id));
    }

    #[test]
    fn close_codes_are_the_documented_ones() {
        let codes = [
            CloseReason::GOING_AWAY,
            CloseReason::UNSUPPORTED_DATA,
            CloseReason::INVALID_PAYLOAD,
            CloseReason::POLICY,
            CloseReason::TOO_BIG,
            CloseReason::TRY_AGAIN_LATER,
            CloseReason::TIMEOUT,
            CloseReason::TOKEN_EXPIRED,
            CloseReason::SLOW_CONSUMER,
        ]
        .map(|reason| reason.code);
        assert_eq!(
            codes,
            [1001, 1003, 1007, 1008, 1009, 1013, 4001, 4003, 4008]
        );
    }

    #[test]
    fn a_close_frame_carries_the_code_and_reason() {
        let frame = CloseReason::SLOW_CONSUMER.frame();
        assert_eq!(frame.kind, FrameKind::Control);
        let payload = wire::payload(&frame.wire);
        assert_eq!(payload[..2], 4008u16.to_be_bytes());
        assert_eq!(&payload[2..], b"slow consumer: queue overflow");
    }
}
