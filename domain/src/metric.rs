//! One measured value.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::json_object::ObjectOnly;
use crate::{InvalidMessage, WorkerId};

/// Longest metric name, unit, label key or label value accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 256;
/// Most labels on one metric or alert.
pub const MAX_LABELS: usize = 32;

/// One metric as a publisher sent it, before validation: the wire form, plain data.
///
/// The only way from it to a [`Metric`] is [`MetricFields::validate`]; code that holds a `Metric`
/// never checks again. On the wire it is a JSON object and nothing else: `remote = "Self"` turns
/// the derives into inherent functions that the trait impls below call, the decoding one through
/// `ObjectOnly` (see `json_object.rs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct MetricFields {
    /// What is measured, e.g. `host.cpu_percent`: not blank, at most 256 bytes, no control
    /// characters.
    pub name: String,
    /// The measurement; finite (NaN and the infinities are refused).
    pub value: f64,
    /// The unit of `value`, e.g. `%` or `ms` (at most 256 bytes, no control characters); `None`
    /// when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What tells series of one name apart, e.g. `host`: at most 32 labels, keys not blank and
    /// without control characters, keys and values at most 256 bytes. With the name (and, in
    /// snapshots, the source) they name a series.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When it was measured, in Unix milliseconds; `None`: the server fills in when it was
    /// published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// The worker that published it. The server's to set, never the publisher's: the HTTP API
    /// refuses a metric that carries it, and the server overwrites it before it goes out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<WorkerId>,
}

impl Serialize for MetricFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MetricFields::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for MetricFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MetricFields::deserialize(ObjectOnly(deserializer))
    }
}

impl MetricFields {
    /// Checks what JSON decoding cannot: names present, bounded and free of control characters,
    /// the value finite. `path` prefixes the field names in the error (e.g. `[3]` for the fourth
    /// metric of a batch).
    pub fn validate(self, path: &str) -> Result<Metric, InvalidMessage> {
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
        check_labels(path, &self.labels)?;
        Ok(Metric(self))
    }
}

/// A named value at a point in time, e.g. `host.cpu_percent = 93.5`: valid by construction
/// (a name of 1–256 bytes without control characters, a finite value, bounded labels).
///
/// `timestamp` (Unix milliseconds) is filled by the server when the publisher leaves it out;
/// `source` (the worker that published it) is always set by the server.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric(MetricFields);

impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MetricFields::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <MetricFields as Deserialize>::deserialize(deserializer)?
            .validate("")
            .map_err(serde::de::Error::custom)
    }
}

impl Metric {
    /// A metric with a name and a value; refused when either is invalid.
    pub fn new(name: impl Into<String>, value: f64) -> Result<Self, InvalidMessage> {
        MetricFields {
            name: name.into(),
            value,
            ..MetricFields::default()
        }
        .validate("")
    }

    /// Sets the unit; refused when it breaks the bounds of [`MetricFields::unit`].
    pub fn with_unit(self, unit: impl Into<String>) -> Result<Self, InvalidMessage> {
        MetricFields {
            unit: Some(unit.into()),
            ..self.0
        }
        .validate("")
    }

    /// Adds (or replaces) the label `key`; refused when the labels would break their bounds
    /// (see [`MetricFields::labels`]).
    pub fn with_label(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, InvalidMessage> {
        self.0.labels.insert(key.into(), value.into());
        self.0.validate("")
    }

    /// Sets the time of the sample (Unix milliseconds).
    pub fn with_timestamp(mut self, unix_ms: u64) -> Self {
        self.0.timestamp = Some(unix_ms);
        self
    }

    /// The server's part: the time when the publisher gave none.
    pub fn fill_timestamp(&mut self, unix_ms: Option<u64>) {
        self.0.timestamp = self.0.timestamp.or(unix_ms);
    }

    /// The server's part: the worker that published it.
    pub fn set_source(&mut self, source: WorkerId) {
        self.0.source = Some(source);
    }

    /// What is measured (not blank, at most 256 bytes, no control characters).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The measurement, always finite.
    pub fn value(&self) -> f64 {
        self.0.value
    }

    /// The unit of the value; `None` when it has none.
    pub fn unit(&self) -> Option<&str> {
        self.0.unit.as_deref()
    }

    /// The labels that, with the name, tell series apart (at most 32).
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
    pub fn into_fields(self) -> MetricFields {
        self.0
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

    fn fields(name: &str, value: f64) -> MetricFields {
        MetricFields {
            name: name.to_owned(),
            value,
            ..MetricFields::default()
        }
    }

    fn labelled(key: &str, value: &str) -> MetricFields {
        let mut metric = fields("cpu", 1.0);
        metric.labels.insert(key.to_owned(), value.to_owned());
        metric
    }

    fn refusal(metric: MetricFields, path: &str) -> Option<(String, String)> {
        metric
            .validate(path)
            .err()
            .map(|e| (e.field().to_owned(), e.reason().to_owned()))
    }

    #[test]
    fn rejects_empty_name_and_non_finite_value() {
        let error = Metric::new(" ", 1.0).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("name: must not be empty"));
        let error = fields("cpu", f64::NAN)
            .validate("[2]")
            .err()
            .map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("[2].value: must be a finite number"));
        assert!(Metric::new("cpu", 1.5)
            .and_then(|m| m.with_unit("%"))
            .is_ok());
        assert!(Metric::new("cpu", f64::INFINITY).is_err());
    }

    #[test]
    fn names_units_and_label_keys_refuse_control_characters_and_empty_keys() {
        let control = "must not contain control characters".to_owned();
        for name in ["cpu\n", "\u{0}", "a\u{1b}[31m", "del\u{7f}", "c1\u{85}"] {
            let error = refusal(fields(name, 1.0), "[1]");
            assert_eq!(
                error,
                Some(("[1].name".to_owned(), control.clone())),
                "{name:?}"
            );
        }
        let with_unit = MetricFields {
            unit: Some("%\t".into()),
            ..fields("cpu", 1.0)
        };
        assert_eq!(refusal(with_unit, "").map(|e| e.0).as_deref(), Some("unit"));
        assert_eq!(
            refusal(labelled("", "a"), "[0]"),
            Some(("[0].labels".to_owned(), "has an empty key".to_owned()))
        );
        assert_eq!(
            refusal(labelled("ho\rst", "a"), ""),
            Some((
                "labels".to_owned(),
                "has a key with control characters".to_owned()
            ))
        );
        let long = "x".repeat(300);
        assert_eq!(
            refusal(labelled("host", &long), "").map(|e| e.0).as_deref(),
            Some("labels.host")
        );
        let fine = Metric::new("héllo wörld", 1.0)
            .and_then(|m| m.with_unit("µs"))
            .and_then(|m| m.with_label("k", "v\n"));
        assert!(fine.is_ok(), "{fine:?}");
    }

    #[test]
    fn only_the_object_form_decodes() {
        assert!(serde_json::from_str::<Metric>(r#"["cpu",5]"#).is_err());
        assert!(serde_json::from_str::<Vec<Metric>>(r#"[["name",5]]"#).is_err());
        let decoded = serde_json::from_str::<Metric>(r#"{"name":"cpu","value":5}"#).ok();
        assert_eq!(decoded, Metric::new("cpu", 5.0).ok());
        let encoded = Metric::new("cpu", 5.0)
            .and_then(|m| m.with_unit("%"))
            .map(|m| serde_json::to_string(&m).unwrap_or_default());
        assert_eq!(
            encoded.ok().as_deref(),
            Some(r#"{"name":"cpu","value":5.0,"unit":"%"}"#)
        );
    }

    #[test]
    fn decoding_validates() {
        for invalid in [
            r#"{"name":"","value":1}"#,
            r#"{"name":"cpu","value":1,"labels":{"":"x"}}"#,
            r#"{"name":"cpu","value":1,"valu":2}"#,
        ] {
            assert!(
                serde_json::from_str::<Metric>(invalid).is_err(),
                "{invalid}"
            );
        }
    }
}
