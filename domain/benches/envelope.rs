//! The per-message work on a worker: decoding what arrives from the bus and encoding the frame
//! (done once per message per worker, whatever the number of clients).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fanout_domain::{Channel, Envelope, Metric, Payload, WorkerId};

/// A realistic ~200-byte metric, as the load tool publishes.
pub fn envelope() -> Envelope {
    let metric = Metric::new("bench.load", 1234.0)
        .and_then(|m| m.with_unit("ms"))
        .and_then(|m| m.with_label("host", "bench-host-01"))
        .and_then(|m| m.with_label("region", "eu-west-1"))
        .and_then(|m| m.with_label("service", "checkout"))
        .and_then(|m| m.with_label("endpoint", "/api/v1/orders"))
        .unwrap_or_else(|e| panic!("{e}"));
    Envelope {
        id: None,
        epoch: None,
        origin: WorkerId::new("web-1-4242").unwrap_or_else(|e| panic!("{e}")),
        seq: 17,
        published_at_us: 1_764_380_000_123_456,
        payload: Payload::Metrics(vec![metric]),
    }
}

fn codec(c: &mut Criterion) {
    let envelope = envelope();
    let json = envelope.to_json();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("decode bus message", |b| {
        b.iter(|| Envelope::from_json(Channel::Metrics, black_box(json.as_bytes())))
    });
    group.bench_function("encode frame", |b| {
        b.iter(|| black_box(&envelope).to_json())
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
