//! Selectors: which metrics and alerts a subscription asks for (docs/PROTOCOL.md,
//! "Subscriptions"), parsed from the connect query or a `subscribe` frame, with the field at
//! fault in every error.
//!
//! A [`Selector`] is metric name patterns, label matchers and a minimum alert severity; a
//! [`Subscribe`] adds an id and an optional conflation interval. Selectors are canonical (terms
//! sorted, duplicates removed) so that equal requests compare and hash equal: the WebSocket
//! adapter groups clients by them. Matching never costs more than linear time in the name and the
//! pattern ([`NamePattern::matches`]), whatever a client sends.
//!
//! About half of this file is its tests and the request parser's: the grammar, its errors and
//! the matcher are one concept.
//!
//! Over 400 lines on purpose: see the paragraph above.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::{Alert, Metric, Severity};

/// Bounds on what one subscription may ask for (configurable per worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectorLimits {
    /// Most name patterns, and most label matchers, in one selector.
    pub max_terms: usize,
    /// Longest pattern, label key or label value, in bytes.
    pub max_pattern_bytes: usize,
}

impl Default for SelectorLimits {
    fn default() -> Self {
        Self {
            max_terms: 32,
            max_pattern_bytes: 256,
        }
    }
}

/// Shortest conflation interval a client may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest conflation interval a client may ask for.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Longest subscription id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// The id of a connection's first subscription (from the connect query, or everything).
pub const DEFAULT_SUBSCRIPTION: &str = "default";

/// A malformed or over-limit selector: what is wrong, and which field (a query parameter such as
/// `metrics`, or a frame field such as `metrics[2]` or `where.region`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SelectorError {
    /// The query parameter or frame field at fault.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SelectorError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A metric name pattern: an exact name, or a glob where `*` stands for any run of characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamePattern(String);

impl NamePattern {
    /// Parses one pattern: not empty, within the byte bound, no control characters.
    pub fn parse(text: &str, limits: &SelectorLimits, field: &str) -> Result<Self, SelectorError> {
        check_term(text, limits, field, "pattern")?;
        Ok(Self(text.to_owned()))
    }

    /// The pattern as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches, in time linear in `name` and the pattern: the literal pieces
    /// between `*`s are found left to right, each at its leftmost place (leftmost is always
    /// right for `*`-only globs), with the standard library's linear substring search.
    pub fn matches(&self, name: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let Some(last) = pieces.next_back() else {
            // No `*`: an exact name.
            return rest.is_empty();
        };
        // `strip_suffix` compares bytes and cuts where `last` starts: a char boundary, since a
        // string never starts inside a character (cutting at `len - last.len()` by hand panics
        // when that falls inside a multi-byte character of the name).
        let Some(middle) = rest.strip_suffix(last) else {
            return false;
        };
        rest = middle;
        for piece in pieces {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// One label condition: `key=a|b` (the label is one of the values) or `key!=a|b` (it is absent
/// or none of them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelMatcher {
    key: String,
    negated: bool,
    /// Sorted, without duplicates.
    values: Vec<String>,
}

impl LabelMatcher {
    /// `key` is one of `values`.
    pub fn any_of(key: impl Into<String>, values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().collect();
        values.sort();
        values.dedup();
        Self {
            key: key.into(),
            negated: false,
            values,
        }
    }

    /// Parses `key=value`, `key!=value`, `key=a|b` or `key!=a|b`: the key ends at the first `=`
    /// (a `!` right before it makes the matcher negated), so a value may hold `=` or `!=`.
    pub fn parse(text: &str, limits: &SelectorLimits, field: &str) -> Result<Self, SelectorError> {
        let Some((key, values)) = text.split_once('=') else {
            return Err(SelectorError::new(
                field,
                format!("{text:?} is not key=value, key!=value or key=a|b"),
            ));
        };
        let (key, negated) = match key.strip_suffix('!') {
            Some(key) => (key, true),
            None => (key, false),
        };
        Self::from_parts(key, negated, values, limits, field)
    }

    fn from_parts(
        key: &str,
        negated: bool,
        values: &str,
        limits: &SelectorLimits,
        field: &str,
    ) -> Result<Self, SelectorError> {
        check_term(key, limits, field, "label key")?;
        let values: Vec<String> = values.split('|').map(str::to_owned).collect();
        if values.len() > limits.max_terms {
            return Err(SelectorError::new(
                field,
                format!("more than {} alternatives", limits.max_terms),
            ));
        }
        for value in &values {
            if value.len() > limits.max_pattern_bytes {
                return Err(SelectorError::new(
                    field,
                    format!(
                        "a label value is longer than {} bytes (--max-pattern-bytes)",
                        limits.max_pattern_bytes
                    ),
                ));
            }
        }
        let mut matcher = Self::any_of(key, values);
        matcher.negated = negated;
        Ok(matcher)
    }

    /// The label this matcher looks at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether `labels` satisfy this matcher.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let found = labels
            .get(&self.key)
            .is_some_and(|value| self.values.iter().any(|v| v == value));
        found != self.negated
    }
}

/// Which metric names a selector takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Names {
    /// Every metric.
    All,
    /// Metrics whose name matches one of these (sorted, no duplicates); none when empty.
    Matching(Vec<NamePattern>),
}

/// What one subscription asks for: metric names, label conditions, a minimum alert severity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    names: Names,
    /// Whether metrics are delivered at all (not when the credential may not receive them); the
    /// names still narrow alerts. Always false when `names` matches nothing.
    metrics: bool,
    /// Sorted, without duplicates; all must hold.
    matchers: Vec<LabelMatcher>,
    /// `None`: no alerts.
    min_severity: Option<Severity>,
}

impl Default for Selector {
    /// Everything: every metric, every alert.
    fn default() -> Self {
        Self::everything()
    }
}

impl Selector {
    /// Every metric and every alert: what a client that asks for nothing gets.
    pub fn everything() -> Self {
        Self {
            names: Names::All,
            metrics: true,
            matchers: Vec::new(),
            min_severity: Some(Severity::Info),
        }
    }

    /// A selector of these parts, made canonical.
    pub fn new(names: Names, matchers: Vec<LabelMatcher>, min_severity: Option<Severity>) -> Self {
        let names = match names {
            Names::All => Names::All,
            Names::Matching(mut patterns) => {
                patterns.sort();
                patterns.dedup();
                if patterns.iter().any(|p| p.as_str() == "*") {
                    Names::All
                } else {
                    Names::Matching(patterns)
                }
            }
        };
        let metrics = !matches!(&names, Names::Matching(patterns) if patterns.is_empty());
        let mut selector = Self {
            names,
            metrics,
            matchers,
            min_severity,
        };
        selector.canonical_matchers();
        selector
    }

    fn canonical_matchers(&mut self) {
        self.matchers.sort();
        self.matchers.dedup();
    }

    /// This selector, also requiring `scope`'s labels (a token's `where` claim): the result takes
    /// nothing this one would not, and nothing outside the scope.
    pub fn within_scope(mut self, scope: &BTreeMap<String, String>) -> Self {
        self.matchers.extend(
            scope
                .iter()
                .map(|(key, value)| LabelMatcher::any_of(key.clone(), [value.clone()])),
        );
        self.canonical_matchers();
        self
    }

    /// This selector without the kinds the credential may not receive (its name patterns still
    /// narrow the alerts it takes).
    pub fn within_channels(mut self, metrics: bool, alerts: bool) -> Self {
        if !metrics {
            self.metrics = false;
        }
        if !alerts {
            self.min_severity = None;
        }
        self
    }

    /// Whether this selector takes every metric and every alert.
    pub fn is_everything(&self) -> bool {
        *self == Self::everything()
    }

    /// Whether it takes no metric at all.
    pub fn takes_no_metrics(&self) -> bool {
        !self.metrics
    }

    /// Whether it takes no alert at all.
    pub fn takes_no_alerts(&self) -> bool {
        self.min_severity.is_none()
    }

    fn names_match(&self, name: &str) -> bool {
        match &self.names {
            Names::All => true,
            Names::Matching(patterns) => patterns.iter().any(|p| p.matches(name)),
        }
    }

    fn labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }

    /// Whether `metric` is taken: its name matches a pattern and its labels every matcher.
    pub fn matches_metric(&self, metric: &Metric) -> bool {
        self.metrics && self.names_match(metric.name()) && self.labels_match(metric.labels())
    }

    /// Whether `alert` is taken: severity at least the minimum, labels matching every matcher,
    /// and, when it names a metric and the selector lists patterns, that name matching one.
    pub fn matches_alert(&self, alert: &Alert) -> bool {
        let severe = self.min_severity.is_some_and(|min| alert.severity() >= min);
        let named = match (&self.names, alert.metric()) {
            (Names::Matching(patterns), Some(metric)) if !patterns.is_empty() => {
                patterns.iter().any(|p| p.matches(metric))
            }
            _ => true,
        };
        severe && named && self.labels_match(alert.labels())
    }
}

/// One subscription a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The client's name for it (1–[`MAX_ID_BYTES`] bytes).
    pub id: String,
    /// What it takes.
    pub selector: Selector,
    /// At most one update per series per interval; `None`: every update at once.
    pub interval: Option<Duration>,
}

impl Subscribe {
    /// The subscription of a client that asks for nothing: everything, at once.
    pub fn everything() -> Self {
        Self {
            id: DEFAULT_SUBSCRIPTION.to_owned(),
            selector: Selector::everything(),
            interval: None,
        }
    }

    /// The connect-time subscription from the query parameters `metrics`, `where`, `alerts` and
    /// `interval` (each absent when not given); everything when none is given. Errors name the
    /// parameter.
    pub fn from_query(
        metrics: Option<&str>,
        where_: Option<&str>,
        alerts: Option<&str>,
        interval: Option<&str>,
        limits: &SelectorLimits,
    ) -> Result<Self, SelectorError> {
        let split = |text: &str| -> Vec<String> {
            if text.is_empty() {
                Vec::new()
            } else {
                text.split(',').map(str::to_owned).collect()
            }
        };
        let names = match metrics {
            None => Names::All,
            Some(text) => parse_names(&split(text), limits, |_| "metrics".to_owned())?,
        };
        let matchers = match where_ {
            None => Vec::new(),
            Some(text) => {
                let terms = split(text);
                check_count(terms.len(), limits, "where")?;
                terms
                    .iter()
                    .map(|t| LabelMatcher::parse(t, limits, "where"))
                    .collect::<Result<_, _>>()?
            }
        };
        let min_severity = match alerts {
            None => Some(Severity::Info),
            Some(text) => parse_min_severity(text, "alerts")?,
        };
        let interval = match interval {
            None => None,
            Some(text) => parse_interval(text, "interval")?,
        };
        Ok(Self {
            id: DEFAULT_SUBSCRIPTION.to_owned(),
            selector: Selector::new(names, matchers, min_severity),
            interval,
        })
    }
}

/// A request a client sends on an open connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// Add a subscription, or replace the one with its id.
    Subscribe(Subscribe),
    /// Remove the subscription with this id.
    Unsubscribe {
        /// The subscription's id.
        id: String,
    },
}

/// A request that cannot be carried out: the answer's `id`, `error` and `field`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct RequestError {
    /// The request's `id`, when it had a usable one.
    pub id: Option<String>,
    /// What is wrong.
    pub reason: String,
    /// The request field at fault; `None` when the frame as a whole is.
    pub field: Option<String>,
}

impl RequestError {
    /// An error about the whole request.
    pub fn whole(id: Option<String>, reason: impl Into<String>) -> Self {
        Self {
            id,
            reason: reason.into(),
            field: None,
        }
    }

    /// An error about one field of the request.
    pub fn field(id: Option<String>, error: SelectorError) -> Self {
        Self {
            id,
            reason: error.reason,
            field: Some(error.field),
        }
    }
}

impl ClientRequest {
    /// The `id` of a request frame, when it has a usable one (for answering a request that is
    /// not carried out).
    pub fn id_of(text: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        serde_json::from_str::<Id>(text)
            .ok()
            .map(|request| request.id)
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
    }

    /// Parses a text frame from a client: `{"type":"subscribe",…}` or `{"type":"unsubscribe",…}`.
    pub fn parse(text: &str, limits: &SelectorLimits) -> Result<Self, RequestError> {
        let object: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(RequestError::whole(None, "a request is a JSON object")),
            Err(error) => {
                return Err(RequestError::whole(
                    None,
                    format!("a request is a JSON object: {error}"),
                ))
            }
        };
        let id = match object.get("id") {
            None => None,
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => {
                Some(id.clone())
            }
            Some(_) => {
                return Err(RequestError::field(
                    None,
                    SelectorError::new(
                        "id",
                        format!("must be a string of 1 to {MAX_ID_BYTES} bytes"),
                    ),
                ))
            }
        };
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => {
                return Err(RequestError::field(
                    id,
                    SelectorError::new("type", "must be \"subscribe\" or \"unsubscribe\""),
                ))
            }
        };
        let allowed: &[&str] = match kind {
            "subscribe" => &["type", "id", "metrics", "where", "alerts", "interval"],
            "unsubscribe" => &["type", "id"],
            other => {
                return Err(RequestError::field(
                    id,
                    SelectorError::new(
                        "type",
                        format!("unknown request {other:?}: expected subscribe or unsubscribe"),
                    ),
                ))
            }
        };
        if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(RequestError::field(
                id.clone(),
                SelectorError::new(
                    unknown.clone(),
                    format!("unknown field in a {kind} request"),
                ),
            ));
        }
        let Some(id) = id else {
            return Err(RequestError::field(
                None,
                SelectorError::new("id", "is required"),
            ));
        };
        if kind == "unsubscribe" {
            return Ok(Self::Unsubscribe { id });
        }
        parse_subscribe(&object, id.clone(), limits)
            .map(Self::Subscribe)
            .map_err(|error| RequestError::field(Some(id), error))
    }
}

fn parse_subscribe(
    object: &Map<String, Value>,
    id: String,
    limits: &SelectorLimits,
) -> Result<Subscribe, SelectorError> {
    let names = match object.get("metrics") {
        None | Some(Value::Null) => Names::All,
        Some(Value::Array(items)) => {
            let texts = items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    _ => Err(SelectorError::new(
                        format!("metrics[{i}]"),
                        "must be a string",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            parse_names(&texts, limits, |i| format!("metrics[{i}]"))?
        }
        Some(_) => {
            return Err(SelectorError::new(
                "metrics",
                "must be an array of name patterns",
            ))
        }
    };
    let matchers = match object.get("where") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(labels)) => {
            check_count(labels.len(), limits, "where")?;
            labels
                .iter()
                .map(|(key, value)| {
                    let field = format!("where.{key}");
                    match value {
                        Value::String(values) => {
                            LabelMatcher::from_parts(key, false, values, limits, &field)
                        }
                        _ => Err(SelectorError::new(field, "must be a string")),
                    }
                })
                .collect::<Result<_, _>>()?
        }
        Some(Value::Array(items)) => {
            check_count(items.len(), limits, "where")?;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = format!("where[{i}]");
                    match item {
                        Value::String(text) => LabelMatcher::parse(text, limits, &field),
                        _ => Err(SelectorError::new(field, "must be a string")),
                    }
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(SelectorError::new(
                "where",
                "must be an object of label values or an array of matchers",
            ))
        }
    };
    let min_severity = match object.get("alerts") {
        None | Some(Value::Null) => Some(Severity::Info),
        Some(Value::String(text)) => parse_min_severity(text, "alerts")?,
        Some(_) => {
            return Err(SelectorError::new(
                "alerts",
                "must be info, warning, critical or none",
            ))
        }
    };
    let interval = match object.get("interval") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => parse_interval(text, "interval")?,
        Some(_) => {
            return Err(SelectorError::new(
                "interval",
                "must be a string such as \"500ms\" or \"1s\"",
            ))
        }
    };
    Ok(Subscribe {
        id,
        selector: Selector::new(names, matchers, min_severity),
        interval,
    })
}

/// Patterns from `texts`; a count over the limit is an error of `metrics`, a bad pattern of
/// `field(index)`.
fn parse_names(
    texts: &[String],
    limits: &SelectorLimits,
    field: impl Fn(usize) -> String,
) -> Result<Names, SelectorError> {
    check_count(texts.len(), limits, "metrics")?;
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| NamePattern::parse(text, limits, &field(i)))
        .collect::<Result<_, _>>()
        .map(Names::Matching)
}

fn check_count(count: usize, limits: &SelectorLimits, field: &str) -> Result<(), SelectorError> {
    if count > limits.max_terms {
        return Err(SelectorError::new(
            field,
            format!(
                "more than {} terms (--max-selector-terms)",
                limits.max_terms
            ),
        ));
    }
    Ok(())
}

fn check_term(
    text: &str,
    limits: &SelectorLimits,
    field: &str,
    what: &str,
) -> Result<(), SelectorError> {
    if text.is_empty() {
        return Err(SelectorError::new(field, format!("a {what} is empty")));
    }
    if text.len() > limits.max_pattern_bytes {
        return Err(SelectorError::new(
            field,
            format!(
                "a {what} is longer than {} bytes (--max-pattern-bytes)",
                limits.max_pattern_bytes
            ),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(SelectorError::new(
            field,
            format!("a {what} contains a control character"),
        ));
    }
    Ok(())
}

fn parse_min_severity(text: &str, field: &str) -> Result<Option<Severity>, SelectorError> {
    if text == "none" {
        return Ok(None);
    }
    text.parse::<Severity>().map(Some).map_err(|_| {
        SelectorError::new(
            field,
            format!("{text:?} is not info, warning, critical or none"),
        )
    })
}

/// `0` (off, also `0ms`, `0s`), or a number of `ms` or `s` between [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
fn parse_interval(text: &str, field: &str) -> Result<Option<Duration>, SelectorError> {
    if text == "0" {
        return Ok(None);
    }
    let invalid = || {
        SelectorError::new(
            field,
            format!("{text:?} is not 0 or a duration such as 500ms or 1.5s"),
        )
    };
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1e-3)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else {
        return Err(invalid());
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(invalid());
    }
    let seconds = number.parse::<f64>().map_err(|_| invalid())? * scale;
    if seconds == 0.0 {
        return Ok(None);
    }
    if !(MIN_INTERVAL.as_secs_f64()..=MAX_INTERVAL.as_secs_f64()).contains(&seconds) {
        return Err(SelectorError::new(
            field,
            format!("{text:?} is outside 10ms to 60s"),
        ));
    }
    Ok(Some(Duration::from_secs_f64(seconds)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Valid;

    const LIMITS: SelectorLimits = SelectorLimits {
        max_terms: 4,
        max_pattern_bytes: 16,
    };

    fn pattern(text: &str) -> NamePattern {
        NamePattern::parse(text, &SelectorLimits::default(), "metrics").valid()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn metric(name: &str, pairs: &[(&str, &str)]) -> Metric {
        pairs
            .iter()
            .fold(Metric::new(name, 1.0).valid(), |m, (k, v)| {
                m.with_label(*k, *v).valid()
            })
    }

    fn request(text: &str) -> Result<ClientRequest, RequestError> {
        ClientRequest::parse(text, &LIMITS)
    }

    fn error_field(text: &str) -> (Option<String>, Option<String>) {
        match request(text) {
            Ok(parsed) => panic!("accepted {text}: {parsed:?}"),
            Err(error) => (error.id, error.field),
        }
    }

    #[test]
    fn globs_match_as_documented() {
        let cases = [
            ("api.*", "api.latency_ms", true),
            ("api.*", "api.", true),
            ("api.*", "apix", false),
            ("*.latency_ms", "db.latency_ms", true),
            ("*.latency_ms", "latency_ms", false),
            ("api.*.p99", "api.checkout.p99", true),
            ("api.*.p99", "api.p99", false),
            ("host.cpu_percent", "host.cpu_percent", true),
            ("host.cpu_percent", "host.cpu_percent2", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*", "", true),
            ("**", "x", true),
            ("*b*", "abc", true),
            ("*b*", "ac", false),
            // A literal tail whose length falls inside a multi-byte character of the name.
            ("*vwxyz", "P.üabcd", false),
            ("P*", "P.üabcd", true),
            ("*abcd", "P.üabcd", true),
            ("*üabcd", "P.üabcd", true),
        ];
        for (glob, name, expected) in cases {
            assert_eq!(pattern(glob).matches(name), expected, "{glob} ~ {name}");
        }
    }

    /// The reference: a plain recursive glob matcher (exponential in the worst case, fine on the
    /// short strings proptest makes).
    fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|skip| reference_glob(rest, &name[skip..])),
            Some((c, rest)) => name.first() == Some(c) && reference_glob(rest, &name[1..]),
        }
    }

    proptest! {
        #[test]
        fn the_linear_matcher_agrees_with_the_reference(
            glob in "[ab*.üø]{1,8}",
            name in "[ab.üø€]{0,10}",
        ) {
            // Multi-byte characters in names and patterns: a cut inside one must never happen.
            prop_assert_eq!(
                pattern(&glob).matches(&name),
                reference_glob(glob.as_bytes(), name.as_bytes())
            );
        }
    }

    #[test]
    fn a_hostile_pattern_costs_linear_time() {
        // The classic exponential case for backtracking matchers: a*a*a*…b against aaaa…
        let limits = SelectorLimits {
            max_terms: 1,
            max_pattern_bytes: 4096,
        };
        let glob = "a*".repeat(2000) + "b";
        let hostile = NamePattern::parse(&glob, &limits, "metrics").valid();
        let name = "a".repeat(4000);
        assert!(!hostile.matches(&name));
    }

    #[test]
    fn label_matchers_cover_equal_unequal_and_sets() {
        let eu = labels(&[("region", "eu"), ("service", "checkout")]);
        let none = labels(&[]);
        let parse = |t: &str| LabelMatcher::parse(t, &LIMITS, "where").valid();
        assert!(parse("region=eu").matches(&eu));
        assert!(!parse("region=us").matches(&eu));
        assert!(!parse("region=eu").matches(&none));
        assert!(parse("region!=us").matches(&eu));
        assert!(parse("region!=us").matches(&none), "absent is not us");
        assert!(!parse("region!=eu").matches(&eu));
        assert!(parse("region=us|eu").matches(&eu));
        assert!(!parse("region!=us|eu").matches(&eu));
        assert!(parse("region=").matches(&labels(&[("region", "")])));
        let odd = labels(&[("env", "a!=b"), ("k", "x=y")]);
        assert!(
            parse("env=a!=b").matches(&odd),
            "the key ends at the first ="
        );
        assert!(parse("k=x=y").matches(&odd));
        assert!(parse("k!=x=z").matches(&odd));
    }

    #[test]
    fn metrics_match_by_name_and_every_matcher() {
        let selector = Subscribe::from_query(
            Some("api.*,host.cpu_percent"),
            Some("service=checkout,region!=test"),
            None,
            None,
            &LIMITS,
        )
        .valid()
        .selector;
        assert!(selector.matches_metric(&metric("api.latency_ms", &[("service", "checkout")])));
        assert!(!selector.matches_metric(&metric("db.latency_ms", &[("service", "checkout")])));
        assert!(!selector.matches_metric(&metric(
            "api.latency_ms",
            &[("service", "checkout"), ("region", "test")]
        )));
        assert!(!selector.matches_metric(&metric("api.latency_ms", &[])));
    }

    #[test]
    fn alerts_match_by_severity_labels_and_named_metric() {
        let selector = Subscribe::from_query(
            Some("api.*"),
            Some("service=checkout"),
            Some("warning"),
            None,
            &LIMITS,
        )
        .valid()
        .selector;
        let alert = |severity: Severity, metric: Option<&str>, service: &str| {
            let alert = Alert::new(severity, "x").valid();
            let alert = match metric {
                Some(metric) => alert.about_metric(metric, 1.0, 0.5).valid(),
                None => alert,
            };
            alert.with_label("service", service).valid()
        };
        assert!(selector.matches_alert(&alert(Severity::Critical, None, "checkout")));
        assert!(selector.matches_alert(&alert(Severity::Warning, Some("api.x"), "checkout")));
        assert!(!selector.matches_alert(&alert(Severity::Info, None, "checkout")));
        assert!(!selector.matches_alert(&alert(Severity::Critical, Some("db.x"), "checkout")));
        assert!(!selector.matches_alert(&alert(Severity::Critical, None, "search")));
        let no_metrics = Subscribe::from_query(Some(""), None, Some("critical"), None, &LIMITS)
            .valid()
            .selector;
        assert!(
            no_metrics.matches_alert(&alert(Severity::Critical, Some("db.x"), "any")),
            "no patterns: alerts are not tested by the metric they name"
        );
        assert!(!no_metrics.matches_metric(&metric("db.x", &[])));
        let no_alerts = Subscribe::from_query(None, None, Some("none"), None, &LIMITS)
            .valid()
            .selector;
        assert!(!no_alerts.matches_alert(&alert(Severity::Critical, None, "any")));
    }

    #[test]
    fn asking_for_nothing_is_everything_and_selectors_are_canonical() {
        let nothing = Subscribe::from_query(None, None, None, None, &LIMITS).valid();
        assert_eq!(nothing, Subscribe::everything());
        assert!(nothing.selector.is_everything());
        let a = Subscribe::from_query(Some("b.*,a.*,a.*"), Some("y=1,x=2|1"), None, None, &LIMITS)
            .valid();
        let b =
            Subscribe::from_query(Some("a.*,b.*"), Some("x=1|2,y=1"), None, None, &LIMITS).valid();
        assert_eq!(a.selector, b.selector);
        let star = Subscribe::from_query(Some("*"), None, None, None, &LIMITS).valid();
        assert!(star.selector.is_everything());
    }

    #[test]
    fn a_scope_narrows_and_cannot_be_widened() {
        let scope = labels(&[("tenant", "acme")]);
        let asks_other = Subscribe::from_query(None, Some("tenant=globex"), None, None, &LIMITS)
            .valid()
            .selector
            .within_scope(&scope);
        assert!(!asks_other.matches_metric(&metric("cpu", &[("tenant", "globex")])));
        assert!(!asks_other.matches_metric(&metric("cpu", &[("tenant", "acme")])));
        let asks_all = Selector::everything().within_scope(&scope);
        assert!(asks_all.matches_metric(&metric("cpu", &[("tenant", "acme")])));
        assert!(!asks_all.matches_metric(&metric("cpu", &[])));
        let widen = Subscribe::from_query(None, Some("tenant!=acme"), None, None, &LIMITS)
            .valid()
            .selector
            .within_scope(&scope);
        assert!(!widen.matches_metric(&metric("cpu", &[("tenant", "acme")])));
    }

    #[test]
    fn intervals_parse_within_bounds() {
        let interval = |t: &str| Subscribe::from_query(None, None, None, Some(t), &LIMITS);
        assert_eq!(
            interval("500ms").valid().interval,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            interval("1.5s").valid().interval,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(interval("0").valid().interval, None);
        assert_eq!(interval("0ms").valid().interval, None);
        assert_eq!(interval("0.0s").valid().interval, None);
        for bad in ["5ms", "61s", "1m", "ms", "-1s", "1e3ms", ""] {
            assert_eq!(
                interval(bad).map(|_| ()).map_err(|e| e.field),
                Err("interval".to_owned()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let field = |m: Option<&str>, w: Option<&str>, a: Option<&str>| {
            Subscribe::from_query(m, w, a, None, &LIMITS)
                .map(|_| ())
                .map_err(|e| e.field)
        };
        assert_eq!(field(Some("a,,b"), None, None), Err("metrics".into()));
        assert_eq!(field(Some("a,b,c,d,e"), None, None), Err("metrics".into()));
        assert_eq!(
            field(Some(&"x".repeat(17)), None, None),
            Err("metrics".into())
        );
        assert_eq!(field(None, Some("service"), None), Err("where".into()));
        assert_eq!(field(None, Some("=x"), None), Err("where".into()));
        assert_eq!(field(None, None, Some("fatal")), Err("alerts".into()));
    }

    #[test]
    fn subscribe_frames_parse_in_both_where_forms() {
        let object = request(
            r#"{"type":"subscribe","id":"s1","metrics":["api.*"],"where":{"service":"checkout"},"alerts":"warning","interval":"500ms"}"#,
        )
        .valid();
        let array = request(
            r#"{"type":"subscribe","id":"s1","metrics":["api.*"],"where":["service=checkout"],"alerts":"warning","interval":"500ms"}"#,
        )
        .valid();
        assert_eq!(object, array);
        let ClientRequest::Subscribe(subscribe) = object else {
            panic!("not a subscribe");
        };
        assert_eq!(subscribe.id, "s1");
        assert_eq!(subscribe.interval, Some(Duration::from_millis(500)));
        assert_eq!(
            request(r#"{"type":"unsubscribe","id":"s1"}"#).valid(),
            ClientRequest::Unsubscribe { id: "s1".into() }
        );
    }

    #[test]
    fn the_id_of_a_request_is_read_without_parsing_the_rest() {
        assert_eq!(
            ClientRequest::id_of(r#"{"type":"subscribe","id":"s1","metrics":"bad"}"#),
            Some("s1".to_owned())
        );
        assert_eq!(ClientRequest::id_of(r#"{"id":""}"#), None);
        assert_eq!(ClientRequest::id_of("not json"), None);
    }

    #[test]
    fn every_malformed_request_names_its_field_and_keeps_the_id() {
        let s1 = Some("s1".to_owned());
        // (request, (the answer's id, the answer's field))
        type Case<'a> = (&'a str, (Option<String>, Option<String>));
        let cases: [Case<'_>; 12] = [
            ("not json", (None, None)),
            ("[1]", (None, None)),
            (r#"{"type":"subscribe"}"#, (None, Some("id".into()))),
            (r#"{"type":"subscribe","id":""}"#, (None, Some("id".into()))),
            (r#"{"id":"s1"}"#, (s1.clone(), Some("type".into()))),
            (
                r#"{"type":"watch","id":"s1"}"#,
                (s1.clone(), Some("type".into())),
            ),
            (
                r#"{"type":"subscribe","id":"s1","metric":["a"]}"#,
                (s1.clone(), Some("metric".into())),
            ),
            (
                r#"{"type":"subscribe","id":"s1","metrics":["a",""]}"#,
                (s1.clone(), Some("metrics[1]".into())),
            ),
            (
                r#"{"type":"subscribe","id":"s1","metrics":"a"}"#,
                (s1.clone(), Some("metrics".into())),
            ),
            (
                r#"{"type":"subscribe","id":"s1","where":{"region":1}}"#,
                (s1.clone(), Some("where.region".into())),
            ),
            (
                r#"{"type":"subscribe","id":"s1","where":["ok=1","bad"]}"#,
                (s1.clone(), Some("where[1]".into())),
            ),
            (
                r#"{"type":"subscribe","id":"s1","alerts":"loud"}"#,
                (s1, Some("alerts".into())),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error_field(text), expected, "{text}");
        }
        assert_eq!(
            error_field(r#"{"type":"subscribe","id":"s1","metrics":["a","b","c","d","e"]}"#).1,
            Some("metrics".into())
        );
    }
}
