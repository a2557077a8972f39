//! A credential with a scope (a token's `where` claim) publishes only what carries its labels:
//! anything else is 403 with the reason, and nothing of that request reaches the bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fanout_domain::{
    AccessControl, AccessError, Broadcaster, Clock, Envelope, Grant, LogId, PerformanceService,
    PublishError, RuleEngine, WorkerId,
};
use fanout_http::{router, ApiConfig, WorkerReport};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tower::ServiceExt;

/// Every caller gets the grant it was built with, whatever the token.
struct FixedGrant(Grant);

impl AccessControl for FixedGrant {
    fn verify(&self, _token: Option<&str>) -> Result<Grant, AccessError> {
        Ok(self.0.clone())
    }
}

/// A bus that accepts everything and remembers what it was given.
#[derive(Default)]
struct RecordingBus(Mutex<Vec<Envelope>>);

impl RecordingBus {
    fn published(&self) -> Vec<Envelope> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Broadcaster for RecordingBus {
    async fn publish(&self, envelope: &Envelope) -> Result<Option<LogId>, PublishError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(envelope.clone());
        Ok(None)
    }
}

struct FixedClock;

impl Clock for FixedClock {
    fn now_us(&self) -> u64 {
        1_764_380_000_000_000
    }
}

struct NoReport;

impl WorkerReport for NoReport {
    fn health(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
    fn prometheus(&self) -> String {
        String::new()
    }
}

/// The API of a worker whose every caller holds a publishing grant with `scope`, and its bus.
fn api(scope: &[(&str, &str)]) -> (Router, Arc<RecordingBus>) {
    let bus = Arc::new(RecordingBus::default());
    let worker = WorkerId::new("web-1").unwrap_or_else(|e| panic!("{e}"));
    let service = PerformanceService::new(
        worker,
        bus.clone(),
        Arc::new(FixedClock),
        RuleEngine::new(Vec::new()),
        16,
    );
    let grant = Grant {
        scope: scope
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..Grant::open()
    };
    let config = ApiConfig {
        max_body_bytes: 64 * 1024,
        publish_quota: None,
        publish_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 4)),
        otlp_max_points: 100,
    };
    let router = router(
        Arc::new(service),
        Arc::new(NoReport),
        Arc::new(FixedGrant(grant)),
        config,
    );
    (router, bus)
}

/// Posts `body` to `path`: the status and the decoded JSON answer.
async fn post(
    router: Router,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"));
    (status, answer)
}

#[tokio::test]
async fn a_batch_with_one_metric_outside_the_scope_is_refused_whole() {
    let (router, bus) = api(&[("tenant", "acme")]);
    let batch = serde_json::json!([
        {"name": "api.requests", "value": 1, "labels": {"tenant": "acme"}},
        {"name": "api.latency_ms", "value": 12.5, "labels": {"tenant": "other"}},
    ]);
    let (status, answer) = post(router, "/api/metrics", batch).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer,
        serde_json::json!({
            "error": "metric 1 (api.latency_ms) lacks label tenant=acme",
            "field": "[1].labels.tenant"
        })
    );
    assert!(bus.published().is_empty());
}

#[tokio::test]
async fn a_single_metric_without_the_label_is_metric_0() {
    let (router, bus) = api(&[("tenant", "acme")]);
    let metric = serde_json::json!({"name": "api.latency_ms", "value": 12.5});
    let (status, answer) = post(router, "/api/metrics", metric).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer,
        serde_json::json!({
            "error": "metric 0 (api.latency_ms) lacks label tenant=acme",
            "field": "labels.tenant"
        })
    );
    assert!(bus.published().is_empty());
}

#[tokio::test]
async fn metrics_carrying_the_scope_are_published() {
    let (router, bus) = api(&[("tenant", "acme")]);
    let batch = serde_json::json!([
        {"name": "api.requests", "value": 1, "labels": {"tenant": "acme", "host": "a"}},
        {"name": "api.latency_ms", "value": 12.5, "labels": {"tenant": "acme"}},
    ]);
    let (status, answer) = post(router, "/api/metrics", batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["published"], 2);
    assert_eq!(bus.published().len(), 1);
}

#[tokio::test]
async fn an_alert_outside_the_scope_is_refused_and_one_inside_is_published() {
    let (router, bus) = api(&[("tenant", "acme")]);
    let outside = serde_json::json!({
        "severity": "warning", "message": "slow", "labels": {"tenant": "other"}
    });
    let (status, answer) = post(router.clone(), "/api/alerts", outside).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer,
        serde_json::json!({"error": "alert lacks label tenant=acme", "field": "labels.tenant"})
    );
    assert!(bus.published().is_empty());

    let inside = serde_json::json!({
        "severity": "warning", "message": "slow", "labels": {"tenant": "acme"}
    });
    let (status, answer) = post(router, "/api/alerts", inside).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(bus.published().len(), 1);
}

#[tokio::test]
async fn an_invalid_body_is_422_before_the_scope_is_looked_at() {
    let (router, bus) = api(&[("tenant", "acme")]);
    let metric = serde_json::json!({"name": "", "value": 1});
    let (status, answer) = post(router, "/api/metrics", metric).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(bus.published().is_empty());
}

#[tokio::test]
async fn without_a_scope_anything_valid_is_published() {
    let (router, bus) = api(&[]);
    let metric = serde_json::json!({"name": "api.latency_ms", "value": 12.5});
    let (status, answer) = post(router, "/api/metrics", metric).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(bus.published().len(), 1);
}
