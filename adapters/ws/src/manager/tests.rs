//! The connection lifecycle against a fake bus and a fake alert log: subscription held exactly
//! while there are clients, the greeting, the replay, the drain.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use fanout_domain::{
    Alert, AlertHistory, Envelope, OpenAccess, Payload, Severity, SubscriberState,
};

use super::*;
use crate::QueueLimits;

/// A bus that is live at once and counts the subscriptions held.
#[derive(Default)]
struct FakeBus {
    subscribed: AtomicUsize,
    held: Arc<AtomicUsize>,
}

/// Counts down the held subscriptions when dropped.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl BusSubscriber for FakeBus {
    async fn subscribe(&self, _delivery: Arc<dyn LocalDelivery>) -> Subscription {
        self.subscribed.fetch_add(1, Ordering::SeqCst);
        self.held.fetch_add(1, Ordering::SeqCst);
        Subscription::new(Held(Arc::clone(&self.held)))
    }

    fn status(&self) -> BusStatus {
        BusStatus {
            bus: "memory",
            state: SubscriberState::Subscribed,
            reconnects: 0,
            failed_attempts: 0,
            last_error: None,
            received: 0,
            malformed: 0,
            lost: 0,
            foreign_ids: 0,
            duplicates: 0,
            late: 0,
            master: None,
        }
    }

    async fn until_live(&self) {}
}

/// A log holding fixed alerts, complete.
struct FakeLog {
    epoch: LogEpoch,
    alerts: Vec<Envelope>,
}

#[async_trait::async_trait]
impl AlertLog for FakeLog {
    async fn alerts_after(&self, after: LogId, limit: usize) -> Result<AlertHistory, HistoryError> {
        let alerts = self
            .alerts
            .iter()
            .filter(|e| e.id.is_some_and(|id| id > after))
            .take(limit)
            .cloned()
            .collect();
        Ok(AlertHistory {
            epoch: self.epoch.clone(),
            alerts,
            complete: true,
        })
    }

    async fn head(&self) -> Result<LogPosition, HistoryError> {
        Ok(LogPosition {
            epoch: Some(self.epoch.clone()),
            id: self.alerts.last().and_then(|e| e.id).unwrap_or(LogId::ZERO),
        })
    }
}

fn epoch() -> LogEpoch {
    LogEpoch::new("3f9a0c1e5b7d2468").unwrap_or_else(|e| panic!("{e}"))
}

fn worker() -> WorkerId {
    WorkerId::new("web-1-4242").unwrap_or_else(|e| panic!("{e}"))
}

fn logged_alert(ms: u64) -> Envelope {
    Envelope {
        id: Some(LogId::new(ms, 0)),
        epoch: Some(epoch()),
        origin: worker(),
        seq: ms,
        published_at_us: 0,
        payload: Payload::Alert(
            Alert::new(Severity::Warning, "disk filling").unwrap_or_else(|e| panic!("{e}")),
        ),
    }
}

fn manager(bus: Arc<FakeBus>, alerts: Vec<Envelope>) -> ConnectionManager {
    let limits = ClientLimits {
        queue: QueueLimits {
            max_messages: 8,
            max_bytes: 64 * 1024,
        },
        max_incoming_message: 1024,
        ping_interval: Duration::from_secs(30),
        client_timeout: Duration::from_secs(60),
        subscriptions: crate::SubscriptionLimits::default(),
    };
    let log = Arc::new(FakeLog {
        epoch: epoch(),
        alerts,
    });
    ConnectionManager::new(worker(), bus, log, Arc::new(OpenAccess), limits)
}

/// A slot of an uncapped worker: unregistering gives one back.
fn free_slot() -> Slot {
    crate::slots::ConnectionSlots::new(None)
        .try_reserve()
        .unwrap_or_else(|| panic!("an uncapped worker always has a slot"))
}

async fn register(manager: &ConnectionManager) -> Registered {
    match manager
        .register(&Grant::open(), Subscribe::everything())
        .await
    {
        Ok(registered) => registered,
        Err(refused) => panic!("{refused}"),
    }
}

#[tokio::test]
async fn the_first_client_subscribes_and_the_last_one_unsubscribes() {
    let bus = Arc::new(FakeBus::default());
    let manager = manager(Arc::clone(&bus), Vec::new());
    let first = register(&manager).await;
    let second = register(&manager).await;
    assert_eq!(bus.subscribed.load(Ordering::SeqCst), 1);
    manager.unregister(first.id, free_slot()).await;
    assert_eq!(
        bus.held.load(Ordering::SeqCst),
        1,
        "a client is still there"
    );
    manager.unregister(second.id, free_slot()).await;
    assert_eq!(bus.held.load(Ordering::SeqCst), 0);
    assert_eq!(manager.stats().accepted, 2);
}

#[tokio::test]
async fn a_new_client_gets_the_snapshot_of_what_was_delivered() {
    let manager = manager(Arc::new(FakeBus::default()), Vec::new());
    let metrics = Envelope {
        id: None,
        epoch: None,
        origin: worker(),
        seq: 1,
        published_at_us: 0,
        payload: Payload::Metrics(vec![
            fanout_domain::Metric::new("cpu", 5.0).unwrap_or_else(|e| panic!("{e}"))
        ]),
    };
    manager.registry().deliver(&metrics);
    let registered = register(&manager).await;
    assert_eq!(
        registered.snapshot.text(),
        r#"{"type":"snapshot","data":[{"name":"cpu","value":5.0}]}"#
    );
}

#[tokio::test]
async fn hello_counts_the_connections() {
    let manager = manager(Arc::new(FakeBus::default()), Vec::new());
    let _client = register(&manager).await;
    let hello = manager.hello();
    assert!(
        hello
            .text()
            .starts_with(r#"{"type":"hello","worker":"web-1-4242","connections":1,"#),
        "{}",
        hello.text()
    );
}

#[tokio::test]
async fn a_replay_is_the_resume_frame_then_the_alerts_after_the_position() {
    let alerts = vec![logged_alert(1), logged_alert(2), logged_alert(3)];
    let manager = manager(Arc::new(FakeBus::default()), alerts.clone());
    let from = LogPosition {
        epoch: Some(epoch()),
        id: LogId::new(1, 0),
    };
    let replay = manager
        .replay(&from, &everything())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<String> = replay.frames.iter().map(|f| f.text().to_string()).collect();
    assert_eq!(
        texts,
        [
            r#"{"type":"resume","after":"1-0","epoch":"3f9a0c1e5b7d2468","replayed":2,"complete":true}"#
                .to_owned(),
            alerts[1].to_json(),
            alerts[2].to_json(),
        ]
    );
    assert_eq!(replay.floor, Some(LogId::new(3, 0)));
}

fn everything() -> Filter {
    Filter::new([&Subscribe::everything()], &Bounds::of(&Grant::open()))
}

#[tokio::test]
async fn a_replay_holds_only_the_alerts_the_filter_takes_and_stays_complete() {
    let tagged = |ms: u64, tenant: &str| {
        let mut envelope = logged_alert(ms);
        if let Payload::Alert(alert) = envelope.payload {
            envelope.payload = Payload::Alert(
                alert
                    .with_label("tenant", tenant)
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        envelope
    };
    let alerts = vec![tagged(1, "acme"), tagged(2, "globex"), tagged(3, "acme")];
    let manager = manager(Arc::new(FakeBus::default()), alerts.clone());
    let acme = Grant {
        scope: [("tenant".to_owned(), "acme".to_owned())].into(),
        ..Grant::open()
    };
    let filter = Filter::new([&Subscribe::everything()], &Bounds::of(&acme));
    let from = LogPosition {
        epoch: Some(epoch()),
        id: LogId::ZERO,
    };
    let replay = manager
        .replay(&from, &filter)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<String> = replay.frames.iter().map(|f| f.text().to_string()).collect();
    assert_eq!(
        texts,
        [
            r#"{"type":"resume","after":"0-0","epoch":"3f9a0c1e5b7d2468","replayed":2,"complete":true}"#
                .to_owned(),
            alerts[0].to_json(),
            alerts[2].to_json(),
        ]
    );
    assert_eq!(
        replay.floor,
        Some(LogId::new(3, 0)),
        "every alert read is skipped live"
    );
}

#[tokio::test]
async fn a_resume_from_another_epoch_is_incomplete_and_replays_the_whole_log() {
    let manager = manager(Arc::new(FakeBus::default()), vec![logged_alert(1)]);
    let from = LogPosition {
        epoch: Some(LogEpoch::new("00000000000000aa").unwrap_or_else(|e| panic!("{e}"))),
        id: LogId::new(5, 0),
    };
    let replay = manager
        .replay(&from, &everything())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        replay.frames[0].text(),
        r#"{"type":"resume","after":"5-0","epoch":"3f9a0c1e5b7d2468","replayed":1,"complete":false}"#
    );
    assert_eq!(replay.frames.len(), 2);
}

#[tokio::test]
async fn shutdown_closes_every_client_refuses_new_ones_and_drains() {
    let manager = manager(Arc::new(FakeBus::default()), Vec::new());
    let client = register(&manager).await;
    manager.shutdown();
    assert_eq!(client.queue.closed().await, CloseReason::GOING_AWAY);
    assert!(matches!(
        manager
            .register(&Grant::open(), Subscribe::everything())
            .await,
        Err(Refused::Draining)
    ));
    let drained = manager.wait_until_empty();
    tokio::pin!(drained);
    manager.unregister(client.id, free_slot()).await;
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .unwrap_or_else(|_| panic!("the worker did not drain"));
}
