//! The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven over
//! WebDriver): served by worker A, fed by messages published through worker B, through a real
//! Redis; then Redis restarts and the page shows it and recovers. And its filter box: applied
//! through the form, kept over a reload and a reconnect, refused filters shown at their field.
//!
//! Over 400 lines on purpose: one browser session's scenarios and the WebDriver helpers they share.

mod harness;

use std::process::Stdio;
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use harness::http::publish;
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

fn chart(metric: &str) -> String {
    format!(r#".chart[data-metric="{metric}"]"#)
}

#[tokio::test]
async fn the_dashboard_filter_subscribes_is_kept_and_shows_refusals_at_their_field() {
    let worker =
        start_worker::<Process>("worker-f", On::OwnMemory, &["--metrics-interval", "1s"]).await;
    let driver = chromedriver().await;
    let browser = browser(&driver).await;
    browser
        .goto(&format!("http://{}/", worker.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&browser, "the live state", Locator::Css("#status.live")).await;
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
        .execute("socket.close();", vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let page = &browser;
    wait_until(
        "the page reconnects with the filter in its WebSocket URL",
        move || async move {
            let url = page
                .execute("return socketOpen && greeted ? socket.url : null;", vec![])
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
        "the metric's chart",
        Locator::Css(r#".chart[data-metric="ui.checkout_latency_ms"][data-source="worker-b"]"#),
    )
    .await;
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
    // The README's screenshot: the page after the whole scenario.
    let screenshot = browser.screenshot().await.unwrap_or_else(|e| panic!("{e}"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png");
    std::fs::write(path, &screenshot).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    browser.close().await.unwrap_or_else(|e| panic!("{e}"));
}
