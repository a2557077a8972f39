//! The proto3 JSON forms that opentelemetry-proto's generated serde code does not read, turned
//! into the ones it does before decoding: an enum given by its name (what protobuf's own
//! `MessageToJson` writes by default), a 32-bit integer or a double given as a string (proto3
//! JSON allows both). Without this the generated decoder drops the whole `gauge`/`sum`/…
//! of a metric it cannot read, and the metric would be lost without a word.
//!
//! A double given as `"NaN"`, `"Infinity"` or `"-Infinity"` cannot become a JSON number: an
//! `asDouble` of that kind is removed, so that its point is refused for having no (finite)
//! value; elsewhere it stays, and its metric is refused as one that does not decode.

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
            normalize_fields(object);
            object.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn normalize_fields(object: &mut Map<String, Value>) {
    if let Some(Value::String(name)) = object.get("aggregationTemporality") {
        if let Some((_, number)) = TEMPORALITIES.iter().find(|(known, _)| known == name) {
            object.insert("aggregationTemporality".to_owned(), Value::from(*number));
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
    fn what_it_does_not_know_is_left_as_it_is() {
        let mut request = json!({"sum":{"aggregationTemporality":"BOGUS","dataPoints":[{"flags":"x","asDouble":"abc"}]}});
        let before = request.clone();
        normalize(&mut request);
        assert_eq!(request, before);
    }
}
