//! A real headless Chromium for the browser tests: Debian's chromium driven over WebDriver by
//! its chromedriver (`scripts/browser-deps` installs both), and the page-reading helpers the
//! scenarios share. Every wait is bounded by [`WAIT`].

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;

use super::{free_port, wait_until, WAIT};

/// chromedriver on a free port; killed when dropped.
pub struct Driver {
    _child: tokio::process::Child,
    port: u16,
}

/// Starts chromedriver and waits until it listens.
pub async fn chromedriver() -> Driver {
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

/// A headless Chromium session, 1400 × 900.
pub async fn browser(driver: &Driver) -> Browser {
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

/// Waits until `locator` finds an element; fails naming `what` after [`WAIT`].
pub async fn wait_for(browser: &Browser, what: &str, locator: Locator<'_>) {
    browser
        .wait()
        .at_most(WAIT)
        .every(Duration::from_millis(100))
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("the page never showed {what}: {e}"));
}

/// Clicks the element `css` selects.
pub async fn click(browser: &Browser, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

/// The text of the first element `css` selects.
pub async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The text content of every element `css` selects (SVG text included, visible or not).
pub async fn texts_of(browser: &Browser, css: &str) -> Vec<String> {
    let texts = browser
        .execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);",
            vec![json!(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_value(texts).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `script` in the page and returns its value.
pub async fn run(browser: &Browser, script: &str) -> serde_json::Value {
    browser
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("`{script}` failed: {e}"))
}
