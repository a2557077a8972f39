//! The proto3 JSON forms that opentelemetry-proto's generated serde code does not read, turned
//! into the ones it does before decoding: an enum given by its name (what protobuf's own
//! `MessageToJson` writes by default), a 32-bit integer or a double given as a string (proto3
//! JSON allows both). Without this the generated decoder drops the whole `gauge`/`sum`/…
//! of a metric it cannot read, and the metric would be lost without a word.
//!
//! Also: `null` is a field's default (left out), snake_case field names are read as their
//! lowerCamelCase names, an enum number may be a string, an integer may be written `5.0` or
//! `1e2`, and exemplars (which fanout does not use) are left out, whatever their ids look like.
//!
//! A double given as `"NaN"`, `"Infinity"` or `"-Infinity"` cannot become a JSON number: an
//! `asDouble` of that kind is removed, so that its point is refused for having no (finite)
//! value; a histogram's `min`/`max` of that kind is left out (unknown, as protobuf's infinite
//! bound clamps nothing); anywhere else its point does not decode. What still does not decode is
//! found by [`take_unreadable`], point by point, and refused point by point, so that one bad
//! point never costs the others of its metric.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde_json::{Map, Value};

/// `AggregationTemporality` by name.
const TEMPORALITIES: [(&str, u64); 3] = [
    ("AGGREGATION_TEMPORALITY_UNSPECIFIED", 0),
    ("AGGREGATION_TEMPORALITY_DELTA", 1),
    ("AGGREGATION_TEMPORALITY_CUMULATIVE", 2),
];

/// Integer fields of 32 bits (the generated code reads 64-bit ones from strings already).
const INTEGERS: [&str; 3] = ["flags", "scale", "droppedAttributesCount"];

/// Double fields.
const DOUBLES: [&str; 6] = ["asDouble", "sum", "min", "max", "quantile", "value"];

/// Rewrites `value` in place (see the module's documentation).
pub(crate) fn normalize(value: &mut Value) {
    match value {
        Value::Object(object) => {
            camel_case_keys(object);
            object.retain(|key, value| !value.is_null() && key != "exemplars");
            normalize_fields(object);
            object.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// `data_points` → `dataPoints` (proto3 JSON parsers accept the proto field names too), unless
/// the camelCase name is there already.
fn camel_case_keys(object: &mut Map<String, Value>) {
    let snake: Vec<String> = object
        .keys()
        .filter(|key| key.contains('_'))
        .cloned()
        .collect();
    for key in snake {
        let mut camel = String::with_capacity(key.len());
        let mut upper = false;
        for c in key.chars() {
            match (c, upper) {
                ('_', _) => upper = true,
                (c, true) => {
                    camel.extend(c.to_uppercase());
                    upper = false;
                }
                (c, false) => camel.push(c),
            }
        }
        if !object.contains_key(&camel) {
            if let Some(value) = object.remove(&key) {
                object.insert(camel, value);
            }
        }
    }
}

fn normalize_fields(object: &mut Map<String, Value>) {
    if let Some(Value::String(name)) = object.get("aggregationTemporality") {
        let number = TEMPORALITIES
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, number)| *number)
            .or_else(|| name.parse::<u64>().ok());
        if let Some(number) = number {
            object.insert("aggregationTemporality".to_owned(), Value::from(number));
        }
    }
    // An integer written as a whole double (`5.0`, `1e2`, `"1e2"`): its digits.
    if let Some(whole) = object.get("asInt").and_then(whole_number) {
        object.insert("asInt".to_owned(), Value::String(whole));
    }
    for bound in ["min", "max"] {
        if text_of(object, bound)
            .and_then(|text| text.parse::<f64>().ok())
            .is_some_and(|number| !number.is_finite())
        {
            object.remove(bound);
        }
    }
    for key in INTEGERS {
        if let Some(number) = text_of(object, key).and_then(|text| text.parse::<i64>().ok()) {
            object.insert(key.to_owned(), Value::from(number));
        }
    }
    for key in DOUBLES {
        let Some(number) = text_of(object, key).and_then(|text| text.parse::<f64>().ok()) else {
            continue;
        };
        match serde_json::Number::from_f64(number) {
            Some(number) => {
                object.insert(key.to_owned(), Value::Number(number));
            }
            None if key == "asDouble" => {
                object.remove(key);
            }
            None => {}
        }
    }
    if let Some(Value::Array(bounds)) = object.get_mut("explicitBounds") {
        for bound in bounds.iter_mut() {
            let number = bound
                .as_str()
                .and_then(|text| text.parse::<f64>().ok())
                .and_then(serde_json::Number::from_f64);
            if let Some(number) = number {
                *bound = Value::Number(number);
            }
        }
    }
}

/// The digits of a whole number written as a double (`5.0`, `1e2`, `"1e2"`); `None` for an
/// integer already in a form the decoder reads, or for anything else.
fn whole_number(value: &Value) -> Option<String> {
    let number = match value {
        Value::Number(number) if number.is_f64() => number.as_f64()?,
        Value::String(text) if !text.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            text.parse::<f64>().ok()?
        }
        _ => return None,
    };
    let fits = number.fract() == 0.0 && number.abs() < 9.0e18;
    #[allow(clippy::cast_possible_truncation)] // checked just above: whole and within i64
    fits.then(|| (number as i64).to_string())
}

/// The kinds of a metric's data, as OTLP/JSON names them.
const KINDS: [&str; 5] = [
    "gauge",
    "sum",
    "histogram",
    "exponentialHistogram",
    "summary",
];

/// A data point (or a metric without readable data) taken out before decoding.
pub(crate) struct Unreadable {
    /// Its place, in OTLP/JSON's field names.
    pub(crate) at: String,
    /// The instrument's name.
    pub(crate) name: String,
    /// Why.
    pub(crate) reason: String,
}

/// Takes out of a normalized request every data point the generated decoder cannot read (it
/// would drop the whole `gauge`/`sum`/… of the metric without a word), and returns them, so that
/// they are refused one by one and the rest of their metric goes on. A metric whose own fields
/// are at fault loses all its points, each refused.
pub(crate) fn take_unreadable(request: &mut Value) -> Vec<Unreadable> {
    let mut taken = Vec::new();
    let Some(resources) = request
        .get_mut("resourceMetrics")
        .and_then(Value::as_array_mut)
    else {
        return taken;
    };
    for (r, resource) in resources.iter_mut().enumerate() {
        let Some(scopes) = resource
            .get_mut("scopeMetrics")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for (s, scope) in scopes.iter_mut().enumerate() {
            let Some(metrics) = scope.get_mut("metrics").and_then(Value::as_array_mut) else {
                continue;
            };
            for (m, metric) in metrics.iter_mut().enumerate() {
                if readable(metric) {
                    continue;
                }
                let place = format!("resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}]");
                take_points(metric, &place, &mut taken);
            }
        }
    }
    taken
}

fn take_points(metric: &mut Value, place: &str, taken: &mut Vec<Unreadable>) {
    let name = metric
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = KINDS.into_iter().find(|kind| metric.get(*kind).is_some());
    let points = kind.and_then(|kind| {
        metric[kind]
            .get_mut("dataPoints")
            .map(Value::take)
            .and_then(|points| match points {
                Value::Array(points) => Some(points),
                _ => None,
            })
    });
    let (Some(kind), Some(points)) = (kind, points) else {
        // Nothing to read points from: the metric is one refused point, and becomes an empty
        // gauge (nothing, and no second refusal).
        taken.push(Unreadable {
            at: place.to_owned(),
            name: name.clone(),
            reason: "has no data fanout could read".to_owned(),
        });
        *metric = serde_json::json!({ "name": name, "gauge": { "dataPoints": [] } });
        return;
    };
    metric[kind]["dataPoints"] = Value::Array(Vec::new());
    let frame_readable = readable(metric);
    let mut kept = Vec::new();
    for (p, point) in points.into_iter().enumerate() {
        let mut alone = metric.clone();
        alone[kind]["dataPoints"] = Value::Array(vec![point.clone()]);
        if frame_readable && readable(&alone) {
            kept.push(point);
            continue;
        }
        let reason = if !frame_readable {
            format!("the metric's {kind} fields do not decode (OTLP/JSON)")
        } else if mentions_non_finite(&point) {
            "a value is NaN or infinite (written as a string): not a finite number".to_owned()
        } else {
            "a field of the point does not decode (OTLP/JSON)".to_owned()
        };
        taken.push(Unreadable {
            at: format!("{place}.{kind}.dataPoints[{p}]"),
            name: name.clone(),
            reason,
        });
    }
    if frame_readable {
        metric[kind]["dataPoints"] = Value::Array(kept);
    } else {
        *metric = serde_json::json!({ "name": name, "gauge": { "dataPoints": [] } });
    }
}

/// Whether the generated decoder reads `metric` with its data.
fn readable(metric: &Value) -> bool {
    use serde::Deserialize;
    opentelemetry_proto::tonic::metrics::v1::Metric::deserialize(metric)
        .is_ok_and(|metric| metric.data.is_some())
}

/// Whether the decoder left some metric of `request` without its data: then
/// [`take_unreadable`] finds what it could not read.
pub(crate) fn drops_data(request: &ExportMetricsServiceRequest) -> bool {
    request
        .resource_metrics
        .iter()
        .flat_map(|resource| &resource.scope_metrics)
        .flat_map(|scope| &scope.metrics)
        .any(|metric| metric.data.is_none())
}

fn mentions_non_finite(value: &Value) -> bool {
    match value {
        Value::String(text) => matches!(text.as_str(), "NaN" | "Infinity" | "-Infinity"),
        Value::Array(items) => items.iter().any(mentions_non_finite),
        Value::Object(object) => object.values().any(mentions_non_finite),
        _ => false,
    }
}

fn text_of<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_and_strings_become_what_the_decoder_reads() {
        let mut request = json!({"resourceMetrics":[{"scopeMetrics":[{"metrics":[
            {"name":"s","sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","isMonotonic":true,
                "dataPoints":[{"asDouble":"1.5","flags":"0","timeUnixNano":"1"}]}},
            {"name":"h","histogram":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA",
                "dataPoints":[{"count":"2","sum":"3.5","explicitBounds":["1","2.5"],"bucketCounts":["1","1","0"]}]}},
            {"name":"n","gauge":{"dataPoints":[{"asDouble":"NaN"},{"asDouble":"Infinity"}]}},
            {"name":"k","gauge":{"dataPoints":[{"asInt":"7","attributes":[{"key":"value","value":{"stringValue":"2"}}]}]}}
        ]}]}]});
        normalize(&mut request);
        let metrics = &request["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        assert_eq!(metrics[0]["sum"]["aggregationTemporality"], 2);
        assert_eq!(metrics[0]["sum"]["dataPoints"][0]["asDouble"], 1.5);
        assert_eq!(metrics[0]["sum"]["dataPoints"][0]["flags"], 0);
        assert_eq!(
            metrics[0]["sum"]["dataPoints"][0]["timeUnixNano"], "1",
            "64-bit stays"
        );
        assert_eq!(metrics[1]["histogram"]["aggregationTemporality"], 1);
        assert_eq!(metrics[1]["histogram"]["dataPoints"][0]["sum"], 3.5);
        assert_eq!(
            metrics[1]["histogram"]["dataPoints"][0]["explicitBounds"],
            json!([1.0, 2.5])
        );
        assert_eq!(
            metrics[2]["gauge"]["dataPoints"],
            json!([{}, {}]),
            "no finite value"
        );
        assert_eq!(
            metrics[3]["gauge"]["dataPoints"][0]["attributes"][0]["value"],
            json!({"stringValue":"2"}),
            "an attribute's value is an object, untouched"
        );
    }

    #[test]
    fn nulls_snake_case_names_whole_doubles_and_exemplars() {
        let mut metric = json!({"name":"m","unit":null,"gauge":{"data_points":[
            {"as_int":5.0,"exemplars":[{"traceId":"AAEC"}]},{"asInt":"1e2"},{"asInt":"-7"}]}});
        normalize(&mut metric);
        assert_eq!(
            metric,
            json!({"name":"m","gauge":{"dataPoints":[{"asInt":"5"},{"asInt":"100"},{"asInt":"-7"}]}})
        );
    }

    #[test]
    fn a_point_that_does_not_decode_is_taken_out_alone() {
        let mut request = json!({"resourceMetrics":[{"scopeMetrics":[{"metrics":[
            {"name":"h","histogram":{"aggregationTemporality":2,"dataPoints":[
                {"count":"1","sum":2,"explicitBounds":[10],"bucketCounts":["1","0"]},
                {"count":"1","sum":"NaN","explicitBounds":[10],"bucketCounts":["1","0"]}]}},
            {"name":"bad","sum":{"aggregationTemporality":"BOGUS","dataPoints":[{"asInt":"1"},{"asInt":"2"}]}},
            {"name":"none"}
        ]}]}]});
        normalize(&mut request);
        let taken = take_unreadable(&mut request);
        let said: Vec<(&str, &str)> = taken
            .iter()
            .map(|t| (t.at.as_str(), t.name.as_str()))
            .collect();
        let place = "resourceMetrics[0].scopeMetrics[0]";
        assert_eq!(
            said,
            [
                (
                    format!("{place}.metrics[0].histogram.dataPoints[1]").as_str(),
                    "h"
                ),
                (
                    format!("{place}.metrics[1].sum.dataPoints[0]").as_str(),
                    "bad"
                ),
                (
                    format!("{place}.metrics[1].sum.dataPoints[1]").as_str(),
                    "bad"
                ),
                (format!("{place}.metrics[2]").as_str(), "none"),
            ]
        );
        assert!(taken[0].reason.contains("NaN"), "{}", taken[0].reason);
        let metrics = &request["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        assert_eq!(
            metrics[0]["histogram"]["dataPoints"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert!(metrics
            .as_array()
            .is_some_and(|all| all.iter().all(readable)));
    }

    #[test]
    fn what_it_does_not_know_is_left_as_it_is() {
        let mut request = json!({"sum":{"aggregationTemporality":"BOGUS","dataPoints":[{"flags":"x","asDouble":"abc"}]}});
        let before = request.clone();
        normalize(&mut request);
        assert_eq!(request, before);
    }
}
