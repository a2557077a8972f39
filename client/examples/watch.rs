//! Watches one or more workers and prints every event, reconnecting and resuming by itself.
//!
//! ```sh
//! cargo run -p fanout-client --example watch -- ws://127.0.0.1:8080 ws://127.0.0.1:8081
//! FANOUT_TOKEN=... cargo run -p fanout-client --example watch -- wss://fanout.example.com
//! ```

use fanout_client::{Event, Watch};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        return Err("usage: watch WS_URL [WS_URL...]".into());
    }
    let mut watch = Watch::new(urls);
    if let Ok(token) = std::env::var("FANOUT_TOKEN") {
        watch = watch.token(token);
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
