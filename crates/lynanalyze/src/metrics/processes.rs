//! Per process: wall time, start-up, imports, work by category, GC, exit, what is left unattributed.
//!
//! A process's time is split into phases by the self time of its spans, as [`crate::load::phases`] does
//! it (and `lynshim bench` with it): each span's own time (its duration less the spans directly inside
//! it) goes to its phase, so an import made inside a lamd command counts as import and a lynguine call
//! made while a module is importing counts as work. Start-up is the
//! interpreter's time before lynshim activated, plus lynshim's own activation; the main program's self
//! time is the script's own code; then come the `atexit` handlers, lynshim writing its trace, and the
//! interpreter's teardown up to the process's real exit (from its exec record, when there is one).
//! Unattributed time is what no span covers (other threads' idle time is not counted twice).
//!
//! A process that starts others and waits for them (`maketalk` running make, `subprocess.run`) spends
//! that time inside a call or its main program: it is counted as waiting on children, not as that
//! call's work, so that the build's work is not counted once in the parent and again in the children.

use std::collections::BTreeMap;

use lynschema::category;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde_json::{json, Value};

use crate::frame::{Dictionary, SpanColumns};
use crate::load::phases::{Phase, Phases};
use crate::load::{Loaded, ProcessTrace};
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
    /// Self time of the main program: the script's own code, outside imports and calls.
    pub program_us: f64,
    pub gc_us: f64,
    pub gc_collections: usize,
    pub atexit_us: f64,
    /// lynshim writing its trace out at exit.
    pub shim_write_us: f64,
    /// From the last `atexit` handler to the process's exit.
    pub teardown_us: f64,
    /// In a call or the main program while a process it started (Python or not) was running.
    pub waiting_us: f64,
    /// Import self time by top-level package: its number in the [`Dictionary`] (so in name order).
    pub imports_by_package: Vec<(u32, f64)>,
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

    /// What it pays after its work: `atexit` handlers, lynshim's writing and the interpreter's teardown.
    pub fn exit_us(&self) -> f64 {
        self.atexit_us + self.shim_write_us + self.teardown_us
    }
}

/// The time accounting of every process, walking the span frame's columns (numbers, in process order)
/// rather than the spans themselves: a build's million spans are read at a few bytes each.
pub fn compute(loaded: &Loaded, columns: &SpanColumns<'_>, dictionary: &Dictionary) -> Vec<ProcessTimes> {
    let processes = &loaded.processes;
    let children = children_by_parent(loaded);
    processes
        .par_iter()
        .enumerate()
        .map(|(index, p)| {
            let mut phases: Phases<'_, u32> = Phases::default();
            for row in columns.rows(index) {
                let cat = dictionary.categories[columns.cat[row] as usize].as_str();
                let phase = Phase::of(cat, &dictionary.names[columns.name[row] as usize]);
                phases.add(phase, cat, || columns.package[row], columns.dur_us[row], columns.self_us[row]);
            }
            phases.add_unseen_teardown(p);
            let children = children.get(&(p.run_id.as_str(), p.pid));
            let waiting = take_waiting(p, children, &mut phases.work_by_category, &mut phases.program_us);
            let work = phases.work_us();
            let wall = p.end_us();
            let accounted = phases.startup_us
                + phases.activation_us
                + phases.import_us
                + work
                + phases.program_us
                + phases.gc_us
                + phases.atexit_us
                + phases.shim_write_us
                + phases.teardown_us
                + waiting;
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
                wall_us: wall,
                startup_us: phases.startup_us,
                activation_us: phases.activation_us,
                import_us: phases.import_us,
                work_us: work,
                program_us: phases.program_us,
                gc_us: phases.gc_us,
                gc_collections: phases.gc_collections,
                atexit_us: phases.atexit_us,
                shim_write_us: phases.shim_write_us,
                teardown_us: phases.teardown_us,
                waiting_us: waiting,
                unattributed_us: (wall - accounted).max(0.0),
                work_by_category: phases.work_by_category.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                imports_by_package: {
                    let mut by_package: Vec<(u32, f64)> = phases.imports_by_package.into_iter().collect();
                    by_package.sort_unstable_by_key(|(package, _)| *package);
                    by_package
                },
                peak_rss: p.peak_rss,
                exit,
                calls: phases.calls,
            }
        })
        .collect()
}

/// The processes and programs of each run by their parent's pid: `(run id, ppid)` → `(start, end)` on
/// the wall clock, microseconds.
fn children_by_parent(loaded: &Loaded) -> FxHashMap<(&str, i64), Vec<(f64, f64)>> {
    let mut out: FxHashMap<(&str, i64), Vec<(f64, f64)>> = FxHashMap::default();
    for p in loaded.processes.iter().chain(&loaded.programs) {
        #[allow(clippy::cast_precision_loss)]
        let start = p.wall_zero_ns as f64 / 1000.0;
        out.entry((p.run_id.as_str(), p.ppid)).or_default().push((start, start + p.end_us()));
    }
    out
}

/// Take the time `p` spent in a call or its main program while one of its children ran out of those
/// sums (`by_cat`, `program`) and return it: waiting, not work.
fn take_waiting(
    p: &ProcessTrace,
    children: Option<&Vec<(f64, f64)>>,
    by_cat: &mut BTreeMap<&str, f64>,
    program: &mut f64,
) -> f64 {
    let Some(children) = children else { return 0.0 };
    #[allow(clippy::cast_precision_loss)]
    let zero = p.wall_zero_ns as f64 / 1000.0;
    let end = p.end_us();
    // Children started during this process's life (a reused pid's other children are not its own).
    let mut alive: Vec<(f64, f64)> = children
        .iter()
        .map(|&(s, e)| (s - zero, e - zero))
        .filter(|&(s, _)| (0.0..=end).contains(&s))
        .map(|(s, e)| (s, e.min(end)))
        .collect();
    if alive.is_empty() {
        return 0.0;
    }
    alive.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut union: Vec<(f64, f64)> = Vec::with_capacity(alive.len());
    for (s, e) in alive {
        match union.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => union.push((s, e)),
        }
    }
    let mut waiting = 0.0;
    for (start, stop, cat) in crate::metrics::build::timeline(p, 0.0) {
        let overlap: f64 = union.iter().map(|&(s, e)| (stop.min(e) - start.max(s)).max(0.0)).sum();
        if overlap <= 0.0 {
            continue;
        }
        let sum = if cat == category::PROGRAM { Some(&mut *program) } else { by_cat.get_mut(cat) };
        if let Some(sum) = sum {
            let taken = overlap.min(*sum);
            *sum -= taken;
            waiting += taken;
        }
    }
    waiting
}

/// A JSON object of sums, built in one go: serialising the map would insert its keys one by one, and a
/// build has a hundred packages per process.
fn object<'k>(sums: impl IntoIterator<Item = (&'k str, f64)>) -> Value {
    Value::Object(sums.into_iter().map(|(key, us)| (key.to_owned(), Value::from(us))).collect())
}

pub fn section(rows: &[ProcessTimes], dictionary: &Dictionary) -> Section {
    let mut section = Section::new("processes", "Processes: start-up against work");
    let mut table = Table::new(
        "",
        &[
            "pid",
            "command",
            "wall ms",
            "start-up ms",
            "imports ms",
            "top imports (ms)",
            "work ms",
            "work by category (ms)",
            "main program ms",
            "gc ms",
            "exit ms",
            "waiting on children ms",
            "unattributed ms",
            "overhead : work",
            "peak RSS MiB",
            "exit",
        ],
    );
    // Built in parallel: a big build has thousands of processes with a hundred packages each.
    let cells: Vec<Vec<String>> = rows
        .par_iter()
        .map(|r| {
            let by_cat =
                r.work_by_category.iter().map(|(c, us)| format!("{c} {}", ms(*us))).collect::<Vec<_>>().join(", ");
            let mut packages = r.imports_by_package.clone();
            packages.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let top_imports = packages
                .iter()
                .take(3)
                .map(|(p, us)| format!("{} {}", dictionary.packages[*p as usize], ms(*us)))
                .collect::<Vec<_>>()
                .join(", ");
            let ratio =
                if r.work_us > 0.0 { format!("{:.0} : 1", r.overhead_us() / r.work_us) } else { "no work".into() };
            vec![
                r.pid.to_string(),
                r.command.clone(),
                ms(r.wall_us),
                ms(r.startup_us + r.activation_us),
                ms(r.import_us),
                top_imports,
                ms(r.work_us),
                by_cat,
                ms(r.program_us),
                ms(r.gc_us),
                ms(r.exit_us()),
                ms(r.waiting_us),
                ms(r.unattributed_us),
                ratio,
                r.peak_rss.map_or("–".into(), crate::report::mib),
                r.exit.clone(),
            ]
        })
        .collect();
    for row in cells {
        table.row(row);
    }
    section.tables.push(table);
    section.notes.push(
        "start-up = interpreter start-up before lynshim activated + lynshim's own activation; main program = the \
         script's own code outside imports and calls; exit = atexit handlers + lynshim writing its trace + \
         interpreter teardown up to the real exit; waiting on children = in a call or the main program while a \
         process it started ran (maketalk waiting for make), not counted as work; time is split by each span's \
         self time"
            .into(),
    );
    // Built as values, not through `json!` on values, which would copy each one again by serialising it.
    section.data = Value::Array(
        rows.par_iter()
            .map(|r| {
                let mut row = json!({
                    "pid": r.pid, "command": r.command, "group": r.group, "lamd_command": r.lamd_command,
                    "wall_us": r.wall_us, "startup_us": r.startup_us, "activation_us": r.activation_us,
                    "import_us": r.import_us, "work_us": r.work_us, "program_us": r.program_us, "gc_us": r.gc_us,
                    "gc_collections": r.gc_collections, "atexit_us": r.atexit_us, "shim_write_us": r.shim_write_us,
                    "teardown_us": r.teardown_us, "waiting_us": r.waiting_us, "unattributed_us": r.unattributed_us, "peak_rss_bytes": r.peak_rss, "exit": r.exit, "calls": r.calls,
                });
                row["imports_by_package_us"] =
                    object(r.imports_by_package.iter().map(|(p, us)| (dictionary.packages[*p as usize].as_str(), *us)));
                row["work_by_category_us"] = object(r.work_by_category.iter().map(|(c, us)| (c.as_str(), *us)));
                row
            })
            .collect(),
    );
    section
}
