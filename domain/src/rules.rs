//! Alert rules: thresholds on metrics that raise an alert after N consecutive breaching samples.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use crate::{Alert, AlertFields, InvalidMessage, Metric, Severity};

/// Which side of the threshold breaches a rule. Strict: a value equal to the threshold never
/// breaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `>`: breached by a value above the threshold.
    Above,
    /// `<`: breached by a value below the threshold.
    Below,
}

/// `metric > threshold` (or `<`) for `samples` consecutive samples raises an alert of `severity`.
///
/// Text form (for `--alert-rule`): `NAME>THRESHOLD[,for=N][,severity=info|warning|critical]`,
/// e.g. `host.cpu_percent>90,for=3,severity=critical`. Defaults: `for=1`, `severity=warning`.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    /// The metric name it watches, matched exactly (every series of that name, each on its own).
    pub metric: String,
    /// Which side of the threshold breaches.
    pub comparison: Comparison,
    /// The limit, in the metric's own unit; finite in every parsed rule (a non-finite one
    /// raises nothing).
    pub threshold: f64,
    /// Consecutive breaching samples of one series before the alert is raised; at least 1 in
    /// every parsed rule (0 never fires).
    pub samples: u32,
    /// The severity of the alerts it raises.
    pub severity: Severity,
}

/// A `--alert-rule` that does not parse; the message quotes the rule and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid alert rule {rule:?}: {reason} (expected NAME>THRESHOLD[,for=N][,severity=S])")]
pub struct ParseRuleError {
    rule: String,
    reason: String,
}

impl FromStr for AlertRule {
    type Err = ParseRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseRuleError {
            rule: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = text.split(',');
        let condition = parts.next().unwrap_or_default();
        let (metric, comparison, threshold) = if let Some((m, t)) = condition.split_once('>') {
            (m, Comparison::Above, t)
        } else if let Some((m, t)) = condition.split_once('<') {
            (m, Comparison::Below, t)
        } else {
            return Err(fail("no > or < in the condition"));
        };
        let metric = metric.trim();
        if metric.is_empty() {
            return Err(fail("the metric name is empty"));
        }
        let threshold: f64 = threshold
            .trim()
            .parse()
            .map_err(|_| fail("the threshold is not a number"))?;
        if !threshold.is_finite() {
            return Err(fail("the threshold is not finite"));
        }
        let mut rule = AlertRule {
            metric: metric.to_owned(),
            comparison,
            threshold,
            samples: 1,
            severity: Severity::Warning,
        };
        for option in parts {
            match option.trim().split_once('=') {
                Some(("for", n)) => {
                    rule.samples = n
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| fail("for= takes a whole number above 0"))?;
                }
                Some(("severity", s)) => {
                    rule.severity = s.trim().parse().map_err(|e: String| fail(&e))?;
                }
                _ => return Err(fail(&format!("unknown option {option:?}"))),
            }
        }
        Ok(rule)
    }
}

impl fmt::Display for AlertRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.comparison {
            Comparison::Above => '>',
            Comparison::Below => '<',
        };
        let severity = match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        };
        write!(
            f,
            "{}{op}{},for={},severity={severity}",
            self.metric, self.threshold, self.samples
        )
    }
}

impl AlertRule {
    fn breached_by(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::Above => value > self.threshold,
            Comparison::Below => value < self.threshold,
        }
    }
}

/// Evaluates rules over a stream of metrics. Each series (metric name + labels) keeps its own
/// streak; a rule fires once when the streak reaches `samples`, and again only after the series
/// recovered (one sample not breaching).
#[derive(Debug, Default)]
pub struct RuleEngine {
    rules: Vec<AlertRule>,
    /// Consecutive breaching samples per (rule index, labels of the series).
    streaks: HashMap<(usize, BTreeMap<String, String>), u32>,
}

impl RuleEngine {
    /// An engine over `rules`, with every streak at zero.
    pub fn new(rules: Vec<AlertRule>) -> Self {
        Self {
            rules,
            streaks: HashMap::new(),
        }
    }

    /// The rules it evaluates, in the order given.
    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// Feeds one sample; returns the alerts it raises (without id, timestamp or source).
    pub fn observe(&mut self, metric: &Metric) -> Vec<Alert> {
        let mut raised = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.metric != metric.name() {
                continue;
            }
            let key = (index, metric.labels().clone());
            if !rule.breached_by(metric.value()) {
                self.streaks.remove(&key);
                continue;
            }
            let streak = self.streaks.entry(key).or_insert(0);
            *streak = streak.saturating_add(1);
            if *streak == rule.samples {
                // Valid for every rule `parse` makes (its threshold is finite); a hand-built
                // rule with a non-finite threshold raises nothing.
                raised.extend(alert_for(rule, metric).ok());
            }
        }
        raised
    }
}

/// A value as a person reads it in a message: at most two decimals, no trailing zeros (the exact
/// value is the alert's `value`).
fn readable(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "0" | "-0" if value != 0.0 => format!("{value:.2e}"),
        _ => text.to_owned(),
    }
}

fn alert_for(rule: &AlertRule, metric: &Metric) -> Result<Alert, InvalidMessage> {
    let op = match rule.comparison {
        Comparison::Above => '>',
        Comparison::Below => '<',
    };
    let unit = metric.unit().unwrap_or("");
    let plural = if rule.samples == 1 { "" } else { "s" };
    let message = format!(
        "{} is {}{unit} ({op} {}{unit}) for {} sample{plural}",
        metric.name(),
        readable(metric.value()),
        readable(rule.threshold),
        rule.samples
    );
    AlertFields {
        metric: Some(metric.name().to_owned()),
        value: Some(metric.value()),
        threshold: Some(rule.threshold),
        labels: metric.labels().clone(),
        ..AlertFields::new(rule.severity, message)
    }
    .validate("")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_reads_its_values_rounded() {
        assert_eq!(super::readable(99.502_494_812_011_72), "99.5");
        assert_eq!(super::readable(97.0), "97");
        assert_eq!(super::readable(0.126), "0.13");
        assert_eq!(super::readable(-3.0), "-3");
        assert_eq!(super::readable(0.0001), "1.00e-4");
        assert_eq!(super::readable(0.0), "0");
    }

    use super::*;
    use crate::Valid;

    fn rule(text: &str) -> AlertRule {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_the_text_form() {
        let parsed = rule("host.cpu_percent>90,for=3,severity=critical");
        assert_eq!(parsed.metric, "host.cpu_percent");
        assert_eq!(parsed.comparison, Comparison::Above);
        assert_eq!(parsed.threshold, 90.0);
        assert_eq!(parsed.samples, 3);
        assert_eq!(parsed.severity, Severity::Critical);
        assert_eq!(parsed.to_string().parse::<AlertRule>(), Ok(parsed));
        assert_eq!(rule("free<1.5").comparison, Comparison::Below);
        for bad in [
            "cpu",
            ">3",
            "cpu>x",
            "cpu>1,for=0",
            "cpu>1,severity=fatal",
            "cpu>1,x=2",
        ] {
            assert!(bad.parse::<AlertRule>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn fires_once_after_n_breaching_samples_and_rearms_after_recovery() {
        let mut engine = RuleEngine::new(vec![rule("cpu>90,for=3")]);
        let fired: Vec<usize> = [95.0, 96.0, 97.0, 98.0, 50.0, 91.0, 92.0, 93.0]
            .iter()
            .map(|value| engine.observe(&Metric::new("cpu", *value).valid()).len())
            .collect();
        assert_eq!(fired, [0, 0, 1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn series_with_different_labels_keep_separate_streaks() {
        let mut engine = RuleEngine::new(vec![rule("cpu>90,for=2")]);
        let a = Metric::new("cpu", 95.0)
            .valid()
            .with_label("host", "a")
            .valid();
        let b = Metric::new("cpu", 95.0)
            .valid()
            .with_label("host", "b")
            .valid();
        assert!(engine.observe(&a).is_empty());
        assert!(engine.observe(&b).is_empty());
        let alerts = engine.observe(&a);
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].labels().get("host").map(String::as_str),
            Some("a")
        );
        assert_eq!(alerts[0].threshold(), Some(90.0));
        assert!(engine.observe(&Metric::new("mem", 99.0).valid()).is_empty());
    }
}
