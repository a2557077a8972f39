//! Watches one or more workers and prints every event, reconnecting and resuming by itself.
//! Optional flags narrow what it receives (a subscription, kept across reconnects); their values
//! are written as in the connect-time query of docs/PROTOCOL.md.
//!
//! ```sh
//! cargo run -p fanout-client --example watch -- ws://127.0.0.1:8080 ws://127.0.0.1:8081
//! FANOUT_TOKEN=... cargo run -p fanout-client --example watch -- wss://fanout.example.com
//! cargo run -p fanout-client --example watch -- ws://127.0.0.1:8080 \
//!     --metrics='api.*,host.cpu_percent' --where='env=prod|staging' --alerts=warning --interval-ms=500
//! ```

use std::time::Duration;

use fanout_client::{Event, Subscription, Watch};
use futures_util::StreamExt;

const USAGE: &str = "usage: watch WS_URL [WS_URL...] [--metrics=PATTERN,...] \
                     [--where=MATCHER,...] [--alerts=info|warning|critical|none] [--interval-ms=N]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut urls = Vec::new();
    let mut subscription = None;
    for argument in std::env::args().skip(1) {
        let Some(flag) = argument.strip_prefix("--") else {
            urls.push(argument);
            continue;
        };
        let narrowed = narrow(subscription.unwrap_or_default(), flag)?;
        subscription = Some(narrowed);
    }
    if urls.is_empty() {
        return Err(USAGE.into());
    }
    let mut watch = Watch::new(urls);
    if let Ok(token) = std::env::var("FANOUT_TOKEN") {
        watch = watch.token(token);
    }
    if let Some(subscription) = subscription {
        watch = watch.subscription(subscription);
    }
    let mut events = watch.start()?;
    while let Some(event) = events.next().await {
        match event {
            Event::Connected { url, hello } => {
                println!("connected to {url} (worker {})", hello.worker)
            }
            Event::Snapshot(metrics) => println!("snapshot: {} series", metrics.len()),
            Event::Resumed(resume) => println!("resumed: {} alerts replayed", resume.replayed),
            Event::ResumeIncomplete(resume) => println!(
                "resumed with a gap: {} alerts replayed, some were missed",
                resume.replayed
            ),
            Event::Metrics(frame) => {
                for metric in &frame.metrics {
                    println!("{} {} = {}", frame.origin, metric.name(), metric.value());
                }
            }
            Event::Alert(frame) => println!(
                "ALERT {:?} {:?}: {}",
                frame.id.map(|id| id.to_string()),
                frame.alert.severity(),
                frame.alert.message()
            ),
            Event::Malformed { url, error } => eprintln!("{url}: skipped a frame: {error}"),
            Event::Unrequested { url, frame } => {
                eprintln!("{url}: ignored an unrequested {} frame", frame.kind())
            }
            Event::Disconnected {
                url,
                error,
                retry_in,
                ..
            } => eprintln!("{url}: {error}; reconnecting in {retry_in:?}"),
            Event::ConnectFailed {
                url,
                error,
                retry_in,
            } => eprintln!("{url}: {error}; retrying in {retry_in:?}"),
        }
    }
    Ok(())
}

/// `subscription` with one flag (`metrics=…`, `where=…`, `alerts=…`, `interval-ms=…`) applied.
fn narrow(
    subscription: Subscription,
    flag: &str,
) -> Result<Subscription, Box<dyn std::error::Error>> {
    let Some((name, value)) = flag.split_once('=') else {
        return Err(USAGE.into());
    };
    let terms = || value.split(',').filter(|term| !term.is_empty());
    Ok(match name {
        "metrics" => subscription.metrics(terms()),
        "where" => terms().fold(subscription, Subscription::matcher),
        "alerts" if value == "none" => subscription.no_alerts(),
        "alerts" => subscription.min_severity(value.parse()?),
        "interval-ms" => subscription.interval(Duration::from_millis(value.parse()?)),
        _ => return Err(USAGE.into()),
    })
}
