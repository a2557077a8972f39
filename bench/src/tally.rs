//! What one client saw of the bench messages, and the sum over all clients: counts, duplicates
//! (by sequence number) and end-to-end latency.
//!
//! Plain arithmetic, no I/O: the WebSocket client feeds it what it reads, so the client can be
//! replaced without touching how deliveries are counted.

use hdrhistogram::Histogram;

use crate::message::Sighting;

/// Latencies are kept in microseconds, 1 µs to 60 s, with two significant digits.
pub fn new_histogram() -> Histogram<u32> {
    // The bounds are constants that satisfy `new_with_bounds`' rules (low ≥ 1, high ≥ 2 × low,
    // sigfig ≤ 5), so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 2)
        .unwrap_or_else(|e| unreachable!("valid bounds: {e}"))
}

/// What one client, or all of them, saw.
pub struct Tally {
    pub received: u64,
    pub duplicates: u64,
    pub latency_us: Histogram<u32>,
    /// One bit per sequence number seen (bench messages are numbered from 0).
    seen: Vec<u64>,
}

/// What [`Tally::record`] made of a sighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    First,
    Duplicate,
}

impl Tally {
    pub fn new() -> Self {
        Self {
            received: 0,
            duplicates: 0,
            latency_us: new_histogram(),
            seen: Vec::new(),
        }
    }

    /// Counts a bench message received at `now_us`: once per sequence number, later copies as
    /// duplicates (without latency).
    pub fn record(&mut self, sighting: Sighting, now_us: u64) -> Recorded {
        let (word, bit) = ((sighting.sequence / 64) as usize, sighting.sequence % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return Recorded::Duplicate;
        }
        self.seen[word] |= 1 << bit;
        self.received += 1;
        // Out of range only past 60 s; such a sample is dropped rather than clamped.
        let _ = self
            .latency_us
            .record(now_us.saturating_sub(sighting.published_at_us).max(1));
        Recorded::First
    }

    /// Adds another client's counts (each client de-duplicates its own stream).
    pub fn add(&mut self, other: &Tally) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        // Same bounds on both sides (`new_histogram`), so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(sequence: u64, published_at_us: u64) -> Sighting {
        Sighting {
            sequence,
            published_at_us,
        }
    }

    #[test]
    fn a_second_copy_of_a_sequence_number_is_a_duplicate() {
        let mut tally = Tally::new();
        assert_eq!(tally.record(sighting(0, 1_000), 1_500), Recorded::First);
        assert_eq!(tally.record(sighting(130, 1_000), 1_500), Recorded::First);
        assert_eq!(
            tally.record(sighting(130, 1_000), 9_000),
            Recorded::Duplicate
        );
        assert_eq!((tally.received, tally.duplicates), (2, 1));
        assert_eq!(tally.latency_us.len(), 2, "duplicates carry no latency");
    }

    #[test]
    fn latency_is_from_publish_to_receipt_and_never_below_one_microsecond() {
        let mut tally = Tally::new();
        tally.record(sighting(1, 10_000), 12_000);
        tally.record(sighting(2, 10_000), 9_000); // clocks of two processes: never negative
                                                  // Two significant digits: compare within the histogram's resolution.
        assert!(tally.latency_us.equivalent(tally.latency_us.max(), 2_000));
        assert_eq!(tally.latency_us.min(), 1);
    }

    #[test]
    fn adding_tallies_sums_counts_and_merges_latencies() {
        let (mut one, mut two) = (Tally::new(), Tally::new());
        one.record(sighting(1, 0), 1_000);
        two.record(sighting(1, 0), 3_000);
        two.record(sighting(1, 0), 3_000);
        let mut total = Tally::new();
        total.add(&one);
        total.add(&two);
        assert_eq!((total.received, total.duplicates), (2, 1));
        assert_eq!(total.latency_us.len(), 2);
        assert!(total.latency_us.equivalent(total.latency_us.max(), 3_000));
        assert!(total.latency_us.equivalent(total.latency_us.min(), 1_000));
    }
}
