//! One measured value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{InvalidMessage, WorkerId};

/// Longest metric name, unit, label key or label value accepted, in bytes.
pub(crate) const MAX_TEXT_LEN: usize = 256;
/// Most labels on one metric or alert.
pub(crate) const MAX_LABELS: usize = 32;

/// A named value at a point in time, e.g. `host.cpu_percent = 93.5`.
///
/// `timestamp` (Unix milliseconds) and `source` (the worker that published it) are filled by the
/// server when the publisher leaves them out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

    /// Checks what JSON decoding cannot: names present and bounded, the value finite.
    /// `path` prefixes the field names in the error (e.g. `[3]` for the fourth metric of a batch).
    pub fn validate(&self, path: &str) -> Result<(), InvalidMessage> {
        check_text(path, "name", &self.name, Required::Yes)?;
        if !self.value.is_finite() {
            return Err(InvalidMessage::new(
                path,
                "value",
                "must be a finite number",
            ));
        }
        if let Some(unit) = &self.unit {
            check_text(path, "unit", unit, Required::No)?;
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
    for (key, value) in labels {
        let label_path = format!("{path}.labels");
        check_text(&label_path, key, key, Required::Yes)?;
        check_text(&label_path, key, value, Required::No)?;
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

    #[test]
    fn unknown_fields_are_refused() {
        let decoded = serde_json::from_str::<Metric>(r#"{"name":"cpu","value":1,"valu":2}"#);
        assert!(decoded.is_err());
    }
}
