//! Start-up against work for the whole build, and how the run's wall time divides between traced
//! Python and everything else (make, the shell, gpp, pandoc), from the run record.

use serde_json::json;

use crate::load::Loaded;
use crate::metrics::processes::ProcessTimes;
use crate::report::{ms, pct, Section, Table};

/// Total length of the union of intervals (start, end), in the intervals' unit.
pub fn union_length(mut intervals: Vec<(f64, f64)>) -> f64 {
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (start, end) in intervals {
        match current {
            Some((s, e)) if start <= e => current = Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                current = Some((start, end));
            }
            None => current = Some((start, end)),
        }
    }
    if let Some((s, e)) = current {
        total += e - s;
    }
    total
}

pub fn section(rows: &[ProcessTimes], loaded: &Loaded) -> Section {
    let sum = |f: fn(&ProcessTimes) -> f64| rows.iter().map(f).sum::<f64>();
    let wall = sum(|r| r.wall_us);
    let startup = sum(|r| r.startup_us + r.activation_us);
    let imports = sum(|r| r.import_us);
    let work = sum(|r| r.work_us);
    let unattributed = sum(|r| r.unattributed_us);
    let mut section = Section::new("startup_vs_work", "Start-up against work, whole build");
    let mut table = Table::new("summed over traced processes", &["phase", "ms", "share of process time"]);
    for (phase, us) in [
        ("interpreter start-up + activation", startup),
        ("imports", imports),
        ("work (lynguine, lamd)", work),
        ("unattributed", unattributed),
    ] {
        table.row(vec![phase.into(), ms(us), pct(us, wall)]);
    }
    table.row(vec!["total process time".into(), ms(wall), pct(wall, wall)]);
    section.tables.push(table);
    section.notes.push(
        "process time sums each Python process's own wall time: a process that waits for others (maketalk's main \
         waiting for make) counts their time again as its work; the `build` section accounts for the build's wall \
         time without counting anything twice"
            .into(),
    );

    let mut run_data = Vec::new();
    if !loaded.runs.is_empty() {
        let mut runs = Table::new(
            "run wall time",
            &[
                "run",
                "wall ms",
                "traced Python alive",
                "Python start-up + imports",
                "outside traced Python",
                "children CPU s",
            ],
        );
        for run in &loaded.runs {
            let procs: Vec<_> = loaded.processes.iter().filter(|p| p.run_id == run.run_id).collect();
            #[allow(clippy::cast_precision_loss)]
            let run_wall_us = run.end_unix_ns.saturating_sub(run.start_unix_ns) as f64 / 1000.0;
            #[allow(clippy::cast_precision_loss)]
            let alive = union_length(
                procs
                    .iter()
                    .map(|p| {
                        let start = p.wall_zero_ns as f64 / 1000.0;
                        (start, start + p.end_us())
                    })
                    .collect(),
            );
            // Rows are the processes' own, in the same order: matched by position, never by pid (pids
            // are reused, within a run and across runs).
            let overhead: f64 = rows
                .iter()
                .zip(&loaded.processes)
                .filter(|(_, p)| p.run_id == run.run_id)
                .map(|(r, _)| r.overhead_us())
                .sum();
            let outside = (run_wall_us - alive).max(0.0);
            runs.row(vec![
                run.run_id.clone(),
                ms(run_wall_us),
                pct(alive, run_wall_us),
                pct(overhead, run_wall_us),
                pct(outside, run_wall_us),
                format!("{:.2}", run.children_user_s + run.children_sys_s),
            ]);
            run_data.push(json!({"run_id": run.run_id, "wall_us": run_wall_us, "python_alive_us": alive,
                "python_overhead_us": overhead, "outside_python_us": outside,
                "children_cpu_s": run.children_user_s + run.children_sys_s}));
        }
        section.tables.push(runs);
        section.notes.push(
            "shares of the run's wall time; with parallel make the Python start-up share can exceed \
                            what is alive, since it sums over processes"
                .into(),
        );
    } else {
        section.notes.push("no run record (run.json) among the inputs: time outside traced Python is unknown".into());
    }
    section.data = json!({"process_time_us": wall, "startup_us": startup, "import_us": imports, "work_us": work,
                          "unattributed_us": unattributed, "runs": run_data});
    section
}

#[cfg(test)]
mod tests {
    use super::union_length;

    #[test]
    fn union_merges_overlaps() {
        assert_eq!(union_length(vec![(0.0, 10.0), (5.0, 15.0), (20.0, 30.0)]), 25.0);
        assert_eq!(union_length(vec![]), 0.0);
    }
}
