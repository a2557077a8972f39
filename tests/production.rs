//! The production face: authentication, origins, limits, readiness and Prometheus metrics, each
//! checked against a real server with real clients.
//!
//! Over 400 lines on purpose: a list of independent scenarios on one subject, each readable on
//! its own; what they share lives in `harness/`.

mod harness;

use fanout_app::RunningWorker;
use harness::auth::{forged_token, now, token, SECRET};
use harness::client::{large_messages_reach_every_client_in_order, Ended};
use harness::raw::upgrade_status;
use harness::redis::RedisServer;
use harness::{
    start_worker, wait_until, within, Client, InProcess, On, Process, ProcessRefusedIoUring,
};
use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::{json, Value};

fn reader_token() -> String {
    token(json!({ "sub": "dashboard", "exp": now() + 600 }))
}

fn publisher_token() -> String {
    token(json!({ "sub": "publisher", "exp": now() + 600, "publish": true }))
}

/// A worker of its own, on its own in-memory bus, with these flags.
async fn worker(args: &[&str]) -> RunningWorker {
    start_worker::<InProcess>("w", On::OwnMemory, args).await
}

/// The flags that turn authentication on.
const WITH_AUTH: &[&str] = &["--auth-secret", SECRET];

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

#[tokio::test]
async fn websocket_clients_need_a_valid_unexpired_token() {
    let a = worker(WITH_AUTH).await;
    assert_eq!(upgrade_status(a.addr(), "", &[]).await, 401, "no token");
    let forged = forged_token();
    assert_eq!(
        upgrade_status(a.addr(), &format!("?token={forged}"), &[]).await,
        401,
        "bad signature"
    );
    let expired = token(json!({ "exp": now() - 10 }));
    assert_eq!(
        upgrade_status(a.addr(), &format!("?token={expired}"), &[]).await,
        401,
        "expired"
    );
    let bearer = format!("Bearer {}", reader_token());
    assert_eq!(
        upgrade_status(a.addr(), "", &[("authorization", &bearer)]).await,
        101,
        "header token"
    );
    assert_eq!(
        upgrade_status(a.addr(), &format!("?token={}", reader_token()), &[]).await,
        101,
        "query token"
    );
}

#[tokio::test]
async fn a_token_without_the_alerts_channel_never_receives_alerts() {
    let a = worker(WITH_AUTH).await;
    let metrics_only = token(json!({ "sub": "m", "exp": now() + 600, "channels": ["metrics"] }));
    let mut client = Client::connect_with_token(a.addr(), &metrics_only).await;
    let publisher = publisher_token();
    assert_eq!(
        post(
            a.addr(),
            "/api/alerts",
            Some(&publisher),
            json!({ "severity": "critical", "message": "secret" })
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        post(
            a.addr(),
            "/api/metrics",
            Some(&publisher),
            json!({ "name": "after", "value": 1 })
        )
        .await
        .status(),
        202
    );
    let frame = client.next_frame().await;
    assert_eq!(
        frame["type"], "metrics",
        "the alert must have been skipped: {frame}"
    );
    assert_eq!(frame["data"][0]["name"], "after");
}

#[tokio::test]
async fn only_publisher_tokens_may_publish() {
    let a = worker(WITH_AUTH).await;
    let body = json!({ "name": "cpu", "value": 1 });
    assert_eq!(
        post(a.addr(), "/api/metrics", None, body.clone())
            .await
            .status(),
        401
    );
    assert_eq!(
        post(
            a.addr(),
            "/api/metrics",
            Some(&reader_token()),
            body.clone()
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        post(
            a.addr(),
            "/api/alerts",
            Some(&reader_token()),
            json!({ "severity": "info", "message": "x" })
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        post(
            a.addr(),
            "/api/metrics",
            Some(&publisher_token()),
            body.clone()
        )
        .await
        .status(),
        202
    );
    // The scheme's name in any case (RFC 9110 §11.1): `bearer` was refused as no token at all.
    for scheme in ["bearer", "BEARER"] {
        let status = reqwest::Client::new()
            .post(format!("http://{}/api/metrics", a.addr()))
            .header("content-type", "application/json")
            .header("authorization", format!("{scheme} {}", publisher_token()))
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .status();
        assert_eq!(status, 202, "{scheme}");
    }
}

#[tokio::test]
async fn a_live_connection_is_closed_with_4003_when_its_token_expires() {
    let a = worker(WITH_AUTH).await;
    let short = token(json!({ "sub": "brief", "exp": now() + 2 }));
    let mut client = Client::connect_with_token(a.addr(), &short).await;
    assert_eq!(client.ended().await, Ended::Close(Some(4003)));
}

#[tokio::test]
async fn disallowed_origins_are_refused() {
    let a = worker(&["--allowed-origin", "https://dash.example"]).await;
    assert_eq!(
        upgrade_status(a.addr(), "", &[("origin", "https://evil.example")]).await,
        403
    );
    assert_eq!(
        upgrade_status(a.addr(), "", &[("origin", "https://dash.example")]).await,
        101
    );
    assert_eq!(
        upgrade_status(a.addr(), "", &[]).await,
        101,
        "non-browser clients send no Origin"
    );
}

#[tokio::test]
async fn the_connection_cap_answers_503_and_the_publish_rate_limit_429() {
    let a = worker(&["--max-connections", "2", "--publish-rate", "2"]).await;
    let _first = Client::connect(a.addr()).await;
    let _second = Client::connect(a.addr()).await;
    assert_eq!(upgrade_status(a.addr(), "", &[]).await, 503);

    let body = json!({ "name": "cpu", "value": 1 });
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = post(a.addr(), "/api/metrics", None, body.clone()).await;
        if response.status() == 429 {
            retry_after = harness::http::header(&response, "retry-after");
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(&statuses[..2], [202, 202], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
}

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// The OpenMetrics content type, version 1.0.0: the format prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`, checked to be served as OpenMetrics and read by an OpenMetrics parser (which
/// insists on `# EOF`, on `_total` samples for counters and on the bucket/count/sum of a
/// histogram).
async fn scrape(addr: std::net::SocketAddr) -> Exposition {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let content_type = harness::http::header(&response, "content-type").unwrap_or_default();
    assert_eq!(
        content_type, OPENMETRICS,
        "the content type names the format"
    );
    let text = response.text().await.unwrap_or_default();
    parse_openmetrics(&text).unwrap_or_else(|e| panic!("not OpenMetrics text ({e}):\n{text}"))
}

/// The one sample of `family` (every family here has one, labelled with the worker id), when the
/// family is declared with `kind`.
fn sample<'a>(
    exposition: &'a Exposition,
    family: &str,
    kind: OpenMetricsType,
) -> Option<&'a OpenMetricsValue> {
    let family = exposition.families.get(family)?;
    assert_eq!(family.family_type, kind, "{}", family.family_name);
    let mut samples = family.iter_samples();
    let sample = samples.next()?;
    assert!(
        samples.next().is_none(),
        "{}: one sample",
        family.family_name
    );
    Some(&sample.value)
}

fn counter(exposition: &Exposition, family: &str) -> Option<f64> {
    match sample(exposition, family, OpenMetricsType::Counter)? {
        OpenMetricsValue::Counter(counter) => Some(counter.value.as_f64()),
        _ => None,
    }
}

fn gauge(exposition: &Exposition, family: &str) -> Option<f64> {
    match sample(exposition, family, OpenMetricsType::Gauge)? {
        OpenMetricsValue::Gauge(value) => Some(value.as_f64()),
        _ => None,
    }
}

fn histogram_count(exposition: &Exposition, family: &str) -> Option<u64> {
    match sample(exposition, family, OpenMetricsType::Histogram)? {
        OpenMetricsValue::Histogram(histogram) => histogram.count,
        _ => None,
    }
}

#[tokio::test]
async fn prometheus_metrics_count_what_the_clients_received() {
    let a = worker(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(a.addr()).await);
    }
    for n in 0..5 {
        assert_eq!(
            post(
                a.addr(),
                "/api/metrics",
                None,
                json!({ "name": "m", "value": n })
            )
            .await
            .status(),
            202
        );
    }
    let mut received = 0;
    for client in &mut clients {
        for _ in 0..5 {
            assert_eq!(client.next_frame().await["type"], "metrics");
            received += 1;
        }
    }
    let addr = a.addr();
    wait_until(
        "the delivered counter reaches what the clients counted",
        || async { counter(&scrape(addr).await, "fanout_delivered") == Some(f64::from(received)) },
    )
    .await;
    let exposition = scrape(addr).await;
    let connections = exposition
        .families
        .get("fanout_connections")
        .and_then(|family| family.iter_samples().next())
        .and_then(|sample| sample.get_labelset().ok())
        .and_then(|labels| labels.get_label_value("worker").map(str::to_owned));
    assert_eq!(connections.as_deref(), Some(a.worker_id().as_str()));
    assert_eq!(gauge(&exposition, "fanout_connections"), Some(3.0));
    assert_eq!(counter(&exposition, "fanout_clients_accepted"), Some(3.0));
    assert_eq!(counter(&exposition, "fanout_messages_published"), Some(5.0));
    assert_eq!(
        histogram_count(&exposition, "fanout_publish_duration_seconds"),
        Some(5)
    );
    assert_eq!(
        histogram_count(&exposition, "fanout_fanout_latency_seconds"),
        Some(5)
    );
}

#[tokio::test]
async fn readyz_is_503_while_redis_is_down_and_200_after() {
    let redis = RedisServer::start().await;
    let worker =
        start_worker::<Process>("w1", On::Redis(&redis.url()), &["--redis-timeout", "500ms"]).await;
    let _client = Client::connect(worker.addr).await;
    let ready = |addr| async move {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready(worker.addr).await, 200);
    redis.stop().await;
    wait_until("/readyz says 503", || async {
        ready(worker.addr).await == 503
    })
    .await;
    // OPERATIONS.md, Logs: the subscription's loss is logged with the error and the retry delay.
    let logged = |message: &'static str| {
        let worker = &worker;
        move || {
            let found = worker.log_lines().iter().any(|line| {
                line.contains(message) && line.contains("error=") && line.contains("retry_in_ms=")
            });
            async move { found }
        }
    };
    wait_until(
        "the loss logged with its retry delay",
        logged("Redis subscriber lost its connection; reconnecting"),
    )
    .await;
    wait_until(
        "a failed attempt logged with its retry delay",
        logged("Redis subscriber cannot connect; retrying"),
    )
    .await;
    // A publish refused meanwhile is logged once, with its reason, at WARN; its 503 is no ERROR
    // (tower-http's "response failed" line was one per refused publish).
    for value in 0..3 {
        let status = post(
            worker.addr,
            "/api/metrics",
            None,
            json!({ "name": "refused", "value": value }),
        )
        .await
        .status();
        assert_eq!(status, 503);
    }
    let lines = worker.log_lines();
    let refusals = lines
        .iter()
        .filter(|line| line.contains("WARN") && line.contains("publish refused: bus unavailable"))
        .count();
    assert_eq!(refusals, 3, "{lines:#?}");
    assert!(
        !lines.iter().any(|line| line.contains("ERROR")),
        "an ERROR line while Redis was down: {lines:#?}"
    );
    redis.start_again().await;
    wait_until("/readyz says 200 again", || async {
        ready(worker.addr).await == 200
    })
    .await;
}

#[tokio::test]
async fn check_config_shows_flags_over_environment_over_file_with_secrets_masked() {
    let dir = std::env::temp_dir().join(format!("fanout-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("fanout.toml");
    let settings = "listen = \"127.0.0.1:9999\"\nmetrics-interval = \"5s\"\nping-interval = \"7s\"\n\
                    auth-secret = \"a-secret-that-must-not-print\"\nredis-url = \"redis://user:hunter2@db:6379\"\n";
    std::fs::write(&file, settings).unwrap_or_else(|e| panic!("{e}"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "--config",
            file.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:1234",
            "check-config",
        ])
        .env("FANOUT_METRICS_INTERVAL", "3s")
        .env_remove("FANOUT_LISTEN")
        .env_remove("FANOUT_PING_INTERVAL")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |id: &str| setting(&text, id);
    assert!(
        line("listen").contains("127.0.0.1:1234"),
        "flag beats file: {text}"
    );
    assert!(
        line("metrics_interval").contains("3s"),
        "environment beats file: {text}"
    );
    assert!(
        line("ping_interval").contains("7s"),
        "file beats default: {text}"
    );
    assert!(
        !text.contains("a-secret-that-must-not-print") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(line("auth_secret").contains("***"), "{text}");

    std::fs::write(&file, "listn = \"x\"\n").unwrap_or_else(|e| panic!("{e}"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "--config",
            file.to_str().unwrap_or_default(),
            "check-config",
        ])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown setting \"listn\""));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn check_config_takes_the_flags_on_either_side_of_the_subcommand() {
    let flags = [
        "--auth-secret",
        "a-secret-of-sixteen-bytes",
        "--ping-interval",
        "9s",
    ];
    let before = [&flags[..], &["check-config"]].concat();
    let after = [&["check-config"][..], &flags].concat();
    for args in [before, after] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(&args)
            .env_remove("FANOUT_CONFIG")
            .env_remove("FANOUT_AUTH_SECRET")
            .env_remove("FANOUT_PING_INTERVAL")
            .output()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = |id: &str| setting(&text, id);
        assert!(
            line("auth_secret").contains("***") && line("auth_secret").contains("[flag]"),
            "{args:?}: {text}"
        );
        assert!(
            line("ping_interval").contains("9s") && line("ping_interval").contains("[flag]"),
            "{args:?}: {text}"
        );
    }
}

#[tokio::test]
async fn json_logs_carry_the_worker_id_on_every_line() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--worker-id",
            "json-1",
            "--metrics-interval",
            "0s",
        ])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| unreachable!("piped"));
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let listening = within("the worker's first log line", lines.next_line())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
    let event: Value =
        serde_json::from_str(&listening).unwrap_or_else(|e| panic!("not JSON ({e}): {listening}"));
    assert_eq!(event["worker"], "json-1");
    assert!(event["pid"].as_u64().is_some());
    assert_eq!(event["message"], "worker listening");
}

/// README: every log line carries the worker id and pid; OPERATIONS.md: with `--log-format json`
/// one JSON object per line. The line that says why a worker could not start (its address is
/// taken) is one of them, last, and the process exits with an error (it was a bare `Error:` text).
#[tokio::test]
async fn a_worker_that_cannot_start_says_why_in_its_log_format() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let listen = holder
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let output = within(
        "the worker to give up",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args([
                "--listen",
                &listen,
                "--log-format",
                "json",
                "--worker-id",
                "fatal-1",
                "--metrics-interval",
                "0s",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success(), "exited with {}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let events: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no log line: {stderr}"));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["worker"], "fatal-1", "{last}");
    assert!(last["pid"].as_u64().is_some(), "{last}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot listen") && e.contains(&listen)),
        "{last}"
    );
    drop(holder);
}

/// OPERATIONS.md: `check-config` validates everything a start would. `--workers N` needs a fixed
/// port and the Redis bus (with `--bus memory` each worker process would have a bus of its own,
/// and clients of one would miss what another publishes), and a `--worker-id` that its workers'
/// ids (`ID-N`) can be: both the check and the start refuse each, with the same reason, and take
/// the settings once they are right.
#[tokio::test]
async fn settings_workers_cannot_run_with_are_refused_by_check_config_and_start() {
    // Settings `--workers 2` cannot run with, and the reason given, by `check-config` and a start.
    // A worker id of 127 bytes is one, but not its workers' (`ID-2`, 129 bytes): every worker
    // used to die at its start, and the supervisor gave up after 8 s, where the check said valid.
    let long_id: &'static str = "w".repeat(127).leak();
    let refused: [(&[&str], &str); 3] = [
        (&["--listen", "127.0.0.1:0", "--bus", "redis"], "fixed port"),
        (
            &["--listen", "127.0.0.1:1", "--bus", "memory"],
            "--bus redis",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:1",
                "--bus",
                "redis",
                "--worker-id",
                long_id,
            ],
            "ID-1 … ID-2",
        ),
    ];
    for (settings, reason) in refused {
        for subcommand in [&["check-config"][..], &[]] {
            let args = [subcommand, &["--workers", "2"], settings].concat();
            let (success, said) = fanout(&args).await;
            assert!(!success && said.contains(reason), "{args:?}: {said}");
        }
    }
    let valid = [
        "check-config",
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:1",
        "--bus",
        "redis",
    ];
    let (success, said) = fanout(&valid).await;
    assert!(success, "{said}");
}

/// Runs `fanout ARGS` to its end (without the test environment's bus, workers and listen
/// settings): whether it succeeded, and what it wrote to stderr.
async fn fanout(args: &[&str]) -> (bool, String) {
    let output = within(
        "fanout to answer",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(args)
            .env_remove("FANOUT_BUS")
            .env_remove("FANOUT_WORKERS")
            .env_remove("FANOUT_LISTEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), said)
}

/// A Redis setting with `--bus memory` (the default) would do nothing: an operator who forgot
/// `--bus redis` is told so by `check-config` and at start, not left on the in-memory bus.
#[tokio::test]
async fn redis_settings_without_the_redis_bus_are_refused() {
    let settings: [&[&str]; 3] = [
        &["--redis-cluster", "127.0.0.1:7000"],
        &[
            "--redis-sentinel",
            "127.0.0.1:26379",
            "--redis-sentinel-master",
            "m",
        ],
        &["--alert-min-replicas", "1"],
    ];
    for setting in settings {
        for subcommand in [&["check-config"][..], &[]] {
            let args = [
                subcommand,
                &["--bus", "memory", "--listen", "127.0.0.1:0"],
                setting,
            ]
            .concat();
            let (success, said) = fanout(&args).await;
            assert!(
                !success && said.contains(&format!("{} needs --bus redis", setting[0])),
                "{args:?}: {said}"
            );
        }
    }
}

/// `--allowed-origin` is compared exactly with a browser's `Origin` header: a value no browser
/// sends (not a URL, a path or a trailing `/`, another scheme, credentials) would refuse every
/// page, so it is refused at once, with what an origin looks like.
#[tokio::test]
async fn an_allowed_origin_no_browser_sends_is_refused() {
    for (origin, taken) in [
        ("https://dash.example.com", true),
        ("http://127.0.0.1:8080", true),
        ("not a url", false),
        ("https://dash.example.com/", false),
        ("https://dash.example.com/app", false),
        ("ftp://dash.example.com", false),
        ("https://me@dash.example.com", false),
    ] {
        let (success, said) = fanout(&[
            "check-config",
            "--listen",
            "127.0.0.1:1",
            "--allowed-origin",
            origin,
        ])
        .await;
        assert_eq!(success, taken, "{origin}: {said}");
        assert!(
            taken || said.contains("scheme://host[:port]"),
            "{origin}: {said}"
        );
    }
}

/// A switch set through the environment takes what environments usually say (`1`/`0`,
/// `yes`/`no`, `on`/`off`, `true`/`false`); anything else is refused with the reason
/// (`FANOUT_NO_IO_URING=1` was refused: only `true` and `false` were taken).
#[tokio::test]
async fn switches_in_the_environment_take_the_usual_spellings() {
    for (value, taken) in [
        ("1", true),
        ("0", true),
        ("yes", true),
        ("off", true),
        ("false", true),
        ("maybe", false),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["check-config", "--listen", "127.0.0.1:1"])
            .env_remove("FANOUT_BUS")
            .env("FANOUT_NO_IO_URING", value)
            .env("FANOUT_REUSE_PORT", value)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.success(), taken, "{value}: {said}");
        if !taken {
            assert!(said.contains("not a boolean"), "{value}: {said}");
        }
    }
}

/// The line `check-config` prints for the setting `id` (empty when it prints none).
fn setting(text: &str, id: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_default()
        .to_owned()
}

/// OPERATIONS.md: where the kernel refuses `io_uring` (Docker's default seccomp profile), the
/// worker logs once, at info, that it is unavailable and sends to each client with its own
/// `send(2)`, losing nothing. A real worker process whose `io_uring_*` system calls fail with
/// `EPERM`, beside one the kernel lets use it: both deliver every message to every client in
/// order with sends cut short; only the refused one says so, and once.
#[tokio::test]
async fn a_worker_refused_io_uring_says_so_once_and_delivers_everything_with_send() {
    const UNAVAILABLE: &str = "io_uring unavailable: each client of a message gets its own send";
    let args = ["--client-send-buffer", "4096"];
    let refused = start_worker::<ProcessRefusedIoUring>("no-ring", On::OwnMemory, &args).await;
    let allowed = start_worker::<Process>("ring", On::OwnMemory, &args).await;
    for worker in [&refused, &allowed] {
        large_messages_reach_every_client_in_order(worker.addr, &worker.id).await;
    }
    let said = |worker: &harness::process::WorkerProcess| {
        worker
            .log_lines()
            .iter()
            .filter(|line| line.contains(UNAVAILABLE))
            .count()
    };
    assert_eq!(said(&refused), 1, "{:?}", refused.log_lines());
    // Where this kernel refuses everyone io_uring, the other worker says so too.
    if std::env::var_os("FANOUT_TEST_WITHOUT_IO_URING").is_none() {
        assert_eq!(said(&allowed), 0, "{:?}", allowed.log_lines());
    }
}
