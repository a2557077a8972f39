//! Several load processes as one run (`--loader I/N --rendezvous DIR`): one process can hold only
//! as many clients as it may open files, so a run of 100,000 clients is split over N processes,
//! each with its own `--clients`, that meet in a directory:
//!
//! - loader I writes `ready-I` once each of its clients has connected or failed to;
//! - loader 1 waits for every `ready-*`, publishes, and writes what it published (the messages,
//!   which were refused, how long it took) to `published.json`;
//! - the others publish nothing: they wait for `published.json` while their clients receive, then
//!   drain and settle their clients against it exactly as loader 1 does against its own record.
//!
//! So every client of every loader is owed the same messages, counted by the same code, and each
//! loader's report is exact for its clients; `fanout-bench --merge` sums them (see `merge`).
//! Files are written whole (to a temporary name, then renamed), so a reader never sees half of
//! one. The directory must be fresh for each run: a `published.json` already there is refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::publisher::Published;

/// How often a waiting loader looks for the file it waits for.
const POLL: Duration = Duration::from_millis(50);

/// The record loader 1 leaves once it has published.
const PUBLISHED: &str = "published.json";

/// This process's place among the loaders of a run: number `index` (1-based) of `of`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loader {
    pub index: u32,
    pub of: u32,
}

impl Loader {
    /// Parses `--loader I/N` (1 ≤ I ≤ N).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed = text
            .split_once('/')
            .and_then(|(index, of)| Some((index.trim().parse().ok()?, of.trim().parse().ok()?)));
        match parsed {
            Some((index, of)) if (1..=of).contains(&index) => Ok(Self { index, of }),
            _ => Err(format!("{text:?}: expected I/N, 1 ≤ I ≤ N (`2/4`)")),
        }
    }

    /// Loader 1 publishes; the others only receive.
    pub fn publishes(&self) -> bool {
        self.index == 1
    }
}

impl std::fmt::Display for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.of)
    }
}

/// The directory the loaders of one run meet in.
pub struct Rendezvous {
    dir: PathBuf,
    loader: Loader,
}

impl Rendezvous {
    /// Meets in `dir` (made if missing) as `loader`; refuses a directory an earlier run left its
    /// record in.
    pub fn new(dir: &Path, loader: Loader) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot make --rendezvous {}", dir.display()))?;
        let rendezvous = Self {
            dir: dir.to_owned(),
            loader,
        };
        if rendezvous.path(PUBLISHED).exists() {
            bail!(
                "--rendezvous {} holds an earlier run's {PUBLISHED}: give each run a fresh directory",
                dir.display()
            );
        }
        Ok(rendezvous)
    }

    pub fn loader(&self) -> Loader {
        self.loader
    }

    /// Says that this loader's clients have all connected or failed to (`connected` of them in).
    pub fn ready(&self, connected: usize) -> anyhow::Result<()> {
        self.write(
            &format!("ready-{}", self.loader.index),
            &connected.to_string(),
        )
    }

    /// Waits until every loader is ready, `limit` at most.
    pub async fn all_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let names: Vec<String> = (1..=self.loader.of).map(|i| format!("ready-{i}")).collect();
        self.wait_for(limit, "every loader's clients", || {
            names
                .iter()
                .all(|name| self.path(name).exists())
                .then_some(())
        })
        .await
    }

    /// Leaves what loader 1 published for the others.
    pub fn announce(&self, published: &Published) -> anyhow::Result<()> {
        self.write(PUBLISHED, &serde_json::to_string(published)?)
    }

    /// Waits for what loader 1 published, `limit` at most.
    pub async fn published(&self, limit: Duration) -> anyhow::Result<Published> {
        let path = self.path(PUBLISHED);
        let text = self
            .wait_for(limit, "loader 1's publishing", || {
                std::fs::read_to_string(&path).ok()
            })
            .await?;
        serde_json::from_str(&text).with_context(|| format!("cannot read {}", path.display()))
    }

    async fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        mut found: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        loop {
            if let Some(value) = found() {
                return Ok(value);
            }
            if started.elapsed() > limit {
                bail!(
                    "loader {}: waited {limit:?} for {what} in {} (did a loader fail?)",
                    self.loader,
                    self.dir.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `name` whole: to a temporary name first, then renamed.
    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let temporary = self.path(&format!(".{name}.{}", std::process::id()));
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, self.path(name)))
            .with_context(|| format!("cannot write {}", self.path(name).display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loader(text: &str) -> Loader {
        Loader::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fanout-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_loader_is_i_of_n_and_the_first_publishes() {
        assert_eq!(loader("2/4"), Loader { index: 2, of: 4 });
        assert!(loader("1/3").publishes());
        assert!(!loader("3/3").publishes());
        assert_eq!(loader("3/3").to_string(), "3/3");
        for text in ["0/2", "3/2", "2", "a/b", "1/0"] {
            assert!(Loader::parse(text).is_err(), "{text}");
        }
    }

    #[tokio::test]
    async fn the_others_get_what_loader_1_published_once_all_are_ready() {
        let dir = fresh_dir("meet");
        let first = Rendezvous::new(&dir, loader("1/2")).unwrap_or_else(|e| panic!("{e}"));
        let second = Rendezvous::new(&dir, loader("2/2")).unwrap_or_else(|e| panic!("{e}"));
        first.ready(10).unwrap_or_else(|e| panic!("{e}"));
        let short = Duration::from_millis(120);
        assert!(
            first.all_ready(short).await.is_err(),
            "loader 2 is not ready"
        );
        second.ready(7).unwrap_or_else(|e| panic!("{e}"));
        first
            .all_ready(short)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            second.published(short).await.is_err(),
            "nothing published yet"
        );
        let published = Published {
            total: 5,
            accepted: 4,
            refused: vec![3],
            elapsed: Duration::from_millis(4_900),
        };
        first.announce(&published).unwrap_or_else(|e| panic!("{e}"));
        let seen = second
            .published(short)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen, published);
        let again = Rendezvous::new(&dir, loader("1/2")).err();
        assert!(again.is_some_and(|e| e.to_string().contains("fresh directory")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
