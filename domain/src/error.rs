//! Errors of the domain's operations, one enum per failure domain.

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
    pub(crate) fn join(path: &str, field: &str) -> String {
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

    pub fn reason(&self) -> &str {
        self.reason
    }
}

/// Why a message could not be handed to the bus.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    /// The bus cannot take messages right now (e.g. Redis is down); retrying later may work.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Why a publish through [`crate::PerformanceService`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid message: {0}")]
    Invalid(#[from] InvalidMessage),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Why the alert log could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistoryError {
    #[error("alert log unavailable: {0}")]
    Unavailable(String),
}
