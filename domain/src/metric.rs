//! One measured value.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::json_object::ObjectOnly;
use crate::{InvalidMessage, WorkerId};

/// Longest metric name, unit, label key or label value accepted, in bytes.
pub(crate) const MAX_TEXT_LEN: usize = 256;
/// Most labels on one metric or alert.
pub(crate) const MAX_LABELS: usize = 32;

/// A named value at a point in time, e.g. `host.cpu_percent = 93.5`.
///
/// `timestamp` (Unix milliseconds) is filled by the server when the publisher leaves it out;
/// `source` (the worker that published it) is always set by the server.
///
/// On the wire it is a JSON object and nothing else: `remote = "Self"` turns the derives into
/// inherent functions that the trait impls below call, the decoding one through [`ObjectOnly`]
/// (see `json_object.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct Metric {
    pub name: String,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<WorkerId>,
}

impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Metric::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Metric::deserialize(ObjectOnly(deserializer))
    }
}

impl Metric {
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            value,
            unit: None,
            labels: BTreeMap::new(),
            timestamp: None,
            source: None,
        }
    }

    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Checks what JSON decoding cannot: names present, bounded and free of control characters,
    /// the value finite. `path` prefixes the field names in the error (e.g. `[3]` for the fourth
    /// metric of a batch).
    pub fn validate(&self, path: &str) -> Result<(), InvalidMessage> {
        check_name(path, "name", &self.name, Required::Yes)?;
        if !self.value.is_finite() {
            return Err(InvalidMessage::new(
                path,
                "value",
                "must be a finite number",
            ));
        }
        if let Some(unit) = &self.unit {
            check_name(path, "unit", unit, Required::No)?;
        }
        check_labels(path, &self.labels)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Required {
    Yes,
    No,
}

pub(crate) fn check_text(
    path: &str,
    field: &str,
    text: &str,
    required: Required,
) -> Result<(), InvalidMessage> {
    if required == Required::Yes && text.trim().is_empty() {
        return Err(InvalidMessage::new(path, field, "must not be empty"));
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(InvalidMessage::new(path, field, "is longer than 256 bytes"));
    }
    Ok(())
}

/// A name (metric name, unit, label key, an alert's metric) is [`check_text`] and has no control
/// character (`char::is_control`: U+0000–U+001F, U+007F–U+009F): names end up in dashboards,
/// logs and series keys, where a newline or an escape sequence would forge or hide something.
pub(crate) fn check_name(
    path: &str,
    field: &str,
    name: &str,
    required: Required,
) -> Result<(), InvalidMessage> {
    check_text(path, field, name, required)?;
    if name.chars().any(char::is_control) {
        return Err(InvalidMessage::new(
            path,
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub(crate) fn check_labels(
    path: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), InvalidMessage> {
    if labels.len() > MAX_LABELS {
        return Err(InvalidMessage::new(
            path,
            "labels",
            "has more than 32 entries",
        ));
    }
    let labels_path = InvalidMessage::join(path, "labels");
    for (key, value) in labels {
        // A key that is empty or carries control characters cannot name its own field clearly:
        // the error points at `labels`.
        if key.trim().is_empty() {
            return Err(InvalidMessage::new(path, "labels", "has an empty key"));
        }
        if key.chars().any(char::is_control) {
            return Err(InvalidMessage::new(
                path,
                "labels",
                "has a key with control characters",
            ));
        }
        check_text(&labels_path, key, key, Required::Yes)?;
        check_text(&labels_path, key, value, Required::No)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_name_and_non_finite_value() {
        let error = Metric::new(" ", 1.0)
            .validate("")
            .err()
            .map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("name: must not be empty"));
        let error = Metric::new("cpu", f64::NAN)
            .validate("[2]")
            .err()
            .map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("[2].value: must be a finite number"));
        assert!(Metric::new("cpu", 1.5).with_unit("%").validate("").is_ok());
    }

    fn refusal(metric: &Metric, path: &str) -> Option<(String, String)> {
        metric
            .validate(path)
            .err()
            .map(|e| (e.field().to_owned(), e.reason().to_owned()))
    }

    #[test]
    fn names_units_and_label_keys_refuse_control_characters_and_empty_keys() {
        let control = Some("must not contain control characters".to_owned());
        for name in ["cpu\n", "\u{0}", "a\u{1b}[31m", "del\u{7f}", "c1\u{85}"] {
            let error = refusal(&Metric::new(name, 1.0), "[1]");
            assert_eq!(
                error,
                Some(("[1].name".to_owned(), control.clone().unwrap_or_default())),
                "{name:?}"
            );
        }
        let error = refusal(&Metric::new("cpu", 1.0).with_unit("%\t"), "");
        assert_eq!(error.map(|e| e.0).as_deref(), Some("unit"));
        let error = refusal(&Metric::new("cpu", 1.0).with_label("", "a"), "[0]");
        assert_eq!(
            error,
            Some(("[0].labels".to_owned(), "has an empty key".to_owned()))
        );
        let error = refusal(&Metric::new("cpu", 1.0).with_label("ho\rst", "a"), "");
        assert_eq!(
            error,
            Some((
                "labels".to_owned(),
                "has a key with control characters".to_owned()
            ))
        );
        let error = refusal(
            &Metric::new("cpu", 1.0).with_label("host", "x".repeat(300)),
            "",
        );
        assert_eq!(error.map(|e| e.0).as_deref(), Some("labels.host"));
        assert_eq!(
            refusal(
                &Metric::new("héllo wörld", 1.0)
                    .with_unit("µs")
                    .with_label("k", "v\n"),
                ""
            ),
            None
        );
    }

    #[test]
    fn only_the_object_form_decodes() {
        assert!(serde_json::from_str::<Metric>(r#"["cpu",5]"#).is_err());
        assert!(serde_json::from_str::<Vec<Metric>>(r#"[["name",5]]"#).is_err());
        let decoded = serde_json::from_str::<Metric>(r#"{"name":"cpu","value":5}"#).ok();
        assert_eq!(decoded, Some(Metric::new("cpu", 5.0)));
        let encoded = serde_json::to_string(&Metric::new("cpu", 5.0).with_unit("%")).ok();
        assert_eq!(
            encoded.as_deref(),
            Some(r#"{"name":"cpu","value":5.0,"unit":"%"}"#)
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let decoded = serde_json::from_str::<Metric>(r#"{"name":"cpu","value":1,"valu":2}"#);
        assert!(decoded.is_err());
    }
}
