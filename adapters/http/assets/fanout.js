// Over 400 lines on purpose: one self-contained ES module (no build step, no imports), the
// browser client of docs/PROTOCOL.md; its two transports share the session state kept here.
//
// fanout.js: the browser client of fanout (docs/PROTOCOL.md, "fanout.js in the browser").
//
//   import { connect } from "/fanout.js";
//   const client = connect({ selector: { metrics: ["api.*"] } });
//   client.on("metrics", (frame) => console.log(frame.data));
//
// One session with one worker at a time, over WebSocket (`/ws/performance`) or, when WebSocket
// is unavailable or its upgrade keeps failing, over Server-Sent Events (`/sse/performance`).
// It reconnects with a jittered exponential backoff, resumes alerts after the last one it
// received (`last_alert_id` + `epoch`), and keeps the subscriptions the server accepted across
// reconnects. It never buffers frames: every frame is handed to the handlers as it arrives.

/** The frame types a handler can listen to, besides the client's own `state`, `close` and `incomplete`. */
export const FRAME_TYPES = ["hello", "snapshot", "resume", "metrics", "alert", "subscribed", "unsubscribed", "error"];

const DEFAULTS = {
  transport: "auto",        // "auto": WebSocket, SSE after `fallbackAfter` failed upgrades; or "websocket" | "sse"
  fallbackAfter: 3,         // WebSocket attempts that never opened, in a row, before "auto" tries SSE
  backoff: { initialMs: 250, maxMs: 5000 },
  connectTimeoutMs: 10000,  // an attempt not open by then counts as failed
  sseIdleTimeoutMs: 45000,  // an SSE stream silent this long (no event, no `: ping`) is reopened
};

/** Opens a session; see `FanoutClient`. */
export function connect(options = {}) {
  return new FanoutClient(options);
}

/**
 * A selector (`{metrics, where, alerts, interval}`, PROTOCOL.md "Subscriptions") as the query
 * parameters of `/ws/performance` and `/sse/performance`. `metrics` absent: every metric; `[]`:
 * none. `where` is an array of matchers (`"env!=test"`) or an object (`{service: "checkout"}`).
 */
export function selectorQuery(selector = {}) {
  const query = new URLSearchParams();
  if (Array.isArray(selector.metrics)) query.set("metrics", selector.metrics.join(","));
  const where = matchers(selector.where);
  if (where.length) query.set("where", where.join(","));
  if (selector.alerts) query.set("alerts", selector.alerts);
  if (selector.interval) query.set("interval", String(selector.interval));
  return query;
}

function matchers(where) {
  if (!where) return [];
  if (Array.isArray(where)) return where;
  return Object.entries(where).map(([key, value]) => key + "=" + value);
}

/**
 * Why `selector` cannot be written as the query parameters, or `null` when it can: in the query
 * `,` separates terms, and a matcher's key ends at its first `=` (a `!` right before negates),
 * so a pattern or value holding `,`, or an object key holding `=` or `,` or ending in `!`, would
 * ask for something else. The `default` subscription travels in the query (every reconnect);
 * such a selector can be any other subscription (sent as a frame).
 */
export function queryProblem(selector = {}) {
  const patterns = Array.isArray(selector.metrics) ? selector.metrics : [];
  const pattern = patterns.findIndex((p) => String(p).includes(","));
  if (pattern >= 0) return { field: "metrics[" + pattern + "]", error: "a pattern holding \",\" cannot be written in the query" };
  const where = selector.where;
  if (Array.isArray(where)) {
    const matcher = where.findIndex((m) => String(m).includes(","));
    if (matcher >= 0) return { field: "where[" + matcher + "]", error: "a matcher holding \",\" cannot be written in the query" };
  } else if (where) {
    for (const [key, value] of Object.entries(where)) {
      if (/[=,]/.test(key) || key.endsWith("!") || String(value).includes(",")) {
        return { field: "where." + key, error: "a label key holding \"=\" or \",\" or ending in \"!\", or a value holding \",\", cannot be written in the query" };
      }
    }
  }
  return null;
}

function refusal(id, problem) {
  const frame = { type: "error", id, error: problem.error + ": use another subscription id for it", field: problem.field };
  return Object.assign(new Error(frame.error), { frame, field: frame.field });
}

/** The `subscribe` request frame of a selector. */
function subscribeFrame(id, selector = {}) {
  const frame = { type: "subscribe", id };
  if (Array.isArray(selector.metrics)) frame.metrics = selector.metrics;
  if (selector.where !== undefined) frame.where = selector.where;
  if (selector.alerts) frame.alerts = selector.alerts;
  if (selector.interval) frame.interval = String(selector.interval);
  return frame;
}

/**
 * One client session. Events (`on(type, handler)`, returns a function that removes the handler):
 * - every frame type in `FRAME_TYPES`, with the frame as the server sent it;
 * - `state`: `{state, transport, attempt, delayMs}`, `state` one of `connecting`, `open`
 *   (transport open, waiting for `hello`), `live` (`hello` received), `reconnecting` (waiting
 *   `delayMs` before the next attempt), `closed` (after `close()`);
 * - `close`: `{code, reason, transport}`, the server's close (WebSocket close frame, SSE `close` event);
 * - `incomplete`: a `resume` frame with `complete: false` (alerts were missed for good).
 */
export class FanoutClient {
  constructor(options = {}) {
    const problem = queryProblem(options.selector);
    if (problem) throw refusal("default", problem);
    this.options = Object.assign({}, DEFAULTS, options);
    this.options.backoff = Object.assign({}, DEFAULTS.backoff, options.backoff);
    // The worker: the `url` option, else the origin fanout.js was loaded from.
    this.base = new URL(options.url || "/", import.meta.url);
    this.state = "connecting";
    this.transport = this._firstTransport();
    this.url = null;                   // the URL of the current (or last) attempt
    this.lastAlert = options.resume && options.resume.id ? { id: options.resume.id, epoch: options.resume.epoch || null } : null;
    this._handlers = new Map();
    this._accepted = new Map([["default", options.selector || {}]]); // what the server took: asked again on reconnect
    this._outbox = [];                 // requests waiting for `hello` (or for a reopened SSE stream)
    this._inflight = [];               // requests sent on this connection, unanswered (answers come in order)
    this._greeted = false;
    this._failures = 0;                // attempts in a row that did not reach `hello`: the backoff's exponent
    this._unopened = 0;                // WebSocket attempts in a row that never opened: the SSE fallback's count
    this._connection = null;           // {kind, stop()} of the current attempt
    this._timer = null;
    this._stopped = false;
    // Handlers attached right after connect() see the first `connecting`. A subscribe("default")
    // over SSE made before then has opened the stream already (with its query): not twice.
    queueMicrotask(() => { if (!this._connection) this._open(); });
  }

  /** Calls `handler(event)` for every event of `type`; returns the function that stops it. */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this._handlers.get(type).delete(handler);
  }

  /**
   * Adds or replaces subscription `id` (`default` is the connect-time one). Resolves with the
   * `subscribed` frame, rejects with an Error carrying the `error` frame (`.frame`, `.field`).
   * Sent after `hello`; kept over reconnects once accepted. Over SSE only `default` exists, and
   * changing it reopens the stream with the new query (the frames then start again with
   * `hello` and `snapshot`; a `subscribed` frame is emitted in between, as over WebSocket).
   */
  subscribe(id, selector = {}) {
    const problem = id === "default" ? queryProblem(selector) : null;
    if (problem) return Promise.reject(refusal(id, problem));
    return this._request({ kind: "subscribe", id, selector });
  }

  /** The selector of subscription `id` as the server last accepted it (`undefined`: none). */
  subscription(id) {
    return this._accepted.get(id);
  }

  /** Removes subscription `id`; resolves with the `unsubscribed` frame. WebSocket only. */
  unsubscribe(id) {
    return this._request({ kind: "unsubscribe", id });
  }

  /**
   * Drops the current connection and connects again at once (also after `close()`); with
   * `transport: "auto"` the transport is chosen afresh (WebSocket first).
   */
  reconnect() {
    this._stopped = false;
    this._failures = 0;
    if (this.options.transport === "auto") { this.transport = this._firstTransport(); this._unopened = 0; }
    this._drop();
    this._open();
  }

  /** Ends the session: no more reconnects until `reconnect()`. */
  close() {
    this._stopped = true;
    this._drop();
    this._setState("closed");
  }

  // ---- events ----

  _emit(type, event) {
    for (const handler of [...(this._handlers.get(type) || [])]) {
      try { handler(event); } catch (error) { console.error("fanout.js: a " + type + " handler threw", error); }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", Object.assign({ state, transport: this.transport, attempt: this._failures }, extra));
  }

  // ---- requests ----

  _request(request) {
    return new Promise((resolve, reject) => {
      Object.assign(request, { resolve, reject });
      if (this.transport === "sse") return this._sseRequest(request);
      this._outbox.push(request);
      this._flush();
    });
  }

  _flush() {
    const socket = this._connection && this._connection.socket;
    if (!this._greeted || !socket || socket.readyState !== WebSocket.OPEN) return;
    while (this._outbox.length) {
      const request = this._outbox.shift();
      const frame = request.kind === "subscribe" ? subscribeFrame(request.id, request.selector) : { type: "unsubscribe", id: request.id };
      this._inflight.push(request);
      socket.send(JSON.stringify(frame));
    }
  }

  _answer(frame) {
    const request = this._inflight.shift();
    if (!request) return;
    if (frame.type === "error") {
      const error = new Error(frame.error);
      error.frame = frame;
      error.field = frame.field;
      request.reject(error);
      return;
    }
    if (frame.type === "subscribed") this._accepted.set(request.id, request.selector);
    if (frame.type === "unsubscribed") this._accepted.delete(request.id);
    request.resolve(frame);
  }

  // ---- connection lifecycle ----

  _firstTransport() {
    if (this.options.transport === "sse") return "sse";
    if (this.options.transport === "websocket") return "websocket";
    return typeof WebSocket === "undefined" ? "sse" : "websocket";
  }

  _query(selector) {
    const query = selectorQuery(selector);
    const token = typeof this.options.token === "function" ? this.options.token() : this.options.token;
    if (token) query.set("token", token);
    if (this.lastAlert) {
      query.set("last_alert_id", this.lastAlert.id);
      if (this.lastAlert.epoch) query.set("epoch", this.lastAlert.epoch);
    }
    return query;
  }

  _endpoint(path, selector) {
    const url = new URL(path, this.base);
    if (path.startsWith("/ws/")) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const query = this._query(selector).toString();
    url.search = query ? "?" + query : "";
    return url.toString();
  }

  _open() {
    if (this._stopped) return;
    // One attempt at a time: a connection still open is dropped (its unanswered requests go
    // back to the outbox) before the next one starts.
    if (this._connection) this._drop();
    clearTimeout(this._timer);
    this._greeted = false;
    this._setState(this.state === "connecting" ? "connecting" : "reconnecting");
    if (this.transport === "sse") this._openSse(); else this._openWebSocket();
  }

  /** Ends the current attempt without scheduling another; unanswered requests go back to the outbox. */
  _drop() {
    clearTimeout(this._timer);
    if (this._connection) { const connection = this._connection; this._connection = null; connection.stop(); }
    this._greeted = false;
    this._outbox.unshift(...this._inflight);
    this._inflight = [];
  }

  /** The attempt ended (or failed): waits a jittered, growing delay, then tries again. */
  _retry() {
    this._drop();
    if (this._stopped) return;
    const { initialMs, maxMs } = this.options.backoff;
    const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(this._failures, 16));
    const delayMs = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
    this._failures += 1;
    this._setState("reconnecting", { delayMs });
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  /** Called with every frame, whichever the transport. */
  _frame(frame) {
    switch (frame.type) {
      case "hello":
        this._greeted = true;
        this._failures = 0;
        this._unopened = 0;
        this._setState("live");
        break;
      case "alert":
        if (frame.id) this.lastAlert = { id: frame.id, epoch: frame.epoch || null };
        break;
      case "subscribed": case "unsubscribed":
        if (this.transport === "websocket") this._answer(frame);
        break;
      case "error":
        // On WebSocket every `error` answers the oldest request (answers come in order), its
        // `id` `null` too (a request whose id the server could not take). Over SSE nothing is
        // asked on the stream, so no error frame answers a request.
        if (this.transport === "websocket") this._answer(frame);
        break;
      case "resume":
        // The log's epoch now: after a reset the replay was the whole new log, so the next
        // resume starts from its beginning (the replayed alerts that follow move it on), not
        // again from a position of the old log (which would be reported incomplete each time).
        if (frame.epoch && (!this.lastAlert || this.lastAlert.epoch !== frame.epoch)) {
          this.lastAlert = { id: this.lastAlert && !this.lastAlert.epoch ? this.lastAlert.id : "0-0", epoch: frame.epoch };
        }
        break;
    }
    this._emit(frame.type, frame);
    if (frame.type === "resume" && frame.complete === false) this._emit("incomplete", frame);
    if (frame.type === "hello") {
      if (this.transport === "websocket") this._resubscribe();
      else this._sseGreeted();
    }
  }

  // ---- WebSocket ----

  _openWebSocket() {
    this.url = this._endpoint("/ws/performance", this._accepted.get("default"));
    const socket = new WebSocket(this.url);
    let opened = false;
    const timeout = setTimeout(() => socket.close(), this.options.connectTimeoutMs);
    const connection = { kind: "websocket", socket, stop: () => { clearTimeout(timeout); socket.onclose = null; socket.onmessage = null; socket.close(); } };
    this._connection = connection;
    socket.onopen = () => { opened = true; clearTimeout(timeout); this._unopened = 0; this._setState("open"); };
    socket.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch (error) { return; }
      this._frame(frame);
    };
    socket.onclose = (event) => {
      clearTimeout(timeout);
      if (this._connection !== connection) return;
      if (opened) this._emit("close", { code: event.code, reason: event.reason, transport: "websocket" });
      else this._unopened += 1;
      if (!opened && this.options.transport === "auto" && this._unopened >= this.options.fallbackAfter) this.transport = "sse";
      this._retry();
    };
  }

  /** After `hello` on a new WebSocket: the accepted subscriptions besides `default` (which is in the URL), then queued requests. */
  _resubscribe() {
    const queued = new Set(this._outbox.map((request) => request.id));
    const again = [];
    for (const [id, selector] of this._accepted) {
      if (id !== "default" && !queued.has(id)) again.push({ kind: "subscribe", id, selector, resolve() {}, reject() {} });
    }
    this._outbox.unshift(...again);
    this._flush();
  }

  // ---- Server-Sent Events (one-way: selectors only in the query) ----

  _sseRequest(request) {
    if (request.id !== "default" || request.kind !== "subscribe") {
      const frame = { type: "error", id: request.id, error: "over SSE only the default subscription exists, changed with subscribe(\"default\", …)", field: "id" };
      this._emit("error", frame);
      const error = new Error(frame.error);
      error.frame = frame;
      error.field = frame.field;
      request.reject(error);
      return;
    }
    // The stream is reopened with the new query; an older change still waiting is superseded.
    this._drop();
    for (const waiting of this._outbox.splice(0)) waiting.reject(Object.assign(new Error("superseded by a newer subscribe"), { frame: null, field: null }));
    this._outbox.push(request);
    this._open();
  }

  /** `hello` on an SSE stream: the change of `default` it was opened for (if any) is now in effect. */
  _sseGreeted() {
    const request = this._connection && this._connection.request;
    if (!request) return;
    this._connection.request = null;
    this._inflight = this._inflight.filter((waiting) => waiting !== request);
    this._accepted.set("default", request.selector);
    const frame = { type: "subscribed", id: "default" };
    this._emit("subscribed", frame);
    request.resolve(frame);
  }

  _openSse() {
    const pending = this._outbox.findIndex((request) => request.kind === "subscribe" && request.id === "default");
    const request = pending >= 0 ? this._outbox.splice(pending, 1)[0] : null;
    if (request) this._inflight.push(request);
    this.url = this._endpoint("/sse/performance", request ? request.selector : this._accepted.get("default"));
    const abort = new AbortController();
    let idle = null;
    // `request`: the change of `default` this stream was opened with, settled by its `hello`.
    const connection = { kind: "sse", socket: null, request, stop: () => { clearTimeout(idle); clearTimeout(opening); abort.abort(); } };
    this._connection = connection;
    const current = () => this._connection === connection;
    const watchIdle = () => { clearTimeout(idle); idle = setTimeout(() => abort.abort(), this.options.sseIdleTimeoutMs); };
    watchIdle();
    // Not open (no answer to the request) by `connectTimeoutMs`: abandoned, a failed attempt.
    const opening = setTimeout(() => abort.abort(), this.options.connectTimeoutMs);
    const ended = () => {
      clearTimeout(idle);
      clearTimeout(opening);
      if (!current()) return;
      // In "auto" mode every new session tries WebSocket first again (SSE was a fallback: the
      // worker may have been down rather than the upgrade blocked).
      if (this.options.transport === "auto" && typeof WebSocket !== "undefined") { this.transport = "websocket"; this._unopened = 0; }
      this._retry();
    };
    fetch(this.url, { headers: { accept: "text/event-stream" }, cache: "no-store", signal: abort.signal })
      .then(async (response) => {
        clearTimeout(opening);
        if (!current()) return;
        if (response.status === 400 && request) {
          // The new selector was refused before the stream: the old one stays.
          const body = await response.json().catch(() => ({}));
          this._inflight = this._inflight.filter((waiting) => waiting !== request);
          const frame = { type: "error", id: "default", error: body.error || "refused", field: body.field ?? null };
          this._emit("error", frame);
          request.reject(Object.assign(new Error(frame.error), { frame, field: frame.field }));
          clearTimeout(idle);
          this._connection = null;
          this._open();
          return;
        }
        const type = response.headers.get("content-type") || "";
        if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
          if (response.status !== 404 && response.status !== 405) this._emit("close", { code: response.status, reason: await response.text().catch(() => ""), transport: "sse" });
          ended();
          return;
        }
        this._setState("open");
        await this._readEvents(response.body, watchIdle, current);
        ended();
      })
      .catch(() => ended());
  }

  /** Reads `text/event-stream` (the WHATWG event stream format) and hands each event on. */
  async _readEvents(body, watchIdle, current) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "message", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || !current()) return;
      watchIdle();
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an unfinished line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) this._sseEvent(event.type, event.data.join("\n"));
          if (!current()) return;
          event = { type: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the heartbeat `: ping`
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.type = value;
        else if (field === "data") event.data.push(value);
        // `id:` repeats the alert's id and epoch, which the frame carries too; `retry:` is for EventSource.
      }
    }
  }

  _sseEvent(type, data) {
    let payload;
    try { payload = JSON.parse(data); } catch (error) { return; }
    if (type === "close") {
      this._emit("close", { code: payload.code, reason: payload.reason, transport: "sse" });
      return;
    }
    if (FRAME_TYPES.includes(type)) this._frame(payload);
  }
}
