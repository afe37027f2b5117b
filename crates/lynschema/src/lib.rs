//! The lynshim trace schema: the one place that names what a trace contains.
//!
//! lynshim writes Chrome-trace JSON (an array of events, one per line) and lynanalyze reads it back.
//! Both sides take every event name, category, argument key and file-naming rule from this crate, so the
//! writer and the reader cannot drift apart. The Python half of lynshim gets the same constants through
//! the native module (`lynshim._native.schema`), generated from [`PYTHON_CONSTANTS`].
//!
//! A trace file holds spans as `B`/`E` event pairs, except that a span with nothing recorded inside
//! it (a leaf call or import: about half the spans) is written whole, as one `X` event whose args are
//! its begin's and its end's in one object (fewer events and bytes for the writer; format 2). That is
//! usual, not certain: a begin and its end handed to the writer in different lists, or naming the same
//! arg, stay a `B` and an `E`, so a reader must take both forms.
//! Besides spans it holds:
//! - `M` events `process_name`, `process_labels` and `thread_name` with the real pid and tid;
//! - one instant event [`event::PROCESS`] at ts 0 whose args carry the process metadata ([`arg`]);
//! - an `X` event [`event::STARTUP`] from the process's start (ts 0) to the moment lynshim activated;
//! - `C` counter events [`event::RSS`] (and [`event::PEAK_RSS`] at exit);
//! - one instant event [`event::EXIT`] at exit with the exit status, when the process exits normally;
//! - `s`/`f` flow events binding a server-client request to the server span that handled it.
//!
//! Timestamps are microseconds since the process started; [`arg::WALL_ZERO_NS`] is the Unix time of that
//! zero, so traces from different processes line up on one clock.

use serde::{Deserialize, Serialize};

/// Version of the trace layout described here; bumped when a reader must change. 2: leaf spans are
/// `X` events (a reader that took every call for a `B`/`E` pair would miss them).
pub const FORMAT_VERSION: u32 = 2;

/// Names of the events lynshim writes itself (spans of user code are named after what they wrap).
pub mod event {
    /// Instant event at ts 0 carrying the process metadata in its args.
    pub const PROCESS: &str = "lynshim.process";
    /// Instant event written when the process exits (exit status, peak RSS, late metadata).
    pub const EXIT: &str = "lynshim.exit";
    /// Complete event covering the interpreter's start-up before lynshim activated.
    pub const STARTUP: &str = "interpreter start-up";
    /// Complete event covering lynshim's activation, from its bootstrap to the main program's start
    /// (importing lynshim, opening the trace, installing the hooks): its own cost, reported apart.
    pub const SHIM_ACTIVATION: &str = "lynshim activation";
    /// Counter: resident set size in bytes.
    pub const RSS: &str = "rss";
    /// Counter: peak resident set size in bytes, written at exit.
    pub const PEAK_RSS: &str = "peak rss";
    /// Name of flow events (`s`/`f`) that join a client request to the server span handling it.
    pub const REQUEST_FLOW: &str = "lynguine request";
    /// Name of the Chrome metadata events (standard names, understood by Perfetto).
    pub const PROCESS_NAME: &str = "process_name";
    pub const PROCESS_LABELS: &str = "process_labels";
    pub const THREAD_NAME: &str = "thread_name";
    pub const PROCESS_SORT_INDEX: &str = "process_sort_index";
    /// Span (category [`category::PROGRAM`]) from the end of activation to the end of the program's
    /// `__main__` (when Python starts shutting down): its self time is the script's own code.
    pub const MAIN_PROGRAM: &str = "main program";
    /// One span per garbage collection (category [`category::GC`]), with the generation and counts.
    pub const GC: &str = "gc";
    /// Span (category [`category::ATEXIT`]) covering the program's `atexit` handlers.
    pub const ATEXIT: &str = "atexit handlers";
    /// Span (category [`category::TEARDOWN`]) from the last `atexit` handler to the process's exit.
    pub const TEARDOWN: &str = "interpreter teardown";
    /// Span (category [`category::TRACER`]) of lynshim writing its trace out at exit.
    pub const SHIM_WRITE: &str = "lynshim writing";
    /// Instant event (category [`category::TRACER`]) on a traced thread that waited for lynshim's writer
    /// to catch up, rather than lose records (args [`arg::WAITED_US`], [`arg::LISTS_BEHIND`]). Only a
    /// program that records faster than the writer can write (millions of traced calls a second) waits.
    pub const WAITED_FOR_WRITER: &str = "lynshim.waited-for-writer";
}

/// Span categories (`cat`). Operation categories classify lynguine entry points.
pub mod category {
    /// Interpreter start-up before lynshim activated.
    pub const STARTUP: &str = "startup";
    /// One span per module import, nested as the imports nest.
    pub const IMPORT: &str = "import";
    /// lynshim's own bookkeeping (metadata events, its own import).
    pub const TRACER: &str = "lynshim";
    /// A lamd command's `main`, the root of a process's work.
    pub const LAMD: &str = "lamd";
    pub const CONFIG: &str = "config";
    pub const FIELD: &str = "field";
    pub const READ: &str = "read";
    pub const WRITE: &str = "write";
    pub const DATAFRAME: &str = "dataframe";
    pub const COMPUTE: &str = "compute";
    pub const TEMPLATE: &str = "template";
    pub const SERVER_CLIENT: &str = "server-client";
    pub const SERVER: &str = "server";
    /// Spans made by user code with `lynshim.span`.
    pub const USER: &str = "user";
    /// Counter events.
    pub const MEMORY: &str = "memory";
    /// The `__main__` program of a Python process (its self time is the script's own code).
    pub const PROGRAM: &str = "program";
    /// Garbage-collection pauses.
    pub const GC: &str = "gc";
    /// `atexit` handlers of the program.
    pub const ATEXIT: &str = "atexit";
    /// Interpreter teardown: from the last `atexit` handler to the process's exit.
    pub const TEARDOWN: &str = "teardown";
    /// A whole non-Python program's life (one `X` span in an exec record, see [`crate::arg::SOURCE`]).
    pub const PROCESS: &str = "process";

    /// Categories that count as "work" (everything a process does once it is up).
    pub const WORK: &[&str] =
        &[LAMD, CONFIG, FIELD, READ, WRITE, DATAFRAME, COMPUTE, TEMPLATE, SERVER_CLIENT, SERVER, USER];
    /// Operation categories of lynguine entry points (the target table may use only these and `lamd`).
    pub const OPERATIONS: &[&str] = &[CONFIG, FIELD, READ, WRITE, DATAFRAME, COMPUTE, TEMPLATE, SERVER_CLIENT, SERVER];

    /// Is a span of this category a call into lynguine or lamd (not an import, start-up or lynshim's own)?
    pub fn is_call(cat: &str) -> bool {
        WORK.contains(&cat)
    }
}

/// Argument keys, in span args and in the process/exit metadata.
pub mod arg {
    // Process metadata (args of `event::PROCESS`).
    pub const FORMAT_VERSION: &str = "format_version";
    pub const ARGV: &str = "argv";
    pub const PID: &str = "pid";
    pub const PPID: &str = "ppid";
    pub const CWD: &str = "cwd";
    pub const EXECUTABLE: &str = "executable";
    pub const PYTHON_VERSION: &str = "python_version";
    pub const RUN_ID: &str = "run_id";
    pub const LABEL: &str = "label";
    pub const PARENT_TRACE: &str = "parent_trace";
    pub const PARENT_PID: &str = "parent_pid";
    /// The parent's start in clock ticks since boot (exec records): with [`PPID`], the parent's
    /// identity, which the pid alone is not once pids wrap around.
    pub const PARENT_START_TICKS: &str = "parent_start_ticks";
    pub const COMMAND: &str = "command";
    pub const LAMD_COMMAND: &str = "lamd_command";
    pub const WALL_ZERO_NS: &str = "wall_zero_ns";
    pub const ACTIVATED_US: &str = "activated_us";
    pub const STARTUP_CPU_USER_US: &str = "cpu_user_us";
    pub const STARTUP_CPU_SYS_US: &str = "cpu_sys_us";
    pub const FORKED_FROM: &str = "forked_from";
    /// The process's start in clock ticks since boot (`/proc/<pid>/stat`): with the pid, its identity.
    pub const START_TICKS: &str = "start_ticks";
    /// Who wrote the file: [`SOURCE_PYTHON`] (lynshim in a Python process, the default when absent) or
    /// [`SOURCE_EXEC`] (the preload library, one record per program image, for every process).
    pub const SOURCE: &str = "source";
    pub const SOURCE_PYTHON: &str = "python";
    pub const SOURCE_EXEC: &str = "exec";
    /// CPU time of the whole process at exit (exec records, and the exit event of Python traces).
    pub const CPU_USER_US: &str = "cpu_user_us";
    pub const CPU_SYS_US: &str = "cpu_sys_us";
    // Exit metadata (args of `event::EXIT`).
    pub const EXIT_STATUS: &str = "exit_status";
    pub const EXIT_SIGNAL: &str = "exit_signal";
    pub const PEAK_RSS_BYTES: &str = "peak_rss_bytes";
    pub const LYNGUINE_VERSION: &str = "lynguine_version";
    pub const LAMD_VERSION: &str = "lamd_version";
    /// Files the process opened or mapped (only with `env::RECORD_FILES`).
    pub const OPENED_FILES: &str = "opened_files";
    // Counters.
    pub const BYTES: &str = "bytes";
    /// The [`crate::moment`] an RSS sample was taken at. Written as a key of the counter event itself,
    /// beside `args`: Perfetto reads every arg of a counter event as a numeric series.
    pub const AT: &str = "at";
    // Span args recorded by the wrappers.
    pub const MODULE: &str = "module";
    /// The field a field extractor was asked for (its parameter's name).
    pub const FIELD: &str = "field";
    pub const ERROR: &str = "error";
    pub const FOUND: &str = "found";
    pub const ROWS: &str = "rows";
    pub const RESULT: &str = "result";
    pub const REQUEST_ID: &str = "request_id";
    /// Recorded in place of a call's arguments when describing them failed (the call still runs).
    pub const SHIM_ERROR: &str = "lynshim_error";
    // Parameters of lynguine entry points that name the configuration files they read.
    pub const USER_FILE: &str = "user_file";
    pub const FILENAME: &str = "filename";
    // Args of `event::GC` spans.
    pub const GENERATION: &str = "generation";
    pub const COLLECTED: &str = "collected";
    pub const UNCOLLECTABLE: &str = "uncollectable";
    // Args of `event::WAITED_FOR_WRITER`.
    /// How long the thread waited, in microseconds.
    pub const WAITED_US: &str = "waited_us";
    /// Lists of records handed to the writer and not yet written when the wait began.
    pub const LISTS_BEHIND: &str = "lists_behind";
    /// Value that replaces an argument whose name looks like a credential.
    pub const REDACTED: &str = "[redacted]";
}

/// Values of [`arg::AT`] on RSS samples: the moment of the process each one was taken at.
pub mod moment {
    /// At activation, before the program's own imports.
    pub const BASELINE: &str = "baseline";
    /// At the first lamd/lynguine call made once the main program's imports are done.
    pub const AFTER_IMPORTS: &str = "after imports";
    /// When the first configuration call (category `config`) returned.
    pub const AFTER_CONFIG: &str = "after config load";
    /// When the first data-loading call (category `read` or `dataframe`) returned.
    pub const AFTER_DATA: &str = "after data load";
    /// When the main program ended (its operations done, before `atexit` and teardown).
    pub const AFTER_OPERATIONS: &str = "after operations";
    /// At exit.
    pub const EXIT: &str = "exit";
    /// Every moment, in the order a process passes them.
    pub const ALL: &[&str] = &[BASELINE, AFTER_IMPORTS, AFTER_CONFIG, AFTER_DATA, AFTER_OPERATIONS, EXIT];
}

/// Argument names that look like credentials; their values never reach a trace.
pub const CREDENTIAL_WORDS: &[&str] =
    &["password", "passwd", "token", "secret", "key", "credential", "auth", "cookie", "session"];

/// True when an argument called `name` must be redacted (ASCII case ignored; asked on every traced
/// call, so it does not allocate).
pub fn is_credential_name(name: &str) -> bool {
    let name = name.as_bytes();
    CREDENTIAL_WORDS.iter().any(|w| name.windows(w.len()).any(|window| window.eq_ignore_ascii_case(w.as_bytes())))
}

/// Parameters never recorded: the object or class a method is bound to.
pub const SKIP_PARAMS: &[&str] = &["self", "cls"];
/// Keys of a mapping argument worth recording (lynguine's `details` dicts, request payloads)…
pub const DETAIL_KEYS: &[&str] = &["type", "filename", "directory", "glob", "source", "field", "name", "user_file"];
/// …for parameters with these names only: other mappings (a talk's header fields, say) are data, not
/// a description of what is read, and are recorded by their size.
pub const DETAIL_PARAMS: &[&str] = &["details", "data_source", "request_data", "source", "spec"];

/// Longest string a span argument may hold; longer ones are cut and end in `…`.
pub const MAX_ARG_CHARS: usize = 200;

/// Trace file naming.
pub mod files {
    /// Every per-process trace file ends in this.
    pub const TRACE_SUFFIX: &str = ".lynshim.json";
    /// The run record `lynshim run` writes beside the traces.
    pub const RUN_RECORD: &str = "run.json";

    /// Name of a process's trace file. The pid alone can be reused; the process's start time (clock
    /// ticks since boot, from `/proc/<pid>/stat`) plus a random nonce make the name unique, and the file
    /// is created with `O_EXCL` so an existing file is never overwritten.
    pub fn trace_file_name(pid: u32, start_ticks: u64, nonce: u32) -> String {
        format!("{pid}-{start_ticks}-{nonce:08x}{TRACE_SUFFIX}")
    }

    /// Prefix every trace of the process `(pid, start_ticks)` has: how a child finds its parent's file.
    pub fn trace_file_prefix(pid: u32, start_ticks: u64) -> String {
        format!("{pid}-{start_ticks}-")
    }

    /// True for names written by [`trace_file_name`].
    pub fn is_trace_file_name(name: &str) -> bool {
        name.ends_with(TRACE_SUFFIX)
    }
}

/// Environment variables lynshim reads.
pub mod env {
    /// Directory to write traces into; its presence activates tracing on `import lynshim`.
    pub const DIR: &str = "LYNSHIM_DIR";
    /// Identifier shared by every process of one `lynshim run`.
    pub const RUN_ID: &str = "LYNSHIM_RUN_ID";
    /// Free-text label of the run (`lynshim run --label`).
    pub const LABEL: &str = "LYNSHIM_LABEL";
    /// Extra patch targets (TOML-like `module:qualname=category`, `;`-separated) or `-name` to drop one.
    pub const TARGETS: &str = "LYNSHIM_TARGETS";
    /// Set to `0` to record no import spans (start-up is still one span).
    pub const IMPORTS: &str = "LYNSHIM_IMPORTS";
    /// Directory of the bootstrap `sitecustomize` (so the bootstrap can chain to the next one).
    pub const BOOTSTRAP: &str = "LYNSHIM_BOOTSTRAP";
    /// Set to `1` to record every file the process opened (`lynshim bench --cold` learns them so).
    pub const RECORD_FILES: &str = "LYNSHIM_RECORD_FILES";
}

/// What `lynshim run` records about the whole command, written to [`files::RUN_RECORD`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub format_version: u32,
    pub run_id: String,
    pub label: Option<String>,
    pub command: Vec<String>,
    pub cwd: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Exit code of the command, or `None` when a signal ended it.
    pub exit_status: Option<i32>,
    /// Signal that ended the command, if any.
    pub exit_signal: Option<i32>,
    /// CPU time of every child process waited for (`getrusage(RUSAGE_CHILDREN)`), in seconds.
    pub children_user_s: f64,
    pub children_sys_s: f64,
    /// Number of trace files found in the run directory when the command ended.
    pub traced_processes: usize,
}

impl RunRecord {
    /// Writes the record to `path` as pretty JSON, readable by its owner only (mode 0600), through a
    /// temporary file renamed into place, so that a reader never sees half a record. Both launchers
    /// write it so (the native `lynshim` and, through the extension module, the Python one).
    ///
    /// Not synced to disk: `lynshim run` writes it after the command has ended and before it returns, so
    /// an `fsync` here (0.5-1.5 ms on this machine's ext4, more when the disk is busy writing a build's
    /// traces back) would be added to every traced command's time as its caller sees it; and the traces
    /// the record describes are not synced either, so a crash of the machine loses them with it.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    }
}

/// The constants the Python half of lynshim needs, as `(NAME, value)` pairs exported to
/// `lynshim._native.schema`. Kept here so a new constant cannot be forgotten on one side.
pub const PYTHON_CONSTANTS: &[(&str, &str)] = &[
    ("EVENT_PROCESS", event::PROCESS),
    ("EVENT_EXIT", event::EXIT),
    ("EVENT_STARTUP", event::STARTUP),
    ("EVENT_SHIM_ACTIVATION", event::SHIM_ACTIVATION),
    ("EVENT_RSS", event::RSS),
    ("EVENT_REQUEST_FLOW", event::REQUEST_FLOW),
    ("EVENT_MAIN_PROGRAM", event::MAIN_PROGRAM),
    ("EVENT_GC", event::GC),
    ("EVENT_ATEXIT", event::ATEXIT),
    ("EVENT_TEARDOWN", event::TEARDOWN),
    ("EVENT_SHIM_WRITE", event::SHIM_WRITE),
    ("EVENT_WAITED_FOR_WRITER", event::WAITED_FOR_WRITER),
    ("CAT_PROGRAM", category::PROGRAM),
    ("CAT_GC", category::GC),
    ("CAT_ATEXIT", category::ATEXIT),
    ("CAT_TEARDOWN", category::TEARDOWN),
    ("CAT_PROCESS", category::PROCESS),
    ("ARG_GENERATION", arg::GENERATION),
    ("ARG_COLLECTED", arg::COLLECTED),
    ("ARG_UNCOLLECTABLE", arg::UNCOLLECTABLE),
    ("ARG_WAITED_US", arg::WAITED_US),
    ("ARG_LISTS_BEHIND", arg::LISTS_BEHIND),
    ("ARG_SOURCE", arg::SOURCE),
    ("SOURCE_EXEC", arg::SOURCE_EXEC),
    ("SOURCE_PYTHON", arg::SOURCE_PYTHON),
    ("MOMENT_BASELINE", moment::BASELINE),
    ("MOMENT_AFTER_IMPORTS", moment::AFTER_IMPORTS),
    ("MOMENT_AFTER_CONFIG", moment::AFTER_CONFIG),
    ("MOMENT_AFTER_DATA", moment::AFTER_DATA),
    ("MOMENT_AFTER_OPERATIONS", moment::AFTER_OPERATIONS),
    ("MOMENT_EXIT", moment::EXIT),
    ("CAT_STARTUP", category::STARTUP),
    ("CAT_IMPORT", category::IMPORT),
    ("CAT_TRACER", category::TRACER),
    ("CAT_LAMD", category::LAMD),
    ("CAT_CONFIG", category::CONFIG),
    ("CAT_FIELD", category::FIELD),
    ("CAT_READ", category::READ),
    ("CAT_WRITE", category::WRITE),
    ("CAT_DATAFRAME", category::DATAFRAME),
    ("CAT_COMPUTE", category::COMPUTE),
    ("CAT_TEMPLATE", category::TEMPLATE),
    ("CAT_SERVER_CLIENT", category::SERVER_CLIENT),
    ("CAT_SERVER", category::SERVER),
    ("CAT_USER", category::USER),
    ("CAT_MEMORY", category::MEMORY),
    ("EVENT_PEAK_RSS", event::PEAK_RSS),
    ("ARG_PID", arg::PID),
    ("ARG_PPID", arg::PPID),
    ("ARG_WALL_ZERO_NS", arg::WALL_ZERO_NS),
    ("ARG_BYTES", arg::BYTES),
    ("ARG_EXIT_STATUS", arg::EXIT_STATUS),
    ("ARG_PEAK_RSS_BYTES", arg::PEAK_RSS_BYTES),
    ("ARG_MODULE", arg::MODULE),
    ("ARG_ARGV", arg::ARGV),
    ("ARG_CWD", arg::CWD),
    ("ARG_EXECUTABLE", arg::EXECUTABLE),
    ("ARG_PYTHON_VERSION", arg::PYTHON_VERSION),
    ("ARG_RUN_ID", arg::RUN_ID),
    ("ARG_LABEL", arg::LABEL),
    ("ARG_COMMAND", arg::COMMAND),
    ("ARG_LAMD_COMMAND", arg::LAMD_COMMAND),
    ("ARG_START_TICKS", arg::START_TICKS),
    ("ARG_ERROR", arg::ERROR),
    ("ARG_FOUND", arg::FOUND),
    ("ARG_ROWS", arg::ROWS),
    ("ARG_RESULT", arg::RESULT),
    ("ARG_REQUEST_ID", arg::REQUEST_ID),
    ("ARG_LYNGUINE_VERSION", arg::LYNGUINE_VERSION),
    ("ARG_LAMD_VERSION", arg::LAMD_VERSION),
    ("ARG_AT", arg::AT),
    ("REDACTED", arg::REDACTED),
    ("TRACE_SUFFIX", files::TRACE_SUFFIX),
    ("RUN_RECORD", files::RUN_RECORD),
    ("ENV_DIR", env::DIR),
    ("ENV_RUN_ID", env::RUN_ID),
    ("ENV_LABEL", env::LABEL),
    ("ENV_TARGETS", env::TARGETS),
    ("ENV_IMPORTS", env::IMPORTS),
    ("ENV_BOOTSTRAP", env::BOOTSTRAP),
    ("ENV_RECORD_FILES", env::RECORD_FILES),
    ("ARG_OPENED_FILES", arg::OPENED_FILES),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let name = files::trace_file_name(4242, 123_456, 0xdead_beef);
        assert_eq!(name, "4242-123456-deadbeef.lynshim.json");
        assert!(files::is_trace_file_name(&name));
        assert!(name.starts_with(&files::trace_file_prefix(4242, 123_456)));
        assert!(!name.starts_with(&files::trace_file_prefix(42, 123_456)));
    }

    #[test]
    fn credential_names_are_recognised() {
        for name in ["password", "API_KEY", "auth_token", "client_secret", "credentials"] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in ["field", "filename", "directory", "type"] {
            assert!(!is_credential_name(name), "{name}");
        }
    }

    #[test]
    fn python_constants_are_unique() {
        let mut names: Vec<_> = PYTHON_CONSTANTS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn work_categories_include_every_operation() {
        for op in category::OPERATIONS {
            assert!(category::WORK.contains(op), "{op}");
        }
    }
}
