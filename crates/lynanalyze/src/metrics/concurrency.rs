//! Concurrency: how many traced processes were alive at once, and how serial the build was.
//!
//! Processes are placed on one clock by their wall-clock zero. The critical path is estimated as the
//! longest chain of processes each starting after the previous one ended (what a fully serial
//! dependency chain would look like): without make's dependency graph that is the best the traces say.

use serde_json::json;

use crate::load::ProcessTrace;
use crate::metrics::startup::union_length;
use crate::report::{ms, pct, Section, Table};

/// The kernel gives a process's start time in clock ticks (10 ms here), rounded down, so a process's
/// start may appear up to one tick early: overlaps shorter than that are not evidence of concurrency.
const START_RESOLUTION_US: f64 = 10_000.0;

/// (start, end) of each process on the wall clock, microseconds, the start moved one tick later
/// unless the process's exec record dated it to the microsecond.
fn intervals(processes: &[ProcessTrace]) -> Vec<(f64, f64)> {
    #[allow(clippy::cast_precision_loss)]
    processes
        .iter()
        .map(|p| {
            let start = p.wall_zero_ns as f64 / 1000.0;
            let end = start + p.end_us();
            let resolution = if p.image.is_some() { 0.0 } else { START_RESOLUTION_US };
            ((start + resolution).min(end), end)
        })
        .collect()
}

/// Longest chain of non-overlapping intervals by total duration (weighted interval scheduling).
pub fn longest_serial_chain(mut iv: Vec<(f64, f64)>) -> (usize, f64) {
    iv.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut best: Vec<(usize, f64)> = Vec::with_capacity(iv.len());
    for i in 0..iv.len() {
        let (start, end) = iv[i];
        let previous = iv[..i].partition_point(|x| x.1 <= start);
        let with = previous.checked_sub(1).map_or((0, 0.0), |j| best[j]);
        let take = (with.0 + 1, with.1 + (end - start));
        let skip = if i > 0 { best[i - 1] } else { (0, 0.0) };
        best.push(if take.1 >= skip.1 { take } else { skip });
    }
    best.last().copied().unwrap_or((0, 0.0))
}

pub fn section(processes: &[ProcessTrace]) -> Section {
    let iv = intervals(processes);
    let mut points: Vec<(f64, i32)> = iv.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut alive, mut max_alive, mut last) = (0_i32, 0_i32, None::<f64>);
    let mut time_at = std::collections::BTreeMap::<i32, f64>::new();
    for (t, delta) in points {
        if let Some(prev) = last {
            *time_at.entry(alive).or_default() += t - prev;
        }
        alive += delta;
        max_alive = max_alive.max(alive);
        last = Some(t);
    }
    let busy = union_length(iv.clone());
    let span_total = iv.iter().map(|x| x.1).fold(f64::MIN, f64::max) - iv.iter().map(|x| x.0).fold(f64::MAX, f64::min);
    let (chain_len, chain_us) = longest_serial_chain(iv);
    let mut section = Section::new("concurrency", "Concurrency");
    let mut table = Table::new("", &["measure", "value"]);
    table.row(vec!["traced processes".into(), processes.len().to_string()]);
    table.row(vec!["most alive at once".into(), max_alive.to_string()]);
    table.row(vec!["first start to last end, ms".into(), ms(span_total.max(0.0))]);
    table.row(vec!["time with a traced process alive, ms".into(), ms(busy)]);
    table.row(vec!["time with exactly one alive".into(), pct(*time_at.get(&1).unwrap_or(&0.0), busy)]);
    table.row(vec!["longest serial chain (processes)".into(), chain_len.to_string()]);
    table.row(vec!["longest serial chain, ms (critical path estimate)".into(), ms(chain_us)]);
    section.tables.push(table);
    section.notes.push(
        "a process without an exec record has its start known to one clock tick (10 ms): overlaps shorter \
                        than that are ignored"
            .into(),
    );
    let origin = processes.iter().map(|p| p.wall_zero_ns).min().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let lanes: Vec<_> = processes
        .iter()
        .map(|p| {
            json!({"pid": p.pid, "command": p.command,
        "start_us": p.wall_zero_ns.saturating_sub(origin) as f64 / 1000.0,
        "end_us": p.wall_zero_ns.saturating_sub(origin) as f64 / 1000.0 + p.end_us()})
        })
        .collect();
    let alive_levels: Vec<_> =
        time_at.iter().filter(|(k, _)| **k > 0).map(|(k, v)| json!({"alive": k, "us": v})).collect();
    section.data = json!({"processes": processes.len(), "max_alive": max_alive, "busy_us": busy,
        "serial_chain_processes": chain_len, "serial_chain_us": chain_us, "time_at_concurrency": alive_levels,
        "timeline": lanes});
    section
}

#[cfg(test)]
mod tests {
    use super::longest_serial_chain;

    #[test]
    fn chain_picks_non_overlapping_intervals() {
        let (n, total) = longest_serial_chain(vec![(0.0, 10.0), (5.0, 12.0), (10.0, 20.0), (21.0, 22.0)]);
        assert_eq!((n, total), (3, 21.0));
    }
}
