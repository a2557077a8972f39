//! Model-based property test of the alert log (the in-memory bus's), a worker's `AlertFeed` and a
//! client's resume, against a plain reference model.
//!
//! Random sequences of: real publishes (the log trims beyond its retention), outside messages on
//! the channel with arbitrary ids and epochs, the worker handling what its channel holds, the
//! worker losing its subscription (Pub/Sub drops what is published meanwhile) and catching up
//! after it, the log being lost (a new epoch), and clients resuming from any position.
//!
//! Invariants checked after every step:
//! - no alert is delivered twice, and real alerts arrive in publish order;
//! - every id a client sees is the one the log assigned to that alert; outside ids never pass;
//! - the live stream never stalls: once the worker has handled its channel, every real alert is
//!   delivered unless a gap was reported after it was published; a gap is reported only when an
//!   undelivered alert was trimmed or the log was reset;
//! - a resume returns exactly the retained alerts after the position, and says `complete` exactly
//!   when none is missing.
//!
//! Over 400 lines on purpose: one model, one system under test and one property, which read
//! best as one file.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use fanout_domain::{
    read_after, Alert, AlertFeed, AlertLog, Broadcaster, Envelope, LiveAlert, LocalDelivery,
    LogEpoch, LogId, LogPosition, Payload, Severity, WorkerId,
};
use fanout_memory::MemoryBus;
use proptest::prelude::*;

const RETENTION: usize = 4;

#[derive(Clone, Copy, Debug)]
enum EpochChoice {
    None,
    Current,
    Other,
}

#[derive(Clone, Debug)]
enum Op {
    Publish,
    /// An alert put straight onto the channel, with an arbitrary id (small numbers, so that it
    /// often names a real entry or a future one) and epoch.
    Outside {
        id: Option<(u64, u64)>,
        epoch: EpochChoice,
    },
    /// The worker's listener handles up to this many channel messages.
    Handle(usize),
    Disconnect,
    Reconnect,
    Reset,
    /// A client resumes from the k-th alert the worker delivered (modulo), or from the start.
    Resume(Option<usize>),
}

fn op() -> impl Strategy<Value = Op> {
    let epoch = prop_oneof![
        Just(EpochChoice::None),
        Just(EpochChoice::Current),
        Just(EpochChoice::Other)
    ];
    prop_oneof![
        6 => Just(Op::Publish),
        3 => (proptest::option::of((0u64..2, 0u64..12)), epoch)
            .prop_map(|(id, epoch)| Op::Outside { id, epoch }),
        5 => (1usize..6).prop_map(Op::Handle),
        1 => Just(Op::Disconnect),
        2 => Just(Op::Reconnect),
        1 => Just(Op::Reset),
        2 => proptest::option::of(0usize..20).prop_map(Op::Resume),
    ]
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Envelope>>);

impl LocalDelivery for Recorder {
    fn deliver(&self, envelope: &Envelope) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(envelope.clone());
    }
}

/// A real alert as the reference model knows it.
#[derive(Clone, Debug)]
struct Real {
    n: usize,
    id: LogId,
    epoch: LogEpoch,
    /// Which log (0, 1, … one per reset) it went into.
    generation: usize,
    published_at: usize,
}

fn message(envelope: &Envelope) -> String {
    match &envelope.payload {
        Payload::Alert(alert) => alert.message().to_owned(),
        Payload::Metrics(_) => String::new(),
    }
}

fn alert(message: String) -> Envelope {
    Envelope {
        id: None,
        epoch: None,
        origin: WorkerId::new("w").unwrap_or_else(|e| panic!("{e}")),
        seq: 0,
        published_at_us: 0,
        payload: Payload::Alert(
            Alert::new(Severity::Info, message).unwrap_or_else(|e| panic!("{e}")),
        ),
    }
}

struct World {
    bus: MemoryBus,
    feed: AlertFeed,
    delivered: Arc<Recorder>,
    channel: VecDeque<Envelope>,
    connected: bool,
    // The reference model.
    real: Vec<Real>,
    generation: usize,
    epoch: LogEpoch,
    step: usize,
    gaps_at: Vec<usize>,
    /// A reset happened since the feed last read the log.
    reset_unseen: bool,
}

impl World {
    async fn new() -> World {
        let bus = MemoryBus::with_retention(RETENTION);
        let head = bus.head().await.unwrap_or_else(|e| panic!("{e}"));
        let epoch = head.epoch.clone().unwrap_or_else(|| panic!("no epoch"));
        World {
            feed: AlertFeed::new(head),
            bus,
            delivered: Arc::new(Recorder::default()),
            channel: VecDeque::new(),
            connected: true,
            real: Vec::new(),
            generation: 0,
            epoch,
            step: 0,
            gaps_at: Vec::new(),
            reset_unseen: false,
        }
    }

    /// The real alerts the log holds now: the last `RETENTION` of the current generation.
    fn retained(&self) -> Vec<&Real> {
        let current: Vec<&Real> = self
            .real
            .iter()
            .filter(|r| r.generation == self.generation)
            .collect();
        current[current.len().saturating_sub(RETENTION)..].to_vec()
    }

    fn delivered_numbers(&self) -> HashSet<usize> {
        let delivered = self.delivered.0.lock().unwrap_or_else(|e| e.into_inner());
        delivered
            .iter()
            .filter_map(|e| message(e).strip_prefix("r").and_then(|n| n.parse().ok()))
            .collect()
    }

    /// Whether a gap report now is justified by the model.
    fn gap_is_justified(&self) -> bool {
        if self.reset_unseen {
            return true;
        }
        let delivered = self.delivered_numbers();
        let retained: HashSet<usize> = self.retained().iter().map(|r| r.n).collect();
        let start = self.feed.position().clone();
        self.real.iter().any(|r| {
            r.generation == self.generation
                && Some(&r.epoch) == start.epoch.as_ref()
                && r.id > start.id
                && !delivered.contains(&r.n)
                && !retained.contains(&r.n)
        })
    }

    /// Records what a read of the log reported; `justified` is the model's verdict taken
    /// before the read.
    fn record(&mut self, complete: bool, justified: bool) -> Result<(), TestCaseError> {
        self.reset_unseen = false;
        if !complete {
            prop_assert!(justified, "a gap was reported where nothing was missed");
            self.gaps_at.push(self.step);
        }
        Ok(())
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.step += 1;
        match op {
            Op::Publish => {
                let n = self.real.len();
                let id = self
                    .bus
                    .publish(&alert(format!("r{n}")))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| panic!("the memory bus logs every alert"));
                let live = Envelope {
                    id: Some(id),
                    epoch: Some(self.epoch.clone()),
                    ..alert(format!("r{n}"))
                };
                self.real.push(Real {
                    n,
                    id,
                    epoch: self.epoch.clone(),
                    generation: self.generation,
                    published_at: self.step,
                });
                if self.connected {
                    self.channel.push_back(live);
                }
            }
            Op::Outside { id, epoch } => {
                let envelope = Envelope {
                    id: id.map(|(ms, seq)| LogId::new(ms, seq)),
                    epoch: match epoch {
                        EpochChoice::None => None,
                        EpochChoice::Current => Some(self.epoch.clone()),
                        EpochChoice::Other => Some(LogEpoch::from_random(7)),
                    },
                    ..alert(format!("outside {}", self.step))
                };
                if self.connected {
                    self.channel.push_back(envelope);
                }
            }
            Op::Handle(count) => {
                for _ in 0..*count {
                    let Some(envelope) = self.channel.pop_front() else {
                        break;
                    };
                    // An id that names a log entry (of any log so far) may be taken for a
                    // copy of that entry and skipped; any other must not stop an outside alert.
                    let names_a_real_entry = envelope.id.is_some_and(|id| {
                        self.real.iter().any(|r| {
                            r.id == id && envelope.epoch.as_ref().is_none_or(|e| *e == r.epoch)
                        })
                    });
                    let is_outside = message(&envelope).starts_with("outside");
                    let before = self.delivered.0.lock().map(|d| d.len()).unwrap_or(0);
                    let justified = self.gap_is_justified();
                    let handled = self
                        .feed
                        .on_live(envelope, &self.bus, self.delivered.as_ref())
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if let Some(caught) = handled.caught {
                        self.record(caught.complete, justified)?;
                    }
                    if handled.alert == LiveAlert::Duplicate {
                        prop_assert!(
                            !is_outside || names_a_real_entry,
                            "an outside alert was dropped although its id names no entry"
                        );
                    }
                    if is_outside && !names_a_real_entry {
                        let delivered = self.delivered.0.lock().map(|d| d.len()).unwrap_or(0);
                        prop_assert!(delivered > before, "an outside alert was not delivered");
                    }
                }
            }
            Op::Disconnect => {
                // Pub/Sub: whatever the channel held for the lost connection is gone.
                self.connected = false;
                self.channel.clear();
            }
            Op::Reconnect => {
                if !self.connected {
                    self.connected = true;
                    let justified = self.gap_is_justified();
                    let caught = self
                        .feed
                        .catch_up(&self.bus, self.delivered.as_ref())
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    self.record(caught.complete, justified)?;
                }
            }
            Op::Reset => {
                self.bus.reset_log();
                self.generation += 1;
                self.reset_unseen = true;
                let head = self.bus.head().await.unwrap_or_else(|e| panic!("{e}"));
                self.epoch = head.epoch.unwrap_or_else(|| panic!("no epoch"));
            }
            Op::Resume(from) => self.check_resume(*from).await?,
        }
        self.check_invariants()
    }

    async fn check_resume(&self, from: Option<usize>) -> Result<(), TestCaseError> {
        let seen: Vec<Envelope> = self
            .delivered
            .0
            .lock()
            .map(|d| d.iter().filter(|e| e.id.is_some()).cloned().collect())
            .unwrap_or_default();
        let position = match from {
            Some(k) if !seen.is_empty() => {
                let alert = &seen[k % seen.len()];
                LogPosition {
                    epoch: alert.epoch.clone(),
                    id: alert.id.unwrap_or(LogId::ZERO),
                }
            }
            _ => LogPosition::START,
        };
        let read = read_after(&self.bus, &position)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let same_log = position.epoch.as_ref().is_none_or(|e| *e == self.epoch);
        let current: Vec<&Real> = self
            .real
            .iter()
            .filter(|r| r.generation == self.generation)
            .collect();
        let after = if same_log { position.id } else { LogId::ZERO };
        let retained = self.retained();
        let expected: Vec<usize> = retained
            .iter()
            .filter(|r| r.id > after)
            .map(|r| r.n)
            .collect();
        let got: Vec<usize> = read
            .alerts
            .iter()
            .filter_map(|e| message(e).strip_prefix("r").and_then(|n| n.parse().ok()))
            .collect();
        prop_assert_eq!(&got, &expected, "resume from {:?}", position);
        let trimmed_after = current
            .iter()
            .any(|r| r.id > after && !retained.iter().any(|kept| kept.n == r.n));
        let expected_complete = same_log && !trimmed_after;
        prop_assert_eq!(
            read.complete,
            expected_complete,
            "resume from {:?}",
            position
        );
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let delivered = self
            .delivered
            .0
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let mut last = None;
        for envelope in &delivered {
            let text = message(envelope);
            if let Some(n) = text.strip_prefix("r").and_then(|n| n.parse::<usize>().ok()) {
                prop_assert!(seen.insert(n), "r{} delivered twice", n);
                let real = &self.real[n];
                if envelope.id.is_none() {
                    // A live copy whose entry was trimmed before the worker read the log: it
                    // cannot be told from an outside alert, so it comes without its id, and
                    // only after the gap was reported.
                    prop_assert!(
                        self.gaps_at.iter().any(|gap| *gap >= real.published_at),
                        "r{} came without its id although nothing was trimmed",
                        n
                    );
                    continue;
                }
                prop_assert!(last < Some(n), "r{} after r{:?}: out of order", n, last);
                last = Some(n);
                prop_assert_eq!(envelope.id, Some(real.id));
                prop_assert_eq!(envelope.epoch.as_ref(), Some(&real.epoch));
            } else {
                prop_assert!(
                    envelope.id.is_none() && envelope.epoch.is_none(),
                    "an outside alert kept an id: {:?}",
                    envelope
                );
            }
        }
        // Liveness: with the channel handled, nothing real is missing without a gap report.
        if self.connected && self.channel.is_empty() {
            for real in &self.real {
                if !seen.contains(&real.n) {
                    prop_assert!(
                        self.gaps_at.iter().any(|gap| *gap > real.published_at),
                        "r{} was never delivered and no gap was reported",
                        real.n
                    );
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_alert_log_the_feed_and_resume_keep_their_promises(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            let mut world = World::new().await;
            for op in &ops {
                world.apply(op).await?;
            }
            // Handle everything left: the stream must not have stalled.
            world.apply(&Op::Handle(usize::MAX)).await?;
            Ok::<(), TestCaseError>(())
        })?;
    }
}
