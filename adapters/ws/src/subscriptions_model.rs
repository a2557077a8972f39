//! Model-based property test of subscriptions: random sequences of subscribe, replace and
//! unsubscribe requests (as the text frames clients send) from clients with different
//! credentials, interleaved with published metrics batches and alerts, against a plain reference
//! model that applies the grammar of docs/PROTOCOL.md naively.
//!
//! Checked after every step:
//! - each request is accepted or refused exactly when the model says so;
//! - each client receives, for every published message, exactly the items the reference filter
//!   takes (the union of its subscriptions, within its credential's channels and scope), in
//!   publish order, and no frame when it takes none;
//! - clients with equal filters share one group (the registry's group count equals the number
//!   of distinct non-empty model filters).
//!
//! The reference matcher is written from the grammar, not from `fanout_domain::Selector`: a
//! recursive glob, matchers split on `!=`, `=` and `|`.
//!
//! Over 400 lines on purpose: a test only: the reference model, the generators and the checks of one property test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fanout_domain::{
    Alert, Channel, ClientRequest, Envelope, LocalDelivery, Metric, Payload, SelectorLimits,
    Severity, Subscribe, WorkerId,
};
use proptest::prelude::*;

use crate::filter::Bounds;
use crate::protocol::{Frame, FrameKind};
use crate::queue::{ClientQueue, QueueLimits};
use crate::registry::{Applied, ClientRegistry};

const NAMES: [&str; 7] = [
    "api.a",
    "api.b",
    "db.a",
    "web.latency_ms",
    "api.x.p99",
    "x",
    "api.üa",
];
const PATTERNS: [&str; 8] = [
    "api.*",
    "*.a",
    "db.a",
    "*",
    "*.p99",
    "api.*.p99",
    "x",
    "*x*",
];
const MATCHERS: [&str; 7] = [
    "tenant=a",
    "tenant!=a",
    "region=eu|us",
    "region!=eu",
    "tenant=b",
    "region=",
    "env=a!=b",
];
const IDS: [&str; 3] = ["default", "s1", "s2"];
const MAX_SUBSCRIPTIONS: usize = 2;

/// A selector as a client writes it in a `subscribe` frame.
#[derive(Clone, Debug)]
struct Wire {
    metrics: Option<Vec<&'static str>>,
    matchers: Vec<&'static str>,
    alerts: Option<&'static str>,
}

impl Wire {
    fn frame(&self, id: &str) -> String {
        let mut request = serde_json::json!({ "type": "subscribe", "id": id });
        if let Some(metrics) = &self.metrics {
            request["metrics"] = serde_json::json!(metrics);
        }
        if !self.matchers.is_empty() {
            request["where"] = serde_json::json!(self.matchers);
        }
        if let Some(alerts) = self.alerts {
            request["alerts"] = serde_json::json!(alerts);
        }
        request.to_string()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Subscribe {
        client: usize,
        id: &'static str,
        wire: Wire,
    },
    Unsubscribe {
        client: usize,
        id: &'static str,
    },
    Metrics(Vec<(&'static str, Option<&'static str>, Option<&'static str>)>),
    Alert {
        severity: Severity,
        metric: Option<&'static str>,
        tenant: Option<&'static str>,
    },
}

fn label() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("a")),
        Just(Some("b")),
        Just(Some("eu"))
    ]
}

fn wire() -> impl Strategy<Value = Wire> {
    (
        prop::option::of(prop::collection::vec(
            prop::sample::select(&PATTERNS[..]),
            0..3,
        )),
        prop::collection::vec(prop::sample::select(&MATCHERS[..]), 0..3),
        prop::option::of(prop::sample::select(
            &["info", "warning", "critical", "none"][..],
        )),
    )
        .prop_map(|(metrics, matchers, alerts)| Wire {
            metrics,
            matchers,
            alerts,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let severity = prop_oneof![
        Just(Severity::Info),
        Just(Severity::Warning),
        Just(Severity::Critical)
    ];
    prop_oneof![
        3 => (0..CLIENTS.len(), prop::sample::select(&IDS[..]), wire())
            .prop_map(|(client, id, wire)| Op::Subscribe { client, id, wire }),
        1 => (0..CLIENTS.len(), prop::sample::select(&IDS[..]))
            .prop_map(|(client, id)| Op::Unsubscribe { client, id }),
        4 => prop::collection::vec(
            (prop::sample::select(&NAMES[..]), label(), label()),
            1..5
        )
        .prop_map(Op::Metrics),
        2 => (severity, prop::option::of(prop::sample::select(&NAMES[..])), label())
            .prop_map(|(severity, metric, tenant)| Op::Alert { severity, metric, tenant }),
    ]
}

/// The credentials of the clients: open, metrics only, alerts only, tenant `a`.
const CLIENTS: [(bool, bool, Option<&str>); 4] = [
    (true, true, None),
    (true, false, None),
    (false, true, None),
    (true, true, Some("a")),
];

// ----- the reference model -----

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob(rest, &name[skip..])),
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

/// A matcher's key (up to the first `=`, without a `!` right before it), whether it is negated,
/// and its values.
fn split_matcher(matcher: &str) -> (&str, bool, &str) {
    let (key, values) = matcher.split_once('=').unwrap_or((matcher, ""));
    match key.strip_suffix('!') {
        Some(key) => (key, true, values),
        None => (key, false, values),
    }
}

fn matcher_holds(matcher: &str, labels: &BTreeMap<String, String>) -> bool {
    let (key, negated, values) = split_matcher(matcher);
    let found = labels
        .get(key)
        .is_some_and(|value| values.split('|').any(|v| v == value));
    found != negated
}

fn rank(severity: &str) -> Option<u8> {
    match severity {
        "info" => Some(0),
        "warning" => Some(1),
        "critical" => Some(2),
        _ => None,
    }
}

struct ModelClient {
    may_metrics: bool,
    may_alerts: bool,
    tenant: Option<&'static str>,
    subscriptions: BTreeMap<&'static str, Wire>,
}

impl ModelClient {
    fn in_scope(&self, labels: &BTreeMap<String, String>) -> bool {
        self.tenant
            .is_none_or(|t| labels.get("tenant").map(String::as_str) == Some(t))
    }

    fn takes_metric(&self, metric: &Metric) -> bool {
        self.may_metrics
            && self.in_scope(metric.labels())
            && self.subscriptions.values().any(|wire| {
                let named = match &wire.metrics {
                    None => true,
                    Some(patterns) => patterns
                        .iter()
                        .any(|p| glob(p.as_bytes(), metric.name().as_bytes())),
                };
                named
                    && wire
                        .matchers
                        .iter()
                        .all(|m| matcher_holds(m, metric.labels()))
            })
    }

    fn takes_alert(&self, alert: &Alert) -> bool {
        let severity = match alert.severity() {
            Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Critical => 2,
        };
        self.may_alerts
            && self.in_scope(alert.labels())
            && self.subscriptions.values().any(|wire| {
                let severe = rank(wire.alerts.unwrap_or("info")).is_some_and(|min| severity >= min);
                let named = match (&wire.metrics, alert.metric()) {
                    (Some(patterns), Some(name)) if !patterns.is_empty() => {
                        patterns.iter().any(|p| glob(p.as_bytes(), name.as_bytes()))
                    }
                    _ => true,
                };
                severe
                    && named
                    && wire
                        .matchers
                        .iter()
                        .all(|m| matcher_holds(m, alert.labels()))
            })
    }

    /// What the filter would be, for counting distinct groups: the subscriptions that can take
    /// anything, by their meaning (sorted patterns and matchers), within the credential.
    fn filter_key(&self) -> BTreeSet<String> {
        self.subscriptions
            .values()
            .filter_map(|wire| {
                // The names (all, or a set of patterns), and whether metrics go out at all.
                let names = match &wire.metrics {
                    None => None,
                    Some(p) if p.contains(&"*") => None,
                    Some(p) => Some(p.iter().copied().collect::<BTreeSet<_>>()),
                };
                let delivers = self.may_metrics && names.as_ref().is_none_or(|n| !n.is_empty());
                let alerts = if self.may_alerts {
                    wire.alerts.unwrap_or("info")
                } else {
                    "none"
                };
                if !delivers && alerts == "none" {
                    return None;
                }
                let metrics = (names, delivers);
                let mut matchers: BTreeSet<String> =
                    wire.matchers.iter().map(|m| canonical_matcher(m)).collect();
                if let Some(tenant) = self.tenant {
                    matchers.insert(canonical_matcher(&format!("tenant={tenant}")));
                }
                Some(format!("{metrics:?}/{matchers:?}/{alerts}"))
            })
            .collect()
    }
}

fn canonical_matcher(matcher: &str) -> String {
    let (key, negated, values) = split_matcher(matcher);
    let op = if negated { "!=" } else { "==" };
    let values: BTreeSet<&str> = values.split('|').collect();
    format!("{key}{op}{values:?}")
}

// ----- the system -----

fn labels_of(tenant: Option<&str>, region: Option<&str>) -> Vec<(&'static str, String)> {
    let mut labels = Vec::new();
    if let Some(tenant) = tenant {
        labels.push(("tenant", tenant.to_owned()));
    }
    if let Some(region) = region {
        labels.push(("region", region.to_owned()));
    }
    labels
}

fn origin() -> WorkerId {
    WorkerId::new("w1").unwrap_or_else(|e| panic!("{e}"))
}

fn envelope(seq: u64, payload: Payload) -> Envelope {
    Envelope {
        id: None,
        epoch: None,
        origin: origin(),
        seq,
        published_at_us: 0,
        payload,
    }
}

fn taken(queue: &ClientQueue) -> Vec<Frame> {
    let mut frames = Vec::new();
    queue.drain_now(&mut frames);
    frames
}

/// What a client received for one message: the metric items, or whether the alert came.
fn received(frames: &[Frame]) -> (Vec<Metric>, usize) {
    let mut metrics = Vec::new();
    let mut alerts = 0;
    for frame in frames {
        match frame.kind {
            FrameKind::Metrics => {
                let decoded = Envelope::from_json(Channel::Metrics, frame.text().as_bytes())
                    .unwrap_or_else(|e| panic!("{e}"));
                let Payload::Metrics(items) = decoded.payload else {
                    panic!("an alert in a metrics frame")
                };
                assert!(!items.is_empty(), "a metrics frame with no item");
                metrics.extend(items);
            }
            FrameKind::Alert => alerts += 1,
            FrameKind::Control => {}
        }
    }
    (metrics, alerts)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let registry = ClientRegistry::new();
    let limits = QueueLimits {
        max_messages: 1024,
        max_bytes: 1 << 24,
    };
    let queues: Vec<Arc<ClientQueue>> = CLIENTS
        .iter()
        .map(|_| Arc::new(ClientQueue::new(limits)))
        .collect();
    let mut model: Vec<ModelClient> = Vec::new();
    for (index, (metrics, alerts, tenant)) in CLIENTS.iter().enumerate() {
        let bounds = Bounds {
            metrics: *metrics,
            alerts: *alerts,
            scope: tenant
                .map(|t| BTreeMap::from([("tenant".to_owned(), t.to_owned())]))
                .unwrap_or_default(),
        };
        registry.add(
            index as u64,
            Arc::clone(&queues[index]),
            bounds,
            Subscribe::everything(),
        );
        model.push(ModelClient {
            may_metrics: *metrics,
            may_alerts: *alerts,
            tenant: *tenant,
            subscriptions: BTreeMap::from([(
                "default",
                Wire {
                    metrics: None,
                    matchers: Vec::new(),
                    alerts: None,
                },
            )]),
        });
    }
    let selector_limits = SelectorLimits::default();
    for (seq, op) in ops.into_iter().enumerate() {
        match op {
            Op::Subscribe { client, id, wire } => {
                let request = ClientRequest::parse(&wire.frame(id), &selector_limits)
                    .map_err(|e| TestCaseError::fail(format!("refused {wire:?}: {e}")))?;
                let mut before = Vec::new();
                let applied =
                    registry.apply(client as u64, request, MAX_SUBSCRIPTIONS, &mut before);
                let held = &mut model[client].subscriptions;
                let allowed = held.contains_key(id) || held.len() < MAX_SUBSCRIPTIONS;
                prop_assert_eq!(applied.is_ok(), allowed, "subscribe {} {:?}", id, wire);
                if allowed {
                    held.insert(id, wire);
                }
                prop_assert!(before.is_empty(), "every message was taken after its step");
            }
            Op::Unsubscribe { client, id } => {
                let mut before = Vec::new();
                let applied = registry.apply(
                    client as u64,
                    ClientRequest::Unsubscribe { id: id.to_owned() },
                    MAX_SUBSCRIPTIONS,
                    &mut before,
                );
                let held = model[client].subscriptions.remove(id).is_some();
                prop_assert_eq!(matches!(applied, Ok(Applied::Unsubscribed { .. })), held);
            }
            Op::Metrics(items) => {
                let metrics: Vec<Metric> = items
                    .iter()
                    .map(|(name, tenant, region)| {
                        let mut metric = labels_of(*tenant, *region).into_iter().fold(
                            Metric::new(*name, seq as f64).unwrap_or_else(|e| panic!("{e}")),
                            |m, (k, v)| m.with_label(k, v).unwrap_or_else(|e| panic!("{e}")),
                        );
                        // What decoding a frame fills in: the origin.
                        metric.set_source(origin());
                        metric
                    })
                    .collect();
                registry.deliver(&envelope(seq as u64, Payload::Metrics(metrics.clone())));
                for (client, queue) in queues.iter().enumerate() {
                    let (got, alerts) = received(&taken(queue));
                    let expected: Vec<Metric> = metrics
                        .iter()
                        .filter(|m| model[client].takes_metric(m))
                        .cloned()
                        .collect();
                    prop_assert_eq!(alerts, 0);
                    prop_assert_eq!(got, expected, "client {}", client);
                }
            }
            Op::Alert {
                severity,
                metric,
                tenant,
            } => {
                let mut alert = Alert::new(severity, "x").unwrap_or_else(|e| panic!("{e}"));
                if let Some(metric) = metric {
                    alert = alert
                        .about_metric(metric, 1.0, 0.5)
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                for (key, value) in labels_of(tenant, None) {
                    alert = alert
                        .with_label(key, value)
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                registry.deliver(&envelope(seq as u64, Payload::Alert(alert.clone())));
                for (client, queue) in queues.iter().enumerate() {
                    let (metrics, alerts) = received(&taken(queue));
                    prop_assert!(metrics.is_empty());
                    prop_assert_eq!(
                        alerts,
                        usize::from(model[client].takes_alert(&alert)),
                        "client {} alert {:?}",
                        client,
                        alert
                    );
                }
            }
        }
        let distinct: BTreeSet<BTreeSet<String>> =
            model.iter().map(ModelClient::filter_key).collect();
        prop_assert_eq!(
            registry.stats().groups,
            distinct.len(),
            "clients with equal filters share one group"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn each_client_gets_exactly_what_the_reference_filter_takes(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        run(ops)?;
    }
}
