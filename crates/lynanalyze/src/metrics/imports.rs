//! Imports: which modules cost most (self and cumulative), how many processes paid for each, the
//! share of start-up they make, and lazy-import candidates.
//!
//! A lazy-import candidate is a top-level package that a process imported but into which no traced
//! span of that process calls. Only lynguine and lamd entry points are traced, so "no traced call" is
//! the evidence, and the report says so: pandas is a candidate for a process whose lynguine calls
//! never needed a data frame only if those calls are what lynshim traced.

use lynschema::category;
use rayon::prelude::*;
use serde_json::json;

use crate::frame::{Dictionary, SpanColumns};
use crate::metrics::processes::ProcessTimes;
use crate::report::{ms, pct, Section, Table};

/// Import figures of one module or package, summed over processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Processes that imported it.
    pub processes: u32,
    /// Import spans.
    pub imports: u32,
    pub self_us: f64,
    pub cumulative_us: f64,
}

impl Totals {
    fn add(&mut self, other: &Self) {
        self.processes += other.processes;
        self.imports += other.imports;
        self.self_us += other.self_us;
        self.cumulative_us += other.cumulative_us;
    }
}

/// The totals of a build: per module (indexed by name number), per top-level package (by package
/// number), and per lazy-import candidate (by package number; `cumulative_us` unused).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportTotals {
    pub modules: Vec<Totals>,
    pub packages: Vec<Totals>,
    pub lazy: Vec<Totals>,
}

impl ImportTotals {
    fn zero(dictionary: &Dictionary) -> Self {
        let packages = dictionary.packages.len();
        Self {
            modules: vec![Totals::default(); dictionary.names.len()],
            packages: vec![Totals::default(); packages],
            lazy: vec![Totals::default(); packages],
        }
    }

    fn add(&mut self, other: &Self) {
        for (mine, theirs) in
            [(&mut self.modules, &other.modules), (&mut self.packages, &other.packages), (&mut self.lazy, &other.lazy)]
        {
            mine.iter_mut().zip(theirs).for_each(|(a, b)| a.add(b));
        }
    }
}

/// Processes summed together before their chunks are added up.
const PROCESSES_PER_CHUNK: usize = 64;

/// Every module's and package's totals, and the lazy-import candidates, in one pass over the span
/// columns. Sums go into arrays indexed by the dictionary's numbers rather than through a polars
/// group-by: on 12.5 million import spans (10 000 processes) the group-bys took 1.4 s here, this pass
/// a small part of that. Chunks of processes are summed in parallel and then added in order, so the
/// floating-point totals are the same on every run.
pub fn totals(columns: &SpanColumns<'_>, dictionary: &Dictionary) -> ImportTotals {
    let import_cat = dictionary.category(category::IMPORT);
    let processes: Vec<usize> = (0..columns.processes()).collect();
    let chunks: Vec<ImportTotals> = processes
        .par_chunks(PROCESSES_PER_CHUNK)
        .map(|chunk| {
            let mut totals = ImportTotals::zero(dictionary);
            // The last process that counted each module or package, or called into a package.
            let mut module_seen = vec![usize::MAX; totals.modules.len()];
            let mut package_seen = vec![usize::MAX; totals.packages.len()];
            let mut called = vec![usize::MAX; totals.packages.len()];
            // This process's import self time per package, and the packages it imported.
            let mut cost = vec![0.0; totals.packages.len()];
            let mut imported = Vec::new();
            for &process in chunk {
                for row in columns.rows(process) {
                    let package = columns.package[row] as usize;
                    if columns.is_call(row) {
                        called[package] = process;
                    }
                    if columns.cat[row] != import_cat {
                        continue;
                    }
                    let (module, self_us, dur_us) =
                        (columns.name[row] as usize, columns.self_us[row], columns.dur_us[row]);
                    let m = &mut totals.modules[module];
                    if module_seen[module] != process {
                        module_seen[module] = process;
                        m.processes += 1;
                    }
                    m.imports += 1;
                    m.self_us += self_us;
                    m.cumulative_us += dur_us;
                    let k = &mut totals.packages[package];
                    if package_seen[package] != process {
                        package_seen[package] = process;
                        k.processes += 1;
                        imported.push(package);
                    }
                    k.imports += 1;
                    k.self_us += self_us;
                    cost[package] += self_us;
                }
                for package in imported.drain(..) {
                    if called[package] != process {
                        let lazy = &mut totals.lazy[package];
                        lazy.processes += 1;
                        lazy.imports += 1;
                        lazy.self_us += cost[package];
                    }
                    cost[package] = 0.0;
                }
            }
            totals
        })
        .collect();
    let mut all = ImportTotals::zero(dictionary);
    for chunk in &chunks {
        all.add(chunk);
    }
    all
}

/// The numbers of the entries that were imported, largest `key` first, then by string (the
/// dictionary's numbers are in string order).
fn ranked(totals: &[Totals], key: impl Fn(&Totals) -> f64) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..totals.len()).filter(|&i| totals[i].processes > 0).collect();
    ids.sort_by(|&a, &b| key(&totals[b]).total_cmp(&key(&totals[a])).then(a.cmp(&b)));
    ids
}

pub fn section(
    dictionary: &Dictionary,
    columns: &SpanColumns<'_>,
    per_process: &[ProcessTimes],
    top: usize,
) -> Section {
    let mut section = Section::new("imports", "Imports");
    // Each process's import time as its accounting summed it, added in process order: the same
    // floating-point total on every run.
    let total_import: f64 = per_process.iter().map(|p| p.import_us).sum();

    let totals = totals(columns, dictionary);
    #[allow(clippy::cast_precision_loss)]
    let mean = |sum: f64, t: &Totals| sum / f64::from(t.imports.max(1));

    let mut by_cumulative = Table::new(
        "top modules by cumulative time",
        &["module", "processes", "cumulative ms (all)", "mean cumulative ms", "self ms (all)", "mean self ms"],
    );
    let mut modules = Vec::new();
    for (rank, id) in ranked(&totals.modules, |t| t.cumulative_us).into_iter().enumerate() {
        let (name, t) = (&dictionary.names[id], &totals.modules[id]);
        if rank < top {
            by_cumulative.row(vec![
                name.clone(),
                t.processes.to_string(),
                ms(t.cumulative_us),
                ms(mean(t.cumulative_us, t)),
                ms(t.self_us),
                ms(mean(t.self_us, t)),
            ]);
        }
        modules.push(
            json!({"module": name, "processes": t.processes, "self_us": t.self_us, "cumulative_us": t.cumulative_us,
            "mean_self_us": mean(t.self_us, t), "mean_cumulative_us": mean(t.cumulative_us, t)}),
        );
    }
    section.tables.push(by_cumulative);

    let mut self_table =
        Table::new("top modules by self time", &["module", "processes", "self ms (all)", "share of import time"]);
    for id in ranked(&totals.modules, |t| t.self_us).into_iter().take(top) {
        let t = &totals.modules[id];
        self_table.row(vec![
            dictionary.names[id].clone(),
            t.processes.to_string(),
            ms(t.self_us),
            pct(t.self_us, total_import),
        ]);
    }
    section.tables.push(self_table);

    let mut package_table =
        Table::new("by top-level package", &["package", "processes", "self ms (all)", "share of import time"]);
    let mut package_data = Vec::new();
    for (rank, id) in ranked(&totals.packages, |t| t.self_us).into_iter().enumerate() {
        let (package, t) = (&dictionary.packages[id], &totals.packages[id]);
        if rank < top {
            package_table.row(vec![
                package.clone(),
                t.processes.to_string(),
                ms(t.self_us),
                pct(t.self_us, total_import),
            ]);
        }
        package_data.push(json!({"package": package, "processes": t.processes, "self_us": t.self_us}));
    }
    section.tables.push(package_table);

    // Lazy-import candidates: packages imported by a process with no traced call into them.
    let mut lazy = Table::new(
        "lazy-import candidates",
        &["package", "processes importing it without a traced call into it", "import self ms (all)"],
    );
    let mut lazy_data = Vec::new();
    for (rank, id) in ranked(&totals.lazy, |t| t.self_us).into_iter().enumerate() {
        let (package, t) = (&dictionary.packages[id], &totals.lazy[id]);
        if rank < top {
            lazy.row(vec![package.clone(), t.processes.to_string(), ms(t.self_us)]);
        }
        lazy_data.push(json!({"package": package, "processes": t.processes, "self_us": t.self_us}));
    }
    section.tables.push(lazy);
    section.notes.push(
        "lazy-import candidates: only lynguine and lamd entry points are traced, so a package \
        listed may still be used indirectly (lynguine's readers use pandas); the time is what importing it cost"
            .into(),
    );
    section.data = json!({"modules": modules, "packages": package_data, "lazy_import_candidates": lazy_data,
                          "total_import_self_us": total_import});
    section
}
