//! fanout's domain: what a metric and an alert are, the envelope that carries them between
//! workers, the alert rules that turn metrics into alerts, and the ports the adapters implement.
//!
//! This crate never does I/O: no sockets, no clock reads, no tasks. Time comes in through the
//! [`Clock`] port, the bus through [`Broadcaster`] and [`BusSubscriber`], local clients through
//! [`LocalDelivery`]. Anything that needs tokio, axum or redis belongs in an adapter.

#![warn(missing_docs, unreachable_pub)]

mod access;
mod alert;
mod alert_feed;
mod channel;
mod envelope;
mod error;
mod json_object;
mod log_id;
mod metric;
mod outbox;
mod ports;
mod quota;
mod rules;
mod selector;
mod service;
mod worker;

pub use access::{bearer_token_of, AccessControl, AccessError, Grant, OpenAccess, ScopeViolation};
pub use alert::{Alert, AlertFields, Severity};
pub use alert_feed::{
    read_after, AlertFeed, CatchUp, Caught, Handled, LiveAlert, LogPosition, LOG_PAGE,
};
pub use channel::Channel;
pub use envelope::{DecodeError, Envelope, Payload, EXTERNAL_ORIGIN};
pub use error::{error_chain, Cause, HistoryError, InvalidMessage, PublishError};
pub use log_id::{InvalidLogEpoch, InvalidLogId, LogEpoch, LogId};
pub use metric::{Metric, MetricFields, MAX_LABELS, MAX_TEXT_LEN};
pub use outbox::Outbox;
pub use ports::{
    AlertHistory, AlertLog, Broadcaster, BusStatus, BusSubscriber, Clock, LocalDelivery,
    SubscriberState, Subscription,
};
pub use quota::{PublishQuota, PublishRate, QuotaDecision, QuotaError, RateOutcome};
pub use rules::{AlertRule, Comparison, ParseRuleError, RuleEngine};
pub use selector::{
    ClientRequest, LabelMatcher, NamePattern, Names, RequestError, Selector, SelectorError,
    SelectorLimits, Subscribe, DEFAULT_SUBSCRIPTION, MAX_ID_BYTES, MAX_INTERVAL, MIN_INTERVAL,
};
pub use service::{PerformanceService, PublishReceipt, Raised};
pub use worker::{InvalidWorkerId, WorkerId};

#[cfg(test)]
pub use ports::MockAlertLog;
#[cfg(test)]
pub(crate) use ports::{MockBroadcaster, MockClock};

/// Test shorthand: the value of a constructor that the test knows to be valid.
#[cfg(test)]
pub(crate) trait Valid<T> {
    fn valid(self) -> T;
}

#[cfg(test)]
impl<T, E: std::fmt::Display> Valid<T> for Result<T, E> {
    fn valid(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
    }
}
