//! The workload: which metrics the tool publishes and what each client subscribes to, chosen so
//! that what every client must receive is known in advance and loss can be counted exactly.
//!
//! Items are numbered across the run: message `s` of a run with batches of `B` holds items
//! `s·B … s·B+B−1`, and an item's value is its number. Without `--series` there is one series,
//! the metric [`message::METRIC_NAME`](crate::message::METRIC_NAME), and every client takes
//! everything (broadcast, as the tool always did). With `--series N` item `g` is series
//! `g·STRIDE mod N` (a stride coprime to `N`: every `N` consecutive items cover every series once,
//! and the items of one batch land in different series), named `bench.s` and the series number
//! zero-padded to a fixed width.
//!
//! With `--selectors K` the series are cut into [`BLOCKS`] blocks of consecutive numbers and
//! selector `j` takes the [`SPAN`] blocks `j, j+1, … j+SPAN−1` (mod `BLOCKS`): 10% of the series,
//! each block one glob `bench.sXY*` (its two-digit prefix; the names all have the same width, so
//! the glob takes exactly the block). Client `i` subscribes with selector `i mod K`. With
//! `--interval` clients conflate: they are owed the latest value of each series they take, not
//! every item.
//!
//! Pure arithmetic, no I/O; it must never depend on the clients or the publisher.

use std::time::Duration;

use anyhow::bail;
use fanout_client::Subscription;

use crate::message;

/// The blocks the series are cut into for selectors.
pub const BLOCKS: u64 = 100;

/// The blocks one selector takes: 10% of them.
pub const SPAN: u64 = 10;

/// The prefix of the series' metric names (`bench.s042`).
pub const SERIES_PREFIX: &str = "bench.s";

/// What is published and subscribed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `None`: the single metric `bench.load`.
    series: Option<u64>,
    /// Metrics per published message (≥ 1).
    batch: u64,
    /// Distinct selectors the clients are spread over; 0: none, every client takes everything.
    selectors: u64,
    /// Conflation: clients subscribe with this interval.
    interval: Option<Duration>,
    /// `g·stride mod series` is item `g`'s series.
    stride: u64,
}

/// What a client is owed, checked once the run is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owed {
    /// Every published item its selector takes.
    EveryItem,
    /// The latest published value of every series its selector takes (conflation).
    LatestValues,
}

impl Workload {
    /// The workload of the flags, checked: selectors need a power of ten of at least 100 series
    /// (the default is 1,000 with selectors), at most [`BLOCKS`] of them are distinct, and a
    /// batch of more than one metric needs `--series`.
    pub fn new(
        series: Option<u64>,
        batch: u64,
        selectors: u64,
        interval: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let series = match (series, selectors) {
            (None, 0) => None,
            (None, _) => Some(1_000),
            (Some(0), _) => bail!("--series must be at least 1"),
            (Some(n), _) => Some(n),
        };
        if selectors > BLOCKS {
            bail!("--selectors {selectors}: at most {BLOCKS} distinct selectors take 10% each");
        }
        if let (Some(n), true) = (series, selectors > 0) {
            if n < BLOCKS || !is_power_of_ten(n) {
                bail!("--series {n} with --selectors: a power of ten of at least 100 (100, 1000, 10000…), so that each selector's globs take exactly 10%");
            }
        }
        if batch == 0 {
            bail!("--batch must be at least 1");
        }
        if batch > 1 && series.is_none() {
            bail!("--batch {batch} needs --series (the items of a batch are different series)");
        }
        let stride = series.map_or(1, stride_for);
        Ok(Self {
            series,
            batch,
            selectors,
            interval: interval.filter(|interval| !interval.is_zero()),
            stride,
        })
    }

    /// Metrics per published message.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// The distinct selectors (0: none).
    pub fn selectors(&self) -> u64 {
        self.selectors
    }

    /// The series published (1 without `--series`).
    pub fn series(&self) -> u64 {
        self.series.unwrap_or(1)
    }

    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// What clients are owed.
    pub fn owed(&self) -> Owed {
        match self.interval {
            Some(_) => Owed::LatestValues,
            None => Owed::EveryItem,
        }
    }

    /// The selector of client number `client` (0 for everyone without selectors).
    pub fn selector_of(&self, client: usize) -> usize {
        client % self.selectors.max(1) as usize
    }

    /// The items of message `sequence`.
    pub fn items(&self, sequence: u64) -> std::ops::Range<u64> {
        sequence * self.batch..(sequence + 1) * self.batch
    }

    /// The series of item `item`.
    pub fn series_of(&self, item: u64) -> u64 {
        match self.series {
            Some(n) => (item % n) * self.stride % n,
            None => 0,
        }
    }

    /// The metric name of item `item`.
    pub fn name_of(&self, item: u64) -> String {
        match self.series {
            Some(n) => format!(
                "{SERIES_PREFIX}{:0width$}",
                self.series_of(item),
                width = digits(n - 1)
            ),
            None => message::METRIC_NAME.to_owned(),
        }
    }

    /// Whether `selector` takes item `item`.
    pub fn takes(&self, selector: usize, item: u64) -> bool {
        let Some(n) = self.series.filter(|_| self.selectors > 0) else {
            return true;
        };
        let block = self.series_of(item) / (n / BLOCKS);
        (block + BLOCKS - selector as u64 % BLOCKS) % BLOCKS < SPAN
    }

    /// The subscription of `selector`; `None` for a client that asks for nothing (broadcast).
    pub fn subscription(&self, selector: usize) -> Option<Subscription> {
        let mut subscription = None;
        if let Some(n) = self.series.filter(|_| self.selectors > 0) {
            // All names have the width of `n − 1`, the block number is their first two digits.
            let rest = digits(n - 1) - 2;
            let patterns = (0..SPAN).map(|offset| {
                let block = (selector as u64 + offset) % BLOCKS;
                format!(
                    "{SERIES_PREFIX}{block:02}{}",
                    if rest > 0 { "*" } else { "" }
                )
            });
            subscription = Some(Subscription::default().metrics(patterns));
        }
        if let Some(interval) = self.interval {
            subscription = Some(subscription.unwrap_or_default().interval(interval));
        }
        subscription
    }

    /// The items a client of `selector` is owed once `messages` were published and those numbered
    /// in `refused` (sorted) were not accepted: every item it takes, or with conflation the last
    /// item of each series it takes.
    pub fn owed_items(&self, selector: usize, messages: u64, refused: &[u64]) -> Vec<u64> {
        let accepted = (0..messages).filter(|sequence| refused.binary_search(sequence).is_err());
        let taken = accepted
            .flat_map(|sequence| self.items(sequence))
            .filter(|&item| self.takes(selector, item));
        match self.owed() {
            Owed::EveryItem => taken.collect(),
            Owed::LatestValues => {
                let mut latest: Vec<Option<u64>> = vec![None; self.series() as usize];
                for item in taken {
                    latest[self.series_of(item) as usize] = Some(item);
                }
                latest.into_iter().flatten().collect()
            }
        }
    }
}

/// Parses `--interval`: a number of milliseconds (`1000`), or a duration (`1s`, `500ms`).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(milliseconds) => Ok(Duration::from_millis(milliseconds)),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
}

fn is_power_of_ten(n: u64) -> bool {
    n.checked_ilog10().is_some_and(|log| 10u64.pow(log) == n)
}

/// Decimal digits of `n` (1 for 0).
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// The smallest stride of at least 11 coprime to `n`: consecutive items land 11 or more series
/// apart, in different blocks.
fn stride_for(n: u64) -> u64 {
    (11..).find(|&s| gcd(s, n) == 1).unwrap_or(1)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(series: Option<u64>, batch: u64, selectors: u64) -> Workload {
        Workload::new(series, batch, selectors, None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn without_series_or_selectors_it_is_the_broadcast_of_before() {
        let broadcast = workload(None, 1, 0);
        assert_eq!(broadcast.name_of(7), "bench.load");
        assert_eq!(broadcast.items(7), 7..8);
        assert!(broadcast.takes(0, 7));
        assert_eq!(broadcast.subscription(0), None);
        assert_eq!(broadcast.owed_items(0, 5, &[2]), [0, 1, 3, 4]);
    }

    #[test]
    fn every_window_of_n_items_covers_every_series_once() {
        for n in [50, 100, 1_000] {
            let w = workload(Some(n), 1, 0);
            let mut seen: Vec<u64> = (n * 3..n * 4).map(|item| w.series_of(item)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{n} series");
        }
        assert_eq!(workload(Some(50), 1, 0).name_of(1), "bench.s11");
        assert_eq!(workload(Some(1_000), 1, 0).name_of(1), "bench.s011");
    }

    #[test]
    fn each_selector_takes_a_tenth_of_the_series_and_its_globs_say_the_same() {
        let w = workload(Some(1_000), 1, 100);
        for selector in [0, 42, 95] {
            let taken: Vec<u64> = (0..1_000).filter(|&item| w.takes(selector, item)).collect();
            assert_eq!(taken.len(), 100, "selector {selector}");
            let subscription = w.subscription(selector).unwrap_or_else(|| panic!("none"));
            let query = subscription.query().unwrap_or_else(|e| panic!("{e}"));
            let patterns: Vec<String> = query
                .trim_start_matches("metrics=")
                .split(',')
                .map(|p| p.trim_end_matches('*').to_owned())
                .collect();
            assert_eq!(patterns.len(), SPAN as usize);
            for item in 0..1_000 {
                let by_glob = patterns
                    .iter()
                    .any(|p| w.name_of(item).starts_with(p.as_str()));
                assert_eq!(by_glob, w.takes(selector, item), "item {item}, {query}");
            }
        }
        // Selector 95 wraps around: blocks 95…99 and 0…4.
        let wrapped = w.subscription(95).and_then(|s| s.query().ok());
        assert!(wrapped.is_some_and(|q| q.contains("bench.s99*,bench.s00*")));
    }

    #[test]
    fn a_message_goes_to_a_tenth_of_the_selectors() {
        let w = workload(Some(1_000), 1, 100);
        for item in 0..1_000 {
            let selectors = (0..100).filter(|&j| w.takes(j, item)).count();
            assert_eq!(selectors, 10, "item {item}");
        }
    }

    #[test]
    fn a_batch_spreads_over_series_in_different_blocks() {
        let w = workload(Some(1_000), 10, 100);
        let blocks: std::collections::BTreeSet<u64> =
            w.items(3).map(|item| w.series_of(item) / 10).collect();
        assert_eq!(blocks.len(), 10);
    }

    #[test]
    fn with_100_series_a_glob_is_one_name() {
        let w = workload(Some(100), 1, 10);
        let query = w.subscription(3).and_then(|s| s.query().ok());
        assert_eq!(
            query.as_deref(),
            Some("metrics=bench.s03,bench.s04,bench.s05,bench.s06,bench.s07,bench.s08,bench.s09,bench.s10,bench.s11,bench.s12")
        );
    }

    #[test]
    fn conflating_clients_are_owed_the_last_accepted_value_of_each_series() {
        let w = Workload::new(Some(5), 1, 0, Some(Duration::from_secs(1)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.owed(), Owed::LatestValues);
        assert_eq!(
            w.subscription(0).and_then(|s| s.query().ok()).as_deref(),
            Some("interval=1000ms")
        );
        // 12 items over 5 series; item 11 (series of 11) refused: its series is owed item 6.
        let mut owed = w.owed_items(0, 12, &[11]);
        owed.sort_unstable();
        assert_eq!(owed, [6, 7, 8, 9, 10]);
    }

    #[test]
    fn flags_that_cannot_make_a_tenth_are_refused() {
        assert!(Workload::new(Some(500), 1, 10, None).is_err());
        assert!(Workload::new(Some(10), 1, 10, None).is_err());
        assert!(Workload::new(None, 1, 101, None).is_err());
        assert!(Workload::new(None, 2, 0, None).is_err());
        assert!(Workload::new(None, 0, 0, None).is_err());
        assert_eq!(workload(None, 1, 10).series(), 1_000);
    }

    #[test]
    fn an_interval_is_milliseconds_or_a_duration() {
        assert_eq!(parse_interval("1000"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("soon").is_err());
    }
}
