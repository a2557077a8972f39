//! Quantile estimates from an OTLP histogram's buckets (explicit bounds, or exponential), for
//! `NAME.p50`, `NAME.p90` and `NAME.p99` (docs/PROTOCOL.md, "OTLP metrics").
//!
//! The estimate is Prometheus's `histogram_quantile`: find the bucket the rank `q × count` falls
//! in, and interpolate linearly between its bounds as if its values were spread evenly. An
//! unbounded end bucket borrows the point's `min` or `max` when the point has them; the result is
//! kept within `[min, max]`. Pure arithmetic: no I/O, no allocation beyond the bucket list.

use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{ExponentialHistogramDataPoint, HistogramDataPoint};

/// The quantiles a histogram is published with, and the suffix of each metric's name.
pub(crate) const HISTOGRAM_QUANTILES: [(f64, &str); 3] =
    [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")];

/// One bucket, in ascending order of value: the values it counts lie in `(lower, upper]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bucket {
    pub(crate) lower: f64,
    pub(crate) upper: f64,
    pub(crate) count: u64,
}

/// A point's distribution: its buckets in ascending order and what bounds its values.
#[derive(Debug, PartialEq)]
pub(crate) struct Distribution {
    buckets: Vec<Bucket>,
    total: u64,
    min: Option<f64>,
    max: Option<f64>,
}

/// Why a point's buckets cannot be read; the point is refused with this reason.
pub(crate) type BucketError = String;

impl Distribution {
    /// The buckets of an explicit-bounds histogram point; `None` when it carries none (only
    /// `count` and `sum` are known then).
    pub(crate) fn explicit(point: &HistogramDataPoint) -> Result<Option<Self>, BucketError> {
        if point.bucket_counts.is_empty() {
            return Ok(None);
        }
        let bounds = &point.explicit_bounds;
        if point.bucket_counts.len() != bounds.len() + 1 {
            return Err(format!(
                "bucketCounts has {} entries for {} explicitBounds (it needs one more)",
                point.bucket_counts.len(),
                bounds.len()
            ));
        }
        if bounds.iter().any(|bound| bound.is_nan()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err("explicitBounds are not strictly increasing numbers".to_owned());
        }
        let buckets = point
            .bucket_counts
            .iter()
            .enumerate()
            .map(|(index, &count)| Bucket {
                lower: index
                    .checked_sub(1)
                    .map_or(f64::NEG_INFINITY, |below| bounds[below]),
                upper: bounds.get(index).copied().unwrap_or(f64::INFINITY),
                count,
            })
            .collect();
        Self::checked(buckets, point.count, point.min, point.max).map(Some)
    }

    /// The buckets of an exponential histogram point: the negative ones from the most negative
    /// up, the zero bucket (its values taken as 0), then the positive ones. Bucket `i` of scale
    /// `s` holds `(base^i, base^(i+1)]` with `base = 2^(2^-s)`.
    pub(crate) fn exponential(point: &ExponentialHistogramDataPoint) -> Result<Self, BucketError> {
        if !(-10..=20).contains(&point.scale) {
            return Err(format!("scale {} is outside -10..=20", point.scale));
        }
        let boundary = |index: i64| (index as f64 * (-f64::from(point.scale)).exp2()).exp2();
        let mut ordered: Vec<Bucket> = indexed(point.negative.as_ref())
            .map(|(index, count)| Bucket {
                lower: -boundary(index + 1),
                upper: -boundary(index),
                count,
            })
            .collect();
        ordered.reverse();
        ordered.push(Bucket {
            lower: 0.0,
            upper: 0.0,
            count: point.zero_count,
        });
        ordered.extend(
            indexed(point.positive.as_ref()).map(|(index, count)| Bucket {
                lower: boundary(index),
                upper: boundary(index + 1),
                count,
            }),
        );
        Self::checked(ordered, point.count, point.min, point.max)
    }

    fn checked(
        buckets: Vec<Bucket>,
        count: u64,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<Self, BucketError> {
        let total = buckets
            .iter()
            .try_fold(0u64, |sum, bucket| sum.checked_add(bucket.count));
        if total != Some(count) {
            return Err(format!(
                "the bucket counts add up to {}, not to count {count}",
                total.map_or_else(|| "more than 2^64".to_owned(), |t| t.to_string())
            ));
        }
        Ok(Self {
            buckets,
            total: count,
            min: min.filter(|m| m.is_finite()),
            max: max.filter(|m| m.is_finite()),
        })
    }

    /// The estimated value below which a fraction `q` (0–1) of the values lie; `None` when the
    /// distribution is empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.total as f64;
        let mut below = 0u64;
        // The first bucket with values whose cumulative count reaches the rank (the rank is at
        // most the total, which the last bucket with values reaches).
        let (bucket, below) = self.buckets.iter().find_map(|bucket| {
            let before = below;
            below += bucket.count;
            (bucket.count > 0 && below as f64 >= rank).then_some((bucket, before))
        })?;
        let lower = match bucket.lower {
            lower if lower.is_finite() => lower,
            // The first explicit bucket, (-inf, upper]: its values start at `min`, or, as
            // Prometheus assumes, at 0 when the bound is positive.
            _ => self.min.unwrap_or(if bucket.upper > 0.0 {
                0.0
            } else {
                bucket.upper
            }),
        };
        let upper = match bucket.upper {
            upper if upper.is_finite() => upper,
            // The overflow bucket, (lower, +inf): its values end at `max`, or at its lower bound.
            _ => self.max.unwrap_or(lower),
        };
        let within = (rank - below as f64) / bucket.count as f64;
        let mut estimate = lower + (upper - lower) * within.clamp(0.0, 1.0);
        if let Some(min) = self.min {
            estimate = estimate.max(min);
        }
        if let Some(max) = self.max {
            estimate = estimate.min(max);
        }
        Some(estimate)
    }
}

/// One side's buckets as `(bucket index, count)`.
fn indexed(buckets: Option<&Buckets>) -> impl Iterator<Item = (i64, u64)> + '_ {
    buckets.into_iter().flat_map(|buckets| {
        let offset = i64::from(buckets.offset);
        buckets
            .bucket_counts
            .iter()
            .enumerate()
            .map(move |(k, &count)| (offset + k as i64, count))
    })
}

/// The metric name suffix of a summary's quantile: `p50` for 0.5, `p99.9` for 0.999, `p0` and
/// `p100` for the minimum and maximum.
pub(crate) fn suffix(quantile: f64) -> String {
    // Rounded to millionths of a percent: 0.999 × 100 is 99.89999999999999 in binary.
    let percent = (quantile * 100.0 * 1e6).round() / 1e6;
    format!("p{percent}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(
        bounds: &[f64],
        counts: &[u64],
        min: Option<f64>,
        max: Option<f64>,
    ) -> Distribution {
        let point = HistogramDataPoint {
            count: counts.iter().sum(),
            explicit_bounds: bounds.to_vec(),
            bucket_counts: counts.to_vec(),
            min,
            max,
            ..HistogramDataPoint::default()
        };
        Distribution::explicit(&point)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no buckets"))
    }

    #[test]
    fn explicit_buckets_interpolate_linearly_within_the_bucket() {
        // 10 values in (0, 10], 10 in (10, 20]: the median is the top of the first bucket, p90
        // is 80% into the second, p99 98% into it.
        let distribution = explicit(&[0.0, 10.0, 20.0], &[0, 10, 10, 0], None, None);
        assert_eq!(distribution.quantile(0.5), Some(10.0));
        assert_eq!(distribution.quantile(0.9), Some(18.0));
        assert_eq!(distribution.quantile(0.99), Some(19.8));
    }

    #[test]
    fn unbounded_end_buckets_borrow_min_and_max_and_estimates_stay_within_them() {
        // Everything in (-inf, 5] with min 1: 1 + (5 - 1) × 0.5.
        let low = explicit(&[5.0], &[4, 0], Some(1.0), Some(4.0));
        assert_eq!(low.quantile(0.5), Some(3.0));
        // Clamped to max 4.
        assert_eq!(low.quantile(0.99), Some(4.0));
        // Without min, a positive first bound starts at 0 (Prometheus's assumption).
        assert_eq!(
            explicit(&[5.0], &[4, 0], None, None).quantile(0.5),
            Some(2.5)
        );
        // Everything above the last bound with max 30: 10 + 20 × 0.5.
        assert_eq!(
            explicit(&[10.0], &[0, 2], None, Some(30.0)).quantile(0.5),
            Some(20.0)
        );
        // Without max, the overflow bucket is its lower bound.
        assert_eq!(
            explicit(&[10.0], &[0, 2], None, None).quantile(0.9),
            Some(10.0)
        );
    }

    #[test]
    fn an_empty_distribution_has_no_quantiles_and_bad_buckets_are_refused() {
        assert_eq!(explicit(&[1.0], &[0, 0], None, None).quantile(0.5), None);
        let point = |bounds: Vec<f64>, counts: Vec<u64>, count: u64| HistogramDataPoint {
            count,
            explicit_bounds: bounds,
            bucket_counts: counts,
            ..HistogramDataPoint::default()
        };
        assert!(Distribution::explicit(&point(vec![1.0], vec![1], 1)).is_err());
        assert!(Distribution::explicit(&point(vec![2.0, 1.0], vec![0, 1, 0], 1)).is_err());
        assert!(Distribution::explicit(&point(vec![1.0], vec![1, 1], 3)).is_err());
        assert_eq!(Distribution::explicit(&point(vec![], vec![], 3)), Ok(None));
    }

    #[test]
    fn exponential_buckets_are_ordered_negative_zero_positive() {
        // Scale 0: base 2, bucket i is (2^i, 2^(i+1)]. Positive offset 1: buckets (2, 4] and
        // (4, 8] with 5 values each; one negative bucket at index 0: [-2, -1); 0 zeros.
        let point = ExponentialHistogramDataPoint {
            count: 11,
            scale: 0,
            zero_count: 0,
            positive: Some(Buckets {
                offset: 1,
                bucket_counts: vec![5, 5],
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![1],
            }),
            ..ExponentialHistogramDataPoint::default()
        };
        let distribution = Distribution::exponential(&point).unwrap_or_else(|e| panic!("{e}"));
        // Rank 0.5 × 11 = 5.5: 4.5 into (2, 4] after the negative value → 2 + 2 × 0.9.
        assert_eq!(distribution.quantile(0.5), Some(3.8));
        // Rank 0.01 × 11 = 0.11: inside [-2, -1).
        let lowest = distribution.quantile(0.01).unwrap_or_default();
        assert!((-2.0..-1.0).contains(&lowest), "{lowest}");
        // Scale 1: base √2; bucket 2 is (2, 2√2].
        let finer = ExponentialHistogramDataPoint {
            count: 2,
            scale: 1,
            positive: Some(Buckets {
                offset: 2,
                bucket_counts: vec![2],
            }),
            ..ExponentialHistogramDataPoint::default()
        };
        let median = Distribution::exponential(&finer)
            .ok()
            .and_then(|d| d.quantile(0.5))
            .unwrap_or_default();
        // Rank 1 of 2: half-way through (2, 2√2].
        assert!((median - (1.0 + 2f64.sqrt())).abs() < 1e-9, "{median}");
        let wrong_count = ExponentialHistogramDataPoint { count: 3, ..finer };
        assert!(Distribution::exponential(&wrong_count).is_err());
    }

    #[test]
    fn summary_suffixes_name_the_percent() {
        assert_eq!(suffix(0.5), "p50");
        assert_eq!(suffix(0.99), "p99");
        assert_eq!(suffix(0.999), "p99.9");
        assert_eq!(suffix(0.0), "p0");
        assert_eq!(suffix(1.0), "p100");
    }
}
