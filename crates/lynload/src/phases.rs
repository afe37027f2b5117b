//! A process's time by phase: start-up, lynshim's own, imports by package, work by category, the main
//! program, GC, `atexit` handlers and teardown.
//!
//! Time is split by the self time of spans ([`crate::Span::self_us`]): each span's own time (its
//! duration less the spans directly inside it) goes to its phase, so an import made inside a lamd
//! command counts as import and a lynguine call made while a module is importing counts as work, and
//! nothing is counted twice. The spans that bracket the program rather than nest in it — the
//! interpreter's start-up, lynshim's own spans, teardown — count whole.
//!
//! lynanalyze's per-process accounting and `lynshim bench` both use this; what no phase covers is each
//! one's to name (unattributed, rest).

use std::collections::BTreeMap;
use std::hash::Hash;

use lynschema::{category, event};
use rustc_hash::FxHashMap;

use crate::ProcessTrace;

/// What a span's time counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The interpreter's start-up, before lynshim activated.
    Startup,
    /// lynshim's activation.
    Activation,
    /// lynshim writing its trace out at exit.
    ShimWrite,
    /// Importing a module (self time), by top-level package.
    Import,
    /// A call into lynguine or lamd, or a user span (self time), by category.
    Call,
    /// The main program's own code, outside imports and calls.
    Program,
    /// A garbage collection.
    Gc,
    /// The program's `atexit` handlers.
    Atexit,
    /// The interpreter's teardown, from the last `atexit` handler to the exit.
    Teardown,
    /// None of the process's phases (a whole program's span in an exec record, say).
    Other,
}

impl Phase {
    /// The phase of a span of category `cat` and name `name`.
    pub fn of(cat: &str, name: &str) -> Self {
        match cat {
            category::STARTUP => Self::Startup,
            category::TRACER if name == event::SHIM_WRITE => Self::ShimWrite,
            category::TRACER => Self::Activation,
            category::IMPORT => Self::Import,
            category::PROGRAM => Self::Program,
            category::GC => Self::Gc,
            category::ATEXIT => Self::Atexit,
            category::TEARDOWN => Self::Teardown,
            cat if category::is_call(cat) => Self::Call,
            _ => Self::Other,
        }
    }
}

/// The top-level package of a module: `pandas` for `pandas.core.frame`.
pub fn package(module: &str) -> &str {
    module.split('.').next().unwrap_or("")
}

/// One process's time by phase, in microseconds. `P` stands for a package: its name, or a number for it.
#[derive(Debug, Clone)]
pub struct Phases<'c, P> {
    pub startup_us: f64,
    pub activation_us: f64,
    pub shim_write_us: f64,
    pub import_us: f64,
    /// Import self time by top-level package ([`package`]).
    pub imports_by_package: FxHashMap<P, f64>,
    /// Call self time by category.
    pub work_by_category: BTreeMap<&'c str, f64>,
    pub calls: usize,
    pub program_us: f64,
    pub gc_us: f64,
    pub gc_collections: usize,
    pub atexit_us: f64,
    pub teardown_us: f64,
}

impl<P> Default for Phases<'_, P> {
    fn default() -> Self {
        Self {
            startup_us: 0.0,
            activation_us: 0.0,
            shim_write_us: 0.0,
            import_us: 0.0,
            imports_by_package: FxHashMap::default(),
            work_by_category: BTreeMap::new(),
            calls: 0,
            program_us: 0.0,
            gc_us: 0.0,
            gc_collections: 0,
            atexit_us: 0.0,
            teardown_us: 0.0,
        }
    }
}

impl<'c, P: Hash + Eq> Phases<'c, P> {
    /// Count one span of `phase` and category `cat`; `package` is asked for an import's only.
    pub fn add(&mut self, phase: Phase, cat: &'c str, package: impl FnOnce() -> P, dur_us: f64, self_us: f64) {
        match phase {
            Phase::Startup => self.startup_us += dur_us,
            Phase::Activation => self.activation_us += dur_us,
            Phase::ShimWrite => self.shim_write_us += dur_us,
            Phase::Teardown => self.teardown_us += dur_us,
            Phase::Import => {
                self.import_us += self_us;
                *self.imports_by_package.entry(package()).or_default() += self_us;
            }
            Phase::Call => {
                *self.work_by_category.entry(cat).or_default() += self_us;
                self.calls += 1;
            }
            Phase::Program => self.program_us += self_us,
            Phase::Gc => {
                self.gc_us += self_us;
                self.gc_collections += 1;
            }
            Phase::Atexit => self.atexit_us += self_us,
            Phase::Other => {}
        }
    }

    /// Count the end of `trace`'s process that its spans do not see: after lynshim's last event the
    /// interpreter still runs the C exit handlers and unmaps itself, which its exec record, when one
    /// was linked, saw ([`ProcessTrace::end_us`]). That is teardown.
    pub fn add_unseen_teardown(&mut self, trace: &ProcessTrace) {
        self.teardown_us += (trace.end_us() - trace.end_us).max(0.0);
    }

    /// Call self time, all categories together.
    pub fn work_us(&self) -> f64 {
        self.work_by_category.values().sum()
    }
}

impl<'t> Phases<'t, &'t str> {
    /// The phases of one process, from its spans.
    pub fn of(trace: &'t ProcessTrace) -> Self {
        let mut phases = Self::default();
        for span in &trace.spans {
            let phase = Phase::of(&span.cat, &span.name);
            phases.add(phase, &span.cat, || package(&span.name), span.dur_us, span.self_us);
        }
        phases.add_unseen_teardown(trace);
        phases
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_trace;

    #[test]
    fn phases_count_self_time_and_the_bracketing_spans_whole() {
        let text = r#"[
{"args":{"pid":7,"run_id":"r","command":"mdfield title talk.md","wall_zero_ns":1000},"cat":"lynshim","name":"lynshim.process","ph":"i","pid":7,"tid":7,"ts":0.0},
{"cat":"startup","dur":100.0,"name":"interpreter start-up","ph":"X","pid":7,"tid":7,"ts":0.0},
{"cat":"lynshim","dur":20.0,"name":"lynshim activation","ph":"X","pid":7,"tid":7,"ts":100.0},
{"cat":"program","name":"main program","ph":"B","pid":7,"tid":7,"ts":120.0},
{"cat":"import","name":"pandas.core","ph":"B","pid":7,"tid":7,"ts":200.0},
{"cat":"gc","dur":5.0,"name":"gc","ph":"X","pid":7,"tid":7,"ts":210.0},
{"cat":"lamd","name":"main","ph":"B","pid":7,"tid":7,"ts":220.0},
{"cat":"lamd","name":"main","ph":"E","pid":7,"tid":7,"ts":250.0},
{"cat":"import","name":"pandas.core","ph":"E","pid":7,"tid":7,"ts":300.0},
{"cat":"program","name":"main program","ph":"E","pid":7,"tid":7,"ts":350.0},
{"args":{"exit_status":0},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":7,"tid":7,"ts":400.0}
]"#;
        let trace = parse_trace(text.as_bytes()).expect("parses");
        let phases = Phases::of(&trace);
        assert_eq!((phases.startup_us, phases.activation_us), (100.0, 20.0));
        // The import's 100 µs less the collection and the lamd call inside it.
        assert_eq!(phases.imports_by_package.get("pandas"), Some(&65.0));
        assert_eq!((phases.gc_us, phases.gc_collections), (5.0, 1));
        assert_eq!((phases.work_by_category.get("lamd"), phases.calls), (Some(&30.0), 1));
        assert_eq!(phases.program_us, 130.0);
        assert_eq!(trace.end_us(), 400.0);
    }
}
