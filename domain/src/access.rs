//! Who may do what: the permissions a credential grants, and the port that checks credentials.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// What a verified credential allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Who it was issued to (the token's subject), for logs and rate limits.
    pub subject: String,
    /// May receive metrics over WebSocket; a client with neither this nor `alerts` is refused.
    pub metrics: bool,
    /// May receive alerts over WebSocket, including the replay of missed ones on resume.
    pub alerts: bool,
    /// May publish through the HTTP API.
    pub publish: bool,
    /// When the credential stops being valid (a live connection is closed then).
    pub expires_at: Option<SystemTime>,
    /// Labels every metric and alert this credential receives or publishes must carry (the
    /// token's `where` claim); empty: no restriction.
    pub scope: BTreeMap<String, String>,
}

impl Grant {
    /// Everything allowed, forever: what every caller gets while authentication is off.
    pub fn open() -> Self {
        Self {
            subject: "anonymous".to_owned(),
            metrics: true,
            alerts: true,
            publish: true,
            expires_at: None,
            scope: BTreeMap::new(),
        }
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No credential where one is required (HTTP 401).
    #[error("a token is required")]
    Missing,
    /// Malformed, badly signed or expired (HTTP 401).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Checks credentials. Off (everything allowed) unless the operator configured keys.
pub trait AccessControl: Send + Sync + 'static {
    /// Verifies `token` (a bearer token, absent when the caller sent none).
    fn verify(&self, token: Option<&str>) -> Result<Grant, AccessError>;
}

/// The access control of a server with authentication off.
pub struct OpenAccess;

impl AccessControl for OpenAccess {
    fn verify(&self, _token: Option<&str>) -> Result<Grant, AccessError> {
        Ok(Grant::open())
    }
}
