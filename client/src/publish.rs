//! Publishing through a worker's HTTP API: `POST /api/metrics` and `POST /api/alerts`, with one
//! error per documented status (docs/PROTOCOL.md, "HTTP", "Errors").

use std::time::Duration;

use fanout_domain::{Alert, LogId, Metric};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

/// What a worker answers to an accepted publish (`202`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Receipt {
    /// How many metrics (or alerts: 1) the message carried.
    pub published: usize,
    /// The message's sequence number at the publishing worker.
    pub seq: u64,
    /// Alerts only: the alert's id (`ORIGIN-SEQ` unless the alert carried its own).
    #[serde(default)]
    pub id: Option<String>,
    /// Alerts only: the alert's position in the alert log. A receipt with one means the alert is
    /// in the log and will reach every client, including those that resume within the retention.
    #[serde(default)]
    pub log_id: Option<LogId>,
}

/// Why a publish was refused or failed. `error` is the worker's reason (its `{"error"}` body, or
/// the body as text when it is not JSON).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `url` is not `http://` or `https://`, or no HTTP client could be built for it, or the
    /// token is not a valid header value. Retrying will not help.
    #[error("invalid worker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// 400: the body is not JSON; `field` names where it broke off, when it can.
    #[error("400 Bad Request: {error}{}", at(.field))]
    BadRequest {
        /// The worker's reason.
        error: String,
        /// Where in the body the problem is; `None` when there is no such place.
        field: Option<String>,
    },
    /// 401: authentication is on and the request has no valid token.
    #[error("401 Unauthorized: {error}")]
    Unauthorized {
        /// The worker's reason.
        error: String,
    },
    /// 403: the token may not publish (no `"publish": true` claim), or a metric or alert lacks
    /// a label of the token's `where` scope: `field` names it (`[1].labels.tenant`).
    #[error("403 Forbidden: {error}{}", at(.field))]
    Forbidden {
        /// The worker's reason.
        error: String,
        /// The label at fault; `None` for a token that may not publish at all.
        field: Option<String>,
    },
    /// 413: the body is larger than the worker's `--max-body-bytes`.
    #[error("413 Payload Too Large: {error}")]
    TooLarge {
        /// The worker's reason.
        error: String,
    },
    /// 415: not sent as `application/json`.
    #[error("415 Unsupported Media Type: {error}")]
    UnsupportedMediaType {
        /// The worker's reason.
        error: String,
    },
    /// 422: valid JSON of the wrong shape; `field` names where (`[1].value`, `source`).
    #[error("422 Unprocessable Entity: {error}{}", at(.field))]
    Invalid {
        /// The worker's reason.
        error: String,
        /// Where in the body the problem is; `None` when there is no such place.
        field: Option<String>,
    },
    /// 429: the credential exceeded `--publish-rate`; retry after `retry_after`.
    #[error("429 Too Many Requests: {error} (retry after {retry_after:?})")]
    RateLimited {
        /// The worker's reason.
        error: String,
        /// The worker's `Retry-After`; `None` when it sent none in seconds.
        retry_after: Option<Duration>,
    },
    /// 503: the bus cannot take the message now: retry after `retry_after`. Not acknowledged, and
    /// usually not published; but a publish that timed out after Redis ran it, or an alert that
    /// reached fewer replicas than `--alert-min-replicas`, may still be delivered, so a retry can
    /// deliver it twice (docs/RELIABILITY.md).
    #[error("503 Service Unavailable: {error} (retry after {retry_after:?})")]
    Unavailable {
        /// The worker's reason.
        error: String,
        /// The worker's `Retry-After`; `None` when it sent none in seconds.
        retry_after: Option<Duration>,
    },
    /// A status the protocol does not document for publishing.
    #[error("unexpected status {status}: {error}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
        /// The worker's reason.
        error: String,
    },
    /// The request did not get an answer (connection refused, reset, timed out).
    #[error("cannot reach the worker: {0}")]
    Transport(#[source] reqwest::Error),
    /// A `202` whose body is not a receipt.
    #[error("the worker's receipt is not valid: {0}")]
    InvalidReceipt(#[source] reqwest::Error),
}

pub(crate) fn at(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|field| format!(" (at {field})"))
        .unwrap_or_default()
}

impl PublishError {
    /// When the worker asked to retry (429, 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    field: Option<String>,
}

/// Publishes to one worker (any worker: every client of every worker receives what it accepts).
#[derive(Clone, Debug)]
pub struct Publisher {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Publisher {
    /// A publisher to the worker at `url` (`http://host:port` or `https://`), each request
    /// bounded by 10 s.
    pub fn new(url: &str) -> Result<Self, PublishError> {
        Self::with_timeout(url, Duration::from_secs(10))
    }

    /// A publisher whose requests each take at most `timeout`.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Self, PublishError> {
        let invalid = |reason: String| PublishError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid("expected http:// or https://".to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| invalid(error.to_string()))?;
        Ok(Self {
            http,
            base: url.trim_end_matches('/').to_owned(),
            token: None,
        })
    }

    /// Sends `Authorization: Bearer token` with every publish (a token with `"publish": true`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// `POST /api/metrics`: the metrics as one message (one `metrics` frame for every client).
    /// Leave `source` unset: the server owns it (a metric received from a worker has it set, and
    /// publishing it again is refused with 422).
    pub async fn send_metrics(&self, metrics: &[Metric]) -> Result<Receipt, PublishError> {
        self.post("/api/metrics", &metrics).await
    }

    /// `POST /api/alerts`: one alert.
    pub async fn send_alert(&self, alert: &Alert) -> Result<Receipt, PublishError> {
        self.post("/api/alerts", alert).await
    }

    async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<Receipt, PublishError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = &self.token {
            // Checked here, as `Connection::open` does: reqwest would only say "builder error",
            // a transport failure it is not.
            if reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                return Err(PublishError::InvalidUrl {
                    url: self.base.clone(),
                    reason: "the token is not a valid header value".to_owned(),
                });
            }
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(PublishError::Transport)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(PublishError::InvalidReceipt);
        }
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(PublishError::Transport)?;
        Err(refusal(status, retry_after, &body))
    }
}

/// `Retry-After` in seconds (the form the worker sends).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The error for a refused publish: its status, `Retry-After` and `{"error","field"}` body.
fn refusal(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> PublishError {
    let ErrorBody { error, field } = serde_json::from_slice(body).unwrap_or(ErrorBody {
        error: String::from_utf8_lossy(body).into_owned(),
        field: None,
    });
    match status.as_u16() {
        400 => PublishError::BadRequest { error, field },
        401 => PublishError::Unauthorized { error },
        403 => PublishError::Forbidden { error, field },
        413 => PublishError::TooLarge { error },
        415 => PublishError::UnsupportedMediaType { error },
        422 => PublishError::Invalid { error, field },
        429 => PublishError::RateLimited { error, retry_after },
        503 => PublishError::Unavailable { error, retry_after },
        status => PublishError::UnexpectedStatus { status, error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, body: &str) -> PublishError {
        let status = StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
        refusal(status, Some(Duration::from_secs(2)), body.as_bytes())
    }

    /// A token no header can carry is the caller's mistake, said so before anything is sent, as
    /// `Connection::open` says it (it was a `Transport` error, "builder error").
    #[tokio::test]
    async fn a_token_that_is_no_header_value_is_refused_before_sending() {
        let publisher = Publisher::new("http://127.0.0.1:1")
            .unwrap_or_else(|e| panic!("{e}"))
            .token("a\nb");
        let refused = publisher.send_metrics(&[]).await;
        assert!(
            matches!(&refused, Err(PublishError::InvalidUrl { reason, .. }) if reason.contains("token")),
            "{refused:?}"
        );
    }

    #[test]
    fn every_documented_status_has_its_error() {
        let body = r#"{"error":"reason"}"#;
        assert!(matches!(
            refused(400, body),
            PublishError::BadRequest { error, field: None } if error == "reason"
        ));
        assert!(matches!(
            refused(401, body),
            PublishError::Unauthorized { .. }
        ));
        assert!(matches!(refused(403, body), PublishError::Forbidden { .. }));
        // The label at fault of a scoped publisher (PROTOCOL.md, 403).
        let scoped =
            r#"{"error":"metric 1 (b) lacks label tenant=acme","field":"[1].labels.tenant"}"#;
        assert!(matches!(
            refused(403, scoped),
            PublishError::Forbidden { field: Some(field), .. } if field == "[1].labels.tenant"
        ));
        assert!(matches!(refused(413, body), PublishError::TooLarge { .. }));
        assert!(matches!(
            refused(415, body),
            PublishError::UnsupportedMediaType { .. }
        ));
        assert!(matches!(refused(422, body), PublishError::Invalid { .. }));
        assert!(matches!(
            refused(429, body),
            PublishError::RateLimited { .. }
        ));
        assert!(matches!(
            refused(503, body),
            PublishError::Unavailable { .. }
        ));
        assert!(matches!(
            refused(418, body),
            PublishError::UnexpectedStatus { status: 418, .. }
        ));
    }

    #[test]
    fn a_422_names_the_field() {
        let error = refused(
            422,
            r#"{"error":"must be a finite number","field":"[1].value"}"#,
        );
        assert!(
            matches!(&error, PublishError::Invalid { field: Some(field), .. } if field == "[1].value"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "422 Unprocessable Entity: must be a finite number (at [1].value)"
        );
    }

    #[test]
    fn retry_after_is_kept_for_429_and_503_only() {
        assert_eq!(
            refused(429, "{}").retry_after(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            refused(503, "{}").retry_after(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(refused(401, "{}").retry_after(), None);
    }

    #[test]
    fn a_body_that_is_not_json_becomes_the_reason() {
        assert!(
            matches!(refused(503, "bad gateway"), PublishError::Unavailable { error, .. } if error == "bad gateway")
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            "soon".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn a_receipt_decodes_with_and_without_the_alert_fields() {
        let alert: Receipt = serde_json::from_str(
            r#"{"published":1,"seq":19,"id":"web-1-4242-19","log_id":"1764380000456-0"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(alert.log_id, Some(LogId::new(1_764_380_000_456, 0)));
        let metrics: Receipt =
            serde_json::from_str(r#"{"published":2,"seq":18}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((metrics.published, metrics.seq, metrics.id), (2, 18, None));
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Publisher::new("ws://h:1").is_err());
        assert!(Publisher::new("http://h:1/").is_ok());
    }
}
