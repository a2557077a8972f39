//! The WebSocket transport at the frame level, against a worker in this process: what
//! docs/PROTOCOL.md promises about fragmented requests, pings, and the close codes of bad frames
//! (1003, 1007, 1008, 1009), and a property test that writes random frames — any opcode, reserved
//! bits, masked or not, fragmented, truncated, any payload — and checks that the worker answers
//! each connection with a documented close code or keeps serving it, and never stops serving the
//! others. Since issue 14 the server writes its own frames (pre-framed bytes, straight to the
//! socket) and tungstenite only reads: this is what keeps that reading and writing honest.

mod harness;

use std::time::Duration;

use std::net::SocketAddr;

use fanout_memory::MemoryBus;
use futures_util::StreamExt;
use harness::http::{health, publish};
use harness::{start_worker, InProcess, On};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One client frame: header fields and payload, masked unless told not to.
#[derive(Clone, Debug)]
struct RawFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl RawFrame {
    fn text(fin: bool, opcode: u8, payload: &[u8]) -> Self {
        Self {
            fin,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.to_vec(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let mask_bit = if self.masked { 0x80 } else { 0 };
        match self.payload.len() {
            len @ 0..=125 => out.push(mask_bit | len as u8),
            len @ 126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if self.masked {
            let mask = [0x3a, 0x91, 0x07, 0xc4];
            out.extend_from_slice(&mask);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

fn metric(name: &str) -> serde_json::Value {
    json!({ "name": name, "value": 1.0 })
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a raw client saw next.
#[derive(Debug, PartialEq)]
enum Seen {
    Text(Value),
    Pong(Vec<u8>),
    Closed(Option<u16>),
    /// The connection ended without a close frame, or the server wrote something malformed.
    Dropped(String),
}

/// A client at the frame level: connected and greeted (`hello`, `snapshot`), nothing else.
async fn connect(addr: SocketAddr) -> Socket {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/performance"))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    for expected in ["hello", "snapshot"] {
        match next(&mut socket).await {
            Seen::Text(frame) if frame["type"] == expected => {}
            other => panic!("expected {expected}, got {other:?}"),
        }
    }
    socket
}

async fn next(socket: &mut Socket) -> Seen {
    let read = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap_or_else(|_| panic!("nothing from the server within 5 s"));
    match read {
        Some(Ok(Message::Text(text))) => Seen::Text(
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {e}: {text}")),
        ),
        Some(Ok(Message::Pong(payload))) => Seen::Pong(payload.to_vec()),
        Some(Ok(Message::Close(frame))) => Seen::Closed(frame.map(|f| u16::from(f.code))),
        Some(Ok(other)) => Seen::Dropped(format!("unexpected {other:?}")),
        Some(Err(error)) => Seen::Dropped(error.to_string()),
        None => Seen::Dropped("end of stream".into()),
    }
}

/// Writes `bytes` to the socket as they are.
async fn send_raw(socket: &mut Socket, bytes: &[u8]) {
    let MaybeTlsStream::Plain(tcp) = socket.get_mut() else {
        panic!("a plain TCP connection was expected");
    };
    tcp.write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("raw write: {e}"));
}

/// Reads until the metric `name` arrives (`None`), or the connection ends (what ended it).
async fn metric_or_end(socket: &mut Socket, name: &str) -> Option<Seen> {
    loop {
        match next(socket).await {
            Seen::Text(frame) if frame["type"] == "metrics" && frame["data"][0]["name"] == name => {
                return None
            }
            Seen::Text(_) | Seen::Pong(_) => {}
            ended => return Some(ended),
        }
    }
}

#[tokio::test]
async fn a_fragmented_request_with_a_ping_in_between_is_answered_and_the_ping_ponged() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let mut client = connect(a.addr()).await;
    let request = br#"{"type":"subscribe","id":"frag","metrics":["frag.*"]}"#;
    let (first, rest) = request.split_at(10);
    let (second, third) = rest.split_at(20);
    let mut bytes = RawFrame::text(false, 0x1, first).bytes();
    bytes.extend(RawFrame::text(false, 0x0, second).bytes());
    // A control frame may come between the fragments of a message.
    bytes.extend(RawFrame::text(true, 0x9, b"are you there").bytes());
    bytes.extend(RawFrame::text(true, 0x0, third).bytes());
    send_raw(&mut client, &bytes).await;
    assert_eq!(
        next(&mut client).await,
        Seen::Pong(b"are you there".to_vec())
    );
    match next(&mut client).await {
        Seen::Text(answer) => assert_eq!(
            (&answer["type"], &answer["id"]),
            (&json!("subscribed"), &json!("frag")),
            "{answer}"
        ),
        other => panic!("expected the answer, got {other:?}"),
    }
}

/// RFC 6455 §5.5.1 (PROTOCOL.md: a standard WebSocket): a client's close frame is answered
/// with a close frame echoing its code before the server ends the connection — after the
/// greeting, 20 times over, not once.
#[tokio::test]
async fn a_clients_close_frame_is_answered_with_a_close_frame() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    for round in 0..20 {
        let mut client = connect(a.addr()).await;
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        send_raw(&mut client, &RawFrame::text(true, 0x8, &payload).bytes()).await;
        assert_eq!(
            next(&mut client).await,
            Seen::Closed(Some(1000)),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn every_protocol_violation_is_closed_with_1008() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let violations = [
        (
            "unmasked frame",
            RawFrame {
                masked: false,
                ..RawFrame::text(true, 0x1, b"{}")
            },
        ),
        (
            "reserved bit",
            RawFrame {
                rsv: 0b100,
                ..RawFrame::text(true, 0x1, b"{}")
            },
        ),
        ("reserved opcode", RawFrame::text(true, 0x3, b"{}")),
        (
            "continuation with nothing to continue",
            RawFrame::text(true, 0x0, b"{}"),
        ),
        ("fragmented ping", RawFrame::text(false, 0x9, b"")),
        (
            "ping over 125 bytes",
            RawFrame::text(true, 0x9, &[b'p'; 126]),
        ),
    ];
    for (what, frame) in violations {
        let mut client = connect(a.addr()).await;
        send_raw(&mut client, &frame.bytes()).await;
        assert_eq!(
            metric_or_end(&mut client, "never").await,
            Some(Seen::Closed(Some(1008))),
            "{what}"
        );
    }
}

/// Any frame a client may write.
fn raw_frame() -> impl Strategy<Value = RawFrame> {
    let payload = prop_oneof![
        Just(br#"{"type":"subscribe","id":"s","metrics":["*"]}"#.to_vec()),
        Just(br#"{"type":"unsubscribe","id":"s"}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..200),
        "[a-z{}\":,]{0,80}".prop_map(String::into_bytes),
    ];
    (
        prop_oneof![9 => Just(true), 1 => Just(false)],
        prop_oneof![9 => Just(0u8), 1 => 0u8..8],
        prop_oneof![
            6 => Just(0x1u8),
            1 => Just(0x0),
            1 => Just(0x2),
            1 => Just(0x9),
            1 => Just(0xA),
            1 => Just(0x8),
            1 => 0u8..16,
        ],
        prop_oneof![19 => Just(true), 1 => Just(false)],
        payload,
    )
        .prop_map(|(fin, rsv, opcode, masked, payload)| RawFrame {
            fin,
            rsv,
            opcode,
            masked,
            payload,
        })
}

/// The close codes a bad frame may earn (docs/PROTOCOL.md, "Close codes").
const BAD_FRAME_CODES: [u16; 4] = [1003, 1007, 1008, 1009];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever frames a client writes, the worker either goes on serving it (the next metric
    /// arrives) or closes it with a documented code (or answers its close), and a bystander
    /// notices nothing; no hand-over fails on a bug.
    #[test]
    fn random_frames_get_a_documented_close_or_service_and_nobody_else_notices(
        frames in proptest::collection::vec(raw_frame(), 1..5),
        truncate in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            let bus = MemoryBus::new();
            let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
            let mut bystander = connect(a.addr()).await;
            let mut client = connect(a.addr()).await;
            let mut bytes: Vec<u8> = frames.iter().flat_map(RawFrame::bytes).collect();
            if truncate {
                bytes.pop();
            }
            send_raw(&mut client, &bytes).await;
            publish(a.addr(), "/api/metrics", &metric("after")).await;
            let sent_close = frames.iter().any(|f| f.opcode == 0x8);
            match metric_or_end(&mut client, "after").await {
                None => {}
                Some(Seen::Closed(Some(code))) if BAD_FRAME_CODES.contains(&code) => {}
                Some(ended) => assert!(sent_close, "{ended:?} after {frames:?}"),
            }
            assert_eq!(metric_or_end(&mut bystander, "after").await, None);
            let health = health(a.addr()).await;
            assert_eq!(health["delivery"]["internal_errors"], 0, "{health}");
        });
    }
}
