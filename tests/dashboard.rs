//! The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven over
//! WebDriver): served by worker A, fed by messages published through worker B, through a real
//! Redis; then Redis restarts and the page shows it and recovers.

mod harness;

use std::process::Stdio;
use std::time::Duration;

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
