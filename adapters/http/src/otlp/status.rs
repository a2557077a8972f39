//! The body of every OTLP/HTTP refusal: a `google.rpc.Status`, in the request's encoding, as the
//! OTLP specification requires ("The response body for all HTTP 4xx and HTTP 5xx responses MUST
//! be a Protobuf-encoded Status message"), with a `google.rpc.BadRequest` naming the field at
//! fault in its details when there is one.
//!
//! The four messages are declared here with prost's derive, field numbers as in googleapis's
//! `google/rpc/status.proto`, `error_details.proto` and protobuf's `any.proto`: opentelemetry-proto
//! does not carry them, and the crate that does (tonic-types) brings tonic and a newer Rust than
//! the workspace's. prost does the encoding; nothing here writes wire bytes by hand.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde_json::json;

use super::Encoding;

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Status {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub(crate) code: i32,
    /// The developer-facing message.
    #[prost(string, tag = "2")]
    pub(crate) message: String,
    /// Details: here at most one `BadRequest`.
    #[prost(message, repeated, tag = "3")]
    pub(crate) details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Any {
    #[prost(string, tag = "1")]
    pub(crate) type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) value: Vec<u8>,
}

/// `google.rpc.BadRequest`.
#[derive(Clone, PartialEq, Message)]
struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    field_violations: Vec<FieldViolation>,
}

/// `google.rpc.BadRequest.FieldViolation`.
#[derive(Clone, PartialEq, Message)]
struct FieldViolation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    description: String,
}

const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";

/// A refused OTLP request: the HTTP status, the message, the field at fault when there is one,
/// and `Retry-After` for the retryable ones (429, 503).
#[derive(Debug)]
pub(crate) struct OtlpRefusal {
    status: StatusCode,
    message: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

impl OtlpRefusal {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1),
        }
    }

    /// Names the field at fault (a `BadRequest` field violation in the details).
    pub(crate) fn at(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// Sets `Retry-After`, in seconds.
    pub(crate) fn retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after = seconds.or(self.retry_after);
        self
    }

    /// The `google.rpc.Code` closest to the HTTP status (the specification leaves the code to
    /// the server; clients go by the HTTP status).
    fn code(&self) -> i32 {
        match self.status {
            StatusCode::UNAUTHORIZED => 16, // UNAUTHENTICATED
            StatusCode::FORBIDDEN => 7,     // PERMISSION_DENIED
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => 8, // RESOURCE_EXHAUSTED
            StatusCode::SERVICE_UNAVAILABLE => 14,                              // UNAVAILABLE
            status if status.is_server_error() => 13,                           // INTERNAL
            _ => 3,                                                             // INVALID_ARGUMENT
        }
    }

    /// The response in `encoding`: the status, `Content-Type`, `Retry-After`, and the body.
    pub(crate) fn respond(self, encoding: Encoding) -> Response {
        let body = match encoding {
            Encoding::Protobuf => self.protobuf(),
            Encoding::Json => self.json(),
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, encoding.content_type())],
            body,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    fn protobuf(&self) -> Vec<u8> {
        let details = self.field.iter().map(|field| Any {
            type_url: BAD_REQUEST_TYPE.to_owned(),
            value: BadRequest {
                field_violations: vec![FieldViolation {
                    field: field.clone(),
                    description: self.message.clone(),
                }],
            }
            .encode_to_vec(),
        });
        Status {
            code: self.code(),
            message: self.message.clone(),
            details: details.collect(),
        }
        .encode_to_vec()
    }

    /// Proto3's JSON mapping of the same `Status` (an `Any` is its message's fields beside
    /// `@type`).
    fn json(&self) -> Vec<u8> {
        let mut status = json!({ "code": self.code(), "message": self.message });
        if let Some(field) = &self.field {
            status["details"] = json!([{
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{ "field": field, "description": self.message }],
            }]);
        }
        status.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protobuf_body_decodes_as_a_status_with_a_bad_request() {
        let refusal = OtlpRefusal::new(StatusCode::BAD_REQUEST, "no good").at("resourceMetrics");
        let status =
            Status::decode(refusal.protobuf().as_slice()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((status.code, status.message.as_str()), (3, "no good"));
        assert_eq!(status.details.len(), 1);
        assert_eq!(status.details[0].type_url, BAD_REQUEST_TYPE);
        let bad = BadRequest::decode(status.details[0].value.as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bad.field_violations[0].field, "resourceMetrics");
        let json: serde_json::Value =
            serde_json::from_slice(&refusal.json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            json["details"][0]["fieldViolations"][0]["field"],
            "resourceMetrics"
        );
    }

    #[test]
    fn retryable_refusals_say_when_to_retry() {
        let unavailable = OtlpRefusal::new(StatusCode::SERVICE_UNAVAILABLE, "bus down")
            .respond(Encoding::Protobuf);
        assert_eq!(
            unavailable
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let limited = OtlpRefusal::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .retry_after(Some(3))
            .respond(Encoding::Json);
        assert_eq!(
            limited
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(
            limited
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}
