//! An `ExportMetricsServiceRequest` as the domain's metrics (docs/PROTOCOL.md, "OTLP metrics"):
//! each Gauge and Sum data point is one metric; a Histogram or ExponentialHistogram point is
//! `NAME.count`, `NAME.sum` and `NAME.p50`/`.p90`/`.p99`; a Summary point is `NAME.count`,
//! `NAME.sum` and one `NAME.pQ` per quantile. A point the domain refuses (a NaN, a name with
//! control characters, buckets that do not add up) is left out whole and reported, with where
//! it was; the rest goes on. Pure: no I/O, no knowledge of HTTP.

use std::collections::BTreeMap;

use fanout_domain::{Metric, MetricFields};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
use opentelemetry_proto::tonic::metrics::v1::{
    DataPointFlags, ExponentialHistogramDataPoint, HistogramDataPoint, NumberDataPoint,
    SummaryDataPoint,
};

use super::labels::{self, Cuts, Label};
use super::quantiles::{self, Distribution, HISTOGRAM_QUANTILES};

/// How many refusals the response names one by one; the rest are counted.
const NAMED_REFUSALS: usize = 5;

/// What a request maps to.
#[derive(Debug, Default)]
pub(crate) struct Mapped {
    /// The metrics to publish, as one batch.
    pub(crate) metrics: Vec<Metric>,
    /// Data points left out, each with where it was and why.
    pub(crate) refused: Vec<Refusal>,
    /// What was cut from the attributes.
    pub(crate) cuts: Cuts,
}

/// A data point left out of the publish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Where it was, in OTLP/JSON's field names:
    /// `resourceMetrics[0].scopeMetrics[0].metrics[2].gauge.dataPoints[1]`.
    pub(crate) at: String,
    /// The instrument's name.
    pub(crate) name: String,
    /// Why.
    pub(crate) reason: String,
}

impl Mapped {
    /// The partial-success `error_message`: the refusals (the first few by place), then what was
    /// cut; `None` when nothing was refused or cut.
    pub(crate) fn message(&self) -> Option<String> {
        let mut sentences = Vec::new();
        if !self.refused.is_empty() {
            let named: Vec<String> = self
                .refused
                .iter()
                .take(NAMED_REFUSALS)
                .map(|r| format!("{} ({}): {}", r.at, r.name, r.reason))
                .collect();
            let more = self.refused.len().saturating_sub(NAMED_REFUSALS);
            let tail = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            sentences.push(format!(
                "{} data points refused: {}{tail}",
                self.refused.len(),
                named.join("; ")
            ));
        }
        sentences.extend(self.cuts.describe());
        (!sentences.is_empty()).then(|| sentences.join(". "))
    }
}

/// The number of data points in a request, for `--otlp-max-points` (counted before any work).
pub(crate) fn count_points(request: &ExportMetricsServiceRequest) -> usize {
    request
        .resource_metrics
        .iter()
        .flat_map(|resource| &resource.scope_metrics)
        .flat_map(|scope| &scope.metrics)
        .map(|metric| match &metric.data {
            Some(Data::Gauge(gauge)) => gauge.data_points.len(),
            Some(Data::Sum(sum)) => sum.data_points.len(),
            Some(Data::Histogram(histogram)) => histogram.data_points.len(),
            Some(Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
            Some(Data::Summary(summary)) => summary.data_points.len(),
            None => 0,
        })
        .sum()
}

/// The instrument a point belongs to: its name and unit.
struct Instrument<'a> {
    name: &'a str,
    unit: Option<&'a str>,
}

/// Maps a whole request.
pub(crate) fn map(request: ExportMetricsServiceRequest) -> Mapped {
    let mut mapped = Mapped::default();
    for (r, resource_metrics) in request.resource_metrics.into_iter().enumerate() {
        let resource_attributes = resource_metrics
            .resource
            .map(|resource| resource.attributes)
            .unwrap_or_default();
        let resource = labels::convert(&resource_attributes, &mut mapped.cuts);
        for (s, scope) in resource_metrics.scope_metrics.into_iter().enumerate() {
            for (m, metric) in scope.metrics.iter().enumerate() {
                let instrument = Instrument {
                    name: &metric.name,
                    unit: (!metric.unit.is_empty()).then_some(metric.unit.as_str()),
                };
                let at = |kind: &str, p: usize| {
                    format!("resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}].{kind}.dataPoints[{p}]")
                };
                let mut context = Context {
                    instrument: &instrument,
                    resource: &resource,
                    mapped: &mut mapped,
                };
                match &metric.data {
                    Some(Data::Gauge(gauge)) => {
                        for (p, point) in gauge.data_points.iter().enumerate() {
                            context.add(at("gauge", p), number(point));
                        }
                    }
                    Some(Data::Sum(sum)) => {
                        for (p, point) in sum.data_points.iter().enumerate() {
                            context.add(at("sum", p), number(point));
                        }
                    }
                    Some(Data::Histogram(histogram)) => {
                        for (p, point) in histogram.data_points.iter().enumerate() {
                            context.add(at("histogram", p), explicit(point));
                        }
                    }
                    Some(Data::ExponentialHistogram(histogram)) => {
                        for (p, point) in histogram.data_points.iter().enumerate() {
                            let points = exponential(point);
                            context.add(at("exponentialHistogram", p), points);
                        }
                    }
                    Some(Data::Summary(summary)) => {
                        for (p, point) in summary.data_points.iter().enumerate() {
                            context.add(at("summary", p), quantiles_of(point));
                        }
                    }
                    None => {}
                }
            }
        }
    }
    mapped
}

/// What one point maps to before labels: `(name suffix, value, with the instrument's unit)`
/// rows and the point's attributes and time; `Skip` for a point that carries no value by design.
enum Point<'a> {
    Values {
        rows: Vec<Row>,
        attributes: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
        time_unix_nano: u64,
    },
    /// Flagged `NO_RECORDED_VALUE`: valid, and nothing to publish.
    Skip,
}

/// One metric of a point: the suffix to the instrument's name (`""`, `.count`, `.p99`), its
/// value, and whether it is in the instrument's unit (a count is not).
struct Row {
    suffix: String,
    value: f64,
    unit: Unit,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Instrument,
    None,
}

struct Context<'a, 'b> {
    instrument: &'a Instrument<'a>,
    resource: &'a [Label],
    mapped: &'b mut Mapped,
}

impl Context<'_, '_> {
    /// Adds the metrics of one point, or its refusal.
    fn add(&mut self, at: String, point: Result<Point<'_>, String>) {
        let refuse = |mapped: &mut Mapped, reason: String| {
            mapped.refused.push(Refusal {
                at,
                name: self.instrument.name.to_owned(),
                reason,
            });
        };
        let (rows, attributes, time_unix_nano) = match point {
            Ok(Point::Values {
                rows,
                attributes,
                time_unix_nano,
            }) => (rows, attributes, time_unix_nano),
            Ok(Point::Skip) => return,
            Err(reason) => return refuse(self.mapped, reason),
        };
        // Cuts are counted on a copy: a refused point cuts nothing.
        let mut cuts = self.mapped.cuts;
        let own = labels::convert(attributes, &mut cuts);
        let labels = labels::merge(own, self.resource, &mut cuts);
        let timestamp = (time_unix_nano > 0).then_some(time_unix_nano / 1_000_000);
        let metrics: Result<Vec<Metric>, String> = rows
            .into_iter()
            .map(|row| metric(self.instrument, row, &labels, timestamp))
            .collect();
        match metrics {
            Ok(metrics) => {
                self.mapped.cuts = cuts;
                self.mapped.metrics.extend(metrics);
            }
            Err(reason) => refuse(self.mapped, reason),
        }
    }
}

/// One metric, validated by the domain (the same rules as `POST /api/metrics`).
fn metric(
    instrument: &Instrument<'_>,
    row: Row,
    labels: &BTreeMap<String, String>,
    timestamp: Option<u64>,
) -> Result<Metric, String> {
    MetricFields {
        name: format!("{}{}", instrument.name, row.suffix),
        value: row.value,
        unit: match row.unit {
            Unit::Instrument => instrument.unit.map(str::to_owned),
            Unit::None => None,
        },
        labels: labels.clone(),
        timestamp,
        source: None,
    }
    .validate("")
    .map_err(|error| {
        // Name the metric of the point it was (`.sum`, `.p99`) when it was not the point itself.
        let of = if row.suffix.is_empty() {
            String::new()
        } else {
            format!("{} ", row.suffix)
        };
        format!("{of}{}: {}", error.field(), error.reason())
    })
}

fn no_value(flags: u32) -> bool {
    flags & DataPointFlags::NoRecordedValueMask as u32 != 0
}

fn number<'a>(point: &'a NumberDataPoint) -> Result<Point<'a>, String> {
    if no_value(point.flags) {
        return Ok(Point::Skip);
    }
    let value = match point.value {
        Some(Value::AsDouble(value)) => value,
        Some(Value::AsInt(value)) => value as f64,
        None => return Err("has no value (neither asInt nor asDouble)".to_owned()),
    };
    Ok(Point::Values {
        rows: vec![Row {
            suffix: String::new(),
            value,
            unit: Unit::Instrument,
        }],
        attributes: &point.attributes,
        time_unix_nano: point.time_unix_nano,
    })
}

/// `.count`, `.sum` (when the point has one) and the estimated quantiles (when it has values).
fn distribution_rows(count: u64, sum: Option<f64>, distribution: Option<&Distribution>) -> Vec<Row> {
    let mut rows = vec![Row {
        suffix: ".count".to_owned(),
        value: count as f64,
        unit: Unit::None,
    }];
    rows.extend(sum.map(|sum| Row {
        suffix: ".sum".to_owned(),
        value: sum,
        unit: Unit::Instrument,
    }));
    for (q, suffix) in HISTOGRAM_QUANTILES {
        if let Some(value) = distribution.and_then(|d| d.quantile(q)) {
            rows.push(Row {
                suffix: format!(".{suffix}"),
                value,
                unit: Unit::Instrument,
            });
        }
    }
    rows
}

fn explicit<'a>(point: &'a HistogramDataPoint) -> Result<Point<'a>, String> {
    if no_value(point.flags) {
        return Ok(Point::Skip);
    }
    let distribution = Distribution::explicit(point)?;
    Ok(Point::Values {
        rows: distribution_rows(point.count, point.sum, distribution.as_ref()),
        attributes: &point.attributes,
        time_unix_nano: point.time_unix_nano,
    })
}

fn exponential(point: &ExponentialHistogramDataPoint) -> Result<Point<'_>, String> {
    if no_value(point.flags) {
        return Ok(Point::Skip);
    }
    let distribution = Distribution::exponential(point)?;
    Ok(Point::Values {
        rows: distribution_rows(point.count, point.sum, Some(&distribution)),
        attributes: &point.attributes,
        time_unix_nano: point.time_unix_nano,
    })
}

fn quantiles_of<'a>(point: &'a SummaryDataPoint) -> Result<Point<'a>, String> {
    if no_value(point.flags) {
        return Ok(Point::Skip);
    }
    let mut rows = distribution_rows(point.count, Some(point.sum), None);
    for value in &point.quantile_values {
        if !(0.0..=1.0).contains(&value.quantile) {
            return Err(format!("quantile {} is outside 0–1", value.quantile));
        }
        rows.push(Row {
            suffix: format!(".{}", quantiles::suffix(value.quantile)),
            value: value.value,
            unit: Unit::Instrument,
        });
    }
    Ok(Point::Values {
        rows,
        attributes: &point.attributes,
        time_unix_nano: point.time_unix_nano,
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
    use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, Gauge, Histogram, Metric as OtlpMetric, ResourceMetrics,
        ScopeMetrics, Sum, Summary,
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
            .map(|m| (m.name().to_owned(), (m.value(), m.unit().map(str::to_owned))))
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
            vec![attribute("service.name", "checkout"), attribute("host.name", "h1")],
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
        assert!(mapped.refused.is_empty() && mapped.message().is_none(), "{mapped:?}");
        assert_eq!(mapped.metrics.len(), 2);
        let cpu = &mapped.metrics[0];
        assert_eq!((cpu.name(), cpu.value(), cpu.unit()), ("cpu", 93.5, Some("%")));
        assert_eq!(
            cpu.labels(),
            &pairs(&[("core", "0"), ("host.name", "h2"), ("service.name", "checkout")])
        );
        assert_eq!(cpu.timestamp(), Some(T / 1_000_000));
        let requests = &mapped.metrics[1];
        assert_eq!((requests.name(), requests.value(), requests.unit()), ("requests", 7.0, None));
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
                    "has no value (neither asInt nor asDouble)"
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
            vec![instrument("a", "", gauge), instrument("b", "", summary), empty],
        );
        assert_eq!(count_points(&request), 5);
    }
}
