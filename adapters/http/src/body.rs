//! Request bodies and error responses: content type, size, JSON syntax and shape, each refused
//! with its own status and a JSON reason.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A refused request: the status, a reason, and the field at fault when there is one.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// 422: the body decoded but `field` (a path such as `[2].value`) breaks a rule; an empty
    /// `field` blames the body as a whole.
    pub fn unprocessable(field: &str, reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: reason.into(),
            field: (!field.is_empty()).then(|| field.to_owned()),
            retry_after: None,
        }
    }

    /// 404: no route serves the path.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such route: see PROTOCOL.md")
    }

    /// 405: the route exists but does not take the request's method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "this route does not take that method: see PROTOCOL.md",
        )
    }

    /// 401: no valid token where one is required; `reason` says what is wrong with it.
    pub fn unauthorized(reason: String) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, reason)
    }

    /// 403: the token is valid but does not grant this.
    pub fn forbidden(reason: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason)
    }

    /// 403 about one field of the body (a label outside the token's scope).
    pub fn forbidden_at(field: String, reason: String) -> Self {
        Self {
            field: Some(field),
            ..Self::forbidden(reason)
        }
    }

    /// 429 with `Retry-After: seconds`.
    pub fn too_many(retry_after_seconds: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: "publish rate limit exceeded".into(),
            field: None,
            retry_after: Some(retry_after_seconds),
        }
    }

    /// 503 with `Retry-After: 1`: something the request needs (the bus, the quota) cannot
    /// answer now; retrying later may work.
    pub fn unavailable(reason: String) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: reason,
            field: None,
            retry_after: None,
        }
    }

    /// The status, the reason and `Retry-After` (seconds), for a route that answers refusals in
    /// another form (OTLP's `Status`).
    pub(crate) fn into_parts(self) -> (StatusCode, String, Option<u64>) {
        (self.status, self.error, self.retry_after)
    }

    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: None,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.error,
            field: self.field.as_deref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        let retry_after = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => self.retry_after,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON body, not yet decoded: 415 without `Content-Type: application/json`, 413 over the
/// body limit.
pub(crate) struct JsonBody(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ));
        }
        Bytes::from_request(request, state)
            .await
            .map(JsonBody)
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))
    }
}

impl JsonBody {
    /// Whether the body is a JSON array (its first non-blank byte is `[`).
    pub(crate) fn is_array(&self) -> bool {
        self.0.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
    }

    /// Decodes the body into `T`. Broken JSON is 400, JSON of the wrong shape 422; both name the
    /// field where decoding stopped (e.g. `[2].value`) when there is one.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let mut deserializer = serde_json::Deserializer::from_slice(&self.0);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            refusal(path, error.into_inner())
        })?;
        // Trailing bytes after the value.
        deserializer
            .end()
            .map_err(|error| refusal(String::new(), error))?;
        Ok(value)
    }
}

fn refusal(path: String, error: serde_json::Error) -> ApiError {
    let status = match error.classify() {
        serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    };
    let reason = match status {
        StatusCode::BAD_REQUEST => format!("invalid JSON: {error}"),
        _ => error.to_string(),
    };
    // `.` is serde_path_to_error's name for the top of the body, `?` for a place it could not
    // name (a key the body broke off in): neither is a field.
    let path = path.strip_suffix(".?").unwrap_or(&path);
    let path = if path == "." || path == "?" {
        String::new()
    } else {
        path.to_owned()
    };
    let field = match missing_field(&error) {
        Some(missing) if path.is_empty() => missing.to_owned(),
        Some(missing) => format!("{path}.{missing}"),
        None => path,
    };
    ApiError {
        status,
        error: reason,
        field: (!field.is_empty()).then_some(field),
        retry_after: None,
    }
}

/// The field a decoding error says is missing. The path stops at the object that lacks it, and
/// serde carries the field's name only in the message it writes for
/// `serde::de::Error::missing_field`: "missing field `NAME`" (serde_json appends the position).
fn missing_field(error: &serde_json::Error) -> Option<String> {
    let message = error.to_string();
    let name = message.strip_prefix("missing field `")?.split('`').next()?;
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use fanout_domain::{Alert, Metric};
    use proptest::prelude::*;

    use super::*;

    fn status_of<T: DeserializeOwned>(body: &[u8]) -> Option<StatusCode> {
        JsonBody(Bytes::copy_from_slice(body))
            .decode::<T>()
            .err()
            .map(|e| e.status)
    }

    #[test]
    fn syntax_is_400_shape_is_422_and_both_name_the_field() {
        assert_eq!(
            status_of::<Metric>(b"{\"name\":"),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status_of::<Metric>(b"{\"name\":\"a\",\"value\":1} trailing"),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status_of::<Metric>(b"{\"name\":\"a\"}"),
            Some(StatusCode::UNPROCESSABLE_ENTITY)
        );
        let error = JsonBody(Bytes::from_static(b"[{\"name\":\"a\",\"value\":true}]"))
            .decode::<Vec<Metric>>()
            .err();
        assert_eq!(error.and_then(|e| e.field), Some("[0].value".to_owned()));
        assert_eq!(status_of::<Metric>(b"{\"name\":\"a\",\"value\":1}"), None);
    }

    fn field_of<T: DeserializeOwned>(body: &[u8]) -> Option<(StatusCode, Option<String>)> {
        JsonBody(Bytes::copy_from_slice(body))
            .decode::<T>()
            .err()
            .map(|e| (e.status, e.field))
    }

    #[test]
    fn a_missing_field_is_named() {
        let unprocessable =
            |field: &str| Some((StatusCode::UNPROCESSABLE_ENTITY, Some(field.to_owned())));
        assert_eq!(
            field_of::<Metric>(br#"{"name":"a"}"#),
            unprocessable("value")
        );
        assert_eq!(
            field_of::<Vec<Metric>>(br#"[{"name":"a","value":1},{"value":2}]"#),
            unprocessable("[1].name")
        );
        assert_eq!(
            field_of::<Alert>(br#"{"severity":"info"}"#),
            unprocessable("message")
        );
    }

    #[test]
    fn a_body_broken_off_inside_an_object_names_the_object_or_nothing() {
        assert_eq!(
            field_of::<Metric>(br#"{"name":"a","#),
            Some((StatusCode::BAD_REQUEST, None))
        );
        assert_eq!(
            field_of::<Metric>(br#"{"name":"a" "value":1}"#),
            Some((StatusCode::BAD_REQUEST, None))
        );
        assert_eq!(
            field_of::<Vec<Metric>>(br#"[{"name":"a","value":1},{"name":"b","#),
            Some((StatusCode::BAD_REQUEST, Some("[1]".to_owned())))
        );
    }

    #[test]
    fn the_sequence_form_of_a_metric_or_an_alert_is_422() {
        assert_eq!(
            field_of::<Vec<Metric>>(br#"[["name",5]]"#),
            Some((StatusCode::UNPROCESSABLE_ENTITY, Some("[0]".to_owned())))
        );
        assert_eq!(
            field_of::<Alert>(br#"["id","info","msg"]"#),
            Some((StatusCode::UNPROCESSABLE_ENTITY, None))
        );
    }

    proptest! {
        #[test]
        fn any_body_is_decoded_or_refused_with_400_or_422(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            for status in [status_of::<Metric>(&body), status_of::<Vec<Metric>>(&body), status_of::<Alert>(&body)]
                .into_iter()
                .flatten()
            {
                prop_assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY);
            }
        }

        #[test]
        fn json_shaped_bodies_are_decoded_or_refused_with_400_or_422(
            body in r#"\{("(name|value|unit|labels|severity|message)":(\[|\{|"[a-z]*"|-?[0-9e.]{1,5}|null|true),?){0,5}\}?"#
        ) {
            if let Some((status, field)) = field_of::<Metric>(body.as_bytes()) {
                prop_assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY);
                // A field names a place in the body, never serde_path_to_error's `?`.
                prop_assert!(!field.is_some_and(|f| f.contains('?')), "{}", body);
            }
        }
    }
}
