//! `POST /v1/metrics`: the OTLP/HTTP metrics export (docs/PROTOCOL.md, "OTLP metrics"), so an
//! OpenTelemetry SDK or Collector can push into fanout as into any OTLP receiver.
//!
//! The request is admitted like `POST /api/metrics` (the same credential check, rate limit and
//! scope check: [`super::admit_publisher`] and [`fanout_domain::Grant::check_metrics`]), decoded
//! with opentelemetry-proto's generated types (binary protobuf with prost, OTLP/JSON with
//! serde), mapped to the domain's metrics ([`mapping`]) and published as one batch. Answers
//! follow the OTLP specification rather than the rest of the API: `200` with an
//! `ExportMetricsServiceResponse` (its `partial_success` counting the points left out and why),
//! refusals with a `google.rpc.Status` ([`status`]), both in the request's encoding.

mod labels;
mod mapping;
mod proto3_json;
mod quantiles;
mod status;

use std::io::Read;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;

use self::status::OtlpRefusal;
use super::{admit_publisher, ApiError, ApiState};

/// How a request (and so its answer) is encoded, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`: OTLP/JSON.
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Option<Self> {
        let mime = headers
            .get(header::CONTENT_TYPE)?
            .to_str()
            .ok()?
            .split(';')
            .next()?
            .trim();
        if mime.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Self::Protobuf)
        } else if mime.eq_ignore_ascii_case("application/json") {
            Some(Self::Json)
        } else {
            None
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// The handler of `POST /v1/metrics`.
pub(crate) async fn export_metrics(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Without a known encoding there is no request encoding to answer in: JSON, the readable one.
    let Some(encoding) = Encoding::of(&headers) else {
        return OtlpRefusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/x-protobuf or application/json",
        )
        .respond(Encoding::Json);
    };
    match export(&state, &headers, encoding, body).await {
        Ok(response) => response,
        Err(refusal) => refusal.respond(encoding),
    }
}

async fn export(
    state: &ApiState,
    headers: &HeaderMap,
    encoding: Encoding,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OtlpRefusal> {
    let body =
        body.map_err(|rejection| OtlpRefusal::new(rejection.status(), rejection.body_text()))?;
    let grant = admit_publisher(state, headers).await.map_err(from_api)?;
    let started = Instant::now();
    let body = decompress(headers, body, state.max_body_bytes)?;
    let (request, unreadable) = decode(encoding, &body)?;
    let points = mapping::count_points(&request) + unreadable.len();
    if points > state.otlp_max_points {
        return Err(OtlpRefusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request holds {points} data points, more than this server takes in one request ({}, --otlp-max-points): send smaller batches",
                state.otlp_max_points
            ),
        ));
    }
    let mut mapped = mapping::map(request);
    mapped.refused.splice(
        0..0,
        unreadable.into_iter().map(|point| mapping::Refusal {
            at: point.at,
            name: point.name,
            reason: point.reason,
        }),
    );
    // The whole batch or nothing, as for POST /api/metrics: it is published as one message.
    grant
        .check_metrics(&mapped.metrics)
        .map_err(|violation| OtlpRefusal::new(StatusCode::FORBIDDEN, violation.to_string()))?;
    let error_message = mapped.message();
    let rejected_data_points = mapped.refused.len() as i64;
    if !mapped.metrics.is_empty() {
        state
            .service
            .send_metrics(mapped.metrics)
            .await
            .map_err(|error| from_api(super::unavailable(error)))?;
        state
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
    }
    let partial_success = error_message.map(|error_message| ExportMetricsPartialSuccess {
        rejected_data_points,
        error_message,
    });
    Ok(answer(
        encoding,
        &ExportMetricsServiceResponse { partial_success },
    ))
}

/// The body as sent (`Content-Encoding` absent or `identity`) or gunzipped (`gzip`), at most
/// `limit` bytes either way: a small body that inflates past the limit is refused like a large
/// one, without inflating more than the limit.
fn decompress(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, OtlpRefusal> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(body),
        Some("gzip") => {
            let mut inflated = Vec::new();
            flate2::read::MultiGzDecoder::new(body.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|error| {
                    OtlpRefusal::new(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not valid gzip: {error}"),
                    )
                })?;
            if inflated.len() > limit {
                return Err(OtlpRefusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body inflates to more than {limit} bytes (--max-body-bytes)"),
                ));
            }
            Ok(Bytes::from(inflated))
        }
        Some(other) => Err(OtlpRefusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported: send gzip or no encoding"),
        )),
    }
}

/// The request, decoded. Anything that does not decode is 400 (the OTLP "bad data" answer: the
/// client must not retry it), naming where decoding stopped when the decoder says.
/// OTLP/JSON's data points the decoder could not read come back beside it, to be refused.
fn decode(
    encoding: Encoding,
    body: &[u8],
) -> Result<(ExportMetricsServiceRequest, Vec<proto3_json::Unreadable>), OtlpRefusal> {
    match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(body)
            .map(|request| (request, Vec::new()))
            .map_err(|error| {
                OtlpRefusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("not an ExportMetricsServiceRequest: {error}"),
                )
            }),
        Encoding::Json => {
            let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
                OtlpRefusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("not an OTLP/JSON ExportMetricsServiceRequest: {error}"),
                )
            })?;
            proto3_json::normalize(&mut value);
            let request = decode_json(&value)?;
            if !proto3_json::drops_data(&request) {
                return Ok((request, Vec::new()));
            }
            // Some metric's data did not decode: take out what does not, point by point, and
            // decode what is left (the second pass only for such a request).
            let unreadable = proto3_json::take_unreadable(&mut value);
            Ok((decode_json(&value)?, unreadable))
        }
    }
}

/// A normalized OTLP/JSON request, decoded; 400 naming where decoding stopped.
fn decode_json(value: &serde_json::Value) -> Result<ExportMetricsServiceRequest, OtlpRefusal> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let refusal = OtlpRefusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "not an OTLP/JSON ExportMetricsServiceRequest: {}",
                error.inner()
            ),
        );
        // `.` is serde_path_to_error's name for the top of the body.
        if path == "." {
            refusal
        } else {
            refusal.at(path)
        }
    })
}

fn answer(encoding: Encoding, response: &ExportMetricsServiceResponse) -> Response {
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        // proto3 JSON leaves an unset message out (the generated serde would write `null`).
        Encoding::Json if response.partial_success.is_none() => b"{}".to_vec(),
        // Plain data (a number and a string): serializing cannot fail.
        Encoding::Json => serde_json::to_vec(response).unwrap_or_default(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// A refusal of the publish admission (401, 403, 429, 503), as an OTLP `Status`.
fn from_api(error: ApiError) -> OtlpRefusal {
    let (status, reason, retry_after) = error.into_parts();
    OtlpRefusal::new(status, reason).retry_after(retry_after)
}
