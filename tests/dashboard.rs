// Over 400 lines on purpose: each browser scenario is one story read top to bottom in one
// Chromium session (starting a browser per check would make the suite slow).
//! The dashboard in a real headless Chromium (harness/browser.rs): served by worker A, fed by
//! messages published through worker B, through a real Redis: the two workers' series overlaid
//! in one chart with a legend, the axes and humanized values read from the DOM; then Redis
//! restarts and the page shows it and recovers. Its filter box: applied through the form, kept
//! over a reload and a reconnect, refused filters shown at their field (over WebSocket, and over
//! SSE, where each change reopens the stream). Its pause, its alert severity filter and a phone-wide
//! window. docs/dashboard.png is not taken here (scripts/screenshot takes it).

mod harness;

use fantoccini::key::Key;
use fantoccini::{Client as Browser, Locator};
use harness::browser::{browser, chromedriver, click, run, text_of, texts_of, wait_for};
use harness::http::publish;
use harness::redis::RedisServer;
use harness::{start_worker, wait_until, On, Process};
use serde_json::json;

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
    // A tiny value keeps its digits (2.5 ns read as `0 µs`).
    publish(
        b.addr,
        "/api/metrics",
        &json!({ "name": "ui.tiny_s", "value": 2.5e-9, "unit": "s" }),
    )
    .await;
    wait_for(
        &browser,
        "the tiny value's chart",
        Locator::Css(r#".chart[data-metric="ui.tiny_s"] .legend li[data-source="worker-b"]"#),
    )
    .await;
    assert_eq!(
        text_of(&browser, &(chart("ui.tiny_s") + " .value")).await,
        "0.0025 µs",
        "a tiny value, humanized"
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
