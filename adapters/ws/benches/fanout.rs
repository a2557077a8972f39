//! The fan-out itself: one message encoded once and queued for N clients, then taken by their
//! writers. What it costs per client is the worker's CPU per delivery before the socket write.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout_domain::{Envelope, Metric, Payload, WorkerId};
use fanout_ws::bench_support::Fanout;

fn envelope() -> Envelope {
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

fn enqueue(c: &mut Criterion) {
    let envelope = envelope();
    let mut group = c.benchmark_group("enqueue to N clients");
    for clients in [1usize, 100, 1000, 10_000] {
        let fanout = Fanout::new(clients);
        group.throughput(Throughput::Elements(clients as u64));
        group.bench_with_input(BenchmarkId::from_parameter(clients), &clients, |b, _| {
            b.iter(|| {
                fanout.deliver(black_box(&envelope));
                fanout.drain()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, enqueue);
criterion_main!(benches);
