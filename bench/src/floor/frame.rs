//! The one WebSocket frame the floor writes per message: header and payload built once, shared
//! by every client.
//!
//! A server's frames are not masked (RFC 6455 §5.1), so every client of a broadcast receives the
//! same bytes: nothing here may depend on the client it is written to.

use std::sync::Arc;

/// FIN set, opcode 1 (text): a whole text message in one frame.
const FIN_TEXT: u8 = 0x81;

/// Payload lengths up to this one fit in the header's first length byte.
const SHORT_LENGTH_MAX: usize = 125;

/// The first length byte that announces a 16-bit length after it.
const LENGTH_16: u8 = 126;

/// The first length byte that announces a 64-bit length after it.
const LENGTH_64: u8 = 127;

/// `text` as one unmasked, final text frame (header then payload), ready to be written as is.
pub fn text_frame(text: &str) -> Arc<[u8]> {
    let payload = text.as_bytes();
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(FIN_TEXT);
    match payload.len() {
        // The casts below are within range by the arm's bound.
        length if length <= SHORT_LENGTH_MAX => frame.push(length as u8),
        length if length <= usize::from(u16::MAX) => {
            frame.push(LENGTH_16);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(LENGTH_64);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::Message;

    /// What a tungstenite client reads from `bytes`, as a server sent them.
    fn read_as_client(bytes: &[u8]) -> Message {
        let mut socket =
            WebSocket::from_raw_socket(Cursor::new(bytes.to_vec()), Role::Client, None);
        socket.read().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_metrics_frame_decodes_to_the_same_text() {
        let text = r#"{"type":"metrics","origin":"bench","seq":7,"published_at_us":1764380000123456,"data":[{"name":"bench.load","value":7.0,"unit":"ms"}]}"#;
        let frame = text_frame(text);
        assert_eq!(read_as_client(&frame), Message::text(text));
    }

    #[test]
    fn every_length_encoding_decodes_to_the_same_text() {
        for length in [0, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let text = "x".repeat(length);
            let frame = text_frame(&text);
            assert_eq!(
                read_as_client(&frame),
                Message::text(text),
                "{length} bytes"
            );
        }
    }

    #[test]
    fn the_header_is_as_short_as_the_length_allows() {
        assert_eq!(text_frame(&"x".repeat(125)).len(), 2 + 125);
        assert_eq!(text_frame(&"x".repeat(126)).len(), 4 + 126);
        assert_eq!(text_frame(&"x".repeat(65_536)).len(), 10 + 65_536);
    }

    #[test]
    fn the_frame_is_final_text_and_unmasked() {
        let frame = text_frame("hello");
        assert_eq!(&frame[..2], [0x81, 5]);
        assert_eq!(&frame[2..], b"hello");
    }
}
