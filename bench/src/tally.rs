//! What one client saw of the bench items, and the sum over all clients: counts, items its
//! selector does not take, duplicates (by item number), end-to-end latency, and — once the run is
//! over and what it was owed is known — how many of those it missed.
//!
//! Plain arithmetic, no I/O: the WebSocket client feeds it what it reads, so the client can be
//! replaced without touching how deliveries are counted.

use hdrhistogram::Histogram;

/// Latencies are kept in microseconds, 1 µs to 60 s, with two significant digits.
pub fn new_histogram() -> Histogram<u32> {
    // The bounds are constants that satisfy `new_with_bounds`' rules (low ≥ 1, high ≥ 2 × low,
    // sigfig ≤ 5), so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 2)
        .unwrap_or_else(|e| unreachable!("valid bounds: {e}"))
}

/// A histogram as `[value, count]` pairs, one per recorded bucket (its highest equivalent value):
/// how a loader's report carries its latencies to `--merge`, in plain JSON.
pub fn histogram_pairs(histogram: &Histogram<u32>) -> Vec<[u64; 2]> {
    histogram
        .iter_recorded()
        .map(|bucket| [bucket.value_iterated_to(), bucket.count_at_value().into()])
        .collect()
}

/// The histogram of [`histogram_pairs`]: each pair's value falls in the bucket it came from, so
/// quantiles and the maximum are those of the original.
pub fn histogram_from_pairs(pairs: &[[u64; 2]]) -> anyhow::Result<Histogram<u32>> {
    let mut histogram = new_histogram();
    for &[value, count] in pairs {
        let count = u32::try_from(count)
            .map_err(|_| anyhow::anyhow!("a bucket of {count} samples is over a u32"))?;
        histogram
            .record_n(value, count)
            .map_err(|e| anyhow::anyhow!("latency {value} µs: {e}"))?;
    }
    Ok(histogram)
}

/// Item numbers from here on are no run's (one client at 100 messages a second of 10 items
/// numbers 60,000 a minute): a frame's item past it is counted unexpected, not tracked.
const MAX_ITEM: u64 = 1 << 24;

/// What one client, or all of them, saw.
pub struct Tally {
    /// Frames holding at least one bench item.
    pub frames: u64,
    /// Items its selector takes, each counted once.
    pub received: u64,
    /// Items its selector does not take (the server should not have sent them).
    pub unexpected: u64,
    pub duplicates: u64,
    /// What it was owed ([`Tally::settle`]).
    pub expected: u64,
    /// What it was owed and never got.
    pub lost: u64,
    pub latency_us: Histogram<u32>,
    /// Latency to the kernel's arrival time at the client's socket, µs ([`Tally::arrived`]):
    /// the server's part of `latency_us`, without the tool's own wait to read.
    pub arrival_latency_us: Histogram<u32>,
    /// One bit per item number seen (items are numbered from 0).
    seen: Vec<u64>,
}

/// What [`Tally::record`] made of an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    First,
    Duplicate,
    /// Not the client's: its selector does not take it.
    NotTaken,
}

/// Whether the client's selector takes an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    Yes,
    No,
}

impl Tally {
    pub fn new() -> Self {
        Self {
            frames: 0,
            received: 0,
            unexpected: 0,
            duplicates: 0,
            expected: 0,
            lost: 0,
            latency_us: new_histogram(),
            arrival_latency_us: new_histogram(),
            seen: Vec::new(),
        }
    }

    /// Counts a frame that held bench items.
    pub fn frame(&mut self) {
        self.frames += 1;
    }

    /// Counts item `item`, published at `published_at_us`, received at `now_us`: once per item
    /// number, later copies as duplicates (without latency); an item the selector does not take
    /// only as unexpected.
    pub fn record(
        &mut self,
        item: u64,
        taken: Taken,
        published_at_us: u64,
        now_us: u64,
    ) -> Recorded {
        // Past any run's numbering (an outside publisher's value): never owed, and marking it
        // would grow this client's bitmap to the number's size.
        if taken == Taken::No || item >= MAX_ITEM {
            self.unexpected += 1;
            return Recorded::NotTaken;
        }
        let (word, bit) = ((item / 64) as usize, item % 64);
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
            .record(now_us.saturating_sub(published_at_us).max(1));
        Recorded::First
    }

    /// Records when an item [`Tally::record`] counted as `First` reached the client's socket
    /// (Unix µs, the kernel's stamp).
    pub fn arrived(&mut self, published_at_us: u64, arrived_us: u64) {
        // Out of range only past 60 s; such a sample is dropped rather than clamped.
        let _ = self
            .arrival_latency_us
            .record(arrived_us.saturating_sub(published_at_us).max(1));
    }

    fn saw(&self, item: u64) -> bool {
        self.seen
            .get((item / 64) as usize)
            .is_some_and(|word| word & (1 << (item % 64)) != 0)
    }

    /// Sets what this client was owed, and counts what of it never arrived. `published`: the
    /// items the tool published are numbered below it; one it received past that is another
    /// publisher's (on the same names) and moves from `received` to `unexpected`.
    pub fn settle(&mut self, owed: &[u64], published: u64) {
        self.expected = owed.len() as u64;
        self.lost = owed.iter().filter(|&&item| !self.saw(item)).count() as u64;
        let foreign: u64 = self
            .seen
            .iter()
            .enumerate()
            .map(|(word, bits)| {
                let first = word as u64 * 64;
                let kept = published.saturating_sub(first).min(64);
                let mask = if kept == 64 { 0 } else { u64::MAX << kept };
                u64::from((bits & mask).count_ones())
            })
            .sum();
        self.received -= foreign.min(self.received);
        self.unexpected += foreign;
    }

    /// Adds another client's counts (each client de-duplicates and settles its own stream).
    pub fn add(&mut self, other: &Tally) {
        self.frames += other.frames;
        self.received += other.received;
        self.unexpected += other.unexpected;
        self.duplicates += other.duplicates;
        self.expected += other.expected;
        self.lost += other.lost;
        // Same bounds on both sides (`new_histogram`), so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.arrival_latency_us.add(&other.arrival_latency_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_of_an_item_is_a_duplicate() {
        let mut tally = Tally::new();
        assert_eq!(tally.record(0, Taken::Yes, 1_000, 1_500), Recorded::First);
        assert_eq!(tally.record(130, Taken::Yes, 1_000, 1_500), Recorded::First);
        assert_eq!(
            tally.record(130, Taken::Yes, 1_000, 9_000),
            Recorded::Duplicate
        );
        assert_eq!((tally.received, tally.duplicates), (2, 1));
        assert_eq!(tally.latency_us.len(), 2, "duplicates carry no latency");
    }

    #[test]
    fn an_item_the_selector_does_not_take_is_unexpected_and_not_received() {
        let mut tally = Tally::new();
        assert_eq!(tally.record(5, Taken::No, 0, 1), Recorded::NotTaken);
        assert_eq!((tally.received, tally.unexpected), (0, 1));
        tally.settle(&[5], 10);
        assert_eq!(
            tally.lost, 1,
            "an unexpected item does not pay for an owed one"
        );
    }

    #[test]
    fn loss_is_what_was_owed_and_never_seen() {
        let mut tally = Tally::new();
        for item in [1, 2, 3, 200] {
            tally.record(item, Taken::Yes, 0, 1);
        }
        tally.settle(&[1, 3, 4, 199, 200, 100_000], 100_001);
        assert_eq!((tally.expected, tally.lost), (6, 3));
    }

    #[test]
    fn an_item_past_what_the_tool_published_is_unexpected_not_received() {
        let mut tally = Tally::new();
        // The tool published items 0..100; 130 and 200_000 came from another publisher, 1 << 40
        // too (past any run: not even tracked).
        for item in [1, 2, 99, 130, 200_000, 1 << 40] {
            tally.record(item, Taken::Yes, 0, 1);
        }
        assert_eq!(tally.unexpected, 1, "1 << 40 at once");
        tally.settle(&[1, 2, 3, 99], 100);
        assert_eq!((tally.received, tally.unexpected, tally.lost), (3, 3, 1));
    }

    #[test]
    fn latency_is_from_publish_to_receipt_and_never_below_one_microsecond() {
        let mut tally = Tally::new();
        tally.record(1, Taken::Yes, 10_000, 12_000);
        // Clocks of two processes: never negative.
        tally.record(2, Taken::Yes, 10_000, 9_000);
        // Two significant digits: compare within the histogram's resolution.
        assert!(tally.latency_us.equivalent(tally.latency_us.max(), 2_000));
        assert_eq!(tally.latency_us.min(), 1);
    }

    #[test]
    fn a_histogram_survives_its_pairs() {
        let mut histogram = new_histogram();
        for (value, count) in [(1, 3), (950, 1), (12_345, 40), (59_000_000, 2)] {
            histogram
                .record_n(value, count)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let pairs = histogram_pairs(&histogram);
        assert_eq!(pairs.len(), 4);
        let back = histogram_from_pairs(&pairs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.len(), histogram.len());
        assert_eq!(back.max(), histogram.max());
        for quantile in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                back.value_at_quantile(quantile),
                histogram.value_at_quantile(quantile),
                "q {quantile}"
            );
        }
        assert!(histogram_from_pairs(&[[1, u64::from(u32::MAX) + 1]]).is_err());
    }

    #[test]
    fn adding_tallies_sums_counts_and_merges_latencies() {
        let (mut one, mut two) = (Tally::new(), Tally::new());
        one.record(1, Taken::Yes, 0, 1_000);
        one.settle(&[1, 2], 3);
        two.frame();
        two.record(1, Taken::Yes, 0, 3_000);
        two.record(1, Taken::Yes, 0, 3_000);
        two.settle(&[1], 3);
        let mut total = Tally::new();
        total.add(&one);
        total.add(&two);
        assert_eq!((total.received, total.duplicates, total.frames), (2, 1, 1));
        assert_eq!((total.expected, total.lost), (3, 1));
        assert_eq!(total.latency_us.len(), 2);
        assert!(total.latency_us.equivalent(total.latency_us.max(), 3_000));
        assert!(total.latency_us.equivalent(total.latency_us.min(), 1_000));
    }
}
