//! Property test of the loader: arbitrary mutations of real traces (bytes flipped, files cut, lines
//! duplicated, swapped, deleted, garbage inserted, huge and NaN-like numbers injected) never panic,
//! never take long, and never leave a surviving process whose phases exceed its wall time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lynload::check::{MAX_TS_US, SLACK_US};
use lynload::{parse_trace, ProcessTrace};
use proptest::prelude::*;

/// The recorded fixture traces (tests/fixtures/record.sh): Python traces and exec records.
fn fixtures() -> &'static [Vec<u8>] {
    static FIXTURES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| {
        // At run time (see lynanalyze's snapshot tests): this clone's fixtures, whatever built the binary.
        let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("../../tests/fixtures/traces");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixture traces (tests/fixtures/record.sh)")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".lynshim.json"))
            .collect();
        paths.sort();
        let files: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).expect("read")).collect();
        assert!(files.iter().any(|f| f.len() > 10_000), "no real Python trace among the fixtures in {}", dir.display());
        files
    })
}

/// Numbers no real trace holds, put in place of a `ts` or `dur`.
const STRANGE: [&str; 14] = [
    "1e308",
    "-1e308",
    "1e400",
    "NaN",
    "Infinity",
    "-0",
    "99999999999999999999",
    "604800000000.5",
    "-1000001",
    "1.7976931348623157e308",
    "5e-324",
    "\"12\"",
    "null",
    "[]",
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipByte { at: usize, mask: u8 },
    Cut { at: usize },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    DeleteLine { line: usize },
    InsertGarbage { line: usize, garbage: Vec<u8> },
    StrangeNumber { line: usize, which: usize, dur: bool },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255_u8).prop_map(|(at, mask)| Mutation::FlipByte { at, mask }),
        any::<usize>().prop_map(|at| Mutation::Cut { at }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|line| Mutation::DeleteLine { line }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(line, garbage)| Mutation::InsertGarbage { line, garbage }),
        (any::<usize>(), 0..STRANGE.len(), any::<bool>()).prop_map(|(line, which, dur)| Mutation::StrangeNumber {
            line,
            which,
            dur
        }),
    ]
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::FlipByte { at, mask } => {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
        Mutation::Cut { at } => bytes.truncate(at % bytes.len()),
        _ => {
            let mut ls = lines(bytes);
            let n = ls.len();
            match mutation {
                Mutation::DuplicateLine { line } => {
                    let copy = ls[line % n].clone();
                    ls.insert(line % n, copy);
                }
                Mutation::SwapLines { a, b } => ls.swap(a % n, b % n),
                Mutation::DeleteLine { line } => {
                    ls.remove(line % n);
                }
                Mutation::InsertGarbage { line, garbage } => ls.insert(line % n, garbage.clone()),
                Mutation::StrangeNumber { line, which, dur } => {
                    let line = &mut ls[line % n];
                    let key: &[u8] = if *dur { b"\"dur\":" } else { b"\"ts\":" };
                    if let Some(at) = line.windows(key.len()).position(|w| w == key) {
                        let start = at + key.len();
                        let end = line[start..]
                            .iter()
                            .position(|&b| b == b',' || b == b'}')
                            .map_or(line.len(), |e| start + e);
                        line.splice(start..end, STRANGE[*which].bytes());
                    }
                }
                _ => unreachable!(),
            }
            *bytes = ls.join(&b'\n');
        }
    }
}

/// What must hold of any process the loader keeps.
fn check(trace: &ProcessTrace) -> Result<(), TestCaseError> {
    let wall = trace.end_us();
    prop_assert!(wall.is_finite() && (0.0..=MAX_TS_US + SLACK_US).contains(&wall), "wall {}", wall);
    let tolerance = |x: f64| x * (1.0 + 1e-9) + 1e-3;
    let mut by_thread: HashMap<i64, f64> = HashMap::new();
    let mut by_category: HashMap<&str, f64> = HashMap::new();
    for span in &trace.spans {
        prop_assert!(span.start_us >= 0.0 && span.dur_us >= 0.0, "{:?}", span);
        prop_assert!(span.self_us >= 0.0 && span.self_us <= span.dur_us, "{:?}", span);
        prop_assert!(span.start_us + span.dur_us <= tolerance(wall), "{:?} ends after the process ({} µs)", span, wall);
        *by_thread.entry(span.tid).or_default() += span.self_us;
        *by_category.entry(&span.cat).or_default() += span.self_us;
    }
    // One thread's phases (the self times of its spans) never add up to more than the process's life;
    // nor does any category's, over however many threads.
    for (tid, total) in &by_thread {
        prop_assert!(*total <= tolerance(wall), "thread {}: {} µs of self time in a {} µs process", tid, total, wall);
    }
    let threads = by_thread.len().max(1) as f64;
    for (cat, total) in &by_category {
        prop_assert!(*total <= tolerance(wall * threads), "{}: {} µs in a {} µs process", cat, total, wall);
    }
    for sample in &trace.rss {
        prop_assert!(sample.ts_us >= 0.0 && sample.ts_us <= tolerance(wall) && sample.bytes.is_finite());
    }
    if let Some(exit) = trace.exit_us {
        prop_assert!(exit.is_finite() && exit <= tolerance(wall));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_traces_never_panic_hang_or_exceed_their_wall_time(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let files = fixtures();
        let mut bytes = files[which % files.len()].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let started = Instant::now();
        let result = parse_trace(&bytes);
        prop_assert!(started.elapsed() < Duration::from_secs(2), "{:?} took {:?}", mutations, started.elapsed());
        match result {
            Ok(trace) => check(&trace)?,
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }
}

/// The unmutated fixtures load whole: nothing dropped from what lynshim and the preload library write.
#[test]
fn real_traces_drop_nothing() {
    for bytes in fixtures() {
        let trace = parse_trace(bytes).expect("a real trace loads");
        assert!(trace.dropped.is_empty(), "{}", trace.dropped.describe());
        check(&trace).expect("within its wall time");
    }
}
