//! Logging: every line starts with the worker id and pid, so interleaved logs of several worker
//! processes stay readable. `RUST_LOG` filters (default `info`).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Where the worker id and pid go in a log line.
enum Stamp {
    /// `worker=ID pid=PID ` before the human-readable line.
    Prefix(String),
    /// `"worker":…,"pid":…,` spliced in as the JSON object's first fields.
    JsonFields(String),
}

/// Stamps every event with the worker id and pid, around the inner formatter.
struct WithWorker<F> {
    stamp: Stamp,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for WithWorker<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        match &self.stamp {
            Stamp::Prefix(prefix) => {
                write!(writer, "{prefix} ")?;
                self.inner.format_event(ctx, writer, event)
            }
            Stamp::JsonFields(fields) => {
                let mut line = String::new();
                self.inner
                    .format_event(ctx, Writer::new(&mut line), event)?;
                match line.strip_prefix('{') {
                    Some(rest) => write!(writer, "{{{fields}{rest}"),
                    None => writer.write_str(&line),
                }
            }
        }
    }
}

/// Installs the global subscriber. Call once, as early as possible.
pub fn init(worker: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if format == LogFormat::Json {
        let fields = format!(
            "\"worker\":{},\"pid\":{},",
            serde_json::Value::from(worker),
            std::process::id()
        );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .event_format(WithWorker {
                stamp: Stamp::JsonFields(fields),
                inner: tracing_subscriber::fmt::format().json().flatten_event(true),
            })
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_writer(std::io::stderr)
            .try_init();
        return;
    }
    let ansi = std::io::stderr().is_terminal();
    let format = WithWorker {
        stamp: Stamp::Prefix(format!("worker={worker} pid={}", std::process::id())),
        inner: tracing_subscriber::fmt::format()
            .with_target(false)
            .with_ansi(ansi),
    };
    // A second init (e.g. several workers in one test process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .event_format(format)
        .with_writer(std::io::stderr)
        .try_init();
}
