//! `--merge`: the report of a run split over loaders (`--loader`, see `rendezvous`), made of
//! theirs. Each loader settled its own clients against the same published record, so the run's
//! counts are their sums, each of its loaders' tallies added as one client's to another's
//! ([`Tally::add`]); latencies are their histograms merged (not a maximum of their p99s), and
//! the rates and quantiles are worked out by the same [`Report::absorb`] as one process's.
//! Every loader of the run must be there, once, and agree on the workload and what was published.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context};

use crate::rendezvous::Loader;
use crate::report::{ForMerge, Latency, Report};
use crate::tally::{histogram_from_pairs, new_histogram, Tally};

/// Reads the loaders' reports from `paths`.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<Report>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a fanout-bench report", path.display()))
        })
        .collect()
}

/// The run's report of its loaders' `parts`.
pub fn merge(parts: &[Report]) -> anyhow::Result<Report> {
    let (first, rest) = parts.split_first().context("no report to merge")?;
    check_loaders(parts)?;
    for part in rest {
        ensure!(
            same_run(first, part),
            "loader {} and loader {} did not run the same workload or did not see the same publishing",
            label(first),
            label(part)
        );
    }
    let for_merge: Vec<&ForMerge> = parts.iter().filter_map(|p| p.for_merge.as_ref()).collect();
    let mut report = Report {
        clients: parts.iter().map(|p| p.clients).sum(),
        connected: parts.iter().map(|p| p.connected).sum(),
        still_connected: parts.iter().map(|p| p.still_connected).sum(),
        selectors: first.selectors,
        series: first.series,
        batch: first.batch,
        interval_ms: first.interval_ms,
        owed: first.owed.clone(),
        rate: first.rate,
        duration_seconds: first.duration_seconds,
        published: first.published,
        refused: first.refused,
        publish_seconds: first.publish_seconds,
        loader: Some(format!("{} merged", parts.len())),
        ..Report::default()
    };
    let started = for_merge.iter().map(|m| m.connect_started_unix_us).min();
    let ended = for_merge.iter().map(|m| m.connect_ended_unix_us).max();
    if let (Some(started), Some(ended)) = (started, ended) {
        report.connect_seconds = ended.saturating_sub(started) as f64 / 1e6;
    }
    let receipts = for_merge.iter().filter_map(|m| m.receipts_unix_us);
    let first_receipt = receipts.clone().map(|(first, _)| first).min();
    let last_receipt = receipts.map(|(_, last)| last).max();
    if let (Some(first), Some(last)) = (first_receipt, last_receipt) {
        report.first_to_last = Duration::from_micros(last.saturating_sub(first));
    }
    let mut total = Tally::new();
    let mut connect_latency_us = new_histogram();
    for part in parts {
        let merge = part.for_merge.as_ref().context("checked above")?;
        total.add(&tally_of(part, merge)?);
        // Same bounds on both sides (`new_histogram`), so adding cannot fail.
        let _ = connect_latency_us.add(histogram_from_pairs(&merge.connect_latency_us)?);
    }
    report.absorb(&total);
    report.connect_latency_ms = Latency::of(&connect_latency_us);
    Ok(report)
}

/// Every part a loader's, with what merging needs, and the loaders 1 to N each once.
fn check_loaders(parts: &[Report]) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    for part in parts {
        let Some(loader) = part.loader.as_deref().and_then(|l| Loader::parse(l).ok()) else {
            bail!("a report without `loader` I/N: run each part with --loader");
        };
        ensure!(
            part.for_merge.is_some(),
            "loader {loader}'s report has no `for_merge`"
        );
        ensure!(
            loader.of as usize == parts.len(),
            "loader {loader}: {} reports given, for a run of {}",
            parts.len(),
            loader.of
        );
        ensure!(!seen.contains(&loader.index), "loader {loader} given twice");
        seen.push(loader.index);
    }
    Ok(())
}

fn same_run(one: &Report, other: &Report) -> bool {
    (
        one.selectors,
        one.series,
        one.batch,
        one.interval_ms,
        &one.owed,
        one.rate,
        one.published,
        one.refused,
    ) == (
        other.selectors,
        other.series,
        other.batch,
        other.interval_ms,
        &other.owed,
        other.rate,
        other.published,
        other.refused,
    ) && one.duration_seconds == other.duration_seconds
        && one.publish_seconds == other.publish_seconds
}

fn label(report: &Report) -> &str {
    report.loader.as_deref().unwrap_or("?")
}

/// A loader's counts and latencies as one tally (its clients' sum, settled).
fn tally_of(part: &Report, merge: &ForMerge) -> anyhow::Result<Tally> {
    let mut tally = Tally::new();
    tally.frames = part.frames;
    tally.received = part.received;
    tally.unexpected = part.unexpected;
    tally.duplicates = part.duplicated;
    tally.expected = part.expected;
    tally.lost = part.lost;
    tally.latency_us = histogram_from_pairs(&merge.latency_us)
        .with_context(|| format!("loader {}'s latencies", label(part)))?;
    tally.arrival_latency_us = histogram_from_pairs(&merge.arrival_latency_us)
        .with_context(|| format!("loader {}'s arrival latencies", label(part)))?;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::{histogram_pairs, Taken};

    /// Loader `loader` of 2: `clients` clients that each got `got` of 10 published items, each
    /// `latency_us` late, received from `from_us` on.
    fn part(loader: &str, clients: usize, got: u64, latency_us: u64, from_us: u64) -> Report {
        let mut total = Tally::new();
        for _ in 0..clients {
            let mut tally = Tally::new();
            for item in 0..got {
                tally.frame();
                tally.record(item, Taken::Yes, 0, latency_us);
                tally.arrived(0, latency_us / 2);
            }
            tally.record(0, Taken::Yes, 0, 1);
            tally.settle(&(0..10).collect::<Vec<_>>(), 10);
            total.add(&tally);
        }
        let mut connect = new_histogram();
        let _ = connect.record(latency_us * 2);
        let mut report = Report {
            clients,
            connected: clients,
            still_connected: clients,
            owed: "every item".to_owned(),
            rate: 10,
            published: 10,
            publish_seconds: 1.0,
            loader: Some(loader.to_owned()),
            for_merge: Some(ForMerge {
                connect_started_unix_us: from_us - 3_000_000,
                connect_ended_unix_us: from_us - 1_000_000,
                receipts_unix_us: Some((from_us, from_us + 900_000)),
                latency_us: histogram_pairs(&total.latency_us),
                arrival_latency_us: histogram_pairs(&total.arrival_latency_us),
                connect_latency_us: histogram_pairs(&connect),
            }),
            ..Report::default()
        };
        report.absorb(&total);
        report
    }

    #[test]
    fn counts_add_up_and_latencies_merge_as_one_histogram() {
        let one = part("1/2", 3, 10, 1_000, 10_000_000);
        let two = part("2/2", 1, 8, 50_000, 10_500_000);
        let merged = merge(&[two, one]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((merged.clients, merged.connected), (4, 4));
        assert_eq!((merged.expected, merged.received), (40, 38));
        assert_eq!((merged.lost, merged.duplicated, merged.frames), (2, 4, 38));
        // 30 samples at 1 ms, 8 at 50 ms: p50 is loader 1's, p99 loader 2's.
        assert!((merged.latency_ms.p50 - 1.0).abs() < 0.01);
        assert!((merged.latency_ms.p99 - 50.0).abs() < 0.5);
        assert!((merged.arrival_latency_ms.p50 - 0.5).abs() < 0.01);
        assert!((merged.arrival_latency_ms.p99 - 25.0).abs() < 0.25);
        assert_eq!(merged.arrival_stamped, 38);
        // From loader 1's first connect to loader 2's last; receipts over 1.4 s.
        assert!((merged.connect_seconds - 2.5).abs() < 1e-9);
        assert!((merged.deliveries_per_second - 38.0 / 1.4).abs() < 1e-9);
        assert!((merged.connect_latency_ms.max - 100.0).abs() < 1.0);
        assert_eq!(merged.loader.as_deref(), Some("2 merged"));
    }

    #[test]
    fn a_missing_or_doubled_loader_or_another_run_is_refused() {
        let one = || part("1/2", 1, 10, 1_000, 10_000_000);
        let error = |parts: &[Report]| merge(parts).err().map(|e| e.to_string());
        assert!(error(&[one()]).is_some_and(|e| e.contains("1 reports given, for a run of 2")));
        assert!(error(&[one(), one()]).is_some_and(|e| e.contains("given twice")));
        let mut other = part("2/2", 1, 10, 1_000, 10_000_000);
        other.published = 11;
        assert!(error(&[one(), other]).is_some_and(|e| e.contains("same publishing")));
        let mut plain = part("2/2", 1, 10, 1_000, 10_000_000);
        plain.loader = None;
        assert!(error(&[one(), plain]).is_some_and(|e| e.contains("--loader")));
    }

    #[test]
    fn a_loaders_report_reads_back_from_its_json() {
        let report = part("1/1", 2, 10, 2_000, 10_000_000);
        let json = serde_json::to_string(&report).unwrap_or_else(|e| panic!("{e}"));
        let back: Report = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        let merged = merge(&[back]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (merged.received, merged.lost),
            (report.received, report.lost)
        );
        assert_eq!(merged.latency_ms, report.latency_ms);
    }
}
