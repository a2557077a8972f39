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

/// Why a number point without a value is refused. (OTLP/JSON writes a NaN or infinite double as
/// a string, which leaves the point without a finite value: see `proto3_json`.)
const NO_VALUE: &str = "has no value (neither asInt nor asDouble, or not a finite number)";

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
                    // Nothing it could read: no data at all, or (OTLP/JSON) data whose fields did
                    // not decode — the generated decoder drops a oneof it cannot read instead of
                    // failing. Counted as one refused point, never left out silently.
                    None => context.add(
                        format!("resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}]"),
                        Err("has no data fanout could read (no gauge, sum, histogram, exponentialHistogram or summary, or one whose fields do not decode)".to_owned()),
                    ),
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
        None => return Err(NO_VALUE.to_owned()),
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
fn distribution_rows(
    count: u64,
    sum: Option<f64>,
    distribution: Option<&Distribution>,
) -> Vec<Row> {
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
mod tests;
