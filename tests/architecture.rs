//! The rules of the house, checked over `cargo metadata`: the dependency direction is the
//! architecture (docs/ARCHITECTURE.md), and nothing else enforces it.
//!
//! - `fanout-domain` depends on its basic crates only (serde, serde_json, async-trait,
//!   thiserror): no I/O, no runtime, nothing of ours;
//! - an adapter depends on no other adapter (if it needs one, a port is missing);
//! - the server binary (`fanout-app`, normal dependencies, transitively) carries none of the load
//!   tool's or the client's crates, none of the OpenTelemetry exporter's (the tests' OTLP sender:
//!   the server only receives OTLP, through opentelemetry-proto's types), and no WebSocket client
//!   of its own (tokio-tungstenite only through axum).
//!
//! Each rule is also checked against a made-up workspace that breaks it, so the test cannot pass
//! by checking nothing.
//!
//! And two rules of the source: a file over 400 lines says why at its top (a line
//! `Over 400 lines on purpose: <reason>` among its first 30), checked over every Rust, HTML and
//! JavaScript file of the workspace; and `unsafe` code is allowed (the workspace denies it) in
//! the files of [`UNSAFE_ALLOWED`] only, each of which says at its top why it is sound.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const DOMAIN: &str = "fanout-domain";
const DOMAIN_MAY_USE: [&str; 4] = ["serde", "serde_json", "async-trait", "thiserror"];
const SERVER: &str = "fanout-app";
/// Crates the server binary must not carry: the load tool's, the client's, and the OpenTelemetry
/// exporter the OTLP tests send with (and its HTTP client).
const NOT_IN_SERVER: [&str; 6] = [
    "reqwest",
    "hdrhistogram",
    "fanout-bench",
    "fanout-client",
    "opentelemetry-otlp",
    "opentelemetry-http",
];

/// The workspace as `cargo metadata` sees it, resolved for normal (not dev, not build) use.
struct Workspace {
    /// Package id → (name, manifest path).
    packages: HashMap<String, (String, String)>,
    members: BTreeSet<String>,
    /// Package id → ids of its normal dependencies.
    normal_deps: HashMap<String, Vec<String>>,
}

impl Workspace {
    fn from_metadata(metadata: &Value) -> Workspace {
        let packages = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let id = p["id"].as_str().unwrap_or_default().to_owned();
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                let manifest = p["manifest_path"].as_str().unwrap_or_default().to_owned();
                (id, (name, manifest))
            })
            .collect();
        let members = metadata["workspace_members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect();
        let normal_deps = metadata["resolve"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|node| {
                let deps = node["deps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|dep| {
                        dep["dep_kinds"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|kind| kind["kind"].is_null())
                    })
                    .filter_map(|dep| dep["pkg"].as_str().map(str::to_owned))
                    .collect();
                (node["id"].as_str().unwrap_or_default().to_owned(), deps)
            })
            .collect();
        Workspace {
            packages,
            members,
            normal_deps,
        }
    }

    fn name(&self, id: &str) -> &str {
        self.packages.get(id).map_or("?", |(name, _)| name.as_str())
    }

    fn member(&self, name: &str) -> Option<&String> {
        self.members.iter().find(|id| self.name(id) == name)
    }

    fn is_adapter(&self, id: &str) -> bool {
        self.packages
            .get(id)
            .is_some_and(|(_, manifest)| manifest.contains("/adapters/"))
    }

    fn direct(&self, id: &str) -> Vec<&str> {
        self.normal_deps
            .get(id)
            .into_iter()
            .flatten()
            .map(|dep| self.name(dep))
            .collect()
    }

    /// Every package `id` needs at run time, with the chain that pulls it in.
    fn transitive(&self, id: &str) -> HashMap<String, String> {
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut queue = VecDeque::from([(id.to_owned(), self.name(id).to_owned())]);
        while let Some((current, chain)) = queue.pop_front() {
            for dep in self.normal_deps.get(&current).into_iter().flatten() {
                if !seen.contains_key(dep) {
                    let path = format!("{chain} → {}", self.name(dep));
                    seen.insert(dep.clone(), path.clone());
                    queue.push_back((dep.clone(), path));
                }
            }
        }
        seen
    }

    /// Every rule broken, one line each.
    fn violations(&self) -> Vec<String> {
        let mut broken = Vec::new();
        match self.member(DOMAIN) {
            None => broken.push(format!("{DOMAIN} is not a workspace member")),
            Some(domain) => {
                for dep in self.direct(domain) {
                    if !DOMAIN_MAY_USE.contains(&dep) {
                        broken.push(format!("{DOMAIN} depends on {dep}"));
                    }
                }
            }
        }
        for adapter in self.members.iter().filter(|id| self.is_adapter(id)) {
            for dep in self.normal_deps.get(adapter).into_iter().flatten() {
                if self.is_adapter(dep) {
                    broken.push(format!(
                        "adapter {} depends on adapter {}",
                        self.name(adapter),
                        self.name(dep)
                    ));
                }
            }
        }
        match self.member(SERVER) {
            None => broken.push(format!("{SERVER} is not a workspace member")),
            Some(server) => {
                for (dep, chain) in self.transitive(server) {
                    if NOT_IN_SERVER.contains(&self.name(&dep)) {
                        broken.push(format!("the server carries {}: {chain}", self.name(&dep)));
                    }
                }
                if self.direct(server).contains(&"tokio-tungstenite") {
                    broken.push(format!(
                        "{SERVER} depends on tokio-tungstenite itself (only axum's WebSocket support may)"
                    ));
                }
            }
        }
        broken.sort();
        broken
    }
}

fn cargo_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
            manifest,
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo metadata: {e}"));
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("cargo metadata: {e}"))
}

#[test]
fn the_workspace_keeps_the_dependency_rules() {
    let workspace = Workspace::from_metadata(&cargo_metadata());
    assert!(
        workspace.member("fanout-redis").is_some() && workspace.member("fanout-ws").is_some(),
        "the metadata lists the adapters"
    );
    let broken = workspace.violations();
    assert!(
        broken.is_empty(),
        "the rules of the house are broken:\n{}",
        broken.join("\n")
    );
}

/// A made-up workspace: `extra` adds (from, to) normal dependencies to a clean one.
fn made_up(extra: &[(&str, &str)]) -> Workspace {
    let package = |name: &str, dir: &str| json!({"id": name, "name": name, "manifest_path": format!("/w/{dir}/Cargo.toml")});
    let packages = vec![
        package("fanout-domain", "domain"),
        package("fanout-redis", "adapters/redis"),
        package("fanout-ws", "adapters/ws"),
        package("fanout-app", "app"),
        package("fanout-bench", "bench"),
        package("serde", "registry/serde"),
        package("tokio", "registry/tokio"),
        package("axum", "registry/axum"),
        package("tokio-tungstenite", "registry/tokio-tungstenite"),
        package("reqwest", "registry/reqwest"),
        package("fanout-http", "adapters/http"),
        package("opentelemetry-proto", "registry/opentelemetry-proto"),
        package("opentelemetry-otlp", "registry/opentelemetry-otlp"),
    ];
    let mut edges = vec![
        ("fanout-domain", "serde"),
        ("fanout-redis", "fanout-domain"),
        ("fanout-ws", "fanout-domain"),
        ("fanout-ws", "axum"),
        ("axum", "tokio-tungstenite"),
        ("fanout-app", "fanout-redis"),
        ("fanout-app", "fanout-ws"),
        ("fanout-bench", "reqwest"),
        ("fanout-http", "fanout-domain"),
        ("fanout-http", "opentelemetry-proto"),
        ("fanout-app", "fanout-http"),
    ];
    edges.extend_from_slice(extra);
    let nodes: Vec<Value> = packages
        .iter()
        .map(|p| {
            let id = p["id"].as_str().unwrap_or_default();
            let deps: Vec<Value> = edges
                .iter()
                .filter(|(from, _)| *from == id)
                .map(|(_, to)| json!({"pkg": to, "dep_kinds": [{"kind": null}]}))
                .collect();
            json!({"id": id, "deps": deps})
        })
        .collect();
    Workspace::from_metadata(&json!({
        "packages": packages,
        "workspace_members": ["fanout-domain", "fanout-redis", "fanout-ws", "fanout-http", "fanout-app", "fanout-bench"],
        "resolve": {"nodes": nodes},
    }))
}

#[test]
fn each_rule_catches_the_arrow_that_breaks_it() {
    assert_eq!(made_up(&[]).violations(), Vec::<String>::new());
    let cases = [
        (("fanout-domain", "tokio"), "fanout-domain depends on tokio"),
        (
            ("fanout-ws", "fanout-redis"),
            "adapter fanout-ws depends on adapter fanout-redis",
        ),
        (
            ("fanout-redis", "reqwest"),
            "the server carries reqwest: fanout-app → fanout-redis → reqwest",
        ),
        (
            ("fanout-app", "fanout-bench"),
            "the server carries fanout-bench: fanout-app → fanout-bench",
        ),
        (
            ("fanout-http", "opentelemetry-otlp"),
            "the server carries opentelemetry-otlp: fanout-app → fanout-http → opentelemetry-otlp",
        ),
        (
            ("fanout-app", "tokio-tungstenite"),
            "fanout-app depends on tokio-tungstenite itself (only axum's WebSocket support may)",
        ),
    ];
    for (edge, expected) in cases {
        let broken = made_up(&[edge]).violations();
        assert!(
            broken.iter().any(|line| line == expected),
            "{edge:?}: expected {expected:?}, got {broken:?}"
        );
    }
}

/// Most lines a source file may have without a reason at its top.
const LONG_FILE: usize = 400;
const LONG_FILE_REASON: &str = "Over 400 lines on purpose: ";

/// Whether `text` is over [`LONG_FILE`] lines without a reason among its first 30 lines.
fn long_without_reason(text: &str) -> bool {
    let gives_reason = |line: &str| {
        line.split_once(LONG_FILE_REASON)
            .is_some_and(|(_, reason)| reason.trim_end_matches("-->").trim().len() > 3)
    };
    text.lines().count() > LONG_FILE && !text.lines().take(30).any(gives_reason)
}

/// Every `.rs`, `.html` and `.js` file under `dir`, skipping build output and hidden folders.
fn source_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" || name.starts_with("target-") {
            continue;
        }
        if path.is_dir() {
            source_files(&path, found);
        } else if ["rs", "html", "js"]
            .iter()
            .any(|ext| path.extension().is_some_and(|e| e == *ext))
        {
            found.push(path);
        }
    }
}

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's source files whose text `breaks` the rule, as paths from the root, in the
/// walk's order; checks the walk found the sources at all.
fn sources_where(breaks: impl Fn(&str) -> bool) -> Vec<String> {
    let root = root();
    let mut files = Vec::new();
    for dir in ["domain", "adapters", "app", "client", "bench", "tests"] {
        source_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 50,
        "the walk found the workspace's sources ({} files)",
        files.len()
    );
    files
        .iter()
        .filter(|path| breaks(&std::fs::read_to_string(path).unwrap_or_default()))
        .map(|path| {
            path.strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn every_long_source_file_says_why_at_its_top() {
    let unexplained = sources_where(long_without_reason);
    assert!(
        unexplained.is_empty(),
        "over {LONG_FILE} lines without a line `{LONG_FILE_REASON}<reason>` among the first 30: \
         {unexplained:?}"
    );
}

/// The only files that may allow `unsafe` code: the fan-out's `io_uring` submissions.
const UNSAFE_ALLOWED: [&str; 1] = ["adapters/ws/src/ring.rs"];

/// Whether `text` allows `unsafe` code (the attribute, spelled so that this file does not).
fn allows_unsafe(text: &str) -> bool {
    text.contains(concat!("allow(", "unsafe_code)"))
}

#[test]
fn unsafe_code_is_allowed_in_the_listed_files_only() {
    let allowing = sources_where(allows_unsafe);
    assert_eq!(
        allowing, UNSAFE_ALLOWED,
        "`unsafe` allowed outside the list (or a listed file no longer needs it)"
    );
    for file in UNSAFE_ALLOWED {
        let text = std::fs::read_to_string(root().join(file)).unwrap_or_default();
        assert!(
            text.lines()
                .take(30)
                .any(|line| line.contains("why it is sound")),
            "{file} does not say at its top why its `unsafe` code is sound"
        );
        assert_eq!(
            text.matches("unsafe {").count(),
            text.matches("// SAFETY:").count(),
            "{file}: an `unsafe` block without its `// SAFETY:` comment"
        );
    }
    assert!(allows_unsafe(concat!("#![allow(", "unsafe_code)]")));
    assert!(!allows_unsafe("#![deny(unsafe_code)]"));
}

#[test]
fn a_long_file_needs_a_reason_and_a_short_one_does_not() {
    let body = "fn f() {}\n".repeat(LONG_FILE);
    assert!(!long_without_reason(&body), "{LONG_FILE} lines are fine");
    let long = format!("{body}fn g() {{}}\n");
    assert!(long_without_reason(&long), "one line more needs a reason");
    let empty_reason = format!("//! {LONG_FILE_REASON}\n{long}");
    assert!(
        long_without_reason(&empty_reason),
        "the reason may not be empty"
    );
    let explained = format!("//! {LONG_FILE_REASON}one concept and its tests.\n{long}");
    assert!(!long_without_reason(&explained));
}
