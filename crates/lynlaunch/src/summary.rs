//! The run's trace files told apart by who wrote them, and the one line `lynshim run` ends with. Both
//! launchers use these (the Python one through `lynshim._native.trace_source` and `run_summary`).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use lynschema::{arg, event, files};

/// A run directory's trace files.
pub struct Traces {
    /// lynshim's traces of Python processes.
    pub python: Vec<PathBuf>,
    /// The preload library's exec records (one per program image, Python or not).
    pub exec: Vec<PathBuf>,
}

impl Traces {
    pub fn of(run_dir: &Path) -> Self {
        let mut every: Vec<PathBuf> = std::fs::read_dir(run_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.file_name().is_some_and(|n| files::is_trace_file_name(&n.to_string_lossy())))
                    .collect()
            })
            .unwrap_or_default();
        every.sort();
        let (exec, python) = every.into_iter().partition(|p| source_of(p) == arg::SOURCE_EXEC);
        Self { python, exec }
    }

    /// Processes with exec records and no Python trace: make, sh, gpp, pandoc…
    fn other_processes(&self) -> usize {
        let python: BTreeSet<String> = self.python.iter().map(|p| process_of(p)).collect();
        self.exec.iter().map(|p| process_of(p)).collect::<BTreeSet<_>>().difference(&python).count()
    }
}

/// Who wrote a trace file: [`arg::SOURCE_EXEC`] (the preload library) or [`arg::SOURCE_PYTHON`] (lynshim in a
/// Python process; also what a file without the key, or one that cannot be read, counts as). The
/// `lynshim.process` event is among the first lines of both kinds.
pub fn source_of(path: &Path) -> &'static str {
    let Ok(file) = File::open(path) else { return arg::SOURCE_PYTHON };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    for _ in 0..16 {
        line.clear();
        match (&mut reader).take(1 << 20).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !line.windows(event::PROCESS.len()).any(|w| w == event::PROCESS.as_bytes()) {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text.trim().trim_matches(',')) else { break };
        if value.get("name").and_then(|n| n.as_str()) == Some(event::PROCESS) {
            let source = value.get("args").and_then(|a| a.get(arg::SOURCE)).and_then(|s| s.as_str());
            return if source == Some(arg::SOURCE_EXEC) { arg::SOURCE_EXEC } else { arg::SOURCE_PYTHON };
        }
    }
    arg::SOURCE_PYTHON
}

/// A trace file's process, `pid-ticks` from its name: one for all of a process's files.
fn process_of(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.split('-').take(2).collect::<Vec<_>>().join("-")
}

fn processes(n: usize, kind: &str) -> String {
    format!("{n} {kind} {}", if n == 1 { "process" } else { "processes" })
}

/// `lynshim: traced N Python processes[ and M other processes][; non-Python processes were not traced
/// (why)]; traces in DIR/`. `not_traced` is why exec tracing was asked for and not done.
pub fn line(traces: &Traces, not_traced: Option<&str>, shown: &Path) -> String {
    let mut line = format!("lynshim: traced {}", processes(traces.python.len(), "Python"));
    let others = traces.other_processes();
    if others > 0 {
        line += &format!(" and {}", processes(others, "other"));
    }
    if let Some(why) = not_traced {
        line += &format!("; non-Python processes were not traced ({why})");
    }
    line + &format!("; traces in {}/", shown.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_the_summary_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        let process = |source: &str| {
            let process = serde_json::json!({"name": "lynshim.process", "args": {"source": source}});
            format!("[\n{{\"ph\":\"M\",\"name\":\"process_name\"}},\n{process},\n")
        };
        write("10-5-00000001.lynshim.json", &process("python"));
        write("10-5-00000002.lynshim.json", &process("exec"));
        write("11-7-00000003.lynshim.json", &process("exec"));
        write("12-9-00000004.lynshim.json", "garbage");
        write("run.json", "{}");
        let traces = Traces::of(dir.path());
        assert_eq!(traces.python.len(), 2);
        assert_eq!(traces.exec.len(), 2);
        assert_eq!(
            line(&traces, None, Path::new("t/run")),
            "lynshim: traced 2 Python processes and 1 other process; traces in t/run/"
        );
        let none = Traces { python: vec![PathBuf::from("1-1-a.lynshim.json")], exec: vec![] };
        assert_eq!(
            line(&none, Some("x is missing"), Path::new("/abs")),
            "lynshim: traced 1 Python process; non-Python processes were not traced (x is missing); traces in /abs/"
        );
    }
}
