//! An SSE client of `/sse/performance` for scenarios: a real streaming HTTP client (reqwest, the
//! response read chunk by chunk as it arrives) and the stream cut into its blocks — an event
//! (`event:`, `id:`, `data:` lines), a comment (`: ping`), the `retry:` line — exactly as the
//! server wrote them, so that a scenario asserts on the wire form PROTOCOL.md documents. (A
//! generic SSE parser would hide comments and the order of the lines, which are what is tested.)

use std::net::SocketAddr;

use serde_json::Value;

use super::within;

/// One block of the stream: the lines up to an empty line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub lines: Vec<String>,
}

impl Block {
    /// The value of the field `name` (`name: value`), if the block has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }

    /// The `event:` name.
    pub fn event(&self) -> Option<&str> {
        self.field("event")
    }

    /// The `id:` line.
    pub fn id(&self) -> Option<&str> {
        self.field("id")
    }

    /// The `data:` line as JSON.
    pub fn data(&self) -> Value {
        let data = self
            .field("data")
            .unwrap_or_else(|| panic!("no data line in {self:?}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"))
    }

    /// Whether the block is only comments (lines starting with `:`).
    pub fn is_comment(&self) -> bool {
        self.lines.iter().all(|line| line.starts_with(':'))
    }
}

/// What the stream gave next.
#[derive(Debug)]
pub enum Next {
    Block(Block),
    /// The response ended cleanly.
    End,
    /// The response was cut (a connection error before its end).
    Cut(String),
}

pub struct SseClient {
    response: reqwest::Response,
    /// Bytes read and not yet cut into blocks.
    pending: Vec<u8>,
    /// The `hello` event, once [`SseClient::greeted`] read it.
    pub hello: Value,
    /// The `snapshot` event that follows it.
    pub snapshot: Value,
}

/// `GET /sse/performance{query}` with `headers`; the response, whatever its status.
pub async fn get(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{addr}/sse/performance{query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    within("the SSE request", request.send())
        .await
        .unwrap_or_else(|e| panic!("GET /sse/performance{query} failed: {e}"))
}

impl SseClient {
    /// Opens the stream and checks the response's status and headers and its first line
    /// (`retry: 1000`); nothing more is read.
    pub async fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> SseClient {
        let response = get(addr, query, headers).await;
        assert_eq!(response.status(), 200, "{query}: {response:?}");
        let header = |name: &str| super::http::header(&response, name);
        assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
        let mut client = SseClient {
            response,
            pending: Vec::new(),
            hello: Value::Null,
            snapshot: Value::Null,
        };
        let first = client.next_block().await;
        assert_eq!(first.lines, ["retry: 1000"], "the stream's first line");
        client
    }

    /// Opens the stream and reads `hello` and `snapshot`, after which every message published
    /// reaches it.
    pub async fn greeted(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut client = Self::open(addr, query, headers).await;
        let hello = client.next_event().await;
        assert_eq!(hello.event(), Some("hello"), "{hello:?}");
        client.hello = hello.data();
        let snapshot = client.next_event().await;
        assert_eq!(snapshot.event(), Some("snapshot"), "{snapshot:?}");
        client.snapshot = snapshot.data();
        client
    }

    /// The next block, the end of the response, or its cut, within [`super::WAIT`].
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(at) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..at + 2).collect();
                let text = String::from_utf8(block[..at].to_vec())
                    .unwrap_or_else(|e| panic!("the stream is not UTF-8: {e}"));
                let lines = text.split('\n').map(str::to_owned).collect();
                return Next::Block(Block { lines });
            }
            match within("the next bytes of the stream", self.response.chunk()).await {
                Ok(Some(bytes)) => self.pending.extend_from_slice(&bytes),
                Ok(None) => {
                    assert!(
                        self.pending.is_empty(),
                        "the stream ended inside a block: {:?}",
                        String::from_utf8_lossy(&self.pending)
                    );
                    return Next::End;
                }
                Err(error) => return Next::Cut(format!("{error:?}")),
            }
        }
    }

    /// The next block; panics at the end of the stream.
    pub async fn next_block(&mut self) -> Block {
        match self.next().await {
            Next::Block(block) => block,
            other => panic!("the stream ended: {other:?}"),
        }
    }

    /// The next event, skipping comments (heartbeats).
    pub async fn next_event(&mut self) -> Block {
        loop {
            let block = self.next_block().await;
            if !block.is_comment() {
                return block;
            }
        }
    }

    /// Reads until the stream ends, skipping everything but a `close` event: its data, and
    /// whether the stream ended cleanly right after it.
    pub async fn closed(&mut self) -> (Option<Value>, Next) {
        let mut close = None;
        loop {
            match self.next().await {
                Next::Block(block) if block.event() == Some("close") => {
                    close = Some(block.data());
                }
                Next::Block(block) => {
                    assert!(close.is_none(), "a block after the close event: {block:?}")
                }
                end => return (close, end),
            }
        }
    }
}
