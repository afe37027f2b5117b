//! Memory: RSS at each moment of a process's life, read by the moment's label, and the peak.
//!
//! lynshim labels its RSS samples with the moment they were taken at ([`lynschema::moment`]): at
//! activation (baseline), at the first lamd/lynguine call made outside any import (after imports),
//! when the first configuration and data-loading calls return, when the main program ends (after
//! operations) and at exit; the peak is the kernel's high-water mark. A moment a process never reached
//! (a command that loads no data) is left empty, never filled from another sample.

use std::collections::BTreeMap;

use lynschema::moment;
use serde_json::{json, Map, Value};

use crate::load::ProcessTrace;
use crate::report::{mib, Section, Table};

/// The first sample of each moment in `p`, by label.
pub fn moments(p: &ProcessTrace) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for sample in &p.rss {
        let Some(at) = sample.at.as_deref() else { continue };
        if let Some(&label) = moment::ALL.iter().find(|&&m| m == at) {
            out.entry(label).or_insert(sample.bytes);
        }
    }
    out
}

pub fn section(processes: &[ProcessTrace]) -> Section {
    let mut section = Section::new("memory", "Memory (RSS)");
    let mut headers = vec!["pid", "command"];
    headers.extend(moment::ALL);
    headers.push("peak");
    let mut table = Table::new("per process, MiB", &headers);
    let mut rows = Vec::new();
    let mut by_moment: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut peaks = Vec::new();
    for p in processes {
        let at = moments(p);
        let show = |v: Option<f64>| v.map_or("–".to_owned(), mib);
        let mut cells = vec![p.pid.to_string(), p.command.clone()];
        cells.extend(moment::ALL.iter().map(|m| show(at.get(m).copied())));
        cells.push(show(p.peak_rss));
        table.row(cells);
        let labelled: Map<String, Value> = at.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        rows.push(json!({"pid": p.pid, "command": p.command, "group": p.group(), "moments_bytes": labelled,
            "baseline_bytes": at.get(moment::BASELINE), "after_imports_bytes": at.get(moment::AFTER_IMPORTS),
            "at_exit_bytes": at.get(moment::EXIT), "peak_bytes": p.peak_rss}));
        for (label, bytes) in at {
            by_moment.entry(label).or_default().push(bytes);
        }
        peaks.extend(p.peak_rss);
    }
    section.tables.push(table);
    let stat = |v: &[f64]| {
        #[allow(clippy::cast_precision_loss)]
        let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        (mean, v.iter().copied().fold(0.0, f64::max))
    };
    let mut summary = Table::new("summary, MiB", &["moment", "mean", "max", "processes"]);
    let mut summary_data = Map::new();
    for label in moment::ALL.iter().copied().chain(["peak"]) {
        let values = if label == "peak" { &peaks } else { by_moment.get(label).map_or(&[][..], Vec::as_slice) };
        let (mean, max) = stat(values);
        summary.row(vec![label.into(), mib(mean), mib(max), values.len().to_string()]);
        summary_data.insert(label.to_owned(), json!({"mean_bytes": mean, "max_bytes": max, "processes": values.len()}));
    }
    section.tables.push(summary);
    section.notes.push(
        "after imports: the first lamd/lynguine call made outside any import; after config load / data load: when \
         the first configuration / data-loading call returned; after operations: when the main program ended. A \
         process that never reached a moment has no sample there"
            .into(),
    );
    section.data = json!({"processes": rows, "moments": summary_data, "mean_peak_bytes": stat(&peaks).0,
                          "max_peak_bytes": stat(&peaks).1});
    section
}
