//! A condition someone must look at.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metric::{check_labels, check_text, Required};
use crate::{InvalidMessage, WorkerId};

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Self::Info),
            "warning" => Ok(Self::Warning),
            "critical" => Ok(Self::Critical),
            other => Err(format!(
                "unknown severity {other:?}: expected info, warning or critical"
            )),
        }
    }
}

/// An alert, raised by a rule inside a worker or posted by an outside system.
///
/// `id`, `timestamp` and `source` are filled by the server when the publisher leaves them out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub severity: Severity,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<WorkerId>,
}

/// Longest alert message accepted, in bytes.
const MAX_MESSAGE_LEN: usize = 4096;

impl Alert {
    pub fn new(severity: Severity, message: impl Into<String>) -> Self {
        Self {
            id: None,
            severity,
            message: message.into(),
            metric: None,
            value: None,
            threshold: None,
            labels: BTreeMap::new(),
            timestamp: None,
            source: None,
        }
    }

    pub fn validate(&self, path: &str) -> Result<(), InvalidMessage> {
        if let Some(id) = &self.id {
            check_text(path, "id", id, Required::Yes)?;
        }
        if self.message.trim().is_empty() {
            return Err(InvalidMessage::new(path, "message", "must not be empty"));
        }
        if self.message.len() > MAX_MESSAGE_LEN {
            return Err(InvalidMessage::new(
                path,
                "message",
                "is longer than 4096 bytes",
            ));
        }
        if let Some(metric) = &self.metric {
            check_text(path, "metric", metric, Required::Yes)?;
        }
        for (field, number) in [("value", self.value), ("threshold", self.threshold)] {
            if number.is_some_and(|n| !n.is_finite()) {
                return Err(InvalidMessage::new(path, field, "must be a finite number"));
            }
        }
        check_labels(path, &self.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_is_lowercase_on_the_wire() {
        let alert = Alert::new(Severity::Critical, "disk full");
        let json = serde_json::to_string(&alert).unwrap_or_default();
        assert_eq!(json, r#"{"severity":"critical","message":"disk full"}"#);
        assert!(serde_json::from_str::<Alert>(r#"{"severity":"fatal","message":"x"}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut alert = Alert::new(Severity::Info, "");
        assert_eq!(
            alert.validate("").err().map(|e| e.field().to_owned()),
            Some("message".to_owned())
        );
        alert.message = "ok".into();
        alert.threshold = Some(f64::INFINITY);
        assert_eq!(
            alert.validate("").err().map(|e| e.field().to_owned()),
            Some("threshold".to_owned())
        );
    }
}
