//! The core's hot path: one parked call's whole life, and a burst of 1,000 parked calls.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pushpark_benches::{burst, parked_call_life};
use pushpark_model::{CallId, Config, Core};

fn core(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parked_call_life", |b| {
        let mut core = Core::new(Config::default());
        let mut out = Vec::with_capacity(16);
        let mut next = 0u64;
        b.iter(|| {
            next += 1;
            black_box(parked_call_life(&mut core, CallId(next), next, &mut out))
        });
    });
    group.throughput(Throughput::Elements(1000));
    group.bench_function("burst_1000_parked_calls", |b| {
        let mut core = Core::new(Config::default());
        let mut out = Vec::with_capacity(8 * 1000);
        let mut next = 0u64;
        b.iter(|| {
            next += 1000;
            black_box(burst(&mut core, next, 1000, &mut out))
        });
    });
    group.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
