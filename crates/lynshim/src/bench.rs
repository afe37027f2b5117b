//! What `lynshim bench` reads of a trace: the process's time by phase, through lynload, so that the
//! bench and lynanalyze read a trace (cut short or damaged) by one set of rules and split it by one
//! model ([`lynload::phases`]).
//!
//! Only the bench calls this, never a traced process: lynload is linked in but does nothing at import.

use std::path::{Path, PathBuf};

use lynload::phases::Phases;
use lynload::LoadOptions;
use lynschema::{category, event};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

/// `(process name, phase → µs, wall µs, exit args)` of one trace file. The phases are the bench's:
/// `interpreter start-up`, `lynshim activation`, `imports: <package>`, `lamd work`, `lynguine
/// <category>`, `user spans`, and `rest` (the main program, GC, exit and what no span covers), so they
/// add up to the wall time. A file lynload cannot read raises `ValueError` saying why.
#[pyfunction]
pub fn process_phases<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(String, Bound<'py, PyDict>, f64, Bound<'py, PyAny>)> {
    let max_bytes = LoadOptions::default().max_file_bytes;
    let unreadable = |message: String| PyValueError::new_err(format!("{}: {message}", path.display()));
    let (trace, _cut_short) = lynload::read_trace(&path, max_bytes).map_err(unreadable)?;
    let phases = Phases::of(&trace);
    let named = PyDict::new(py);
    let mut traced = 0.0;
    let mut put = |name: &str, us: f64| -> PyResult<()> {
        traced += us;
        named.set_item(name, us)
    };
    // The bench's labels, not trace keys. A process forked from a traced one has neither of these two.
    if phases.startup_us > 0.0 {
        put("interpreter start-up", phases.startup_us)?;
    }
    if phases.activation_us > 0.0 {
        put("lynshim activation", phases.activation_us)?;
    }
    let mut imports: Vec<(&str, f64)> = phases.imports_by_package.iter().map(|(p, us)| (*p, *us)).collect();
    imports.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (package, us) in imports {
        put(&format!("imports: {package}"), us)?;
    }
    for (&cat, &us) in &phases.work_by_category {
        match cat {
            category::LAMD => put("lamd work", us)?,
            category::USER => put("user spans", us)?,
            cat => put(&format!("lynguine {cat}"), us)?,
        }
    }
    let wall = trace.end_us();
    named.set_item("rest", (wall - traced).max(0.0))?;
    let name = if trace.command.is_empty() { "?".to_owned() } else { trace.command.clone() };
    Ok((name, named, wall, exit_args(py, &path, max_bytes, &trace.dropped.lines)?))
}

/// The args of the trace's exit event (the files it opened, its CPU time…) as a dict, empty if it has none.
fn exit_args<'py>(py: Python<'py>, path: &Path, max_bytes: u64, dropped: &[u32]) -> PyResult<Bound<'py, PyAny>> {
    let unreadable = |message: String| PyValueError::new_err(format!("{}: {message}", path.display()));
    let (events, _) = lynload::read_events(path, max_bytes, dropped).map_err(unreadable)?;
    let args = events
        .into_iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(event::EXIT))
        .and_then(|mut e| e.get_mut("args").map(Value::take))
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    py.import("json")?.call_method1("loads", (args.to_string(),))
}
