//! The HTTP API of a worker: `POST /api/metrics`, `POST /api/alerts` and `GET /healthz`.
//!
//! An inbound adapter: it decodes and checks requests, calls the domain's
//! [`PerformanceService`], and maps its errors to status codes. Every refusal is a JSON body
//! `{"error": "...", "field": "..."}` naming what is wrong. It never talks to a bus itself.

mod body;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fanout_domain::{
    Alert, AlertId, Metric, PerformanceService, PublishError, PublishReceipt, ServiceError,
};
use serde::Serialize;

pub use body::ApiError;
use body::JsonBody;

/// What `/healthz` reports, gathered by the composition root from the other adapters.
pub trait HealthReport: Send + Sync + 'static {
    fn health(&self) -> serde_json::Value;
}

#[derive(Clone)]
struct ApiState {
    service: Arc<PerformanceService>,
    health: Arc<dyn HealthReport>,
}

/// The routes of this adapter. `max_body_bytes` bounds a publish body (413 beyond).
pub fn router(
    service: Arc<PerformanceService>,
    health: Arc<dyn HealthReport>,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route("/api/metrics", post(publish_metrics))
        .route("/api/alerts", post(publish_alert))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ApiState { service, health })
}

#[derive(Serialize)]
struct Accepted {
    published: usize,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The alert's position in the bus's alert log.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_id: Option<AlertId>,
}

async fn publish_metrics(
    State(state): State<ApiState>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    // One metric or an array of them. Chosen by the first byte rather than with an untagged
    // enum, so that an error names the field instead of saying "did not match any variant".
    let metrics = if body.is_array() {
        body.decode::<Vec<Metric>>()?
    } else {
        vec![body.decode::<Metric>()?]
    };
    if metrics.is_empty() {
        return Err(ApiError::unprocessable(
            "",
            "at least one metric is required",
        ));
    }
    let count = metrics.len();
    let receipt = state
        .service
        .send_metrics(metrics)
        .await
        .map_err(service_error)?;
    Ok(accepted(count, receipt))
}

async fn publish_alert(
    State(state): State<ApiState>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let alert = body.decode::<Alert>()?;
    let receipt = state
        .service
        .send_alert(alert)
        .await
        .map_err(service_error)?;
    Ok(accepted(1, receipt))
}

async fn healthz(State(state): State<ApiState>) -> Response {
    Json(state.health.health()).into_response()
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

fn service_error(error: ServiceError) -> ApiError {
    match error {
        ServiceError::Invalid(invalid) => {
            ApiError::unprocessable(invalid.field(), invalid.reason())
        }
        ServiceError::Publish(PublishError::Unavailable(reason)) => {
            tracing::warn!(%reason, "publish refused: bus unavailable");
            ApiError::unavailable(format!("bus unavailable: {reason}"))
        }
    }
}
