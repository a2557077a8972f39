//! What a WebSocket frame becomes on a Server-Sent Events stream (docs/PROTOCOL.md, "Server-Sent
//! Events").
//!
//! The fan-out builds each frame once, WebSocket header included (`wire`); an SSE client is
//! handed the very same frame. A text frame's payload is the JSON after the header (server frames
//! are unmasked), so the event shares those bytes (`Bytes::slice`) and only its first lines
//! (`event:`, an alert's `id:`, `data: `) and its end are added around them: nothing is encoded
//! again, nothing copied. A ping becomes a comment; a close frame becomes the `close` event that
//! ends the stream.
//!
//! It must never re-encode a payload, and never write a line break inside one (the JSON the
//! server writes is one line: serde escapes line breaks in strings).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{Frame, FrameKind};

/// The first bytes of the stream: how long an `EventSource` waits before it reconnects, in ms.
pub(crate) const RETRY: &[u8] = b"retry: 1000\n\n";

/// A heartbeat, for every ping frame.
const PING: &[u8] = b": ping\n\n";

/// The end of an event.
const END: &[u8] = b"\n\n";

/// Opcodes of the frames the server writes (RFC 6455 §5.2).
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING_OPCODE: u8 = 0x9;

/// One frame as SSE: the parts to write, in order (a `data` line's JSON shares the frame's
/// bytes).
pub(crate) struct Event {
    /// At most three parts: the lines before the JSON, the JSON, the end.
    pub(crate) parts: [Bytes; 3],
    /// The stream ends after this event (the frame was a close frame).
    pub(crate) last: bool,
}

impl Event {
    /// Bytes of the event, all parts together.
    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// The event a frame built by `wire` becomes; `None` for a frame that has no SSE form (a
    /// pong: never written to an SSE client, which sends no pings).
    pub(crate) fn of(frame: &Frame) -> Option<Self> {
        let wire = &frame.wire;
        let opcode = wire.first()? & 0x0F;
        let header = match wire.get(1)? & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let payload = wire.slice(header.min(wire.len())..);
        match opcode {
            TEXT => Some(Self::text(frame.kind, payload)),
            PING_OPCODE => Some(Self {
                parts: [Bytes::from_static(PING), Bytes::new(), Bytes::new()],
                last: false,
            }),
            CLOSE => Some(Self::close(&payload)),
            _ => None,
        }
    }

    /// `event: TYPE` (`id: ID/EPOCH` for an alert with a log id), `data: JSON`, an empty line.
    fn text(kind: FrameKind, json: Bytes) -> Self {
        let head = match kind {
            FrameKind::Metrics => Bytes::from_static(b"event: metrics\ndata: "),
            FrameKind::Alert => alert_head(&json),
            FrameKind::Control => control_head(&json),
        };
        Self {
            parts: [head, json, Bytes::from_static(END)],
            last: false,
        }
    }

    /// `event: close`, `data: {"code":C,"reason":"R"}`: the stream's last event.
    fn close(payload: &[u8]) -> Self {
        let (code, reason) = match payload {
            [high, low, reason @ ..] => (
                u16::from_be_bytes([*high, *low]),
                String::from_utf8_lossy(reason),
            ),
            _ => (1005, "".into()),
        };
        #[derive(Serialize)]
        struct Close<'a> {
            code: u16,
            reason: &'a str,
        }
        // Serializing a number and a string cannot fail.
        let json = serde_json::to_string(&Close {
            code,
            reason: &reason,
        })
        .unwrap_or_default();
        Self {
            parts: [
                Bytes::from(format!("event: close\ndata: {json}\n\n")),
                Bytes::new(),
                Bytes::new(),
            ],
            last: true,
        }
    }
}

/// The lines before an alert's JSON: with `id: ID/EPOCH` when the alert has a log id.
fn alert_head(json: &[u8]) -> Bytes {
    /// The alert's place in the log, as the envelope carries it.
    #[derive(Deserialize)]
    struct Position<'a> {
        #[serde(borrow)]
        id: Option<&'a str>,
        #[serde(borrow)]
        epoch: Option<&'a str>,
    }
    // Read once per alert per SSE client; alerts are rare next to metrics.
    match serde_json::from_slice::<Position<'_>>(json) {
        Ok(Position {
            id: Some(id),
            epoch: Some(epoch),
        }) => Bytes::from(format!("event: alert\nid: {id}/{epoch}\ndata: ")),
        Ok(Position {
            id: Some(id),
            epoch: None,
        }) => Bytes::from(format!("event: alert\nid: {id}\ndata: ")),
        _ => Bytes::from_static(b"event: alert\ndata: "),
    }
}

/// The `event:` line of a control frame, named by its `type` (the first field the server writes).
fn control_head(json: &[u8]) -> Bytes {
    let kind = json
        .strip_prefix(br#"{"type":""#)
        .and_then(|rest| rest.iter().position(|&b| b == b'"').map(|end| &rest[..end]));
    match kind {
        Some(b"hello") => Bytes::from_static(b"event: hello\ndata: "),
        Some(b"snapshot") => Bytes::from_static(b"event: snapshot\ndata: "),
        Some(b"resume") => Bytes::from_static(b"event: resume\ndata: "),
        Some(b"subscribed") => Bytes::from_static(b"event: subscribed\ndata: "),
        Some(b"unsubscribed") => Bytes::from_static(b"event: unsubscribed\ndata: "),
        Some(b"error") => Bytes::from_static(b"event: error\ndata: "),
        // Every control frame is one of the above (`protocol`); anything else is an unnamed
        // event (`message` to an EventSource).
        _ => Bytes::from_static(b"data: "),
    }
}

#[cfg(test)]
mod tests {
    use fanout_domain::{Alert, Envelope, LogEpoch, LogId, Payload, Severity, WorkerId};

    use super::*;
    use crate::protocol::{Answer, CloseReason, Resume};
    use crate::wire;

    fn text(event: &Event) -> String {
        let bytes: Vec<u8> = event.parts.iter().flat_map(|p| p.to_vec()).collect();
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    fn alert(id: Option<LogId>, epoch: Option<&str>) -> Frame {
        let envelope = Envelope {
            id,
            epoch: epoch.map(|e| LogEpoch::new(e).unwrap_or_else(|e| panic!("{e}"))),
            origin: WorkerId::new("w1").unwrap_or_else(|e| panic!("{e}")),
            seq: 4,
            published_at_us: 1,
            payload: Payload::Alert(
                Alert::new(Severity::Critical, "line\nbreak").unwrap_or_else(|e| panic!("{e}")),
            ),
        };
        Frame::for_envelope(FrameKind::Alert, &envelope)
    }

    #[test]
    fn a_metrics_frame_shares_its_json_with_the_event() {
        let frame = Frame::metrics(r#"{"type":"metrics","data":[]}"#.to_owned());
        let event = Event::of(&frame).unwrap_or_else(|| panic!("no event"));
        assert_eq!(
            text(&event),
            "event: metrics\ndata: {\"type\":\"metrics\",\"data\":[]}\n\n"
        );
        // The JSON part points into the frame's own bytes: shared, not copied.
        let json = &event.parts[1];
        assert_eq!(json.as_ptr(), frame.wire[2..].as_ptr());
        assert!(!event.last);
    }

    #[test]
    fn a_long_frame_is_cut_after_its_longer_header() {
        for len in [200, 70_000] {
            let json = format!(r#"{{"type":"metrics","data":"{}"}}"#, "x".repeat(len));
            let event =
                Event::of(&Frame::metrics(json.clone())).unwrap_or_else(|| panic!("no event"));
            assert_eq!(event.parts[1], json.as_bytes());
        }
    }

    #[test]
    fn an_alert_with_a_log_id_carries_id_and_epoch_and_one_data_line() {
        let id = LogId::new(1_764_380_000_456, 0);
        let event = Event::of(&alert(Some(id), Some("3f9a0c1e5b7d2468")))
            .unwrap_or_else(|| panic!("no event"));
        let text = text(&event);
        assert!(
            text.starts_with("event: alert\nid: 1764380000456-0/3f9a0c1e5b7d2468\ndata: {"),
            "{text}"
        );
        // The message's line break is escaped in the JSON: one data line.
        assert_eq!(text.matches('\n').count(), 4, "{text}");
        let without = text_of_alert_without_id();
        assert!(without.starts_with("event: alert\ndata: {"), "{without}");
    }

    fn text_of_alert_without_id() -> String {
        text(&Event::of(&alert(None, None)).unwrap_or_else(|| panic!("no event")))
    }

    #[test]
    fn control_frames_are_named_by_their_type() {
        let resume = Resume::new(
            LogId::ZERO,
            None,
            0,
            crate::protocol::Completeness::Complete,
        )
        .frame();
        let event = Event::of(&resume).unwrap_or_else(|| panic!("no event"));
        assert!(text(&event).starts_with("event: resume\ndata: {\"type\":\"resume\""));
        let answer = Answer::subscribed("s1").frame();
        let event = Event::of(&answer).unwrap_or_else(|| panic!("no event"));
        assert!(text(&event).starts_with("event: subscribed\ndata: "));
    }

    #[test]
    fn a_ping_is_a_comment_and_a_close_frame_the_last_event() {
        let ping = Frame {
            kind: FrameKind::Control,
            wire: wire::ping(),
            alert_id: None,
        };
        let event = Event::of(&ping).unwrap_or_else(|| panic!("no event"));
        assert_eq!(text(&event), ": ping\n\n");
        assert!(!event.last);
        let close =
            Event::of(&CloseReason::SLOW_CONSUMER.frame()).unwrap_or_else(|| panic!("no event"));
        assert_eq!(
            text(&close),
            "event: close\ndata: {\"code\":4008,\"reason\":\"slow consumer: queue overflow\"}\n\n"
        );
        assert!(close.last);
    }
}
