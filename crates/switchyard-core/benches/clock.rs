//! The cost of one message-time read: `switchyard_core::clock::now()` (the time-stamp counter
//! against a per-thread anchor on the system clock) beside `SystemTime::now()`, and the
//! other reads a message makes with it (a fresh id, a whole envelope).
//!
//! Run: `cargo bench -p switchyard-core --bench clock`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_core::{Envelope, MessageId, Topic, clock};

fn reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("SystemTime::now", |b| {
        b.iter(|| black_box(SystemTime::now()))
    });
    g.bench_function("clock::now", |b| b.iter(|| black_box(clock::now())));
    g.finish();
    let mut g = c.benchmark_group("made");
    g.bench_function("MessageId::new", |b| b.iter(|| black_box(MessageId::new())));
    let topic = Topic::new("bench.event").unwrap();
    g.bench_function("Envelope::new", |b| {
        b.iter(|| black_box(Envelope::new(topic.clone(), &b"x"[..])))
    });
    g.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
