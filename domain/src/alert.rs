//! A condition someone must look at.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::json_object::ObjectOnly;
use crate::metric::{check_labels, check_name, check_text, Required};
use crate::{InvalidMessage, WorkerId};

/// How urgent an alert is; ordered from `Info` to `Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nobody needs to act.
    Info,
    /// Needs attention soon; what a rule raises when it names no severity.
    Warning,
    /// Needs attention now.
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

/// One alert as a publisher sent it, before validation: the wire form, plain data.
///
/// The only way from it to an [`Alert`] is [`AlertFields::validate`]. On the wire it is a JSON
/// object only (see [`crate::MetricFields`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct AlertFields {
    /// The publisher's own id for the alert (not blank, at most 256 bytes); `None`: the server
    /// derives one (see [`Alert::id`]). Not a position in the alert log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// How urgent it is.
    pub severity: Severity,
    /// What happened, for a person: not blank, at most 4096 bytes (newlines are fine).
    pub message: String,
    /// The metric the alert is about (1–256 bytes, no control characters); `None` when it is not
    /// about one metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The value that was seen (finite); `None` when the publisher gave none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The threshold that was crossed (finite); `None` when the publisher gave none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Context such as `host`: at most 32 labels, keys not blank and without control characters,
    /// keys and values at most 256 bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When it happened, in Unix milliseconds; `None`: the server fills in when it was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// The worker that published it. The server's to set, never the publisher's: the HTTP API
    /// refuses an alert that carries it, and the server overwrites it before it goes out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<WorkerId>,
}

/// Longest alert message accepted, in bytes.
const MAX_MESSAGE_LEN: usize = 4096;

impl Serialize for AlertFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        AlertFields::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for AlertFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        AlertFields::deserialize(ObjectOnly(deserializer))
    }
}

impl AlertFields {
    /// Fields of an alert with only a severity and a message.
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

    /// Checks what JSON decoding cannot; `path` prefixes the field names in the error.
    pub fn validate(self, path: &str) -> Result<Alert, InvalidMessage> {
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
        check_labels(path, &self.labels)?;
        Ok(Alert(self))
    }
}

/// An alert, raised by a rule inside a worker or posted by an outside system: valid by
/// construction (a message of 1–4096 bytes, finite numbers, clean names, bounded labels).
///
/// `id` and `timestamp` are filled by the server when the publisher leaves them out; `source` is
/// always set by the server.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert(AlertFields);

impl Serialize for Alert {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        AlertFields::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Alert {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <AlertFields as Deserialize>::deserialize(deserializer)?
            .validate("")
            .map_err(serde::de::Error::custom)
    }
}

impl Alert {
    /// An alert with a severity and a message; refused when the message is empty or too long.
    pub fn new(severity: Severity, message: impl Into<String>) -> Result<Self, InvalidMessage> {
        AlertFields::new(severity, message).validate("")
    }

    /// The metric it is about, with the value seen and the threshold crossed.
    pub fn about_metric(
        self,
        metric: impl Into<String>,
        value: f64,
        threshold: f64,
    ) -> Result<Self, InvalidMessage> {
        AlertFields {
            metric: Some(metric.into()),
            value: Some(value),
            threshold: Some(threshold),
            ..self.0
        }
        .validate("")
    }

    /// Adds (or replaces) the label `key`; refused when the labels would break their bounds
    /// (see [`AlertFields::labels`]).
    pub fn with_label(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, InvalidMessage> {
        self.0.labels.insert(key.into(), value.into());
        self.0.validate("")
    }

    /// The server's part: an id when the publisher gave none.
    pub fn fill_id(&mut self, id: impl FnOnce() -> String) {
        if self.0.id.is_none() {
            self.0.id = Some(id());
        }
    }

    /// The server's part: the time when the publisher gave none.
    pub fn fill_timestamp(&mut self, unix_ms: Option<u64>) {
        self.0.timestamp = self.0.timestamp.or(unix_ms);
    }

    /// The server's part: the worker that published it.
    pub fn set_source(&mut self, source: WorkerId) {
        self.0.source = Some(source);
    }

    /// The alert's own id; not its position in the log. The publisher's, or one the server
    /// derived: `WORKER-SEQ` when published through a worker, `ORIGIN-HASH` (a hash of the bus
    /// message's bytes, the same on every worker) when an outside system put it on the bus
    /// without one. `None` only before the server filled it in.
    pub fn id(&self) -> Option<&str> {
        self.0.id.as_deref()
    }

    /// How urgent it is.
    pub fn severity(&self) -> Severity {
        self.0.severity
    }

    /// What happened, for a person (not blank, at most 4096 bytes).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The metric it is about; `None` when it is not about one metric.
    pub fn metric(&self) -> Option<&str> {
        self.0.metric.as_deref()
    }

    /// The value that was seen (finite); `None` when the publisher gave none.
    pub fn value(&self) -> Option<f64> {
        self.0.value
    }

    /// The threshold that was crossed (finite); `None` when the publisher gave none.
    pub fn threshold(&self) -> Option<f64> {
        self.0.threshold
    }

    /// Context labels, at most 32 (see [`AlertFields::labels`]).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.0.labels
    }

    /// Unix milliseconds.
    pub fn timestamp(&self) -> Option<u64> {
        self.0.timestamp
    }

    /// The worker that published it; `None` only before the server set it.
    pub fn source(&self) -> Option<&WorkerId> {
        self.0.source.as_ref()
    }

    /// The plain fields, e.g. to change one and validate again.
    pub fn into_fields(self) -> AlertFields {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_is_lowercase_on_the_wire() {
        let alert = Alert::new(Severity::Critical, "disk full")
            .map(|a| serde_json::to_string(&a).unwrap_or_default());
        assert_eq!(
            alert.ok().as_deref(),
            Some(r#"{"severity":"critical","message":"disk full"}"#)
        );
        assert!(serde_json::from_str::<Alert>(r#"{"severity":"fatal","message":"x"}"#).is_err());
    }

    #[test]
    fn only_the_object_form_decodes() {
        assert!(serde_json::from_str::<Alert>(r#"["id","info","msg"]"#).is_err());
        let decoded = serde_json::from_str::<Alert>(r#"{"severity":"info","message":"msg"}"#);
        assert_eq!(decoded.ok(), Alert::new(Severity::Info, "msg").ok());
    }

    #[test]
    fn the_metric_it_names_has_no_control_characters() {
        let alert = Alert::new(Severity::Info, "multi\nline messages are fine");
        assert!(alert.is_ok());
        let error = AlertFields {
            metric: Some("cpu\u{1b}".into()),
            ..AlertFields::new(Severity::Info, "m")
        }
        .validate("data")
        .err();
        assert_eq!(
            error.map(|e| (e.field().to_owned(), e.reason().to_owned())),
            Some((
                "data.metric".to_owned(),
                "must not contain control characters".to_owned()
            ))
        );
    }

    #[test]
    fn validation_names_the_field() {
        let empty = AlertFields::new(Severity::Info, "").validate("").err();
        assert_eq!(
            empty.map(|e| e.field().to_owned()),
            Some("message".to_owned())
        );
        let infinite = AlertFields {
            threshold: Some(f64::INFINITY),
            ..AlertFields::new(Severity::Info, "ok")
        }
        .validate("")
        .err();
        assert_eq!(
            infinite.map(|e| e.field().to_owned()),
            Some("threshold".to_owned())
        );
        assert!(serde_json::from_str::<Alert>(r#"{"severity":"info","message":" "}"#).is_err());
    }
}
