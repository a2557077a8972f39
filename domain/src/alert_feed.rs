//! Reading the alert log: one pager for everyone who catches up (a worker after a reconnect, a
//! client that resumes), and the worker's [`AlertFeed`], which makes the log, not the channel,
//! the source of truth for alert ids.
//!
//! Why the channel is not trusted: anything can be published on the alerts channel, including an
//! envelope with an `id` the log never assigned. If live ids drove ordering and de-duplication,
//! one outside message with a huge id would make every later alert look like a duplicate and
//! silence the live stream. So a live alert that carries an id is a doorbell: the feed reads the
//! log after its own position and delivers what the log holds, oldest first; the live message is
//! then either one of those (already delivered) or not the log's, and is delivered as an outside
//! alert without the id. Only positions read from the log move the feed.

use std::collections::VecDeque;

use crate::{AlertLog, Envelope, HistoryError, LocalDelivery, LogEpoch, LogId};

/// Alerts read per page of the log.
pub const LOG_PAGE: usize = 1000;

/// Where a reader of the alert log stands: the last id it has, in which log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPosition {
    /// The log the id belongs to; `None` when the reader does not know it (a client that sent no
    /// epoch): then only ids are compared, and a reset log may go unnoticed.
    pub epoch: Option<LogEpoch>,
    /// The last alert the reader has; [`LogId::ZERO`] when it has none (reading starts with the
    /// oldest retained alert).
    pub id: LogId,
}

impl LogPosition {
    /// The start of a log whose epoch is not known yet.
    pub const START: LogPosition = LogPosition {
        epoch: None,
        id: LogId::ZERO,
    };
}

/// What a catch-up read found.
#[derive(Clone, Debug, PartialEq)]
pub struct CatchUp {
    /// Every retained alert after the starting position, oldest first (after a reset: first what
    /// was read of the old log, then the new log from its start).
    pub alerts: Vec<Envelope>,
    /// False when an alert after the starting position cannot be delivered: it was trimmed by
    /// the retention limit, or the log was reset (a new epoch) since the position was taken.
    pub complete: bool,
    /// The position after the last alert read, in the log's current epoch.
    pub position: LogPosition,
}

/// Most restarts of one read because the log's epoch changed under it.
const MAX_EPOCH_CHANGES: usize = 3;

/// Reads every retained alert after `from`, page by page. A position from another epoch counts
/// as the start of the current log, and the answer is then incomplete.
pub async fn read_after(log: &dyn AlertLog, from: &LogPosition) -> Result<CatchUp, HistoryError> {
    let mut position = from.clone();
    let mut alerts = Vec::new();
    let mut complete = true;
    let mut epoch_changes = 0;
    loop {
        let page = log.alerts_after(position.id, LOG_PAGE).await?;
        if position
            .epoch
            .as_ref()
            .is_some_and(|epoch| *epoch != page.epoch)
        {
            epoch_changes += 1;
            if epoch_changes > MAX_EPOCH_CHANGES {
                return Err(HistoryError::unavailable(
                    "the alert log was reset again and again while being read",
                ));
            }
            // Another log: the position means nothing in it, and all of it is new to the reader.
            complete = false;
            position = LogPosition {
                epoch: Some(page.epoch),
                id: LogId::ZERO,
            };
            continue;
        }
        position.epoch = Some(page.epoch);
        complete &= page.complete;
        let count = page.alerts.len();
        if let Some(last) = page.alerts.last().and_then(|alert| alert.id) {
            position.id = last;
        }
        alerts.extend(page.alerts);
        if count < LOG_PAGE {
            return Ok(CatchUp {
                alerts,
                complete,
                position,
            });
        }
    }
}

/// How many of the ids delivered last are remembered, to recognise the live copies of alerts a
/// catch-up delivered first without asking the log. Older ones are checked in the log.
const RECENT_IDS: usize = 1024;

/// What a catch-up delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caught {
    /// Alerts handed to local delivery by this catch-up.
    pub delivered: usize,
    /// False when alerts were missed (see [`CatchUp::complete`]).
    pub complete: bool,
}

/// What became of one live alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveAlert {
    /// Its id is one the log assigned: delivered from the log, together with anything logged
    /// before it that this worker had not delivered yet.
    Logged,
    /// A log entry this worker already delivered (a catch-up got there first): skipped.
    Duplicate,
    /// Published straight onto the channel without an id: delivered as it is.
    Unlogged,
    /// Its id is not one the log assigned: delivered without it.
    Foreign,
}

/// The outcome of [`AlertFeed::on_live`]: what became of the alert, and what the catch-up it
/// caused (if any) delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handled {
    /// What became of the live alert itself.
    pub alert: LiveAlert,
    /// What the catch-up it rang for delivered; `None` when it needed none (it carried no id,
    /// or this worker had already delivered it).
    pub caught: Option<Caught>,
}

/// A worker's place in the alert log: delivers every logged alert to the worker's clients
/// exactly once, in log order, whatever else arrives on the channel.
#[derive(Debug)]
pub struct AlertFeed {
    position: LogPosition,
    /// Ids delivered from the log, in the position's epoch, oldest first (so sorted).
    recent: VecDeque<LogId>,
    /// Where the feed left the previous logs when they were reset, newest last: live copies of
    /// their alerts up to there, still in the channel, were delivered (or lost with the log, and
    /// reported). A few are kept, for resets in quick succession.
    previous: VecDeque<LogPosition>,
}

/// Previous logs remembered (see [`AlertFeed`]'s `previous`).
const PREVIOUS_LOGS: usize = 8;

impl AlertFeed {
    /// A feed that delivers what is logged after `start` (for a new subscriber: the log's head,
    /// read before it subscribes, so nothing can fall between the log and the channel).
    pub fn new(start: LogPosition) -> Self {
        Self {
            position: start,
            recent: VecDeque::new(),
            previous: VecDeque::new(),
        }
    }

    /// The newest log position delivered.
    pub fn position(&self) -> &LogPosition {
        &self.position
    }

    /// Delivers every alert logged after the position (after a reconnect, and when a live alert
    /// rings).
    pub async fn catch_up(
        &mut self,
        log: &dyn AlertLog,
        delivery: &dyn LocalDelivery,
    ) -> Result<Caught, HistoryError> {
        let read = read_after(log, &self.position).await?;
        if read.position.epoch != self.position.epoch {
            self.recent.clear();
            if self.previous.len() == PREVIOUS_LOGS {
                self.previous.pop_front();
            }
            self.previous.push_back(self.position.clone());
        }
        for alert in &read.alerts {
            if let (Some(id), true) = (alert.id, alert.epoch == read.position.epoch) {
                self.remember(id);
            }
            delivery.deliver(alert);
        }
        self.position = read.position;
        Ok(Caught {
            delivered: read.alerts.len(),
            complete: read.complete,
        })
    }

    /// Handles one alert that arrived on the channel.
    pub async fn on_live(
        &mut self,
        alert: Envelope,
        log: &dyn AlertLog,
        delivery: &dyn LocalDelivery,
    ) -> Result<Handled, HistoryError> {
        let handled = |alert, caught| Ok(Handled { alert, caught });
        let Some(id) = alert.id else {
            // An epoch without an id is not a log position either.
            delivery.deliver(&alert.without_log_position());
            return handled(LiveAlert::Unlogged, None);
        };
        if self.was_delivered(id, alert.epoch.as_ref()) {
            return handled(LiveAlert::Duplicate, None);
        }
        let caught = Some(self.catch_up(log, delivery).await?);
        if self.was_delivered(id, alert.epoch.as_ref()) {
            return handled(LiveAlert::Logged, caught);
        }
        if self
            .is_older_log_entry(id, alert.epoch.as_ref(), log)
            .await?
        {
            return handled(LiveAlert::Duplicate, caught);
        }
        delivery.deliver(&alert.without_log_position());
        handled(LiveAlert::Foreign, caught)
    }

    fn remember(&mut self, id: LogId) {
        if self.recent.back().is_some_and(|last| *last >= id) {
            return;
        }
        if self.recent.len() == RECENT_IDS {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }

    fn in_this_epoch(&self, epoch: Option<&LogEpoch>) -> bool {
        epoch.is_none_or(|epoch| Some(epoch) == self.position.epoch.as_ref())
    }

    fn was_delivered(&self, id: LogId, epoch: Option<&LogEpoch>) -> bool {
        let of_previous_log = self.previous.iter().any(|previous| {
            epoch.is_some()
                && epoch == previous.epoch.as_ref()
                && id != LogId::ZERO
                && id <= previous.id
        });
        of_previous_log || (self.in_this_epoch(epoch) && self.recent.binary_search(&id).is_ok())
    }

    /// Whether `id` is an entry of the log at or before the position that is no longer among the
    /// remembered ids: then it was delivered (or predates this worker's start) and is skipped.
    async fn is_older_log_entry(
        &self,
        id: LogId,
        epoch: Option<&LogEpoch>,
        log: &dyn AlertLog,
    ) -> Result<bool, HistoryError> {
        if !self.in_this_epoch(epoch) || id > self.position.id {
            return Ok(false);
        }
        let Some(before) = id.predecessor() else {
            return Ok(false);
        };
        let page = log.alerts_after(before, 1).await?;
        Ok(Some(&page.epoch) == self.position.epoch.as_ref()
            && page.alerts.first().and_then(|alert| alert.id) == Some(id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Alert, AlertHistory, MockAlertLog, Payload, Severity, Valid, WorkerId};

    fn epoch(text: &str) -> LogEpoch {
        LogEpoch::new(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn alert(id: Option<u64>, epoch_text: Option<&str>, message: &str) -> Envelope {
        Envelope {
            id: id.map(|seq| LogId::new(1, seq)),
            epoch: epoch_text.map(epoch),
            origin: WorkerId::new("w1").unwrap_or_else(|e| panic!("{e}")),
            seq: 0,
            published_at_us: 0,
            payload: Payload::Alert(Alert::new(Severity::Info, message).valid()),
        }
    }

    #[derive(Default)]
    struct Delivered(Mutex<Vec<(Option<LogId>, String)>>);

    impl LocalDelivery for Delivered {
        fn deliver(&self, envelope: &Envelope) {
            let message = match &envelope.payload {
                Payload::Alert(alert) => alert.message().to_owned(),
                Payload::Metrics(_) => String::new(),
            };
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((envelope.id, message));
        }
    }

    impl Delivered {
        fn messages(&self) -> Vec<String> {
            let delivered = self.0.lock().unwrap_or_else(|e| e.into_inner());
            delivered.iter().map(|(_, m)| m.clone()).collect()
        }
    }

    /// A log holding entries 1..=n of epoch "e1", answering like the adapters do.
    fn log_with(n: u64) -> MockAlertLog {
        let mut log = MockAlertLog::new();
        log.expect_alerts_after().returning(move |after, limit| {
            Ok(AlertHistory {
                epoch: epoch("e1"),
                alerts: (1..=n)
                    .map(|seq| alert(Some(seq), Some("e1"), &format!("a{seq}")))
                    .filter(|a| a.id > Some(after))
                    .take(limit)
                    .collect(),
                complete: true,
            })
        });
        log
    }

    #[tokio::test]
    async fn a_live_alert_with_an_id_the_log_never_assigned_does_not_silence_later_ones() {
        let delivered = Delivered::default();
        let mut feed = AlertFeed::new(LogPosition {
            epoch: Some(epoch("e1")),
            id: LogId::ZERO,
        });
        let log = log_with(2);
        let forged = Envelope {
            id: Some(LogId::new(99_999_999_999_999, 0)),
            ..alert(None, Some("e1"), "outside")
        };
        let outcome = feed.on_live(forged, &log, &delivered).await;
        assert_eq!(
            outcome.ok().map(|handled| handled.alert),
            Some(LiveAlert::Foreign)
        );
        for seq in 1..=2 {
            let _ = feed
                .on_live(alert(Some(seq), Some("e1"), "live copy"), &log, &delivered)
                .await;
        }
        // The forged one rang the bell: both logged alerts came from the log, once, in order,
        // then the outside alert, without its id; the live copies were recognised.
        assert_eq!(delivered.messages(), ["a1", "a2", "outside"]);
        let ids: Vec<_> = delivered
            .0
            .lock()
            .map(|d| d.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default();
        assert_eq!(ids[2], None);
        assert_eq!(feed.position().id, LogId::new(1, 2));
    }

    #[tokio::test]
    async fn a_position_from_another_epoch_restarts_from_the_new_log_and_is_incomplete() {
        let log = log_with(3);
        let read = read_after(
            &log,
            &LogPosition {
                epoch: Some(epoch("old")),
                id: LogId::new(1, 2),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!read.complete);
        assert_eq!(read.alerts.len(), 3);
        assert_eq!(read.position.epoch, Some(epoch("e1")));
    }
}
