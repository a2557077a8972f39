// Over 400 lines on purpose: each scenario is one browser session told top to bottom, and the
// user's site they share (page, server, tokens) belongs with them.
//! `/fanout.js` in a real headless Chromium (harness/browser.rs), from a user's own page on
//! another origin: it imports the module across origins, receives metrics and alerts, reconnects
//! by itself after its connection is cut (through the harness's TCP proxy) and resumes the alert
//! published meanwhile, resumes after `close()` and `reconnect()`, and reports a resume from
//! another log's epoch as incomplete; and passes its token to a worker with authentication.
//! Over WebSocket from another origin, over SSE from the worker's (the SSE endpoint sends no CORS
//! headers), and in a page without WebSocket, where `transport: "auto"` falls back to SSE; in a
//! page whose upgrades keep failing, to SSE and back to WebSocket once they work. And the
//! browser's own `EventSource`, without the library: cut, it reconnects by itself with
//! `Last-Event-ID` and gets the alert it missed.

mod harness;

use fantoccini::Locator;
use harness::auth::{valid_token, SECRET};
use harness::browser::{browser, chromedriver, run, wait_for};
use harness::http::publish;
use harness::proxy::Proxy;
use harness::{start_worker, wait_until, On, Process};
use serde_json::json;

/// Serves `page` as the answer to every request on a port of 127.0.0.1: a user's own site, on
/// another origin than the worker's.
async fn serve_page(page: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                // The request itself does not matter: read its head, answer, close.
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A user's page: imports the worker's `/fanout.js` and lists what it receives; `window.client`
/// is the session, `window.resumes` the `resume` and `incomplete` events.
fn user_page(worker: std::net::SocketAddr, options: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>my page</title><ul id="log"></ul>
<script type="module">
import {{ connect }} from "http://{worker}/fanout.js";
const log = (kind, text) => {{ const li = document.createElement("li"); li.className = kind; li.textContent = text; document.getElementById("log").append(li); }};
window.resumes = [];
window.connectWithComma = (selector) => connect({{ url: "http://{worker}", selector }});
const client = window.client = connect({options});
window.delays = [];
client.on("state", (s) => {{ document.body.dataset.state = s.state; document.body.dataset.transport = s.transport; if (s.delayMs !== undefined) window.delays.push(s.delayMs); }});
client.on("metrics", (frame) => frame.data.forEach((m) => log("metric", m.name + "=" + m.value)));
client.on("alert", (frame) => log("alert", frame.data.severity + ": " + frame.data.message));
client.on("resume", (frame) => window.resumes.push(frame));
client.on("incomplete", (frame) => window.resumes.push({{ incomplete: true }}));
</script>"#
    )
}

/// A browser on the user's page importing `worker`'s `/fanout.js` with `options`, served from a
/// site of its own (another origin than the worker's). Keep the driver as long as the browser.
async fn open_user_page(
    worker: std::net::SocketAddr,
    options: &str,
) -> (harness::browser::Driver, fantoccini::Client) {
    let site = serve_page(user_page(worker, options)).await;
    let driver = chromedriver().await;
    let browser = browser(&driver).await;
    browser
        .goto(&format!("http://{site}/"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (driver, browser)
}

/// Where the user's page comes from.
enum PageOrigin {
    /// A site of its own (another port: another origin): `/fanout.js` is imported across
    /// origins, which needs its CORS header.
    OwnSite,
    /// The worker's origin (written into a page the worker served): what fanout.js's SSE
    /// transport needs, since the SSE contract has no CORS headers.
    Worker,
    /// The worker's origin, in a page without WebSocket (`window.WebSocket` removed first).
    WorkerWithoutWebSocket,
}

/// A user's page receives metrics and an alert through `/fanout.js` on `transport`, and after a
/// disconnect resumes with the alert published meanwhile; a session started from another log's
/// epoch reports the resume incomplete.
async fn a_user_page_receives_and_resumes(transport: &str, origin: PageOrigin, expected: &str) {
    let worker = start_worker::<Process>("worker-u", On::OwnMemory, &[]).await;
    // From its own site the page reaches the worker through a proxy the test can cut; on the
    // worker's origin it connects straight to it (another port would be another origin).
    let proxy = match origin {
        PageOrigin::OwnSite => Some(Proxy::start(worker.addr).await),
        PageOrigin::Worker | PageOrigin::WorkerWithoutWebSocket => None,
    };
    let session_addr = proxy.as_ref().map_or(worker.addr, |proxy| proxy.addr);
    let page = user_page(
        worker.addr,
        &format!(r#"{{ url: "http://{session_addr}", transport: "{transport}" }}"#),
    );
    let driver = chromedriver().await;
    let browser = browser(&driver).await;
    match origin {
        PageOrigin::OwnSite => {
            let site = serve_page(page).await;
            browser
                .goto(&format!("http://{site}/"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        PageOrigin::Worker | PageOrigin::WorkerWithoutWebSocket => {
            browser
                .goto(&format!("http://{}/healthz", worker.addr))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            browser
                .execute(
                    "if (arguments[1]) window.WebSocket = undefined; \
                     document.open(); document.write(arguments[0]); document.close();",
                    vec![
                        json!(page),
                        json!(matches!(origin, PageOrigin::WorkerWithoutWebSocket)),
                    ],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    wait_for(
        &browser,
        "a live session",
        Locator::Css(r#"body[data-state="live"]"#),
    )
    .await;
    assert_eq!(
        run(&browser, "return document.body.dataset.transport;").await,
        json!(expected)
    );

    publish(
        worker.addr,
        "/api/metrics",
        &json!({ "name": "shop.orders", "value": 7.0 }),
    )
    .await;
    publish(
        worker.addr,
        "/api/alerts",
        &json!({ "severity": "warning", "message": "Orders are slow" }),
    )
    .await;
    wait_for(
        &browser,
        "the metric on the user's page",
        Locator::XPath("//li[@class='metric'][. = 'shop.orders=7']"),
    )
    .await;
    wait_for(
        &browser,
        "the alert on the user's page",
        Locator::XPath("//li[@class='alert'][. = 'warning: Orders are slow']"),
    )
    .await;

    // The connection is cut: the client reconnects by itself, after a jittered delay, and gets
    // the alert published meanwhile through the resume.
    if let Some(proxy) = &proxy {
        proxy.cut();
        wait_for(
            &browser,
            "the reconnecting state",
            Locator::Css(r#"body[data-state="reconnecting"]"#),
        )
        .await;
        publish(
            worker.addr,
            "/api/alerts",
            &json!({ "severity": "info", "message": "During the cut" }),
        )
        .await;
        proxy.restore();
        wait_for(
            &browser,
            "the alert published during the cut",
            Locator::XPath("//li[@class='alert'][. = 'info: During the cut']"),
        )
        .await;
        let delays = run(&browser, "return window.delays;").await;
        assert!(
            delays.as_array().is_some_and(
                |delays| !delays.is_empty() && delays.iter().all(|d| d.as_f64() > Some(0.0))
            ),
            "the reconnects waited no delay: {delays}"
        );
    }

    // Closed, an alert is published, reconnected: it comes back through the resume.
    run(&browser, "client.close();").await;
    wait_for(
        &browser,
        "the closed state",
        Locator::Css(r#"body[data-state="closed"]"#),
    )
    .await;
    publish(
        worker.addr,
        "/api/alerts",
        &json!({ "severity": "critical", "message": "While you were away" }),
    )
    .await;
    run(&browser, "client.reconnect();").await;
    wait_for(
        &browser,
        "the alert missed while disconnected",
        Locator::XPath("//li[@class='alert'][. = 'critical: While you were away']"),
    )
    .await;
    let resumes = run(&browser, "return window.resumes;").await;
    let expected = 1 + usize::from(proxy.is_some());
    assert_eq!(
        resumes.as_array().map(Vec::len),
        Some(expected),
        "resume frames: {resumes}"
    );
    for resume in resumes.as_array().into_iter().flatten() {
        assert_eq!(resume["replayed"], json!(1), "resume frames: {resumes}");
        assert_eq!(resume["complete"], json!(true), "resume frames: {resumes}");
    }
    assert_eq!(
        run(
            &browser,
            "return document.querySelectorAll('li.alert').length;"
        )
        .await,
        json!(1 + expected),
        "an alert was shown twice or lost"
    );

    // Resuming from another log's epoch: the page is told alerts may be missing.
    run(
        &browser,
        "window.resumes = []; \
         import(new URL('/fanout.js', client.base).href).then(({ connect }) => { \
           const other = connect({ url: client.base.href, transport: client.options.transport, \
             resume: { id: client.lastAlert.id, epoch: '0000000000000000' } }); \
           other.on('incomplete', (frame) => window.resumes.push({ incomplete: true, complete: frame.complete })); });",
    )
    .await;
    let page = &browser;
    wait_until("the incomplete resume is reported", move || async move {
        run(page, "return window.resumes;").await
            == json!([{ "incomplete": true, "complete": false }])
    })
    .await;
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_user_page_importing_fanout_js_receives_metrics_and_alerts_over_websocket() {
    a_user_page_receives_and_resumes("websocket", PageOrigin::OwnSite, "websocket").await;
}

#[tokio::test]
async fn a_user_page_importing_fanout_js_receives_metrics_and_alerts_over_sse() {
    a_user_page_receives_and_resumes("sse", PageOrigin::Worker, "sse").await;
}

/// The SSE stream answers a page on another origin with the CORS header its origin needs (the
/// origin allowlist decides, as for a WebSocket), so fanout.js's SSE transport works from there.
#[tokio::test]
async fn a_user_page_on_another_origin_receives_metrics_and_alerts_over_sse() {
    a_user_page_receives_and_resumes("sse", PageOrigin::OwnSite, "sse").await;
}

#[tokio::test]
async fn a_user_page_without_websocket_falls_back_to_sse_by_itself() {
    a_user_page_receives_and_resumes("auto", PageOrigin::WorkerWithoutWebSocket, "sse").await;
}

#[tokio::test]
async fn fanout_js_passes_its_token_to_a_worker_with_authentication() {
    let worker =
        start_worker::<Process>("worker-t", On::OwnMemory, &["--auth-secret", SECRET]).await;
    let reader = valid_token(json!({ "sub": "my-page" }));
    // The token as a function: called at every connect, so a page can hand out a fresh one.
    let (_driver, browser) = open_user_page(
        worker.addr,
        &format!(
            r#"{{ url: "http://{}", transport: "websocket", token: () => "{reader}" }}"#,
            worker.addr
        ),
    )
    .await;
    wait_for(
        &browser,
        "a live session with the token",
        Locator::Css(r#"body[data-state="live"]"#),
    )
    .await;
    let publisher = valid_token(json!({ "sub": "test", "publish": true }));
    let status = reqwest::Client::new()
        .post(format!("http://{}/api/metrics", worker.addr))
        .bearer_auth(publisher)
        .json(&json!({ "name": "secure.metric", "value": 1.0 }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status();
    assert_eq!(status.as_u16(), 202);
    wait_for(
        &browser,
        "the metric on the page with a token",
        Locator::XPath("//li[@class='metric'][. = 'secure.metric=1']"),
    )
    .await;
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

/// PROTOCOL.md's fanout.js promises, as a user who read only them found them broken:
/// `subscribe` promises settle with their own answers, also after a request whose `id` the server
/// could not take (its `error` has `id` `null`); a `default` selector the query cannot carry is
/// refused at once (it went into every reconnect's query changed, or refused for good), while
/// the same selector under another id is the server's to take; and after a resume from another
/// log's epoch, the next resume is complete, not reported incomplete again.
#[tokio::test]
async fn fanout_js_settles_each_request_with_its_own_answer_and_resumes_a_reset_log_once() {
    let worker = start_worker::<Process>("worker-p", On::OwnMemory, &[]).await;
    let (_driver, browser) = open_user_page(
        worker.addr,
        &format!(
            r#"{{ url: "http://{}", transport: "websocket", resume: {{ id: "1-0", epoch: "0000000000000000" }} }}"#,
            worker.addr
        ),
    )
    .await;
    wait_for(
        &browser,
        "a live session",
        Locator::Css(r#"body[data-state="live"]"#),
    )
    .await;
    run(
        &browser,
        r#"window.outcomes = [];
        const settle = (name, promise) => promise.then(
          (frame) => window.outcomes.push([name, frame.type, frame.id]),
          (error) => window.outcomes.push([name, "rejected", error.field]));
        settle("long id", client.subscribe("x".repeat(65), { metrics: ["a"] }));
        settle("ok1", client.subscribe("ok1", { metrics: ["b"] }));
        settle("empty pattern", client.subscribe("ok2", { metrics: ["zz", ""] }));
        settle("ok3", client.subscribe("ok3", { metrics: ["c"] }));
        settle("comma default", client.subscribe("default", { metrics: ["a,b"] }));
        settle("negated key default", client.subscribe("default", { where: { "region!": "eu" } }));
        settle("comma elsewhere", client.subscribe("commas", { where: ["env=x,y"] }));
        try { window.thrown = null; window.connectWithComma({ where: ["env=x,y"] }); }
        catch (error) { window.thrown = error.field; }"#,
    )
    .await;
    let page = &browser;
    wait_until("every request settled", move || async move {
        run(page, "return window.outcomes.length;").await == json!(7)
    })
    .await;
    let mut outcomes: Vec<serde_json::Value> = run(&browser, "return window.outcomes;")
        .await
        .as_array()
        .cloned()
        .unwrap_or_default();
    outcomes.sort_by_key(|o| o[0].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        json!(outcomes),
        json!([
            ["comma default", "rejected", "metrics[0]"],
            ["comma elsewhere", "subscribed", "commas"],
            ["empty pattern", "rejected", "metrics[1]"],
            ["long id", "rejected", "id"],
            ["negated key default", "rejected", "where.region!"],
            ["ok1", "subscribed", "ok1"],
            ["ok3", "subscribed", "ok3"],
        ])
    );
    assert_eq!(
        run(&browser, "return window.thrown;").await,
        json!("where[0]")
    );
    assert_eq!(
        run(
            &browser,
            r#"return [client.subscription("ok1"), client.subscription("ok2") ?? null];"#
        )
        .await,
        json!([{ "metrics": ["b"] }, null])
    );
    // The first resume (another log's epoch) was incomplete; the next one is complete.
    run(&browser, "client.reconnect();").await;
    wait_until("the second resume", move || async move {
        run(
            page,
            "return window.resumes.filter((r) => r.type === 'resume').length;",
        )
        .await
            == json!(2)
    })
    .await;
    assert_eq!(
        run(
            &browser,
            "return window.resumes.map((r) => r.incomplete ? 'incomplete' : r.complete);"
        )
        .await,
        json!([false, "incomplete", true])
    );
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

/// PROTOCOL.md: "`connectTimeoutMs` | an attempt not open by then is abandoned (and counts as
/// failed)", over SSE as over WebSocket: against a server that takes the connection and never
/// answers, the SSE attempts are abandoned and retried, not left waiting for the idle timeout.
#[tokio::test]
async fn an_sse_attempt_that_never_opens_is_abandoned_after_the_connect_timeout() {
    let worker = start_worker::<Process>("worker-s", On::OwnMemory, &[]).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = std::sync::Arc::clone(&held);
    tokio::spawn(async move {
        // Takes each connection and never answers it.
        while let Ok((stream, _)) = silent.accept().await {
            holder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stream);
        }
    });
    let (_driver, browser) = open_user_page(
        worker.addr,
        &format!(
            r#"{{ url: "http://{silent_addr}", transport: "sse", connectTimeoutMs: 300, sseIdleTimeoutMs: 600000, backoff: {{ initialMs: 50, maxMs: 100 }} }}"#
        ),
    )
    .await;
    let page = &browser;
    wait_until("three SSE attempts abandoned", move || async move {
        run(page, "return window.delays.length;").await.as_u64() >= Some(3)
    })
    .await;
    assert!(
        held.lock().unwrap_or_else(|e| e.into_inner()).len() >= 3,
        "every retry is a new attempt"
    );
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

/// Makes every WebSocket of the page ask for a path that is no upgrade (404) while
/// `window.blockUpgrades` is true: an upgrade that keeps failing, as behind a proxy that refuses it.
const BLOCK_UPGRADES: &str = "const Real = window.WebSocket; window.blockUpgrades = true; \
    window.WebSocket = class extends Real { constructor(url, protocols) { \
      super(window.blockUpgrades ? url.replace('/ws/performance', '/no-upgrade-here') : url, protocols); } };";

#[tokio::test]
async fn a_user_page_whose_upgrades_keep_failing_falls_back_to_sse_and_back() {
    let worker = start_worker::<Process>("worker-b", On::OwnMemory, &[]).await;
    let page = user_page(
        worker.addr,
        &format!(r#"{{ url: "http://{}", transport: "auto" }}"#, worker.addr),
    );
    let driver = chromedriver().await;
    let browser = browser(&driver).await;
    browser
        .goto(&format!("http://{}/healthz", worker.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    browser
        .execute(
            &format!(
                "{BLOCK_UPGRADES} document.open(); document.write(arguments[0]); document.close();"
            ),
            vec![json!(page)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        &browser,
        "a live session over SSE",
        Locator::Css(r#"body[data-state="live"][data-transport="sse"]"#),
    )
    .await;
    let delays = run(&browser, "return window.delays.length;").await;
    assert!(
        delays.as_u64() >= Some(3),
        "SSE before three failed upgrades (delays: {delays})"
    );
    publish(
        worker.addr,
        "/api/metrics",
        &json!({ "name": "over.sse", "value": 1.0 }),
    )
    .await;
    wait_for(
        &browser,
        "a metric over SSE",
        Locator::XPath("//li[@class='metric'][. = 'over.sse=1']"),
    )
    .await;

    // Upgrades work again: a new session tries WebSocket first.
    run(
        &browser,
        "window.blockUpgrades = false; client.reconnect();",
    )
    .await;
    wait_for(
        &browser,
        "a live session over WebSocket",
        Locator::Css(r#"body[data-state="live"][data-transport="websocket"]"#),
    )
    .await;
    publish(
        worker.addr,
        "/api/metrics",
        &json!({ "name": "over.websocket", "value": 2.0 }),
    )
    .await;
    wait_for(
        &browser,
        "a metric over WebSocket",
        Locator::XPath("//li[@class='metric'][. = 'over.websocket=2']"),
    )
    .await;
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

/// PROTOCOL.md "Server-Sent Events", with the browser's own `EventSource` and no library: events
/// named by type, an alert's `id:` as the event's `lastEventId`, and after the connection is cut
/// the browser reconnects by itself with `Last-Event-ID`, and the alert published meanwhile
/// arrives through the resume (complete), once.
#[tokio::test]
async fn a_browser_event_source_resumes_with_last_event_id_after_a_cut() {
    let worker = start_worker::<Process>("worker-e", On::OwnMemory, &[]).await;
    // The page and its stream share the proxy's origin (the SSE contract has no CORS headers).
    let proxy = Proxy::start(worker.addr).await;
    let driver = chromedriver().await;
    let browser = browser(&driver).await;
    browser
        .goto(&format!("http://{}/healthz", proxy.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let page = r#"<!doctype html><meta charset="utf-8"><ul id="log"></ul><script>
window.opens = 0; window.resumes = [];
const log = (kind, text) => { const li = document.createElement("li"); li.className = kind; li.textContent = text; document.getElementById("log").append(li); };
const source = new EventSource("/sse/performance?metrics=none.at.all");
source.onopen = () => { window.opens += 1; document.body.dataset.opens = window.opens; };
source.addEventListener("hello", () => { document.body.dataset.hello = "yes"; });
source.addEventListener("alert", (e) => log("alert", JSON.parse(e.data).data.message + " @ " + e.lastEventId + " = " + JSON.parse(e.data).id + "/" + JSON.parse(e.data).epoch));
source.addEventListener("resume", (e) => window.resumes.push(JSON.parse(e.data)));
</script>"#;
    browser
        .execute(
            "document.open(); document.write(arguments[0]); document.close();",
            vec![json!(page)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        &browser,
        "hello over the page's EventSource",
        Locator::Css(r#"body[data-hello="yes"]"#),
    )
    .await;
    publish(
        worker.addr,
        "/api/alerts",
        &json!({ "severity": "warning", "message": "before" }),
    )
    .await;
    wait_for(
        &browser,
        "the first alert, its id the event's lastEventId",
        Locator::XPath("//li[@class='alert'][starts-with(., 'before @ ')]"),
    )
    .await;
    let first = run(
        &browser,
        "return document.querySelector('li.alert').textContent;",
    )
    .await;
    let first = first.as_str().unwrap_or_default().to_owned();
    let (last_event_id, frame_id) = first
        .trim_start_matches("before @ ")
        .split_once(" = ")
        .unwrap_or_else(|| panic!("{first}"));
    assert_eq!(
        last_event_id, frame_id,
        "id: is ID/EPOCH of the alert frame"
    );

    proxy.cut();
    publish(
        worker.addr,
        "/api/alerts",
        &json!({ "severity": "critical", "message": "during the cut" }),
    )
    .await;
    proxy.restore();
    wait_for(
        &browser,
        "the alert published during the cut, after the browser reconnected by itself",
        Locator::XPath("//li[@class='alert'][starts-with(., 'during the cut @ ')]"),
    )
    .await;
    let resumes = run(&browser, "return window.resumes;").await;
    let after = last_event_id.split_once('/').map(|(id, _)| id);
    assert!(
        resumes.as_array().is_some_and(|resumes| resumes.len() == 1
            && resumes[0]["after"].as_str() == after
            && resumes[0]["complete"] == true
            && resumes[0]["replayed"] == 1),
        "one complete resume after {after:?} replaying the one alert missed: {resumes}"
    );
    let opens = run(&browser, "return window.opens;").await;
    assert_eq!(
        opens, 2,
        "the EventSource opened twice: at first and after the cut"
    );
    let alerts = run(
        &browser,
        "return Array.from(document.querySelectorAll('li.alert')).map((li) => li.textContent.split(' @ ')[0]);",
    )
    .await;
    assert_eq!(
        alerts,
        json!(["before", "during the cut"]),
        "each alert once"
    );
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}
