//! What a connection asks to receive: the client side of docs/PROTOCOL.md ("Subscriptions: what a
//! connection receives", "Client → server").
//!
//! A [`Subscription`] is built here and encoded two ways: as the connect-time query parameters
//! (`metrics=…&where=…&alerts=…&interval=…`, the connection's `default` subscription) and as the
//! `subscribe` frame sent on an open connection. Both encodings say the same thing.
//!
//! The worker owns the grammar: this module never checks a pattern, a matcher, an id or a limit
//! (the worker answers an `error` frame, or refuses the connect with 400, naming the field), so the
//! client cannot drift from the server. It refuses only what its own encoding would change the
//! meaning of: a `,` in a pattern or matcher, which the query reads as a separator.
//!
//! Over 400 lines on purpose: one subscription, its two encodings and their tests stay together.

use std::fmt::Write;
use std::time::Duration;

use fanout_domain::Severity;
use serde::Serialize;

/// What a connection receives: metric name patterns, label matchers, a minimum alert severity and
/// an interval (conflation). [`Subscription::default`] receives everything, like a connection
/// that asks for nothing.
///
/// ```
/// use std::time::Duration;
/// use fanout_client::Subscription;
/// use fanout_domain::Severity;
///
/// let checkout = Subscription::default()
///     .metrics(["api.*", "host.cpu_percent"])
///     .matcher("service=checkout")
///     .matcher("env=prod|staging")
///     .min_severity(Severity::Warning)
///     .interval(Duration::from_millis(500));
/// assert_eq!(
///     checkout.query().unwrap(),
///     "metrics=api.*,host.cpu_percent&where=service%3Dcheckout,env%3Dprod%7Cstaging\
///      &alerts=warning&interval=500ms"
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// `None`: every metric; `Some(empty)`: none.
    metrics: Option<Vec<String>>,
    matchers: Vec<String>,
    alerts: Option<AlertLevel>,
    /// `None` or zero: off.
    interval: Option<Duration>,
}

/// The `alerts` part: a minimum severity, or no alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AlertLevel {
    AtLeast(Severity),
    Off,
}

impl AlertLevel {
    fn as_str(self) -> &'static str {
        match self {
            Self::AtLeast(Severity::Info) => "info",
            Self::AtLeast(Severity::Warning) => "warning",
            Self::AtLeast(Severity::Critical) => "critical",
            Self::Off => "none",
        }
    }
}

/// A [`Subscription`] the connect-time query cannot carry: a pattern or matcher holds a `,`, which
/// the query reads as a separator (send it in a `subscribe` frame instead,
/// [`Connection::subscribe`](crate::Connection::subscribe), whose array form carries any string),
/// or a pattern is empty (the query `metrics=` means no metrics at all, where a frame's empty
/// pattern is refused: both are refused here).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {parameter} term {term:?} {why}")]
pub struct QueryError {
    /// The query parameter: `metrics` or `where`.
    pub parameter: &'static str,
    /// The pattern or matcher at fault.
    pub term: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Subscription {
    /// Receives only the metrics whose name matches one of `patterns`: an exact name, or a glob
    /// where `*` stands for any run of characters (`api.*`, `*.latency_ms`). Replaces the
    /// patterns given before; an empty list receives no metrics (as [`Subscription::no_metrics`]).
    /// An alert that names a metric is received only when that name matches too.
    pub fn metrics<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.metrics = Some(patterns.into_iter().map(Into::into).collect());
        self
    }

    /// Receives no metrics (alerts only, unless [`Subscription::no_alerts`] too).
    pub fn no_metrics(mut self) -> Self {
        self.metrics = Some(Vec::new());
        self
    }

    /// Adds a label matcher that every metric and alert received must satisfy: `key=value` (the
    /// label is `value`), `key!=value` (the label is absent or not `value`), `key=a|b` (one of),
    /// `key!=a|b` (none of). Keys and values are compared exactly.
    pub fn matcher(mut self, matcher: impl Into<String>) -> Self {
        self.matchers.push(matcher.into());
        self
    }

    /// Receives only the alerts of at least `severity` (`Info` < `Warning` < `Critical`). Without
    /// it, every alert.
    pub fn min_severity(mut self, severity: Severity) -> Self {
        self.alerts = Some(AlertLevel::AtLeast(severity));
        self
    }

    /// Receives no alerts (`alerts=none`).
    pub fn no_alerts(mut self) -> Self {
        self.alerts = Some(AlertLevel::Off);
        self
    }

    /// Conflates metrics: the worker sends the latest value of each series at most once per
    /// `interval` (10 ms – 60 s; sent in whole milliseconds, rounded up). `Duration::ZERO`, like
    /// not calling this, sends every metric at once. Alerts are never conflated.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// The connect-time query parameters (`metrics=…&where=…&alerts=…&interval=…`, without the
    /// leading `?`), percent-encoded; only the parts that were set, so the default subscription
    /// is the empty string.
    pub fn query(&self) -> Result<String, QueryError> {
        let mut parameters: Vec<(&str, String)> = Vec::new();
        if let Some(patterns) = &self.metrics {
            parameters.push(("metrics", terms("metrics", patterns)?));
        }
        if !self.matchers.is_empty() {
            parameters.push(("where", terms("where", &self.matchers)?));
        }
        if let Some(alerts) = self.alerts {
            parameters.push(("alerts", alerts.as_str().to_owned()));
        }
        if let Some(interval) = self.interval_text() {
            parameters.push(("interval", interval));
        }
        let pairs: Vec<String> = parameters
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        Ok(pairs.join("&"))
    }

    /// The `subscribe` frame that adds this subscription as `id` on an open connection, or
    /// replaces the one with that `id` (`default` is the connect-time one). Matchers are sent in
    /// the array form of `where`.
    pub fn subscribe_frame(&self, id: &str) -> String {
        let frame = SubscribeFrame {
            kind: "subscribe",
            id,
            metrics: self.metrics.as_deref(),
            matchers: (!self.matchers.is_empty()).then_some(self.matchers.as_slice()),
            alerts: self.alerts.map(AlertLevel::as_str),
            interval: self.interval_text(),
        };
        // Serializing strings and string lists cannot fail.
        serde_json::to_string(&frame).unwrap_or_default()
    }

    /// `None` when off (absent or zero): the wire's absent and `0` mean the same.
    fn interval_text(&self) -> Option<String> {
        let interval = self.interval.filter(|interval| !interval.is_zero())?;
        let milliseconds = interval.as_nanos().div_ceil(1_000_000);
        Some(format!("{milliseconds}ms"))
    }
}

/// The `unsubscribe` frame that removes the subscription `id` from an open connection.
pub fn unsubscribe_frame(id: &str) -> String {
    let frame = UnsubscribeFrame {
        kind: "unsubscribe",
        id,
    };
    // Serializing two strings cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

#[derive(Serialize)]
struct SubscribeFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'a [String]>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    matchers: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alerts: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
}

#[derive(Serialize)]
struct UnsubscribeFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
}

/// The terms of one query parameter: each percent-encoded, joined by the separator `,`.
fn terms(parameter: &'static str, terms: &[String]) -> Result<String, QueryError> {
    let mut value = String::new();
    for (index, term) in terms.iter().enumerate() {
        if term.contains(',') {
            return Err(QueryError {
                parameter,
                term: term.clone(),
                why:
                    "holds a ',', which separates terms in a query: subscribe with a frame instead",
            });
        }
        if term.is_empty() {
            return Err(QueryError {
                parameter,
                term: term.clone(),
                why: "is empty: a pattern or matcher names something (for no metrics, use no_metrics())",
            });
        }
        if index > 0 {
            value.push(',');
        }
        percent_encode(term, &mut value);
    }
    Ok(value)
}

/// Percent-encodes `text` into `out`: every byte but the unreserved characters of RFC 3986
/// (`A-Z a-z 0-9 - . _ ~`) and the glob's `*` (a sub-delimiter, safe in a query). So `=`, `!`,
/// `|`, `&`, `+`, `%`, spaces and non-ASCII are escaped, whichever way the worker splits the
/// query before decoding it.
fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'*') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(subscription: &Subscription) -> String {
        subscription.query().unwrap_or_else(|e| panic!("{e}"))
    }

    // The subscription of docs/PROTOCOL.md's examples.
    fn documented() -> Subscription {
        Subscription::default()
            .metrics(["api.*", "host.cpu_percent"])
            .matcher("service=checkout")
            .matcher("region!=test")
            .matcher("env=prod|staging")
            .min_severity(Severity::Warning)
            .interval(Duration::from_millis(500))
    }

    #[test]
    fn the_default_subscription_asks_for_nothing() {
        assert_eq!(query(&Subscription::default()), "");
        assert_eq!(
            Subscription::default().subscribe_frame("s1"),
            r#"{"type":"subscribe","id":"s1"}"#
        );
    }

    #[test]
    fn the_documented_subscription_as_a_query() {
        assert_eq!(
            query(&documented()),
            "metrics=api.*,host.cpu_percent\
             &where=service%3Dcheckout,region%21%3Dtest,env%3Dprod%7Cstaging\
             &alerts=warning&interval=500ms"
        );
    }

    #[test]
    fn the_documented_subscription_as_a_frame_uses_the_array_form_of_where() {
        assert_eq!(
            documented().subscribe_frame("s1"),
            r#"{"type":"subscribe","id":"s1","metrics":["api.*","host.cpu_percent"],"where":["service=checkout","region!=test","env=prod|staging"],"alerts":"warning","interval":"500ms"}"#
        );
    }

    #[test]
    fn the_documented_frame_example_is_what_its_subscription_encodes_to() {
        let documented: serde_json::Value = serde_json::from_str(
            r#"{"type":"subscribe","id":"s1","metrics":["api.*"],"where":["service=checkout"],"alerts":"warning","interval":"500ms"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let subscription = Subscription::default()
            .metrics(["api.*"])
            .matcher("service=checkout")
            .min_severity(Severity::Warning)
            .interval(Duration::from_millis(500));
        let encoded: serde_json::Value = serde_json::from_str(&subscription.subscribe_frame("s1"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(encoded, documented);
    }

    #[test]
    fn no_metrics_is_an_empty_list_not_an_absent_one() {
        let alerts_only = Subscription::default().no_metrics();
        assert_eq!(query(&alerts_only), "metrics=");
        assert_eq!(
            alerts_only.subscribe_frame("a"),
            r#"{"type":"subscribe","id":"a","metrics":[]}"#
        );
        assert_eq!(
            Subscription::default().metrics(Vec::<String>::new()),
            alerts_only
        );
    }

    #[test]
    fn no_alerts_is_none_and_every_severity_has_its_name() {
        assert_eq!(query(&Subscription::default().no_alerts()), "alerts=none");
        for (severity, name) in [
            (Severity::Info, "info"),
            (Severity::Warning, "warning"),
            (Severity::Critical, "critical"),
        ] {
            let subscription = Subscription::default().min_severity(severity);
            assert_eq!(query(&subscription), format!("alerts={name}"));
            assert_eq!(
                subscription.subscribe_frame("x"),
                format!(r#"{{"type":"subscribe","id":"x","alerts":"{name}"}}"#)
            );
        }
    }

    #[test]
    fn an_interval_is_whole_milliseconds_rounded_up_and_zero_is_off() {
        for (interval, text) in [
            (Duration::from_secs(1), "interval=1000ms"),
            (Duration::from_millis(1500), "interval=1500ms"),
            (Duration::from_micros(10_001), "interval=11ms"),
            (Duration::ZERO, ""),
        ] {
            assert_eq!(
                query(&Subscription::default().interval(interval)),
                text,
                "{interval:?}"
            );
        }
        assert_eq!(
            Subscription::default()
                .interval(Duration::ZERO)
                .subscribe_frame("x"),
            r#"{"type":"subscribe","id":"x"}"#
        );
    }

    #[test]
    fn reserved_and_non_ascii_bytes_are_percent_encoded() {
        let subscription = Subscription::default()
            .metrics(["a b+c&d#e%f/g?h"])
            .matcher("tenant=ä");
        assert_eq!(
            query(&subscription),
            "metrics=a%20b%2Bc%26d%23e%25f%2Fg%3Fh&where=tenant%3D%C3%A4"
        );
    }

    #[test]
    fn a_comma_in_a_term_is_refused_in_a_query_and_kept_in_a_frame() {
        let pattern = Subscription::default().metrics(["a,b"]);
        assert_eq!(
            pattern.query(),
            Err(QueryError {
                parameter: "metrics",
                term: "a,b".to_owned(),
                why:
                    "holds a ',', which separates terms in a query: subscribe with a frame instead",
            })
        );
        assert_eq!(
            pattern.subscribe_frame("x"),
            r#"{"type":"subscribe","id":"x","metrics":["a,b"]}"#
        );
        let matcher = Subscription::default().matcher("note=x,y");
        assert!(matches!(
            matcher.query(),
            Err(QueryError {
                parameter: "where",
                ..
            })
        ));
    }

    /// `metrics([""])` read as the query `metrics=` meant no metrics at all, where the same
    /// subscription in a frame is refused ("a pattern is empty"): refused in the query too.
    #[test]
    fn an_empty_term_is_refused_in_a_query() {
        for subscription in [
            Subscription::default().metrics([""]),
            Subscription::default().metrics(["a", ""]),
            Subscription::default().matcher(""),
        ] {
            assert!(
                matches!(subscription.query(), Err(QueryError { term, .. }) if term.is_empty()),
                "{subscription:?}"
            );
        }
        assert_eq!(
            Subscription::default().no_metrics().query(),
            Ok("metrics=".to_owned())
        );
    }

    #[test]
    fn the_unsubscribe_frame() {
        assert_eq!(
            unsubscribe_frame("s1"),
            r#"{"type":"unsubscribe","id":"s1"}"#
        );
        assert_eq!(
            unsubscribe_frame("quote\"d"),
            r#"{"type":"unsubscribe","id":"quote\"d"}"#
        );
    }
}
