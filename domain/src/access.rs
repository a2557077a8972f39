//! Who may do what: the permissions a credential grants, and the port that checks credentials.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::{Alert, Metric};

/// What a verified credential allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Who it was issued to (the token's subject), for logs and rate limits.
    pub subject: String,
    /// May receive metrics over WebSocket; a client with neither this nor `alerts` is refused.
    pub metrics: bool,
    /// May receive alerts over WebSocket, including the replay of missed ones on resume.
    pub alerts: bool,
    /// May publish through the HTTP API.
    pub publish: bool,
    /// When the credential stops being valid (a live connection is closed then).
    pub expires_at: Option<SystemTime>,
    /// Labels (key → exact value) that every metric and alert this credential receives or
    /// publishes must carry: a token's `where` claim. Empty: no restriction. Publishes are checked
    /// with [`Grant::check_metrics`] and [`Grant::check_alert`]; what a subscriber receives is
    /// filtered by the WebSocket adapter.
    pub scope: BTreeMap<String, String>,
}

impl Grant {
    /// Everything allowed, forever: what every caller gets while authentication is off.
    pub fn open() -> Self {
        Self {
            subject: "anonymous".to_owned(),
            metrics: true,
            alerts: true,
            publish: true,
            expires_at: None,
            scope: BTreeMap::new(),
        }
    }

    /// Whether every metric of a publish carries the whole scope; the first one that does not is
    /// refused, naming its position in `metrics` and the first label it lacks. Allocates only
    /// for the refusal.
    pub fn check_metrics(&self, metrics: &[Metric]) -> Result<(), ScopeViolation> {
        for (index, metric) in metrics.iter().enumerate() {
            if let Some((key, value)) = self.first_lacking(metric.labels()) {
                return Err(ScopeViolation::Metric {
                    index,
                    name: metric.name().to_owned(),
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether an alert to publish carries the whole scope.
    pub fn check_alert(&self, alert: &Alert) -> Result<(), ScopeViolation> {
        match self.first_lacking(alert.labels()) {
            Some((key, value)) => Err(ScopeViolation::Alert {
                key: key.clone(),
                value: value.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The first scope label that `labels` lacks, or carries with another value.
    fn first_lacking(&self, labels: &BTreeMap<String, String>) -> Option<(&String, &String)> {
        self.scope
            .iter()
            .find(|(key, value)| labels.get(*key) != Some(*value))
    }
}

/// A publish that does not carry every label of the credential's scope (HTTP 403). A label with
/// another value is lacking too: the scope names exact values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeViolation {
    /// The metric at `index` of the publish (0 for a single one) lacks `key`=`value`.
    #[error("metric {index} ({name}) lacks label {key}={value}")]
    Metric {
        /// Its position in the publish.
        index: usize,
        /// Its name.
        name: String,
        /// The scope label's key.
        key: String,
        /// The value the scope requires.
        value: String,
    },
    /// The alert lacks `key`=`value`.
    #[error("alert lacks label {key}={value}")]
    Alert {
        /// The scope label's key.
        key: String,
        /// The value the scope requires.
        value: String,
    },
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No credential where one is required (HTTP 401).
    #[error("a token is required")]
    Missing,
    /// Malformed, badly signed or expired (HTTP 401).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Checks credentials. Off (everything allowed) unless the operator configured keys.
pub trait AccessControl: Send + Sync + 'static {
    /// Verifies `token` (a bearer token, absent when the caller sent none).
    fn verify(&self, token: Option<&str>) -> Result<Grant, AccessError>;
}

/// The access control of a server with authentication off.
pub struct OpenAccess;

impl AccessControl for OpenAccess {
    fn verify(&self, _token: Option<&str>) -> Result<Grant, AccessError> {
        Ok(Grant::open())
    }
}

/// The token of an `Authorization` header value of the `Bearer` scheme (the scheme's name in any
/// case, RFC 9110 §11.1), or `None` for another scheme.
pub fn bearer_token_of(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Severity, Valid};

    #[test]
    fn the_bearer_scheme_is_named_in_any_case() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc ", " Bearer abc"] {
            assert_eq!(bearer_token_of(header), Some("abc"), "{header:?}");
        }
        for header in ["Basic abc", "Bearerabc", "Bearer", ""] {
            assert_eq!(bearer_token_of(header), None, "{header:?}");
        }
    }

    fn scoped(labels: &[(&str, &str)]) -> Grant {
        Grant {
            scope: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            ..Grant::open()
        }
    }

    fn metric(name: &str, labels: &[(&str, &str)]) -> Metric {
        labels
            .iter()
            .fold(Metric::new(name, 1.0).valid(), |metric, (key, value)| {
                metric.with_label(*key, *value).valid()
            })
    }

    fn alert(labels: &[(&str, &str)]) -> Alert {
        labels.iter().fold(
            Alert::new(Severity::Warning, "slow").valid(),
            |alert, (key, value)| alert.with_label(*key, *value).valid(),
        )
    }

    fn refusal<T>(result: Result<T, ScopeViolation>) -> Option<String> {
        result.err().map(|violation| violation.to_string())
    }

    #[test]
    fn an_empty_scope_allows_anything() {
        let open = Grant::open();
        assert!(open.scope.is_empty());
        assert_eq!(open.check_metrics(&[metric("api.latency_ms", &[])]), Ok(()));
        assert_eq!(open.check_alert(&alert(&[])), Ok(()));
    }

    #[test]
    fn metrics_carrying_every_scope_label_pass_whatever_else_they_carry() {
        let grant = scoped(&[("tenant", "acme"), ("env", "prod")]);
        let batch = [
            metric("a", &[("tenant", "acme"), ("env", "prod")]),
            metric(
                "b",
                &[("env", "prod"), ("host", "web-1"), ("tenant", "acme")],
            ),
        ];
        assert_eq!(grant.check_metrics(&batch), Ok(()));
        assert_eq!(grant.check_metrics(&[]), Ok(()));
    }

    #[test]
    fn the_first_metric_lacking_a_label_is_named_with_the_label() {
        let grant = scoped(&[("tenant", "acme")]);
        let batch = [
            metric("api.ok", &[("tenant", "acme")]),
            metric("api.latency_ms", &[("host", "web-1")]),
            metric("api.other", &[]),
        ];
        assert_eq!(
            refusal(grant.check_metrics(&batch)).as_deref(),
            Some("metric 1 (api.latency_ms) lacks label tenant=acme")
        );
    }

    #[test]
    fn a_label_with_another_value_is_lacking() {
        let grant = scoped(&[("tenant", "acme")]);
        assert_eq!(
            refusal(grant.check_metrics(&[metric("api.latency_ms", &[("tenant", "evil")])])),
            Some("metric 0 (api.latency_ms) lacks label tenant=acme".to_owned())
        );
        assert_eq!(
            refusal(grant.check_alert(&alert(&[("tenant", "Acme")]))),
            Some("alert lacks label tenant=acme".to_owned())
        );
    }

    #[test]
    fn an_alert_must_carry_every_scope_label() {
        let grant = scoped(&[("env", "prod"), ("tenant", "acme")]);
        assert_eq!(
            grant.check_alert(&alert(&[("tenant", "acme"), ("env", "prod")])),
            Ok(())
        );
        assert_eq!(
            grant.check_alert(&alert(&[("tenant", "acme")])),
            Err(ScopeViolation::Alert {
                key: "env".to_owned(),
                value: "prod".to_owned(),
            })
        );
    }
}
