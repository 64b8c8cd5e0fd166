//! The model checker's speed on the configurations CI checks: unique states explored per
//! second by an exhaustive depth-first search on two threads, as `model/tests/checker.rs`
//! runs it. Criterion reports it as throughput (elements = unique states).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pushpark_model::checker::ParkModel;
use stateright::{Checker, Model};

/// The configurations timed: a small one and the largest CI explores in seconds.
const TIMED: [&str; 2] = ["1x2", "2x2"];

fn explore(name: &str) -> usize {
    ParkModel::configuration(name)
        .expect("a known configuration")
        .checker()
        .threads(2)
        .spawn_dfs()
        .join()
        .unique_state_count()
}

fn checker(c: &mut Criterion) {
    let mut group = c.benchmark_group("checker");
    group.sample_size(10);
    for name in TIMED {
        group.throughput(Throughput::Elements(explore(name) as u64));
        group.bench_function(name, |b| b.iter(|| explore(name)));
    }
    group.finish();
}

criterion_group!(benches, checker);
criterion_main!(benches);
