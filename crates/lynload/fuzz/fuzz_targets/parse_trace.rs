//! Fuzz the trace parser: any bytes give a trace or a reason, never a panic — and a trace that is
//! given passes the loader's checks (lynload::check): every span inside the process's life, no
//! thread's self times adding up to more than that life, no line dropped without being counted.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use lynload::check::{Reason, MAX_TS_US, SLACK_US};

fuzz_target!(|data: &[u8]| {
    let Ok(trace) = lynload::parse_trace(data) else { return };
    let wall = trace.end_us();
    assert!(wall.is_finite() && (0.0..=MAX_TS_US + SLACK_US).contains(&wall), "wall {wall}");
    let tolerance = |x: f64| x * (1.0 + 1e-9) + 1e-3;
    let mut by_thread: HashMap<i64, f64> = HashMap::new();
    for (index, span) in trace.spans.iter().enumerate() {
        assert!(span.start_us >= 0.0 && span.dur_us >= 0.0 && span.self_us >= 0.0 && span.self_us <= span.dur_us, "{span:?}");
        assert!(span.start_us + span.dur_us <= tolerance(wall), "{span:?} beyond {wall}");
        assert!((span.depth as usize) < lynload::check::MAX_DEPTH, "{span:?}");
        if let Some(parent) = span.parent {
            assert!((parent as usize) < index, "a parent comes before its child");
            assert_eq!(trace.spans[parent as usize].depth + 1, span.depth);
        }
        *by_thread.entry(span.tid).or_default() += span.self_us;
    }
    for (tid, total) in by_thread {
        assert!(total <= tolerance(wall), "thread {tid}: {total} µs of self time in {wall} µs");
    }
    for sample in &trace.rss {
        assert!(sample.ts_us >= 0.0 && sample.ts_us <= tolerance(wall) && sample.bytes.is_finite());
    }
    // Every dropped line counted once, under a reason.
    let dropped = &trace.dropped;
    assert_eq!(dropped.total() as usize, dropped.lines.len());
    assert!(dropped.lines.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(Reason::ALL.len(), dropped.counts.len());
});
