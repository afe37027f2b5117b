//! Criterion micro-benchmarks of the trace loader on the recorded fixture traces.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    // At run time (see lynanalyze's snapshot tests): this clone's fixtures, whatever built the binary.
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo bench sets CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/traces");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture traces (tests/fixtures/record.sh)")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".lynshim.json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .collect()
}

fn parse(c: &mut Criterion) {
    let files = fixtures();
    let (_, bytes) = &files[0];
    let mut group = c.benchmark_group("loader");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse_trace (one real trace)", |b| b.iter(|| lynload::parse_trace(black_box(bytes))));
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    group.throughput(Throughput::Bytes(total));
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    group.bench_function("load (fixture directory, parallel)", |b| {
        b.iter(|| lynload::load(black_box(&paths), lynload::LoadOptions::default()))
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
