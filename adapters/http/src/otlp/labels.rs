//! OTLP attributes as fanout labels: resource attributes merged with a data point's, the
//! point's winning, each value turned into text and everything cut to the label limits that
//! `POST /api/metrics` enforces (at most [`MAX_LABELS`] labels, keys and values at most
//! [`MAX_TEXT_LEN`] bytes). What was cut is counted, for the response to say so.

use std::collections::BTreeMap;

use base64::Engine;
use fanout_domain::{MAX_LABELS, MAX_TEXT_LEN};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// One attribute as a label: a key fanout accepts, its value as text (already cut).
pub(crate) type Label = (String, String);

/// What was cut from a request's attributes to fit the label limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cuts {
    /// Values longer than [`MAX_TEXT_LEN`] bytes, shortened to it.
    pub(crate) shortened_values: usize,
    /// Attributes left out because a point already had [`MAX_LABELS`] labels.
    pub(crate) beyond_limit: usize,
    /// Attributes left out because fanout refuses their key: empty, with control characters,
    /// or longer than [`MAX_TEXT_LEN`] bytes (a cut key could pass for another).
    pub(crate) refused_keys: usize,
    /// Attributes left out because their key was given before (the first value is kept).
    pub(crate) repeated_keys: usize,
}

impl Cuts {
    /// Whether anything was cut.
    pub(crate) fn any(&self) -> bool {
        *self != Self::default()
    }

    /// The sentence the response carries, `None` when nothing was cut.
    pub(crate) fn describe(&self) -> Option<String> {
        if !self.any() {
            return None;
        }
        let mut parts = Vec::new();
        if self.shortened_values > 0 {
            parts.push(format!(
                "{} attribute values shortened to {MAX_TEXT_LEN} bytes",
                self.shortened_values
            ));
        }
        if self.beyond_limit > 0 {
            parts.push(format!(
                "{} attributes dropped beyond {MAX_LABELS} labels per point (the point's own attributes are kept first, then the resource's, in the order sent)",
                self.beyond_limit
            ));
        }
        if self.refused_keys > 0 {
            parts.push(format!(
                "{} attributes dropped for a key that is empty, has control characters or is longer than {MAX_TEXT_LEN} bytes",
                self.refused_keys
            ));
        }
        if self.repeated_keys > 0 {
            parts.push(format!(
                "{} attributes dropped for a key given before (the first value is kept)",
                self.repeated_keys
            ));
        }
        Some(format!(
            "labels cut to fanout's limits: {}",
            parts.join("; ")
        ))
    }
}

/// The attributes as labels, in the order sent: refused keys dropped, values as text cut to
/// [`MAX_TEXT_LEN`] bytes. A key given twice keeps its first value.
pub(crate) fn convert(attributes: &[KeyValue], cuts: &mut Cuts) -> Vec<Label> {
    let mut labels: Vec<Label> = Vec::with_capacity(attributes.len());
    for attribute in attributes {
        let key = &attribute.key;
        if key.trim().is_empty() || key.len() > MAX_TEXT_LEN || key.chars().any(char::is_control) {
            cuts.refused_keys += 1;
            continue;
        }
        if labels.iter().any(|(seen, _)| seen == key) {
            cuts.repeated_keys += 1;
            continue;
        }
        let mut value = text(attribute.value.as_ref());
        if value.len() > MAX_TEXT_LEN {
            value.truncate(char_boundary_at_most(&value, MAX_TEXT_LEN));
            cuts.shortened_values += 1;
        }
        labels.push((key.clone(), value));
    }
    labels
}

/// A point's labels: its own attributes, then the resource's for keys it does not have, at most
/// [`MAX_LABELS`] in all (the point's own first, then the resource's, in the order sent).
pub(crate) fn merge(
    point: Vec<Label>,
    resource: &[Label],
    cuts: &mut Cuts,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let from_resource = resource.iter().cloned();
    for (key, value) in point.into_iter().chain(from_resource) {
        if labels.contains_key(&key) {
            continue;
        }
        if labels.len() == MAX_LABELS {
            cuts.beyond_limit += 1;
            continue;
        }
        labels.insert(key, value);
    }
    labels
}

/// An attribute value as label text: strings as they are, numbers and booleans as written in
/// JSON, bytes in base64 (as OTLP/JSON writes them), arrays and maps as compact JSON, nothing as
/// the empty string.
fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        None => String::new(),
        Some(other) => match json(other) {
            serde_json::Value::String(text) => text,
            json => json.to_string(),
        },
    }
}

fn json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Value::StringValue(text) => Json::String(text.clone()),
        Value::BoolValue(flag) => Json::Bool(*flag),
        Value::IntValue(number) => Json::from(*number),
        // JSON has no NaN or infinity: those become their names.
        Value::DoubleValue(number) => serde_json::Number::from_f64(*number)
            .map_or_else(|| Json::String(number.to_string()), Json::Number),
        Value::BytesValue(bytes) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Value::ArrayValue(array) => Json::Array(
            array
                .values
                .iter()
                .map(|item| item.value.as_ref().map_or(Json::Null, json))
                .collect(),
        ),
        Value::KvlistValue(list) => Json::Object(
            list.values
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), value.map_or(Json::Null, json))
                })
                .collect(),
        ),
        // A profiles-only reference into a string table: no meaning for metrics (the spec says
        // to take it as absent).
        Value::StringValueStrindex(_) => Json::String(String::new()),
    }
}

/// The largest index at most `limit` that is a character boundary of `text`.
fn char_boundary_at_most(text: &str, limit: usize) -> usize {
    (0..=limit.min(text.len()))
        .rev()
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    use super::*;

    fn attribute(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn string(key: &str, value: &str) -> KeyValue {
        attribute(key, Value::StringValue(value.to_owned()))
    }

    #[test]
    fn every_value_kind_becomes_text() {
        let mut cuts = Cuts::default();
        let labels = convert(
            &[
                string("s", "checkout"),
                attribute("b", Value::BoolValue(true)),
                attribute("i", Value::IntValue(-42)),
                attribute("d", Value::DoubleValue(0.25)),
                attribute("nan", Value::DoubleValue(f64::NAN)),
                attribute("bytes", Value::BytesValue(vec![0, 1, 2])),
                attribute(
                    "array",
                    Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(Value::StringValue("a".into())),
                            },
                            AnyValue {
                                value: Some(Value::IntValue(1)),
                            },
                        ],
                    }),
                ),
                attribute(
                    "map",
                    Value::KvlistValue(KeyValueList {
                        values: vec![attribute("k", Value::BoolValue(false))],
                    }),
                ),
                KeyValue {
                    key: "empty".into(),
                    ..KeyValue::default()
                },
            ],
            &mut cuts,
        );
        let expected = [
            ("s", "checkout"),
            ("b", "true"),
            ("i", "-42"),
            ("d", "0.25"),
            ("nan", "NaN"),
            ("bytes", "AAEC"),
            ("array", r#"["a",1]"#),
            ("map", r#"{"k":false}"#),
            ("empty", ""),
        ];
        let expected: Vec<Label> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(labels, expected);
        assert!(!cuts.any());
    }

    #[test]
    fn the_point_wins_over_the_resource() {
        let mut cuts = Cuts::default();
        let resource = convert(
            &[string("service.name", "api"), string("host.name", "h1")],
            &mut cuts,
        );
        let point = convert(
            &[string("host.name", "h2"), string("route", "/")],
            &mut cuts,
        );
        let labels = merge(point, &resource, &mut cuts);
        let expected: BTreeMap<String, String> =
            [("host.name", "h2"), ("route", "/"), ("service.name", "api")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        assert_eq!(labels, expected);
        assert!(!cuts.any());
    }

    #[test]
    fn long_values_are_cut_and_refused_keys_and_labels_beyond_the_limit_are_dropped() {
        let mut cuts = Cuts::default();
        // 255 ASCII bytes then a two-byte character: cut before it, at 255 bytes.
        let long = format!("{}é{}", "x".repeat(255), "y".repeat(100));
        let point = convert(
            &[
                string("long", &long),
                string("", "empty key"),
                string("bad\nkey", "v"),
                string(&"k".repeat(MAX_TEXT_LEN + 1), "v"),
                string("long", "the first value stays"),
            ],
            &mut cuts,
        );
        assert_eq!(point.len(), 1);
        assert_eq!(point[0].1, "x".repeat(255));
        let resource: Vec<KeyValue> = (0..40).map(|i| string(&format!("r{i:02}"), "v")).collect();
        let resource = convert(&resource, &mut cuts);
        let labels = merge(point, &resource, &mut cuts);
        assert_eq!(labels.len(), MAX_LABELS);
        assert!(labels.contains_key("long"), "the point's own come first");
        assert!(labels.contains_key("r30") && !labels.contains_key("r31"));
        assert_eq!(
            cuts,
            Cuts {
                shortened_values: 1,
                beyond_limit: 9,
                refused_keys: 3,
                repeated_keys: 1,
            }
        );
        let said = cuts.describe().unwrap_or_default();
        assert!(
            said.contains("1 attribute values shortened to 256 bytes"),
            "{said}"
        );
        assert!(
            said.contains("9 attributes dropped beyond 32 labels"),
            "{said}"
        );
        assert!(said.contains("3 attributes dropped for a key"), "{said}");
    }
}
