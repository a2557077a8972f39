//! A connection's filter: the union of its subscriptions, after its credential's restrictions
//! (channels, the token's `where` scope), in a canonical form that the registry groups clients by.
//!
//! Two clients whose subscriptions ask for the same things (whatever their ids) have equal
//! filters, and so share one group, one evaluation per message and one encoding. It must never
//! hold per-client state (queues, timers): that is the registry's.

use std::collections::BTreeMap;
use std::time::Duration;

use fanout_domain::{Alert, Grant, Metric, Selector, Subscribe};

/// What a connection may receive at most: its credential's channels and scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) metrics: bool,
    pub(crate) alerts: bool,
    pub(crate) scope: BTreeMap<String, String>,
}

impl Bounds {
    pub(crate) fn of(grant: &Grant) -> Self {
        Self {
            metrics: grant.metrics,
            alerts: grant.alerts,
            scope: grant.scope.clone(),
        }
    }

    /// `selector` narrowed to what this credential may receive.
    pub(crate) fn narrow(&self, selector: Selector) -> Selector {
        selector
            .within_channels(self.metrics, self.alerts)
            .within_scope(&self.scope)
    }
}

/// When a matching metric goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timing {
    /// With the message it came in.
    Now,
    /// Conflated: its series' latest value at most once per interval.
    Every(Duration),
    /// Not at all: no subscription takes it.
    Never,
}

/// The union of a connection's subscriptions, narrowed by its [`Bounds`]: sorted, without
/// duplicates, ids left out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Filter {
    terms: Vec<(Selector, Option<Duration>)>,
}

impl Filter {
    /// The filter of these subscriptions within `bounds`.
    pub(crate) fn new<'a>(
        subscriptions: impl IntoIterator<Item = &'a Subscribe>,
        bounds: &Bounds,
    ) -> Self {
        let mut terms: Vec<(Selector, Option<Duration>)> = subscriptions
            .into_iter()
            .map(|s| (bounds.narrow(s.selector.clone()), s.interval))
            .filter(|(selector, _)| !(selector.takes_no_metrics() && selector.takes_no_alerts()))
            .collect();
        terms.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        terms.dedup();
        Self { terms }
    }

    /// Whether this filter lets every metric through at once and every alert: the broadcast case.
    pub(crate) fn is_everything(&self) -> bool {
        self.terms
            .iter()
            .any(|(selector, interval)| interval.is_none() && selector.is_everything())
    }

    /// The intervals at which some subscription conflates.
    pub(crate) fn intervals(&self) -> Vec<Duration> {
        let mut intervals: Vec<Duration> = self.terms.iter().filter_map(|(_, i)| *i).collect();
        intervals.sort();
        intervals.dedup();
        intervals
    }

    /// When `metric` goes out: at once if a subscription without interval takes it, else at the
    /// shortest interval among those that do.
    pub(crate) fn timing(&self, metric: &Metric) -> Timing {
        let mut timing = Timing::Never;
        for (selector, interval) in &self.terms {
            if !selector.matches_metric(metric) {
                continue;
            }
            match interval {
                None => return Timing::Now,
                Some(every) => {
                    timing = match timing {
                        Timing::Every(shortest) if shortest <= *every => timing,
                        _ => Timing::Every(*every),
                    }
                }
            }
        }
        timing
    }

    /// Whether a subscription takes `alert` (alerts are never conflated).
    pub(crate) fn takes_alert(&self, alert: &Alert) -> bool {
        self.terms.iter().any(|(s, _)| s.matches_alert(alert))
    }

    /// Whether a subscription takes any metric at all.
    pub(crate) fn takes_metrics(&self) -> bool {
        self.terms.iter().any(|(s, _)| !s.takes_no_metrics())
    }
}

#[cfg(test)]
mod tests {
    use fanout_domain::{SelectorLimits, Severity};

    use super::*;

    fn subscribe(query: &str, interval: Option<&str>) -> Subscribe {
        let (metrics, alerts) = query.split_once(';').unwrap_or((query, "info"));
        Subscribe::from_query(
            Some(metrics),
            None,
            Some(alerts),
            interval,
            &SelectorLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn metric(name: &str) -> Metric {
        Metric::new(name, 1.0).unwrap_or_else(|e| panic!("{e}"))
    }

    fn open() -> Bounds {
        Bounds {
            metrics: true,
            alerts: true,
            scope: BTreeMap::new(),
        }
    }

    #[test]
    fn ids_and_order_do_not_matter() {
        let mut a = subscribe("api.*", None);
        a.id = "one".into();
        let b = subscribe("db.*", Some("1s"));
        let mut c = subscribe("api.*", None);
        c.id = "two".into();
        assert_eq!(
            Filter::new([&a, &b], &open()),
            Filter::new([&b, &c, &a], &open())
        );
    }

    #[test]
    fn the_fastest_matching_subscription_sets_the_timing() {
        let now = subscribe("api.*", None);
        let slow = subscribe("*.latency_ms", Some("1s"));
        let fast = subscribe("db.*", Some("200ms"));
        let filter = Filter::new([&now, &slow, &fast], &open());
        assert_eq!(filter.timing(&metric("api.latency_ms")), Timing::Now);
        assert_eq!(
            filter.timing(&metric("db.latency_ms")),
            Timing::Every(Duration::from_millis(200))
        );
        assert_eq!(
            filter.timing(&metric("web.latency_ms")),
            Timing::Every(Duration::from_secs(1))
        );
        assert_eq!(filter.timing(&metric("web.cpu")), Timing::Never);
        assert_eq!(
            filter.intervals(),
            [Duration::from_millis(200), Duration::from_secs(1)]
        );
    }

    #[test]
    fn bounds_narrow_every_subscription() {
        let everything = Subscribe::everything();
        let alerts_only = Bounds {
            metrics: false,
            ..open()
        };
        let filter = Filter::new([&everything], &alerts_only);
        assert!(!filter.is_everything());
        assert!(!filter.takes_metrics());
        assert_eq!(filter.timing(&metric("cpu")), Timing::Never);
        let alert = Alert::new(Severity::Info, "x").unwrap_or_else(|e| panic!("{e}"));
        assert!(filter.takes_alert(&alert));
        let nothing = Filter::new(
            [&everything],
            &Bounds {
                alerts: false,
                ..alerts_only
            },
        );
        assert_eq!(nothing, Filter::new([], &open()), "nothing left: no term");
    }

    #[test]
    fn a_scope_keeps_other_tenants_out() {
        let bounds = Bounds {
            scope: BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]),
            ..open()
        };
        let filter = Filter::new([&Subscribe::everything()], &bounds);
        assert!(!filter.is_everything());
        assert_eq!(filter.timing(&metric("cpu")), Timing::Never);
        let acme = metric("cpu")
            .with_label("tenant", "acme")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(filter.timing(&acme), Timing::Now);
    }
}
