//! Per process: wall time, start-up, imports, work by category, what is left unattributed.
//!
//! A process's time is split by the self time of its spans: each span's own time (its duration less
//! the spans directly inside it) goes to its category, so an import made inside a lamd command counts
//! as import and a lynguine call made while a module is importing counts as work. Start-up is the
//! interpreter's time before lynshim activated, plus lynshim's own activation; unattributed time is
//! Python running outside any traced span (the script's own code, interpreter shutdown).

use std::collections::BTreeMap;

use lynschema::category;
use rayon::prelude::*;
use serde_json::json;

use crate::load::{is_call, ProcessTrace};
use crate::report::{ms, Section, Table};

/// Time accounting of one process, in microseconds.
#[derive(Debug, Clone)]
pub struct ProcessTimes {
    pub pid: i64,
    pub command: String,
    pub group: String,
    pub lamd_command: Option<String>,
    pub wall_us: f64,
    pub startup_us: f64,
    pub activation_us: f64,
    pub import_us: f64,
    pub work_us: f64,
    pub work_by_category: BTreeMap<String, f64>,
    /// Import self time by top-level package.
    pub imports_by_package: BTreeMap<String, f64>,
    pub unattributed_us: f64,
    pub peak_rss: Option<f64>,
    pub exit: String,
    pub calls: usize,
}

impl ProcessTimes {
    /// Everything a process pays before it can work: interpreter start-up, activation and imports.
    pub fn overhead_us(&self) -> f64 {
        self.startup_us + self.activation_us + self.import_us
    }
}

pub fn compute(processes: &[ProcessTrace]) -> Vec<ProcessTimes> {
    processes
        .par_iter()
        .map(|p| {
            // Keyed by borrowed names while summing: one allocation per key, not per span.
            let mut by_cat: BTreeMap<&str, f64> = BTreeMap::new();
            let mut by_package: BTreeMap<&str, f64> = BTreeMap::new();
            let (mut startup, mut activation, mut import, mut calls) = (0.0, 0.0, 0.0, 0);
            for s in &p.spans {
                match s.cat.as_str() {
                    c if c == category::STARTUP => startup += s.dur_us,
                    c if c == category::TRACER => activation += s.dur_us,
                    c if c == category::IMPORT => {
                        import += s.self_us;
                        let package = s.name.split('.').next().unwrap_or("");
                        *by_package.entry(package).or_default() += s.self_us;
                    }
                    c if is_call(c) => {
                        *by_cat.entry(c).or_default() += s.self_us;
                        calls += 1;
                    }
                    _ => {}
                }
            }
            let work: f64 = by_cat.values().sum();
            let exit = match (p.exit_status, p.exit_signal) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) if p.truncated => "cut short".to_owned(),
                (None, None) => "unknown".to_owned(),
            };
            ProcessTimes {
                pid: p.pid,
                command: p.command.clone(),
                group: p.group(),
                lamd_command: p.lamd_command.clone(),
                wall_us: p.end_us,
                startup_us: startup,
                activation_us: activation,
                import_us: import,
                work_us: work,
                unattributed_us: (p.end_us - startup - activation - import - work).max(0.0),
                work_by_category: by_cat.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                imports_by_package: by_package.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                peak_rss: p.peak_rss,
                exit,
                calls,
            }
        })
        .collect()
}

pub fn section(rows: &[ProcessTimes]) -> Section {
    let mut section = Section::new("processes", "Processes: start-up against work");
    let mut table = Table::new(
        "",
        &["pid", "command", "wall ms", "start-up ms", "imports ms", "top imports (ms)", "work ms", "work by category (ms)",
          "unattributed ms", "overhead : work", "peak RSS MiB", "exit"],
    );
    for r in rows {
        let by_cat = r
            .work_by_category
            .iter()
            .map(|(c, us)| format!("{c} {}", ms(*us)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut packages: Vec<_> = r.imports_by_package.iter().collect();
        packages.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let top_imports =
            packages.iter().take(3).map(|(p, us)| format!("{p} {}", ms(**us))).collect::<Vec<_>>().join(", ");
        let ratio = if r.work_us > 0.0 { format!("{:.0} : 1", r.overhead_us() / r.work_us) } else { "no work".into() };
        table.row(vec![
            r.pid.to_string(),
            r.command.clone(),
            ms(r.wall_us),
            ms(r.startup_us + r.activation_us),
            ms(r.import_us),
            top_imports,
            ms(r.work_us),
            by_cat,
            ms(r.unattributed_us),
            ratio,
            r.peak_rss.map_or("–".into(), crate::report::mib),
            r.exit.clone(),
        ]);
    }
    section.tables.push(table);
    section.notes.push(
        "start-up = interpreter start-up before lynshim activated + lynshim's own activation; \
         time is split by each span's self time"
            .into(),
    );
    section.data = json!(rows
        .iter()
        .map(|r| json!({
            "pid": r.pid, "command": r.command, "group": r.group, "lamd_command": r.lamd_command,
            "wall_us": r.wall_us, "startup_us": r.startup_us, "activation_us": r.activation_us,
            "import_us": r.import_us, "imports_by_package_us": r.imports_by_package, "work_us": r.work_us, "work_by_category_us": r.work_by_category,
            "unattributed_us": r.unattributed_us, "peak_rss_bytes": r.peak_rss, "exit": r.exit, "calls": r.calls,
        }))
        .collect::<Vec<_>>());
    section
}
