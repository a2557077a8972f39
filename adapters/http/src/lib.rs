//! The HTTP side of a worker: the dashboard (`GET /`), its browser client library
//! (`GET /fanout.js`), `POST /api/metrics`, `POST /api/alerts`, `POST /v1/metrics` (OTLP/HTTP, in
//! [`otlp`]), `GET /healthz`, `GET /readyz` and `GET /metrics`.
//!
//! An inbound adapter: it decodes and checks requests, calls the domain's
//! [`PerformanceService`], and maps its errors to status codes. Every refusal is a JSON body
//! `{"error": "...", "field": "..."}` naming what is wrong. A credential with a scope (a token's
//! `where` claim) publishes only metrics and alerts that carry its labels: the domain's
//! [`Grant`] decides, this adapter answers 403 and publishes nothing of the request. It never
//! talks to a bus itself.

#![warn(missing_docs, unreachable_pub)]

mod body;
mod otlp;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use std::time::Instant;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fanout_domain::{
    error_chain, AccessControl, AlertFields, Grant, InvalidMessage, LogId, MetricFields,
    PerformanceService, PublishError, PublishQuota, PublishReceipt, QuotaDecision, QuotaError,
    ScopeViolation,
};
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

pub use body::ApiError;
use body::JsonBody;

/// What the worker reports about itself, gathered by the composition root from the other adapters.
pub trait WorkerReport: Send + Sync + 'static {
    /// The body of `/healthz`.
    fn health(&self) -> serde_json::Value;
    /// `Err(reason)` while the worker should get no new clients (bus subscriber down, draining).
    fn readiness(&self) -> Result<(), String>;
    /// `/metrics` in the OpenMetrics text format (served as `application/openmetrics-text`).
    fn prometheus(&self) -> String;
}

/// Bounds of the publish API.
#[derive(Clone)]
pub struct ApiConfig {
    /// Largest publish body (413 beyond).
    pub max_body_bytes: usize,
    /// Counts each credential's publishes against `--publish-rate` (429 beyond); `None`:
    /// unlimited.
    pub publish_quota: Option<Arc<dyn PublishQuota>>,
    /// Observes how long each accepted publish took, in seconds.
    pub publish_latency: Histogram,
    /// Most data points in one `POST /v1/metrics` request (413 beyond).
    pub otlp_max_points: usize,
}

#[derive(Clone)]
struct ApiState {
    service: Arc<PerformanceService>,
    report: Arc<dyn WorkerReport>,
    access: Arc<dyn AccessControl>,
    quota: Option<Arc<dyn PublishQuota>>,
    publish_latency: Histogram,
    /// The body limit, for what a gzipped OTLP body inflates to.
    max_body_bytes: usize,
    otlp_max_points: usize,
}

/// The routes of this adapter.
pub fn router(
    service: Arc<PerformanceService>,
    report: Arc<dyn WorkerReport>,
    access: Arc<dyn AccessControl>,
    config: ApiConfig,
) -> Router {
    Router::new()
        .route("/api/metrics", post(publish_metrics))
        .route("/api/alerts", post(publish_alert))
        .route("/v1/metrics", post(otlp::export_metrics))
        .route("/", get(dashboard))
        .route("/fanout.js", get(client_library))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(ApiState {
            service,
            report,
            access,
            quota: config.publish_quota,
            publish_latency: config.publish_latency,
            max_body_bytes: config.max_body_bytes,
            otlp_max_points: config.otlp_max_points,
        })
}

/// Checks the caller may publish now: 401 without a valid token (when authentication is on), 403
/// for a token without the publish right, 429 beyond the rate, 503 when the quota cannot be
/// checked. The grant is returned for the scope check, which needs the decoded body.
async fn admit_publisher(state: &ApiState, headers: &HeaderMap) -> Result<Grant, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(fanout_domain::bearer_token_of);
    let grant = state
        .access
        .verify(token)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if !grant.publish {
        return Err(ApiError::forbidden("this token may not publish".into()));
    }
    let Some(quota) = &state.quota else {
        return Ok(grant);
    };
    match quota.check(&grant.subject).await {
        Ok(QuotaDecision::Allowed) => Ok(grant),
        Ok(QuotaDecision::Limited { retry_after }) => {
            // Whole seconds, rounded up: retrying after `Retry-After` is never too early.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            Err(ApiError::too_many(seconds.max(1)))
        }
        Err(error) => {
            let QuotaError::Unavailable { reason, cause } = &error;
            tracing::warn!(error = %error_chain(&error), "publish refused: the publish quota cannot be checked");
            // The cause too (a timeout, a refused connection): the publisher sees why.
            let why = match cause {
                Some(cause) => format!("{reason}: {}", error_chain(cause.as_ref())),
                None => reason.clone(),
            };
            Err(ApiError::unavailable(format!(
                "publish rate limit unavailable: {why}"
            )))
        }
    }
}

/// `source` names the worker that published a message. It is the server's to set (the service
/// sets it to this worker), so a publisher cannot pass its values off as another worker's series;
/// a publish that sets it is refused rather than silently changed.
const SOURCE_IS_THE_SERVERS: &str = "source is set by the server";

async fn publish_metrics(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let grant = admit_publisher(&state, &headers).await?;
    let started = Instant::now();
    // One metric or an array of them. Chosen by the first byte rather than with an untagged
    // enum, so that an error names the field instead of saying "did not match any variant".
    let is_array = body.is_array();
    let sent = if is_array {
        body.decode::<Vec<MetricFields>>()?
    } else {
        vec![body.decode::<MetricFields>()?]
    };
    if sent.is_empty() {
        return Err(ApiError::unprocessable(
            "",
            "at least one metric is required",
        ));
    }
    let mut metrics = Vec::with_capacity(sent.len());
    for (index, fields) in sent.into_iter().enumerate() {
        let path = if is_array {
            format!("[{index}]")
        } else {
            String::new()
        };
        if fields.source.is_some() {
            let field = InvalidMessage::join(&path, "source");
            return Err(ApiError::unprocessable(&field, SOURCE_IS_THE_SERVERS));
        }
        metrics.push(fields.validate(&path).map_err(invalid)?);
    }
    // The whole batch or nothing: it is published as one message.
    grant
        .check_metrics(&metrics)
        .map_err(|violation| out_of_scope(violation, is_array))?;
    let count = metrics.len();
    let receipt = state
        .service
        .send_metrics(metrics)
        .await
        .map_err(unavailable)?;
    state
        .publish_latency
        .observe(started.elapsed().as_secs_f64());
    Ok(accepted(count, receipt))
}

async fn publish_alert(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let grant = admit_publisher(&state, &headers).await?;
    let started = Instant::now();
    let fields = body.decode::<AlertFields>()?;
    if fields.source.is_some() {
        return Err(ApiError::unprocessable("source", SOURCE_IS_THE_SERVERS));
    }
    let alert = fields.validate("").map_err(invalid)?;
    grant
        .check_alert(&alert)
        .map_err(|violation| out_of_scope(violation, false))?;
    let receipt = state.service.send_alert(alert).await.map_err(unavailable)?;
    state
        .publish_latency
        .observe(started.elapsed().as_secs_f64());
    Ok(accepted(1, receipt))
}

/// The answer to a path no route serves: 404 with a JSON reason, like every other refusal.
pub async fn not_found() -> Response {
    ApiError::not_found().into_response()
}

/// The answer to a method a route does not serve: 405 with a JSON reason.
pub async fn method_not_allowed() -> Response {
    ApiError::method_not_allowed().into_response()
}

async fn healthz(State(state): State<ApiState>) -> Response {
    Json(state.report.health()).into_response()
}

/// The live dashboard: one self-contained page (HTML, CSS and JS inline, no external assets), so
/// it works offline and needs no build step.
const DASHBOARD: &str = include_str!("../assets/dashboard.html");

async fn dashboard() -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        axum::response::Html(DASHBOARD),
    )
        .into_response()
}

/// The browser client (docs/PROTOCOL.md, "fanout.js in the browser"): one ES module with no
/// imports and no build step, which the dashboard and users' own pages load.
const CLIENT_LIBRARY: &str = include_str!("../assets/fanout.js");

async fn client_library() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // A module script from another origin is fetched in CORS mode: without this header a
            // user's page elsewhere could not import it. The file is public and holds no secret.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        CLIENT_LIBRARY,
    )
        .into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match state.report.readiness() {
        Ok(()) => Json(serde_json::json!({ "ready": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// What `/metrics` serves: the OpenMetrics text format, whose counters are declared by family
/// name (`# TYPE fanout_delivered counter`) and sampled with `_total`, ending with `# EOF`. Under
/// the 0.0.4 text content type a scraper would find no sample named like the declared family and
/// lose the types.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn prometheus(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.report.prometheus(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Accepted {
    published: usize,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The alert's position in the bus's alert log.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_id: Option<LogId>,
}

fn accepted(published: usize, receipt: PublishReceipt) -> Response {
    let body = Accepted {
        published,
        seq: receipt.seq,
        id: receipt.alert_id,
        log_id: receipt.log_id,
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn invalid(error: InvalidMessage) -> ApiError {
    ApiError::unprocessable(error.field(), error.reason())
}

/// 403 naming the label at fault (`[1].labels.tenant`, or `labels.tenant` in a single metric or
/// an alert).
fn out_of_scope(violation: ScopeViolation, in_array: bool) -> ApiError {
    let field = match &violation {
        ScopeViolation::Metric { index, key, .. } if in_array => format!("[{index}].labels.{key}"),
        ScopeViolation::Metric { key, .. } | ScopeViolation::Alert { key, .. } => {
            format!("labels.{key}")
        }
    };
    ApiError::forbidden_at(field, violation.to_string())
}

/// 503 with the whole chain of causes (`bus unavailable: publish failed: timed out`): the
/// publisher sees why, not only that.
fn unavailable(error: PublishError) -> ApiError {
    let chain = error_chain(&error);
    tracing::warn!(error = %chain, "publish refused: bus unavailable");
    ApiError::unavailable(chain)
}
