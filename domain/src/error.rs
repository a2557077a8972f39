//! Errors of the domain's operations, one enum per failure domain.

use std::sync::Arc;

/// A message that decoded but breaks a rule JSON cannot express (empty name, non-finite value...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidMessage {
    field: String,
    reason: &'static str,
}

impl InvalidMessage {
    pub(crate) fn new(path: &str, field: &str, reason: &'static str) -> Self {
        Self {
            field: Self::join(path, field),
            reason,
        }
    }

    /// `path.field`, or `field` at the top.
    pub fn join(path: &str, field: &str) -> String {
        if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    }

    /// The offending field, as a path such as `[2].value` or `labels.host`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with the field, e.g. `must be a finite number`: fixed text, safe to show
    /// to the publisher.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

/// The error behind a failure, kept for logs (`{:#}`-style chains through `source()`). Shared,
/// so that the errors holding it stay `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a message could not be handed to the bus.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The bus cannot take messages right now (e.g. Redis is down); retrying later may work.
    #[error("bus unavailable: {reason}")]
    Unavailable {
        /// What failed, for the caller and the logs (e.g. `no Redis connection`).
        reason: String,
        /// The underlying error, kept as the `source`; `None` when `reason` says it all.
        #[source]
        cause: Option<Cause>,
    },
}

impl PublishError {
    /// Unavailable for `reason` alone, with no underlying error.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            cause: None,
        }
    }

    /// Unavailable because of `cause` (e.g. the Redis error), which stays the error's `source`.
    pub fn caused_by(
        reason: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            cause: Some(Arc::new(cause)),
        }
    }
}

/// Why the alert log could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// The log cannot be read now (e.g. Redis is down, or the log kept being reset while it was
    /// read); retrying later may work.
    #[error("alert log unavailable: {reason}")]
    Unavailable {
        /// What failed, for the caller and the logs.
        reason: String,
        /// The underlying error, kept as the `source`; `None` when `reason` says it all.
        #[source]
        cause: Option<Cause>,
    },
}

impl HistoryError {
    /// Unavailable for `reason` alone, with no underlying error.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            cause: None,
        }
    }

    /// Unavailable because of `cause`, which stays the error's `source`.
    pub fn caused_by(
        reason: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            cause: Some(Arc::new(cause)),
        }
    }
}

/// An error and its causes, `: `-separated, for log lines and replies: `Display` of a
/// `thiserror` enum shows only the top.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
