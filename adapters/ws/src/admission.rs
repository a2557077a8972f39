//! Over 400 lines on purpose: more than half is the unit tests, one per refusal and per resume
//! form; the checks themselves are one short function in one order.
//!
//! Admission: who may open a WebSocket connection or an SSE stream, decided in the request
//! handler, before the upgrade or the first byte of the stream — the worker still accepting
//! clients, the credential and its channels, the browser origin, a well-formed resume position
//! (the query's, or an SSE client's `Last-Event-ID`), and a free connection slot
//! (`--max-connections`, reserved through `slots`).
//!
//! Every refusal is an HTTP status with a JSON body `{"error": …}` (docs/PROTOCOL.md,
//! "Connecting"). Admission must never happen after a client is registered, never wait (no
//! await, no lock held), and never touch the bus or a client's queue.
//!
//! Over 400 lines on purpose: every admission rule is decided in one place, before the upgrade; more than half is its tests.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fanout_domain::{
    AccessControl, AccessError, Grant, LogEpoch, LogId, LogPosition, SelectorError, SelectorLimits,
    Subscribe,
};

use crate::slots::{ConnectionSlots, Slot};

/// Who may open a WebSocket connection, checked before the upgrade.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// Browser origins allowed to connect (the `Origin` header); empty: any. Requests without an
    /// `Origin` (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Most clients on this worker; beyond it upgrades get 503. A slot is reserved before the
    /// upgrade, so the cap holds however many clients upgrade at once.
    pub max_connections: Option<usize>,
}

impl Admission {
    /// Whether a request with this `Origin` header may connect.
    fn allows_origin(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => {
                self.allowed_origins.is_empty()
                    || self.allowed_origins.iter().any(|allowed| allowed == origin)
            }
        }
    }
}

/// What an upgrade request brings, as the handler read it.
pub(crate) struct UpgradeRequest<'a> {
    /// The bearer token (header or `?token=`), if any.
    pub(crate) token: Option<&'a str>,
    /// The `Origin` header, if any (and valid text).
    pub(crate) origin: Option<&'a str>,
    /// Where a resuming client says it stands.
    pub(crate) resume: ResumeFrom<'a>,
    /// `?metrics=`, `?where=`, `?alerts=`, `?interval=`: the first subscription.
    pub(crate) metrics: Option<&'a str>,
    pub(crate) where_: Option<&'a str>,
    pub(crate) alerts: Option<&'a str>,
    pub(crate) interval: Option<&'a str>,
}

/// Where a resuming client says it stands, as it said it.
#[derive(Clone, Copy)]
pub(crate) enum ResumeFrom<'a> {
    /// `?last_alert_id=&epoch=` (neither: a fresh session).
    Query {
        last_alert_id: Option<&'a str>,
        epoch: Option<&'a str>,
    },
    /// An SSE client's `Last-Event-ID: ID/EPOCH` header (or a bare `ID`); it wins over the query,
    /// since a browser's `EventSource` reconnects with its first URL and this header.
    LastEventId(&'a str),
}

/// The header an SSE client resumes with.
pub(crate) const LAST_EVENT_ID: &str = "Last-Event-ID";

/// An admitted request: what its connection starts with.
pub(crate) struct Admitted {
    pub(crate) grant: Grant,
    pub(crate) resume_from: Option<LogPosition>,
    /// The first subscription (`default`), from the query; everything when it asks for nothing.
    pub(crate) first: Subscribe,
    /// Owned by the connection from now on: it goes back when the connection ends, or when axum
    /// drops the callback of a failed upgrade.
    pub(crate) slot: Slot,
}

/// Why an upgrade request was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotAdmitted {
    Draining,
    Credential(AccessError),
    NoChannel,
    Origin(String),
    /// A malformed `last_alert_id`, `epoch` or `Last-Event-ID`, or an `epoch` without
    /// `last_alert_id`; `field` names the parameter or header.
    ResumePosition {
        reason: String,
        field: &'static str,
    },
    /// A malformed or over-limit selector in the query.
    Selector(SelectorError),
    AtConnectionLimit,
}

impl NotAdmitted {
    fn status(&self) -> StatusCode {
        match self {
            Self::Draining | Self::AtConnectionLimit => StatusCode::SERVICE_UNAVAILABLE,
            Self::Credential(_) => StatusCode::UNAUTHORIZED,
            Self::NoChannel | Self::Origin(_) => StatusCode::FORBIDDEN,
            Self::ResumePosition { .. } | Self::Selector(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `error` of the response body.
    fn reason(&self) -> String {
        match self {
            Self::Draining => "worker is shutting down".into(),
            Self::Credential(error) => error.to_string(),
            Self::NoChannel => "the token allows no channel".into(),
            Self::Origin(origin) => format!("origin {origin} is not allowed"),
            Self::ResumePosition { reason, .. } => reason.clone(),
            Self::Selector(error) => error.reason.clone(),
            Self::AtConnectionLimit => "this worker is at its connection limit".into(),
        }
    }
}

impl IntoResponse for NotAdmitted {
    fn into_response(self) -> Response {
        let body = match &self {
            Self::Selector(error) => {
                serde_json::json!({ "error": self.reason(), "field": error.field })
            }
            Self::ResumePosition { field, .. } => {
                serde_json::json!({ "error": self.reason(), "field": field })
            }
            _ => serde_json::json!({ "error": self.reason() }),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

/// One worker's door: its admission policy, its connection slots, and whether it still admits
/// anyone (not once it drains for shutdown).
pub(crate) struct Gate {
    admission: Admission,
    slots: ConnectionSlots,
    draining: AtomicBool,
}

impl Gate {
    pub(crate) fn new(admission: Admission) -> Self {
        Self {
            slots: ConnectionSlots::new(admission.max_connections),
            admission,
            draining: AtomicBool::new(false),
        }
    }

    /// Decides an upgrade request. The checks run in this order, so a request that fails
    /// several gets the first one's answer: shutting down (503), credential (401), channels
    /// (403), origin (403), resume position (400), selector (400), connection slot (503) —
    /// last, so that a refused request never holds a slot.
    pub(crate) fn admit(
        &self,
        access: &dyn AccessControl,
        request: &UpgradeRequest<'_>,
        selector_limits: &SelectorLimits,
    ) -> Result<Admitted, NotAdmitted> {
        if self.is_draining() {
            return Err(NotAdmitted::Draining);
        }
        let grant = access
            .verify(request.token)
            .map_err(NotAdmitted::Credential)?;
        if !grant.metrics && !grant.alerts {
            return Err(NotAdmitted::NoChannel);
        }
        if !self.admission.allows_origin(request.origin) {
            let origin = request.origin.unwrap_or_default().to_owned();
            return Err(NotAdmitted::Origin(origin));
        }
        let resume_from = resume_position(request.resume)?;
        let first = Subscribe::from_query(
            request.metrics,
            request.where_,
            request.alerts,
            request.interval,
            selector_limits,
        )
        .map_err(NotAdmitted::Selector)?;
        let slot = self
            .slots
            .try_reserve()
            .ok_or(NotAdmitted::AtConnectionLimit)?;
        Ok(Admitted {
            grant,
            resume_from,
            first,
            slot,
        })
    }

    /// Whether every connection slot is taken: a new client would be refused.
    pub(crate) fn is_full(&self) -> bool {
        self.slots.is_full()
    }

    /// From now on every request is refused (and registration too, see the manager).
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Where a resuming client stands: `last_alert_id` and, when given, its `epoch`; or the
/// `Last-Event-ID` header's `ID/EPOCH` (or bare `ID`).
fn resume_position(from: ResumeFrom<'_>) -> Result<Option<LogPosition>, NotAdmitted> {
    let refused = |field| move |reason: String| NotAdmitted::ResumePosition { reason, field };
    let (last_alert_id, epoch, id_field, epoch_field) = match from {
        ResumeFrom::Query {
            last_alert_id,
            epoch,
        } => (last_alert_id, epoch, "last_alert_id", "epoch"),
        ResumeFrom::LastEventId(value) => {
            let (id, epoch) = match value.split_once('/') {
                Some((id, epoch)) => (id, Some(epoch)),
                None => (value, None),
            };
            (Some(id), epoch, LAST_EVENT_ID, LAST_EVENT_ID)
        }
    };
    let epoch = match epoch {
        None => None,
        Some(text) => Some(
            text.parse::<LogEpoch>()
                .map_err(|e| e.to_string())
                .map_err(refused(epoch_field))?,
        ),
    };
    match last_alert_id {
        None if epoch.is_some() => Err(refused(epoch_field)(
            "epoch is given without last_alert_id".into(),
        )),
        None => Ok(None),
        Some(text) => {
            let id = text
                .parse::<LogId>()
                .map_err(|e| e.to_string())
                .map_err(refused(id_field))?;
            Ok(Some(LogPosition { epoch, id }))
        }
    }
}

#[cfg(test)]
mod tests {
    use fanout_domain::OpenAccess;

    use super::*;

    /// Grants exactly what it was given.
    struct Fixed(Result<Grant, AccessError>);

    impl AccessControl for Fixed {
        fn verify(&self, _token: Option<&str>) -> Result<Grant, AccessError> {
            self.0.clone()
        }
    }

    fn no_channel() -> Fixed {
        Fixed(Ok(Grant {
            metrics: false,
            alerts: false,
            ..Grant::open()
        }))
    }

    const FRESH: UpgradeRequest<'static> = UpgradeRequest {
        token: None,
        origin: None,
        resume: ResumeFrom::Query {
            last_alert_id: None,
            epoch: None,
        },
        metrics: None,
        where_: None,
        alerts: None,
        interval: None,
    };

    fn refusal(
        gate: &Gate,
        access: &dyn AccessControl,
        request: &UpgradeRequest<'_>,
    ) -> NotAdmitted {
        match gate.admit(access, request, &SelectorLimits::default()) {
            Ok(_) => panic!("admitted"),
            Err(refusal) => refusal,
        }
    }

    fn gate_with_origins(origins: &[&str]) -> Gate {
        Gate::new(Admission {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            max_connections: None,
        })
    }

    #[test]
    fn a_fresh_request_is_admitted_with_its_grant_and_no_resume() {
        let gate = Gate::new(Admission::default());
        let admitted = gate
            .admit(&OpenAccess, &FRESH, &SelectorLimits::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(admitted.grant, Grant::open());
        assert_eq!(admitted.resume_from, None);
    }

    #[test]
    fn a_draining_worker_refuses_first_with_503() {
        let gate = Gate::new(Admission::default());
        gate.start_draining();
        let refused = refusal(&gate, &Fixed(Err(AccessError::Missing)), &FRESH);
        assert_eq!(refused, NotAdmitted::Draining);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.reason(), "worker is shutting down");
    }

    #[test]
    fn a_refused_credential_is_401_with_its_error() {
        let gate = Gate::new(Admission::default());
        let refused = refusal(&gate, &Fixed(Err(AccessError::Missing)), &FRESH);
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.reason(), "a token is required");
    }

    #[test]
    fn a_token_without_channels_is_403() {
        let gate = Gate::new(Admission::default());
        let refused = refusal(&gate, &no_channel(), &FRESH);
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.reason(), "the token allows no channel");
    }

    #[test]
    fn an_origin_outside_the_list_is_403_and_one_on_it_passes() {
        let gate = gate_with_origins(&["https://ok.example"]);
        let from = |origin| UpgradeRequest {
            origin: Some(origin),
            ..FRESH
        };
        let refused = refusal(&gate, &OpenAccess, &from("https://evil.example"));
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused.reason(),
            "origin https://evil.example is not allowed"
        );
        assert!(gate
            .admit(
                &OpenAccess,
                &from("https://ok.example"),
                &SelectorLimits::default()
            )
            .is_ok());
    }

    #[test]
    fn requests_without_an_origin_and_workers_without_a_list_admit_any() {
        let listed = gate_with_origins(&["https://ok.example"]);
        assert!(listed
            .admit(&OpenAccess, &FRESH, &SelectorLimits::default())
            .is_ok());
        let open = gate_with_origins(&[]);
        let request = UpgradeRequest {
            origin: Some("https://anywhere.example"),
            ..FRESH
        };
        assert!(open
            .admit(&OpenAccess, &request, &SelectorLimits::default())
            .is_ok());
    }

    #[test]
    fn a_resume_position_is_read_from_id_and_epoch() {
        let gate = Gate::new(Admission::default());
        let request = UpgradeRequest {
            resume: ResumeFrom::Query {
                last_alert_id: Some("1764380000456-0"),
                epoch: Some("3f9a0c1e5b7d2468"),
            },
            ..FRESH
        };
        let admitted = gate
            .admit(&OpenAccess, &request, &SelectorLimits::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            admitted.resume_from,
            Some(LogPosition {
                epoch: Some(LogEpoch::new("3f9a0c1e5b7d2468").unwrap_or_else(|e| panic!("{e}"))),
                id: LogId::new(1_764_380_000_456, 0),
            })
        );
    }

    #[test]
    fn malformed_resume_positions_are_400() {
        let gate = Gate::new(Admission::default());
        let requests = [
            (None, Some("3f9a0c1e5b7d2468")),
            (Some("not-an-id"), None),
            (Some("1-0"), Some("not an epoch")),
        ];
        for (last_alert_id, epoch) in requests {
            let request = UpgradeRequest {
                resume: ResumeFrom::Query {
                    last_alert_id,
                    epoch,
                },
                ..FRESH
            };
            let refused = refusal(&gate, &OpenAccess, &request);
            assert_eq!(
                refused.status(),
                StatusCode::BAD_REQUEST,
                "{last_alert_id:?} {epoch:?}"
            );
        }
        let request = UpgradeRequest {
            resume: ResumeFrom::Query {
                last_alert_id: None,
                epoch: Some("3f9a0c1e5b7d2468"),
            },
            ..FRESH
        };
        assert_eq!(
            refusal(&gate, &OpenAccess, &request).reason(),
            "epoch is given without last_alert_id"
        );
    }

    #[test]
    fn a_malformed_selector_is_400_naming_its_parameter_and_takes_no_slot() {
        let gate = Gate::new(Admission {
            allowed_origins: Vec::new(),
            max_connections: Some(1),
        });
        let requests = [
            (Some("api.*,"), None, None, "metrics"),
            (None, Some("service"), None, "where"),
            (None, None, Some("loud"), "alerts"),
        ];
        for (metrics, where_, alerts, field) in requests {
            let request = UpgradeRequest {
                metrics,
                where_,
                alerts,
                ..FRESH
            };
            let refused = refusal(&gate, &OpenAccess, &request);
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
            assert!(
                matches!(&refused, NotAdmitted::Selector(e) if e.field == field),
                "{refused:?}"
            );
        }
        let interval = UpgradeRequest {
            interval: Some("1m"),
            ..FRESH
        };
        assert!(matches!(
            refusal(&gate, &OpenAccess, &interval),
            NotAdmitted::Selector(e) if e.field == "interval"
        ));
        let admitted = gate
            .admit(
                &OpenAccess,
                &UpgradeRequest {
                    metrics: Some("api.*"),
                    ..FRESH
                },
                &SelectorLimits::default(),
            )
            .unwrap_or_else(|refused| panic!("{refused:?}"));
        assert_eq!(admitted.first.id, "default");
        assert!(!admitted.first.selector.is_everything());
    }

    #[test]
    fn a_full_worker_is_503_until_a_slot_comes_back() {
        let gate = Gate::new(Admission {
            allowed_origins: Vec::new(),
            max_connections: Some(1),
        });
        let first = gate
            .admit(&OpenAccess, &FRESH, &SelectorLimits::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        let refused = refusal(&gate, &OpenAccess, &FRESH);
        assert_eq!(refused, NotAdmitted::AtConnectionLimit);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.reason(), "this worker is at its connection limit");
        drop(first);
        assert!(gate
            .admit(&OpenAccess, &FRESH, &SelectorLimits::default())
            .is_ok());
    }

    #[test]
    fn a_refused_request_holds_no_slot() {
        let gate = Gate::new(Admission {
            allowed_origins: Vec::new(),
            max_connections: Some(1),
        });
        let malformed = UpgradeRequest {
            resume: ResumeFrom::Query {
                last_alert_id: Some("not-an-id"),
                epoch: None,
            },
            ..FRESH
        };
        assert!(matches!(
            refusal(&gate, &OpenAccess, &malformed),
            NotAdmitted::ResumePosition {
                field: "last_alert_id",
                ..
            }
        ));
        assert!(
            gate.admit(&OpenAccess, &FRESH, &SelectorLimits::default())
                .is_ok(),
            "the slot is still free"
        );
    }

    #[test]
    fn last_event_id_is_id_and_epoch_or_a_bare_id_and_a_malformed_one_is_400_naming_it() {
        let gate = Gate::new(Admission::default());
        let position = |resume| {
            let request = UpgradeRequest { resume, ..FRESH };
            gate.admit(&OpenAccess, &request, &SelectorLimits::default())
                .map(|admitted| admitted.resume_from)
        };
        let epoch = LogEpoch::new("3f9a0c1e5b7d2468").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            position(ResumeFrom::LastEventId("1764380000456-0/3f9a0c1e5b7d2468")),
            Ok(Some(LogPosition {
                epoch: Some(epoch),
                id: LogId::new(1_764_380_000_456, 0),
            }))
        );
        assert_eq!(
            position(ResumeFrom::LastEventId("7-1")),
            Ok(Some(LogPosition {
                epoch: None,
                id: LogId::new(7, 1),
            }))
        );
        for malformed in [
            "",
            "7-1/",
            "/3f9a0c1e5b7d2468",
            "x/3f9a0c1e5b7d2468",
            "7-1/x/y",
        ] {
            let refused = position(ResumeFrom::LastEventId(malformed));
            assert!(
                matches!(
                    &refused,
                    Err(NotAdmitted::ResumePosition {
                        field: "Last-Event-ID",
                        ..
                    })
                ),
                "{malformed:?}: {refused:?}"
            );
        }
    }
}
