//! The fan-out itself: one message encoded once and queued for N clients, then taken by their
//! writers (what it costs per client before the socket write); and the pieces issue 14 added:
//! the frame built once, and the direct write to live sockets.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout_domain::{Envelope, Metric, Payload, WorkerId};
use fanout_ws::bench_support::{Fanout, LiveFanout};

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

/// Issue 14's pieces of the hot path: the frame built once per message (JSON and WebSocket
/// header), and the direct write from the fan-out to live clients' sockets over loopback, until
/// every client has read it (the socket writes and the reads dominate: compare with the
/// `enqueue` group's cost before the socket).
fn frame_and_write(c: &mut Criterion) {
    let envelope = envelope();
    c.bench_function("frame once per message", |b| {
        b.iter(|| Fanout::frame(black_box(&envelope)))
    });
    // A message without a publication time: never "behind", so written at once (an old one would
    // be queued for the connections' tasks, which this bench does not run).
    let envelope = Envelope {
        published_at_us: 0,
        ..envelope
    };
    let bytes = Fanout::frame(&envelope) as u64;
    // One `io_uring` submission for a message's sends (the default on Linux), against one
    // `send(2)` per client.
    for (name, ring) in [
        ("direct write to N live clients, io_uring", true),
        ("direct write to N live clients, one send each", false),
    ] {
        let mut group = c.benchmark_group(name);
        for clients in [1usize, 16, 100] {
            let live = LiveFanout::new(clients, ring).unwrap_or_else(|e| panic!("{e}"));
            group.throughput(Throughput::Elements(clients as u64));
            group.bench_with_input(BenchmarkId::from_parameter(clients), &clients, |b, _| {
                b.iter(|| live.deliver(black_box(&envelope), bytes * clients as u64))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, enqueue, frame_and_write);
criterion_main!(benches);
