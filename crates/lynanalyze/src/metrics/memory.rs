//! Memory: RSS at activation (baseline), after the imports, at exit, and the peak, per process.
//!
//! lynshim samples RSS at activation, just before the first work span starts (the imports are done),
//! and at exit; the peak comes from the kernel's high-water mark.

use serde_json::json;

use crate::load::ProcessTrace;
use crate::report::{mib, Section, Table};

pub fn section(processes: &[ProcessTrace]) -> Section {
    let mut section = Section::new("memory", "Memory (RSS)");
    let mut table = Table::new("per process, MiB", &["pid", "command", "baseline", "after imports", "at exit", "peak"]);
    let mut rows = Vec::new();
    let (mut peaks, mut baselines, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for p in processes {
        let baseline = p.rss.first().map(|s| s.bytes);
        let after_imports = if p.rss.len() >= 3 { p.rss.get(1).map(|s| s.bytes) } else { None };
        let at_exit = if p.rss.len() >= 2 { p.rss.last().map(|s| s.bytes) } else { None };
        let show = |v: Option<f64>| v.map_or("–".to_owned(), mib);
        table.row(vec![p.pid.to_string(), p.command.clone(), show(baseline), show(after_imports), show(at_exit), show(p.peak_rss)]);
        rows.push(json!({"pid": p.pid, "command": p.command, "baseline_bytes": baseline,
            "after_imports_bytes": after_imports, "at_exit_bytes": at_exit, "peak_bytes": p.peak_rss}));
        peaks.extend(p.peak_rss);
        baselines.extend(baseline);
        after.extend(after_imports);
    }
    section.tables.push(table);
    let stat = |v: &[f64]| {
        #[allow(clippy::cast_precision_loss)]
        let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        (mean, v.iter().copied().fold(0.0, f64::max))
    };
    let mut summary = Table::new("summary, MiB", &["measure", "mean", "max", "processes"]);
    for (label, values) in [("baseline", &baselines), ("after imports", &after), ("peak", &peaks)] {
        let (mean, max) = stat(values);
        summary.row(vec![label.into(), mib(mean), mib(max), values.len().to_string()]);
    }
    section.tables.push(summary);
    section.notes.push("after imports is sampled when the first lamd/lynguine call starts; a process with no \
                        such call has no sample there".into());
    section.data = json!({"processes": rows, "mean_peak_bytes": stat(&peaks).0, "max_peak_bytes": stat(&peaks).1});
    section
}
