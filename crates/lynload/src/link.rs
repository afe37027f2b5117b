//! Linking the preload library's exec records to each other and to lynshim's Python traces.
//!
//! Under `lynshim run` every program image writes an exec record (crates/lynexec): make, sh, gpp,
//! pandoc, and the Python processes too. A process that execs writes one record per image, all with
//! its pid and start ticks: each image but the last ends where the next begins, and the file it left
//! has no closing `]` because its image was replaced, not because it crashed. A Python process has
//! both an exec record and lynshim's trace, which describe the same process: the trace keeps the
//! detail, and the record gives it what only the record knows (see [`Image`]). What is left are the
//! records of programs no Python trace covers: [`crate::Loaded::programs`].

use std::collections::HashMap;
use std::path::PathBuf;

use lynschema::category;

use crate::{Loaded, ProcessTrace, Source};

/// What a Python trace learns from the exec record of its own program image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The record's file.
    pub file: PathBuf,
    /// Microseconds from the trace's zero to the process's real exit: the record's end, after the
    /// interpreter's teardown and lynshim's exit handler.
    pub end_us: f64,
    /// How far the trace's zero was moved to the image's start (the exec), in microseconds. lynshim
    /// dates a process's start from `/proc` in clock ticks (10 ms), rounded down; the record dates its
    /// image from its own constructor, to the microsecond.
    pub moved_us: f64,
}

/// A process's identity within a run: pid and start ticks (pids are reused, start ticks are not).
type Identity = (String, i64, u64);

fn identity(p: &ProcessTrace) -> Option<Identity> {
    Some((p.run_id.clone(), p.pid, p.start_ticks?))
}

#[allow(clippy::cast_precision_loss)]
fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Link everything loaded: exec chains ended, Python traces given their image, the remaining records
/// moved to `programs`; both lists sorted by start.
pub fn link(loaded: &mut Loaded) {
    let (mut records, python): (Vec<ProcessTrace>, Vec<ProcessTrace>) =
        std::mem::take(&mut loaded.processes).into_iter().partition(|p| p.source == Source::Exec);
    loaded.processes = python;
    records.sort_by(|a, b| a.wall_zero_ns.cmp(&b.wall_zero_ns).then(a.pid.cmp(&b.pid)));

    // Exec chains: a record followed by another of the same process ended when that one began.
    let mut by_identity: HashMap<Identity, Vec<usize>> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        if let Some(id) = identity(record) {
            by_identity.entry(id).or_default().push(index);
        }
    }
    let mut replaced = Vec::new();
    for chain in by_identity.values() {
        for pair in chain.windows(2) {
            let next_zero = records[pair[1]].wall_zero_ns;
            let record = &mut records[pair[0]];
            if record.exit_us.is_none() {
                record.end_us = ns_to_us(next_zero.saturating_sub(record.wall_zero_ns));
                record.truncated = false;
                record.replaced_by_exec = true;
                replaced.push(record.file.clone());
            }
        }
    }
    // Their files lack the closing `]` because the image was replaced: not worth a warning.
    loaded.warnings.retain(|w| !replaced.contains(&w.file));

    // A Python trace and the record of its image: the latest image of that process begun before
    // lynshim activated in it.
    let mut covered = vec![false; records.len()];
    for trace in &mut loaded.processes {
        let Some(chain) = identity(trace).and_then(|id| by_identity.get(&id)) else { continue };
        let activated_ns = trace.wall_zero_ns.saturating_add(activation_us(trace) as u64 * 1000);
        let Some(&index) = chain.iter().rev().find(|&&i| records[i].wall_zero_ns <= activated_ns) else { continue };
        covered[index] = true;
        adopt_image(trace, &records[index]);
    }
    loaded.programs = records.into_iter().zip(covered).filter(|(_, c)| !c).map(|(r, _)| r).collect();
    loaded.processes.sort_by(|a, b| a.wall_zero_ns.cmp(&b.wall_zero_ns).then(a.pid.cmp(&b.pid)));
}

/// Microseconds from a Python trace's zero to the end of its interpreter start-up (activation).
fn activation_us(trace: &ProcessTrace) -> f64 {
    trace.spans.iter().find(|s| &*s.cat == category::STARTUP).map_or(0.0, |s| s.start_us + s.dur_us).max(0.0)
}

/// Move the trace's zero to its image's start and note the image's end.
fn adopt_image(trace: &mut ProcessTrace, record: &ProcessTrace) {
    #[allow(clippy::cast_precision_loss)]
    let moved = record.wall_zero_ns as f64 / 1000.0 - trace.wall_zero_ns as f64 / 1000.0;
    // The record must begin in the tick lynshim rounded down from, before activation: anything else
    // is not this image, or clocks that disagree, and the trace is left as it is.
    let moved = if (0.0..=activation_us(trace)).contains(&moved) { moved } else { 0.0 };
    if moved > 0.0 {
        trace.wall_zero_ns = record.wall_zero_ns;
        for span in &mut trace.spans {
            span.start_us -= moved;
            if span.start_us < 0.0 {
                // Interpreter start-up, which began at the old zero: it begins at the exec.
                let cut = -span.start_us;
                span.start_us = 0.0;
                span.dur_us = (span.dur_us - cut).max(0.0);
                span.self_us = (span.self_us - cut).max(0.0);
            }
        }
        for sample in &mut trace.rss {
            sample.ts_us = (sample.ts_us - moved).max(0.0);
        }
        trace.end_us = (trace.end_us - moved).max(0.0);
        trace.exit_us = trace.exit_us.map(|t| (t - moved).max(0.0));
    }
    // The record's end on the trace's clock (the same zero, unless the move was refused above).
    #[allow(clippy::cast_precision_loss)]
    let offset = record.wall_zero_ns as f64 / 1000.0 - trace.wall_zero_ns as f64 / 1000.0;
    let end_us = if record.exit_us.is_some() { record.end_us + offset } else { trace.end_us };
    trace.image = Some(Image { file: record.file.clone(), end_us: end_us.max(trace.end_us), moved_us: moved });
    if trace.cpu_us.is_none() {
        trace.cpu_us = record.cpu_us;
    }
    if trace.peak_rss.is_none() {
        trace.peak_rss = record.peak_rss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_trace, Problem};

    /// An exec record: the start lines, and the end lines unless the image was replaced.
    fn record(pid: i64, zero_ns: u64, program: &str, end_us: Option<f64>) -> ProcessTrace {
        let mut text = format!(
            r#"[
{{"args":{{"pid":{pid},"ppid":1,"run_id":"r","command":"{program}","wall_zero_ns":{zero_ns},"start_ticks":55,"source":"exec"}},"cat":"lynshim","name":"lynshim.process","ph":"i","pid":{pid},"tid":{pid},"ts":0.0}},
"#
        );
        if let Some(end) = end_us {
            text.push_str(&format!(
                r#"{{"cat":"process","dur":{end},"name":"{program}","ph":"X","pid":{pid},"tid":{pid},"ts":0.0}},
{{"args":{{"exit_status":0,"cpu_user_us":10,"cpu_sys_us":5}},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":{pid},"tid":{pid},"ts":{end}}}
]"#
            ));
        }
        let mut trace = parse_trace(text.as_bytes()).expect("an exec record");
        trace.file = PathBuf::from(format!("{pid}-55-{zero_ns}.lynshim.json"));
        trace
    }

    /// lynshim's trace of pid 9, dated from the tick before its exec (2 ms early).
    fn python() -> ProcessTrace {
        let text = r#"[
{"args":{"pid":9,"ppid":1,"run_id":"r","command":"python x","wall_zero_ns":998000000,"start_ticks":55},"cat":"lynshim","name":"lynshim.process","ph":"i","pid":9,"tid":9,"ts":0.0},
{"cat":"startup","dur":30000.0,"name":"interpreter start-up","ph":"X","pid":9,"tid":9,"ts":0.0},
{"cat":"import","name":"pandas","ph":"B","pid":9,"tid":9,"ts":31000.0},
{"cat":"import","name":"pandas","ph":"E","pid":9,"tid":9,"ts":41000.0},
{"args":{"exit_status":0},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":9,"tid":9,"ts":50000.0}
]"#;
        parse_trace(text.as_bytes()).expect("a python trace")
    }

    #[test]
    fn exec_chains_end_each_image_where_the_next_begins_and_python_adopts_its_own() {
        let mut loaded = Loaded::default();
        // sh (pid 9) execs python at 1 000 000 000 ns; python exits 60 ms later (after its last event).
        let sh = record(9, 999_000_000, "sh", None);
        loaded.warnings.push(Problem { file: sh.file.clone(), message: "cut short".into() });
        loaded.processes.extend([sh, record(9, 1_000_000_000, "python", Some(60_000.0)), python()]);
        loaded.processes.push(record(12, 1_100_000_000, "gpp", Some(500.0)));
        link(&mut loaded);

        assert_eq!(loaded.processes.len(), 1);
        let py = &loaded.processes[0];
        let image = py.image.as_ref().expect("linked to its exec record");
        // Re-dated to the exec, to the microsecond: start-up loses the 2 ms before it.
        assert_eq!(py.wall_zero_ns, 1_000_000_000);
        assert!((image.moved_us - 2_000.0).abs() < 1e-9);
        let startup = &py.spans[0];
        assert_eq!((startup.start_us, startup.dur_us), (0.0, 28_000.0));
        assert_eq!(py.spans[1].start_us, 29_000.0);
        assert_eq!(py.end_us, 48_000.0);
        // The real end is the record's: 12 ms of exit after lynshim's last event.
        assert_eq!(py.end_us(), 60_000.0);
        assert_eq!(py.cpu_us, Some(15.0));

        let programs: Vec<(&str, f64)> = loaded.programs.iter().map(|p| (p.program(), p.end_us())).collect();
        assert_eq!(programs, vec![("sh", 1_000.0), ("gpp", 500.0)]);
        assert!(!loaded.programs[0].truncated && loaded.programs[0].replaced_by_exec);
        assert!(!loaded.programs[1].replaced_by_exec);
        assert!(loaded.warnings.is_empty(), "the exec'd image's file is not worth a warning");
    }

    #[test]
    fn a_record_from_another_process_is_not_adopted() {
        let mut loaded = Loaded::default();
        let mut other = record(9, 1_000_000_000, "python", Some(60_000.0));
        other.start_ticks = Some(56); // pid 9 again, but a later process
        loaded.processes.extend([other, python()]);
        link(&mut loaded);
        assert!(loaded.processes[0].image.is_none());
        assert_eq!(loaded.programs.len(), 1);
    }
}
