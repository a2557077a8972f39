//! The bytes of the frames the server writes, built once and shared.
//!
//! Server frames are never masked (RFC 6455 §5.1), so every client of a message receives the very
//! same bytes: header and payload are built once per message per worker and written as they are,
//! with no framing or copy per client. Only final, unfragmented frames are written.

use bytes::{BufMut, Bytes, BytesMut};

/// Opcode of a text frame.
const TEXT: u8 = 0x1;
/// Opcode of a close frame.
const CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
const PING: u8 = 0x9;
/// The FIN bit: the frame is a whole message.
const FIN: u8 = 0x80;

/// The longest header a server frame has: 2 bytes and a 64-bit length.
const MAX_HEADER: usize = 10;

/// A final text frame carrying `payload`.
pub(crate) fn text(payload: &[u8]) -> Bytes {
    frame(TEXT, payload)
}

/// A close frame with `code` and `reason` (at most 123 bytes, a control frame's limit).
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame(CLOSE, &payload)
}

/// A ping frame with an empty payload.
/// Whether `wire` is a ping frame (the server's heartbeat).
pub(crate) fn is_ping(wire: &[u8]) -> bool {
    wire.first() == Some(&(FIN | PING))
}

pub(crate) fn ping() -> Bytes {
    Bytes::from_static(&[FIN | PING, 0])
}

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(MAX_HEADER + payload.len());
    out.put_u8(FIN | opcode);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// The payload of a frame built here (its header skipped).
#[cfg(test)]
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;

    use super::*;

    /// Parses `bytes` as a client would: one whole frame, nothing after it.
    fn parse(bytes: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = Cursor::new(bytes);
        let (header, length) = FrameHeader::parse(&mut cursor)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("an incomplete header"));
        let start = cursor.position() as usize;
        assert_eq!(start as u64 + length, bytes.len() as u64, "trailing bytes");
        (header, bytes[start..].to_vec())
    }

    proptest! {
        /// Every length class (7-bit, 16-bit, 64-bit) parses back to the same payload, unmasked
        /// and final, and `payload` finds it.
        #[test]
        fn a_text_frame_parses_back_to_its_payload(
            len in prop_oneof![0usize..=130, 65_530usize..=65_540, 70_000usize..=70_010],
            byte in any::<u8>(),
        ) {
            let body = vec![byte; len];
            let built = text(&body);
            let (header, parsed) = parse(&built);
            prop_assert!(header.is_final);
            prop_assert!(header.mask.is_none());
            prop_assert_eq!(header.opcode, OpCode::Data(Data::Text));
            prop_assert_eq!(&parsed, &body);
            prop_assert_eq!(payload(&built), &body[..]);
        }
    }

    #[test]
    fn close_and_ping_are_well_formed_control_frames() {
        let (header, body) = parse(&close(4008, "slow consumer"));
        assert_eq!(
            header.opcode,
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Close)
        );
        assert_eq!(&body[..2], &4008u16.to_be_bytes());
        assert_eq!(&body[2..], b"slow consumer");
        let (header, body) = parse(&ping());
        assert_eq!(
            header.opcode,
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping)
        );
        assert!(body.is_empty());
    }
}
