//! The dashboard and `/fanout.js` in a real headless Chromium (Debian's chromium + chromedriver,
//! driven over WebDriver). The dashboard served by worker A, fed by messages published through
//! worker B, through a real Redis: two workers' series overlaid in one chart with a legend,
//! axes and humanized values read from the DOM; then Redis restarts and the page shows it and
//! recovers. Its filter box: applied through the form, kept over a reload and a reconnect,
//! refused filters shown at their field. Its pause, its alert severity filter and a phone-wide
//! window. And a user's own page, on another origin, importing `/fanout.js`: metrics, alerts and
//! a resume after a disconnect (over WebSocket; the SSE variant waits for `/sse/performance`).

mod harness;

use std::process::Stdio;
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use harness::http::publish;
use harness::proxy::Proxy;
use harness::redis::RedisServer;
use harness::{free_port, start_worker, wait_until, On, Process, WAIT};
use serde_json::json;

/// chromedriver on a free port; killed when dropped.
struct Driver {
    _child: tokio::process::Child,
    port: u16,
}

async fn chromedriver() -> Driver {
    let port = free_port();
    let binary = ["chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|candidate| std::process::Command::new(candidate).arg("--version").output().is_ok())
        .unwrap_or_else(|| panic!("chromedriver not found: install Debian's chromium and chromium-driver (scripts/test does)"));
    let child = tokio::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromedriver: {e}"));
    wait_until("chromedriver listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Driver {
        _child: child,
        port,
    }
}

async fn browser(driver: &Driver) -> Browser {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900"] }),
    );
    // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap_or_else(|e| panic!("cannot start headless Chromium through chromedriver: {e}"))
}

async fn wait_for(browser: &Browser, what: &str, locator: Locator<'_>) {
    browser
        .wait()
        .at_most(WAIT)
        .every(Duration::from_millis(100))
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("the page never showed {what}: {e}"));
}

/// The `data-metric` of every chart on the page, in page order.
async fn charted_metrics(browser: &Browser) -> Vec<String> {
    let mut names = Vec::new();
    for chart in browser
        .find_all(Locator::Css("#charts .chart"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    {
        let name = chart
            .attr("data-metric")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        names.push(name.unwrap_or_default());
    }
    names
}

/// Fails unless every chart on the page is of a metric named `api.*`.
async fn assert_only_api_charts(browser: &Browser, moment: &str) {
    let names = charted_metrics(browser).await;
    assert!(
        names.iter().all(|name| name.starts_with("api.")),
        "{moment}: the page charts metrics outside the filter api.*: {names:?}"
    );
}

async fn value_of(browser: &Browser, id: &str) -> String {
    let input = browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no #{id}: {e}"));
    input
        .prop("value")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default()
}

/// Replaces the text of the input `id` with `text` (typed, as a user would).
async fn type_into(browser: &Browser, id: &str, text: &str) {
    let input = browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no #{id}: {e}"));
    input.clear().await.unwrap_or_else(|e| panic!("{e}"));
    input
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("cannot type into #{id}: {e}"));
}

async fn click(browser: &Browser, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn fragment(browser: &Browser) -> Option<String> {
    let url = browser
        .current_url()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    url.fragment().map(str::to_owned)
}

/// Publishes `excluded` and `included` in one batch (`excluded` first), then `marker` on its own:
/// the frames of one connection come in order, so once the marker's chart shows, anything of
/// the batch the page was sent is charted too.
async fn publish_then_marker(
    addr: std::net::SocketAddr,
    excluded: &str,
    included: &str,
    marker: &str,
) {
    publish(
        addr,
        "/api/metrics",
        &json!([{ "name": excluded, "value": 1.0 }, { "name": included, "value": 2.0 }]),
    )
    .await;
    publish(
        addr,
        "/api/metrics",
        &json!({ "name": marker, "value": 3.0 }),
    )
    .await;
}

/// The text of the first element `css` selects.
async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The text content of every element `css` selects (SVG text included, visible or not).
async fn texts_of(browser: &Browser, css: &str) -> Vec<String> {
    let texts = browser
        .execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);",
            vec![json!(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_value(texts).unwrap_or_else(|e| panic!("{e}"))
}

/// `19.8 MiB`, `512 B`: a number and a byte unit scaled to it (below 1024 of it: `20795392 B`
/// is not humanized).
fn is_bytes(text: &str) -> bool {
    text.split_once(' ').is_some_and(|(number, unit)| {
        number.parse::<f64>().is_ok_and(|n| n.abs() < 1024.0)
            && ["B", "KiB", "MiB", "GiB", "TiB"].contains(&unit)
    })
}

/// `19:58:30` or `19:58`: a time of day.
fn is_clock(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
}

fn chart(metric: &str) -> String {
    format!(r#".chart[data-metric="{metric}"]"#)
}

#[tokio::test]
async fn the_dashboard_filter_subscribes_is_kept_and_shows_refusals_at_their_field() {
    dashboard_filter("websocket").await;
}

#[tokio::test]
#[ignore = "needs GET /sse/performance (being built on another branch): enable once it is on main"]
async fn the_dashboard_filter_over_sse_reopens_the_stream_and_shows_refusals() {
    dashboard_filter("sse").await;
}

/// The filter box on `transport` (the dashboard's `?transport=`): over SSE each change reopens
/// the stream with the new query, and a refusal is the `400` before the stream.
async fn dashboard_filter(transport: &str) {
    let worker =
        start_worker::<Process>("worker-f", On::OwnMemory, &["--metrics-interval", "1s"]).await;
    let driver = chromedriver().await;
    let browser = browser(&driver).await;
    browser
        .goto(&format!("http://{}/?transport={transport}", worker.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&browser, "the live state", Locator::Css("#status.live")).await;
    assert_eq!(
        run(&browser, "return dashboard.client.transport;").await,
        json!(transport)
    );
    wait_for(
        &browser,
        "no filter",
        Locator::Css("#filter-state.everything"),
    )
    .await;

    // Without a filter the page shows everything, as before.
    publish(
        worker.addr,
        "/api/metrics",
        &json!({ "name": "db.before", "value": 1.0 }),
    )
    .await;
    wait_for(
        &browser,
        "db.before before any filter",
        Locator::Css(&chart("db.before")),
    )
    .await;

    // `api.*` typed and applied with Enter: the page starts over from the filtered snapshot.
    type_into(
        &browser,
        "filter-metrics",
        &("api.*".to_owned() + &char::from(Key::Enter).to_string()),
    )
    .await;
    wait_for(
        &browser,
        "the applied filter",
        Locator::Css("#filter-state.applied"),
    )
    .await;
    assert_only_api_charts(&browser, "right after applying").await;
    assert_eq!(fragment(&browser).await.as_deref(), Some("metrics=api.*"));

    publish_then_marker(worker.addr, "db.y", "api.x", "api.z").await;
    wait_for(&browser, "api.z", Locator::Css(&chart("api.z"))).await;
    wait_for(&browser, "api.x", Locator::Css(&chart("api.x"))).await;
    assert_only_api_charts(&browser, "after db.y, api.x and api.z").await;

    // A reload applies the filter from the URL again: its snapshot holds api.x, not db.y.
    browser.refresh().await.unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        &browser,
        "the filter after a reload",
        Locator::Css("#filter-state.applied"),
    )
    .await;
    assert_eq!(value_of(&browser, "filter-metrics").await, "api.*");
    wait_for(
        &browser,
        "api.x from the filtered snapshot",
        Locator::Css(&chart("api.x")),
    )
    .await;
    wait_for(
        &browser,
        "api.z from the filtered snapshot",
        Locator::Css(&chart("api.z")),
    )
    .await;
    assert_only_api_charts(&browser, "after the reload").await;

    // A reconnect asks for the accepted filter in the WebSocket URL.
    browser
        .execute("dashboard.client.reconnect();", vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let page = &browser;
    wait_until(
        "the page reconnects with the filter in its WebSocket URL",
        move || async move {
            let url = page
                .execute(
                    "const c = dashboard.client; return c.state === 'live' ? c.url : null;",
                    vec![],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            url.as_str()
                .is_some_and(|url| url.contains("metrics=api.*"))
        },
    )
    .await;
    publish_then_marker(worker.addr, "db.w", "api.v", "api.u").await;
    wait_for(
        &browser,
        "api.u after the reconnect",
        Locator::Css(&chart("api.u")),
    )
    .await;
    assert_only_api_charts(&browser, "after the reconnect").await;

    // An empty pattern: the server's error at the metrics input; the view and the URL stay.
    type_into(&browser, "filter-metrics", "api.*,").await;
    click(&browser, "#filter-form button[type=submit]").await;
    wait_for(
        &browser,
        "the empty pattern's error at the metrics input",
        Locator::XPath("//*[@id='filter-metrics-error'][contains(., 'a pattern is empty')]"),
    )
    .await;
    wait_for(
        &browser,
        "the metrics input marked invalid",
        Locator::Css(r#"#filter-metrics[aria-invalid="true"]"#),
    )
    .await;
    wait_for(
        &browser,
        "the refusal",
        Locator::Css("#filter-state.rejected"),
    )
    .await;
    assert_eq!(fragment(&browser).await.as_deref(), Some("metrics=api.*"));
    wait_for(
        &browser,
        "api.x still charted",
        Locator::Css(&chart("api.x")),
    )
    .await;
    publish_then_marker(worker.addr, "db.v", "api.t", "api.s").await;
    wait_for(
        &browser,
        "api.s after the refusal",
        Locator::Css(&chart("api.s")),
    )
    .await;
    assert_only_api_charts(&browser, "after the refused pattern").await;

    // A matcher without `=`: the error at the label input, none left at the metrics input.
    type_into(&browser, "filter-metrics", "api.*").await;
    type_into(&browser, "filter-where", "service").await;
    click(&browser, "#filter-form button[type=submit]").await;
    wait_for(
        &browser,
        "the malformed matcher's error at the label input",
        Locator::XPath("//*[@id='filter-where-error'][contains(., 'is not key=value')]"),
    )
    .await;
    wait_for(
        &browser,
        "the label input marked invalid",
        Locator::Css(r#"#filter-where[aria-invalid="true"]"#),
    )
    .await;
    let metrics_input = browser
        .find(Locator::Id("filter-metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        metrics_input
            .attr("aria-invalid")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        None,
        "the metrics input is still marked invalid"
    );

    // "Show everything" goes back to the unfiltered page and clears the URL's filter.
    click(&browser, "#filter-clear").await;
    wait_for(
        &browser,
        "no filter again",
        Locator::Css("#filter-state.everything"),
    )
    .await;
    assert_eq!(fragment(&browser).await, None);
    publish(
        worker.addr,
        "/api/metrics",
        &json!({ "name": "db.after", "value": 1.0 }),
    )
    .await;
    wait_for(
        &browser,
        "db.after without a filter",
        Locator::Css(&chart("db.after")),
    )
    .await;
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn the_dashboard_shows_what_other_workers_publish_and_survives_a_redis_restart() {
    let redis = RedisServer::start().await;
    let a = start_worker::<Process>(
        "worker-a",
        On::Redis(&redis.url()),
        &["--metrics-interval", "1s"],
    )
    .await;
    let b = start_worker::<Process>(
        "worker-b",
        On::Redis(&redis.url()),
        &["--metrics-interval", "1s"],
    )
    .await;
    let driver = chromedriver().await;
    let browser = browser(&driver).await;

    browser
        .goto(&format!("http://{}/", a.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&browser, "the live state", Locator::Css("#status.live")).await;

    publish(
        b.addr,
        "/api/metrics",
        &json!({ "name": "ui.checkout_latency_ms", "value": 87.5, "unit": "ms" }),
    )
    .await;
    publish(
        b.addr,
        "/api/alerts",
        &json!({ "severity": "critical", "message": "Checkout latency above SLO" }),
    )
    .await;
    wait_for(
        &browser,
        "the metric's chart, worker B's series in its legend",
        Locator::Css(
            r#".chart[data-metric="ui.checkout_latency_ms"] .legend li[data-source="worker-b"]"#,
        ),
    )
    .await;
    assert_eq!(
        text_of(&browser, &(chart("ui.checkout_latency_ms") + " .value")).await,
        "87.5 ms",
        "the latest value, humanized"
    );
    wait_for(&browser, "the alert", Locator::XPath("//ul[@id='alerts']/li[contains(@class,'critical')][contains(., 'Checkout latency above SLO')]")).await;
    // Both workers' monitors report their clients.
    wait_for(
        &browser,
        "worker A's row",
        Locator::Css(r#"#workers tr[data-worker="worker-a"]"#),
    )
    .await;
    wait_for(
        &browser,
        "worker B's row",
        Locator::Css(r#"#workers tr[data-worker="worker-b"]"#),
    )
    .await;

    // Both workers' memory in one chart: two series, a legend, axes with humanized labels.
    let rss = chart("process.rss_bytes");
    wait_for(
        &browser,
        "worker A's series in the memory chart",
        Locator::Css(&format!(r#"{rss} .legend li[data-source="worker-a"]"#)),
    )
    .await;
    wait_for(
        &browser,
        "worker B's series in the same chart",
        Locator::Css(&format!(r#"{rss} .legend li[data-source="worker-b"]"#)),
    )
    .await;
    assert_eq!(
        browser
            .find_all(Locator::Css(&rss))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len(),
        1,
        "the two workers' process.rss_bytes are overlaid in one chart"
    );
    for legend in texts_of(&browser, &format!("{rss} .legend .legend-value")).await {
        assert!(
            is_bytes(&legend),
            "a raw or unscaled byte value in the legend: {legend:?}"
        );
    }
    let y_labels = texts_of(&browser, &format!("{rss} svg .y-axis text")).await;
    assert!(y_labels.len() >= 2, "the value scale has {y_labels:?}");
    for label in &y_labels {
        assert!(
            is_bytes(label),
            "a y-axis label that is not humanized bytes: {label:?}"
        );
    }
    let x_labels = texts_of(&browser, &format!("{rss} svg .x-axis text")).await;
    assert!(x_labels.len() >= 2, "the time axis has {x_labels:?}");
    for label in &x_labels {
        assert!(
            is_clock(label),
            "a time-axis label that is not a time of day: {label:?}"
        );
    }
    assert!(
        browser
            .find_all(Locator::Css(&format!("{rss} svg line.grid")))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len()
            >= y_labels.len() + x_labels.len(),
        "a gridline per tick"
    );
    let rates = texts_of(
        &browser,
        &(chart("fanout.delivered_per_second") + " svg .y-axis text"),
    )
    .await;
    assert!(
        !rates.is_empty()
            && rates
                .iter()
                .all(|label| label.ends_with("/s") && !label.contains(" 1/s")),
        "rate labels: {rates:?}"
    );

    redis.stop().await;
    wait_for(
        &browser,
        "the reconnecting state",
        Locator::Css("#status.reconnecting"),
    )
    .await;
    redis.start_again().await;
    wait_for(
        &browser,
        "the live state again",
        Locator::Css("#status.live"),
    )
    .await;
    publish(
        b.addr,
        "/api/alerts",
        &json!({ "severity": "info", "message": "Back after the restart" }),
    )
    .await;
    wait_for(
        &browser,
        "an alert after the restart",
        Locator::XPath("//ul[@id='alerts']/li[contains(., 'Back after the restart')]"),
    )
    .await;
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `script` in the page and returns its value.
async fn run(browser: &Browser, script: &str) -> serde_json::Value {
    browser
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("`{script}` failed: {e}"))
}

#[tokio::test]
async fn the_dashboard_pauses_filters_alerts_by_severity_and_fits_a_phone() {
    let worker =
        start_worker::<Process>("worker-p", On::OwnMemory, &["--metrics-interval", "1s"]).await;
    let driver = chromedriver().await;
    let browser = browser(&driver).await;
    browser
        .goto(&format!("http://{}/", worker.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&browser, "the live state", Locator::Css("#status.live")).await;

    // The severity filter hides the critical alert and keeps the info one.
    for (severity, message) in [("critical", "Disk full"), ("info", "Deploy done")] {
        publish(
            worker.addr,
            "/api/alerts",
            &json!({ "severity": severity, "message": message }),
        )
        .await;
    }
    let critical = "//ul[@id='alerts']/li[contains(@class,'critical')][contains(., 'Disk full')]";
    let info = "//ul[@id='alerts']/li[contains(@class,'info')][contains(., 'Deploy done')]";
    wait_for(&browser, "the critical alert", Locator::XPath(critical)).await;
    wait_for(&browser, "the info alert", Locator::XPath(info)).await;
    click(&browser, r#"#alert-severities input[value="critical"]"#).await;
    let shown = |xpath: &'static str| {
        let page = &browser;
        async move {
            page.find(Locator::XPath(xpath))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .is_displayed()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    assert!(
        !shown(critical).await,
        "the critical alert is shown with critical unticked"
    );
    assert!(
        shown(info).await,
        "the info alert is hidden with only critical unticked"
    );
    click(&browser, r#"#alert-severities input[value="critical"]"#).await;
    assert!(
        shown(critical).await,
        "the critical alert stays hidden once ticked again"
    );

    // Paused: a new metric reaches the page but is not charted until the view resumes.
    click(&browser, "#pause").await;
    wait_for(
        &browser,
        "the paused state",
        Locator::Css(r#"#pause[aria-pressed="true"]"#),
    )
    .await;
    publish(
        worker.addr,
        "/api/metrics",
        &json!({ "name": "paused.metric", "value": 5.0, "unit": "ms" }),
    )
    .await;
    let page = &browser;
    wait_until(
        "the paused page receives paused.metric",
        move || async move {
            run(page, "return dashboard.knows('paused.metric');").await == json!(true)
        },
    )
    .await;
    // Two redraw ticks pass: a view that did not freeze would have charted it by then.
    let ticks = run(&browser, "return dashboard.ticks();")
        .await
        .as_u64()
        .unwrap_or(0);
    wait_until("two redraw ticks pass", move || async move {
        run(page, "return dashboard.ticks();")
            .await
            .as_u64()
            .unwrap_or(0)
            >= ticks + 2
    })
    .await;
    assert!(
        browser
            .find_all(Locator::Css(&chart("paused.metric")))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "the paused view charted a metric"
    );
    click(&browser, "#pause").await;
    wait_for(
        &browser,
        "paused.metric after resuming",
        Locator::Css(&chart("paused.metric")),
    )
    .await;

    // A phone-wide window: no horizontal scroll, the charts in one column.
    browser
        .set_window_size(390, 844)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until("the window is phone-wide", move || async move {
        run(page, "return window.innerWidth;")
            .await
            .as_u64()
            .is_some_and(|width| width <= 400)
    })
    .await;
    wait_for(
        &browser,
        "host.cpu_percent",
        Locator::Css(&chart("host.cpu_percent")),
    )
    .await;
    let layout = run(
        &browser,
        "const d = document.documentElement; \
         const boxes = [...document.querySelectorAll('#charts .chart')].map(c => c.getBoundingClientRect()); \
         return { scroll: d.scrollWidth, width: d.clientWidth, lefts: [...new Set(boxes.map(b => Math.round(b.left)))], \
                  widest: Math.max(...[...document.querySelectorAll('body *')].map(e => e.getBoundingClientRect().right)) };",
    )
    .await;
    assert!(
        layout["scroll"].as_f64() <= layout["width"].as_f64(),
        "the page scrolls sideways on a phone: {layout}"
    );
    assert!(
        layout["widest"].as_f64().unwrap_or(f64::MAX)
            <= layout["width"].as_f64().unwrap_or(0.0) + 1.0,
        "an element sticks out of a phone-wide page: {layout}"
    );
    assert_eq!(
        layout["lefts"].as_array().map(Vec::len),
        Some(1),
        "the charts are not stacked in one column: {layout}"
    );
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}

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

/// Where the user's page comes from.
enum PageOrigin {
    /// A site of its own (another port: another origin): `/fanout.js` is imported across
    /// origins, which needs its CORS header.
    OwnSite,
    /// The worker's origin (written into a page the worker served): what fanout.js's SSE
    /// transport needs, since the SSE contract has no CORS headers.
    Worker,
}

/// A user's page receives metrics and an alert through `/fanout.js` on `transport`, and after a
/// disconnect resumes with the alert published meanwhile; a session started from another log's
/// epoch reports the resume incomplete.
async fn a_user_page_receives_and_resumes(transport: &str, origin: PageOrigin) {
    let worker = start_worker::<Process>("worker-u", On::OwnMemory, &[]).await;
    // From its own site the page reaches the worker through a proxy the test can cut; on the
    // worker's origin it connects straight to it (another port would be another origin).
    let proxy = match origin {
        PageOrigin::OwnSite => Some(Proxy::start(worker.addr).await),
        PageOrigin::Worker => None,
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
        PageOrigin::Worker => {
            browser
                .goto(&format!("http://{}/healthz", worker.addr))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            browser
                .execute(
                    "document.open(); document.write(arguments[0]); document.close();",
                    vec![json!(page)],
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
        json!(transport)
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
    a_user_page_receives_and_resumes("websocket", PageOrigin::OwnSite).await;
}

#[tokio::test]
#[ignore = "needs GET /sse/performance (being built on another branch): enable once it is on main"]
async fn a_user_page_importing_fanout_js_receives_metrics_and_alerts_over_sse() {
    a_user_page_receives_and_resumes("sse", PageOrigin::Worker).await;
}
