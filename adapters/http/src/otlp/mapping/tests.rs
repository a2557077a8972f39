//! The mapping of every data point kind, the attribute merge and cut, and refusals.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, Gauge, Histogram, Metric as OtlpMetric, ResourceMetrics, ScopeMetrics,
    Sum, Summary,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::*;

const T: u64 = 1_764_380_000_123_456_789;

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn request(resource: Vec<KeyValue>, metrics: Vec<OtlpMetric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource,
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn instrument(name: &str, unit: &str, data: Data) -> OtlpMetric {
    OtlpMetric {
        name: name.to_owned(),
        unit: unit.to_owned(),
        data: Some(data),
        ..OtlpMetric::default()
    }
}

fn number(value: Value, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        time_unix_nano: T,
        value: Some(value),
        ..NumberDataPoint::default()
    }
}

/// `name → (value, unit)` of what was mapped.
fn values(mapped: &Mapped) -> BTreeMap<String, (f64, Option<String>)> {
    mapped
        .metrics
        .iter()
        .map(|m| {
            (
                m.name().to_owned(),
                (m.value(), m.unit().map(str::to_owned)),
            )
        })
        .collect()
}

fn pairs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn gauge_and_sum_points_are_one_metric_each_with_merged_labels_and_the_time() {
    let mapped = map(request(
        vec![
            attribute("service.name", "checkout"),
            attribute("host.name", "h1"),
        ],
        vec![
            instrument(
                "cpu",
                "%",
                Data::Gauge(Gauge {
                    data_points: vec![number(
                        Value::AsDouble(93.5),
                        vec![attribute("host.name", "h2"), attribute("core", "0")],
                    )],
                }),
            ),
            instrument(
                "requests",
                "",
                Data::Sum(Sum {
                    data_points: vec![number(Value::AsInt(7), vec![])],
                    is_monotonic: true,
                    ..Sum::default()
                }),
            ),
        ],
    ));
    assert!(
        mapped.refused.is_empty() && mapped.message().is_none(),
        "{mapped:?}"
    );
    assert_eq!(mapped.metrics.len(), 2);
    let cpu = &mapped.metrics[0];
    assert_eq!(
        (cpu.name(), cpu.value(), cpu.unit()),
        ("cpu", 93.5, Some("%"))
    );
    assert_eq!(
        cpu.labels(),
        &pairs(&[
            ("core", "0"),
            ("host.name", "h2"),
            ("service.name", "checkout")
        ])
    );
    assert_eq!(cpu.timestamp(), Some(T / 1_000_000));
    let requests = &mapped.metrics[1];
    assert_eq!(
        (requests.name(), requests.value(), requests.unit()),
        ("requests", 7.0, None)
    );
    assert_eq!(
        requests.labels(),
        &pairs(&[("host.name", "h1"), ("service.name", "checkout")])
    );
}

#[test]
fn a_histogram_point_is_its_count_sum_and_three_quantiles() {
    let point = HistogramDataPoint {
        time_unix_nano: T,
        count: 20,
        sum: Some(250.0),
        explicit_bounds: vec![0.0, 10.0, 20.0],
        bucket_counts: vec![0, 10, 10, 0],
        ..HistogramDataPoint::default()
    };
    let mapped = map(request(
        vec![],
        vec![instrument(
            "latency",
            "ms",
            Data::Histogram(Histogram {
                data_points: vec![point],
                ..Histogram::default()
            }),
        )],
    ));
    let ms = Some("ms".to_owned());
    let expected: BTreeMap<String, (f64, Option<String>)> = [
        ("latency.count", (20.0, None)),
        ("latency.sum", (250.0, ms.clone())),
        ("latency.p50", (10.0, ms.clone())),
        ("latency.p90", (18.0, ms.clone())),
        ("latency.p99", (19.8, ms.clone())),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    assert_eq!(values(&mapped), expected);
}

#[test]
fn an_exponential_histogram_and_a_summary_map_their_quantiles() {
    let exponential = ExponentialHistogramDataPoint {
        count: 4,
        sum: Some(12.0),
        scale: 0,
        zero_count: 0,
        positive: Some(Buckets {
            offset: 1,
            bucket_counts: vec![4],
        }),
        ..ExponentialHistogramDataPoint::default()
    };
    let summary = SummaryDataPoint {
        count: 100,
        sum: 5000.0,
        quantile_values: vec![
            ValueAtQuantile {
                quantile: 0.5,
                value: 40.0,
            },
            ValueAtQuantile {
                quantile: 0.999,
                value: 99.0,
            },
        ],
        ..SummaryDataPoint::default()
    };
    let mapped = map(request(
        vec![],
        vec![
            instrument(
                "size",
                "By",
                Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![exponential],
                    ..ExponentialHistogram::default()
                }),
            ),
            instrument(
                "gc",
                "s",
                Data::Summary(Summary {
                    data_points: vec![summary],
                }),
            ),
        ],
    ));
    let got = values(&mapped);
    // Scale 0, bucket 1: (2, 4], 4 values; the median is half-way.
    assert_eq!(got.get("size.p50").map(|v| v.0), Some(3.0));
    assert_eq!(got.get("size.count").map(|v| v.0), Some(4.0));
    assert_eq!(got.get("size.sum").map(|v| v.0), Some(12.0));
    assert!(got.contains_key("size.p90") && got.contains_key("size.p99"));
    assert_eq!(got.get("gc.count"), Some(&(100.0, None)));
    assert_eq!(got.get("gc.sum"), Some(&(5000.0, Some("s".to_owned()))));
    assert_eq!(got.get("gc.p50"), Some(&(40.0, Some("s".to_owned()))));
    assert_eq!(got.get("gc.p99.9"), Some(&(99.0, Some("s".to_owned()))));
    assert_eq!(got.len(), 9, "{got:?}");
}

#[test]
fn refused_points_are_left_out_with_where_and_why_and_the_rest_goes_on() {
    let mut histogram = HistogramDataPoint {
        count: 3,
        explicit_bounds: vec![1.0],
        bucket_counts: vec![1, 1],
        ..HistogramDataPoint::default()
    };
    let unrecorded = NumberDataPoint {
        flags: DataPointFlags::NoRecordedValueMask as u32,
        ..NumberDataPoint::default()
    };
    let mapped = map(request(
        vec![],
        vec![
            instrument(
                "cpu",
                "",
                Data::Gauge(Gauge {
                    data_points: vec![
                        number(Value::AsDouble(f64::NAN), vec![]),
                        number(Value::AsDouble(1.0), vec![]),
                        NumberDataPoint::default(),
                        unrecorded,
                    ],
                }),
            ),
            instrument(
                "bad\nname",
                "",
                Data::Gauge(Gauge {
                    data_points: vec![number(Value::AsInt(1), vec![])],
                }),
            ),
            instrument(
                "latency",
                "",
                Data::Histogram(Histogram {
                    data_points: vec![histogram.clone(), {
                        histogram.sum = Some(f64::INFINITY);
                        histogram.count = 2;
                        histogram
                    }],
                    ..Histogram::default()
                }),
            ),
        ],
    ));
    assert_eq!(values(&mapped).keys().collect::<Vec<_>>(), ["cpu"]);
    let refused: Vec<(&str, &str)> = mapped
        .refused
        .iter()
        .map(|r| (r.at.as_str(), r.reason.as_str()))
        .collect();
    let at = "resourceMetrics[0].scopeMetrics[0]";
    assert_eq!(
        refused,
        [
            (
                &*format!("{at}.metrics[0].gauge.dataPoints[0]"),
                "value: must be a finite number"
            ),
            (
                &*format!("{at}.metrics[0].gauge.dataPoints[2]"),
                "has no value (neither asInt nor asDouble, or not a finite number)"
            ),
            (
                &*format!("{at}.metrics[1].gauge.dataPoints[0]"),
                "name: must not contain control characters"
            ),
            (
                &*format!("{at}.metrics[2].histogram.dataPoints[0]"),
                "the bucket counts add up to 2, not to count 3"
            ),
            (
                &*format!("{at}.metrics[2].histogram.dataPoints[1]"),
                ".sum value: must be a finite number"
            ),
        ]
    );
    let message = mapped.message().unwrap_or_default();
    assert!(message.starts_with("5 data points refused: "), "{message}");
    assert!(message.contains("(latency): .sum value"), "{message}");
    assert_eq!(count_points(&request(vec![], vec![])), 0);
}

#[test]
fn attributes_are_cut_to_the_label_limits_and_the_message_says_so() {
    let resource: Vec<KeyValue> = (0..40)
        .map(|i| attribute(&format!("r{i:02}"), "v"))
        .collect();
    let long = "x".repeat(300);
    let mapped = map(request(
        resource,
        vec![instrument(
            "cpu",
            "",
            Data::Gauge(Gauge {
                data_points: vec![
                    number(Value::AsDouble(1.0), vec![attribute("long", &long)]),
                    // Refused: its cuts are not counted.
                    number(Value::AsDouble(f64::NAN), vec![attribute("long", &long)]),
                ],
            }),
        )],
    ));
    assert_eq!(mapped.metrics.len(), 1);
    let labels = mapped.metrics[0].labels();
    assert_eq!(labels.len(), 32);
    assert_eq!(labels.get("long").map(String::len), Some(256));
    assert_eq!(
        mapped.cuts,
        Cuts {
            shortened_values: 1,
            beyond_limit: 9,
            refused_keys: 0,
            repeated_keys: 0,
        }
    );
    let message = mapped.message().unwrap_or_default();
    assert!(message.contains("1 data points refused"), "{message}");
    assert!(
        message.contains("labels cut to fanout's limits: 1 attribute values shortened"),
        "{message}"
    );
}

#[test]
fn points_are_counted_across_every_kind() {
    let gauge = Data::Gauge(Gauge {
        data_points: vec![NumberDataPoint::default(); 3],
    });
    let summary = Data::Summary(Summary {
        data_points: vec![SummaryDataPoint::default(); 2],
    });
    let empty = OtlpMetric::default();
    let request = request(
        vec![],
        vec![
            instrument("a", "", gauge),
            instrument("b", "", summary),
            empty,
        ],
    );
    assert_eq!(count_points(&request), 5);
}
