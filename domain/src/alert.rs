//! A condition someone must look at.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::json_object::ObjectOnly;
use crate::metric::{check_labels, check_name, check_text, Required};
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
/// `id` and `timestamp` are filled by the server when the publisher leaves them out; `source` is
/// always set by the server. On the wire it is a JSON object only (see [`crate::Metric`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
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

impl Serialize for Alert {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Alert::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Alert {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Alert::deserialize(ObjectOnly(deserializer))
    }
}

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
            check_name(path, "metric", metric, Required::Yes)?;
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
    fn only_the_object_form_decodes() {
        assert!(serde_json::from_str::<Alert>(r#"["id","info","msg"]"#).is_err());
        let decoded = serde_json::from_str::<Alert>(r#"{"severity":"info","message":"msg"}"#);
        assert_eq!(decoded.ok(), Some(Alert::new(Severity::Info, "msg")));
    }

    #[test]
    fn the_metric_it_names_has_no_control_characters() {
        let mut alert = Alert::new(Severity::Info, "multi\nline messages are fine");
        assert!(alert.validate("").is_ok());
        alert.metric = Some("cpu\u{1b}".into());
        let error = alert.validate("data").err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some("data.metric: must not contain control characters")
        );
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
