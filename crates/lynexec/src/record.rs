//! The lines of an exec record: what the image writes when it starts, and when it ends.
//!
//! Each line is one event, shaped as the Python traces' events are (keys in the order serde_json
//! writes them, `"s":"t"` instants, times in microseconds with three decimals), so the loader reads
//! both alike; the span line is even in the exact shape of its fast path. Every line after the first
//! event starts with a comma instead of ending with one: a finished record is strict JSON, and one cut
//! short (the process was killed) still ends on a whole event.
//!
//! Strings that do not change over the image's life (argv, command, executable…) are escaped once by
//! the constructor into an [`Image`]; the writers here only add numbers and the current directory, so
//! they run without allocating (see [`crate::out`]).

use lynschema::{arg, category, event, files, is_credential_name, FORMAT_VERSION};

use crate::out::{json, Out, Sink};
use crate::sys::Usage;

/// Longest process name, in characters, as python/lynshim/_activate.py `process_name` cuts it.
const MAX_NAME_CHARS: usize = 100;

/// What an image knows of itself from its start, prepared as JSON text.
pub struct Image {
    /// The trace directory, absolute, ending in `/`.
    pub dir: Vec<u8>,
    /// JSON array: argv with credential-like option values redacted.
    pub argv: String,
    /// JSON string: the Perfetto lane's name, `make -s all`.
    pub command: String,
    /// JSON string: the program's span name, the basename of argv[0] (`make`).
    pub name: String,
    pub executable: String,
    pub run_id: String,
    pub label: String,
    /// JSON string of the `process_labels` event ("label, run id"), when either is set.
    pub labels: Option<String>,
}

impl Image {
    /// `dir` absolute, `argv` and `executable` as the process has them (bytes, lossily decoded),
    /// `run_id` and `label` from the environment.
    pub fn new(dir: &[u8], argv: &[&[u8]], executable: &[u8], run_id: &[u8], label: &[u8]) -> Self {
        let words: Vec<String> = argv.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let words = redact_argv(&words);
        let exe = String::from_utf8_lossy(executable);
        let program = words.first().map_or_else(|| basename(&exe).to_owned(), |w| basename(w).to_owned());
        let mut dir = dir.to_vec();
        if dir.last() != Some(&b'/') {
            dir.push(b'/');
        }
        let labels: Vec<&[u8]> = [label, run_id].into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            dir,
            argv: json(|o| {
                o.raw(b"[");
                for (i, w) in words.iter().enumerate() {
                    if i > 0 {
                        o.raw(b",");
                    }
                    o.string(w.as_bytes());
                }
                o.raw(b"]");
            }),
            command: json(|o| o.string(process_name(&words, &program).as_bytes())),
            name: json(|o| o.string(program.as_bytes())),
            executable: json(|o| o.string(executable)),
            run_id: json(|o| o.string(run_id)),
            label: json(|o| o.string(label)),
            labels: (!labels.is_empty()).then(|| json(|o| o.string(&labels.join(&b", "[..])))),
        }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// argv with the values of credential-like options replaced (`--token=x`, `--password x`): the rule of
/// python/lynshim/_activate.py `redact_argv`.
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for word in argv {
        if hide_next {
            out.push(arg::REDACTED.to_owned());
            hide_next = false;
            continue;
        }
        let (name, value) = match word.split_once('=') {
            Some((name, _)) => (name, true),
            None => (word.as_str(), false),
        };
        if word.starts_with('-') && is_credential_name(name.trim_start_matches('-')) {
            if value {
                out.push(format!("{name}={}", arg::REDACTED));
            } else {
                out.push(word.clone());
                hide_next = true;
            }
            continue;
        }
        out.push(word.clone());
    }
    out
}

/// The lane name: the program's basename and its (redacted) arguments, cut to 100 characters with `…`
/// as python/lynshim/_activate.py `process_name` cuts a Python process's.
pub fn process_name(redacted: &[String], program: &str) -> String {
    let mut name = program.to_owned();
    for w in redacted.iter().skip(1) {
        name.push(' ');
        name.push_str(w);
    }
    let name = name.replace('\n', " ");
    if name.chars().count() <= MAX_NAME_CHARS {
        return name;
    }
    let mut cut: String = name.chars().take(MAX_NAME_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Who a record is about.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub pid: u32,
    pub ppid: u32,
    pub start_ticks: u64,
    /// The parent's start ticks: with `ppid`, the parent's identity even where pids are reused.
    pub parent_start_ticks: Option<u64>,
}

/// The start of a record: the moment its times count from, and the facts of that moment.
pub struct Start<'a> {
    pub ids: Ids,
    pub wall_zero_ns: u64,
    pub cpu: Usage,
    pub cwd: &'a [u8],
    /// The trace of the image this process was forked from (a fork without exec): `(pid, ticks, nonce)`.
    pub forked_from: Option<(u32, u64, u32)>,
}

/// Writes the name [`files::trace_file_name`] gives, without allocating (a test holds them equal).
pub fn write_file_name<S: Sink>(out: &mut Out<S>, pid: u32, start_ticks: u64, nonce: u32) {
    out.uint(u64::from(pid));
    out.raw(b"-");
    out.uint(start_ticks);
    out.raw(b"-");
    out.hex8(nonce);
    out.text(files::TRACE_SUFFIX);
}

/// `"pid":P,"tid":P`: an exec record has one thread of interest, named by the pid.
fn pid_tid<S: Sink>(out: &mut Out<S>, pid: u32) {
    out.raw(b"\"pid\":");
    out.uint(u64::from(pid));
    out.raw(b",\"tid\":");
    out.uint(u64::from(pid));
}

/// `[`, the metadata events and the `lynshim.process` instant.
pub fn write_start<S: Sink>(out: &mut Out<S>, image: &Image, start: &Start<'_>) {
    let pid = start.ids.pid;
    out.raw(b"[\n{\"args\":{\"name\":");
    out.text(&image.command);
    out.raw(b"},\"name\":\"");
    out.text(event::PROCESS_NAME);
    out.raw(b"\",\"ph\":\"M\",");
    pid_tid(out, pid);
    out.raw(b"}\n");
    if let Some(labels) = &image.labels {
        out.raw(b",{\"args\":{\"labels\":");
        out.text(labels);
        out.raw(b"},\"name\":\"");
        out.text(event::PROCESS_LABELS);
        out.raw(b"\",\"ph\":\"M\",");
        pid_tid(out, pid);
        out.raw(b"}\n");
    }
    out.raw(b",{\"args\":{");
    out.key(arg::ARGV);
    out.text(&image.argv);
    out.raw(b",");
    out.key(arg::COMMAND);
    out.text(&image.command);
    // CPU before the record's zero (Python traces: before activation). The kernel keeps CPU across
    // exec, so an image's own CPU is its exit figure minus this one.
    out.raw(b",");
    out.key(arg::STARTUP_CPU_SYS_US);
    out.uint(start.cpu.sys_us);
    out.raw(b",");
    out.key(arg::STARTUP_CPU_USER_US);
    out.uint(start.cpu.user_us);
    out.raw(b",");
    out.key(arg::CWD);
    out.string(start.cwd);
    out.raw(b",");
    out.key(arg::EXECUTABLE);
    out.text(&image.executable);
    out.raw(b",");
    out.key(arg::FORMAT_VERSION);
    out.uint(u64::from(FORMAT_VERSION));
    if let Some((pid, ticks, nonce)) = start.forked_from {
        out.raw(b",");
        out.key(arg::FORKED_FROM);
        out.raw(b"\"");
        out.string_body(&image.dir);
        // A file name is plain ASCII: it goes into the string as it is.
        write_file_name(out, pid, ticks, nonce);
        out.raw(b"\"");
    }
    out.raw(b",");
    out.key(arg::LABEL);
    out.text(&image.label);
    if let Some(ticks) = start.ids.parent_start_ticks {
        out.raw(b",");
        out.key(arg::PARENT_START_TICKS);
        out.uint(ticks);
    }
    out.raw(b",");
    out.key(arg::PID);
    out.uint(u64::from(pid));
    out.raw(b",");
    out.key(arg::PPID);
    out.uint(u64::from(start.ids.ppid));
    out.raw(b",");
    out.key(arg::RUN_ID);
    out.text(&image.run_id);
    out.raw(b",");
    out.key(arg::SOURCE);
    out.raw(b"\"");
    out.text(arg::SOURCE_EXEC);
    out.raw(b"\",");
    out.key(arg::START_TICKS);
    out.uint(start.ids.start_ticks);
    out.raw(b",");
    out.key(arg::WALL_ZERO_NS);
    out.uint(start.wall_zero_ns);
    close_tracer_instant(out, event::PROCESS, pid);
    out.raw(b"0}\n");
}

/// What follows the args of one of lynshim's own instant events (`lynshim.process`, `lynshim.exit`): its
/// category, name, phase and ids, then the `"ts":` key, whose value the caller writes.
fn close_tracer_instant<S: Sink>(out: &mut Out<S>, name: &str, pid: u32) {
    out.raw(b"},\"cat\":\"");
    out.text(category::TRACER);
    out.raw(b"\",\"name\":\"");
    out.text(name);
    out.raw(b"\",\"ph\":\"i\",\"pid\":");
    out.uint(u64::from(pid));
    out.raw(b",\"s\":\"t\",\"tid\":");
    out.uint(u64::from(pid));
    out.raw(b",\"ts\":");
}

/// How the image ended: the status `exit`/`_exit` was given, or `None` when it is not known.
pub struct End {
    pub dur_ns: u64,
    pub exit_status: Option<i32>,
    pub usage: Usage,
}

/// The program's span, its peak RSS, the `lynshim.exit` instant and `]`.
pub fn write_end<S: Sink>(out: &mut Out<S>, image: &Image, pid: u32, end: &End) {
    out.raw(b",{\"cat\":\"");
    out.text(category::PROCESS);
    out.raw(b"\",\"dur\":");
    out.micros(end.dur_ns);
    out.raw(b",\"name\":");
    out.text(&image.name);
    out.raw(b",\"ph\":\"X\",");
    pid_tid(out, pid);
    out.raw(b",\"ts\":0}\n,{\"args\":{");
    out.key(arg::BYTES);
    out.uint(end.usage.peak_rss_bytes);
    out.raw(b"},\"cat\":\"");
    out.text(category::MEMORY);
    out.raw(b"\",\"name\":\"");
    out.text(event::PEAK_RSS);
    out.raw(b"\",\"ph\":\"C\",");
    pid_tid(out, pid);
    out.raw(b",\"ts\":");
    out.micros(end.dur_ns);
    out.raw(b"}\n,{\"args\":{");
    out.key(arg::CPU_SYS_US);
    out.uint(end.usage.sys_us);
    out.raw(b",");
    out.key(arg::CPU_USER_US);
    out.uint(end.usage.user_us);
    out.raw(b",");
    // The library never sees a signal's death (it installs no handler): a killed image's record
    // simply has no end.
    out.key(arg::EXIT_SIGNAL);
    out.raw(b"null,");
    out.key(arg::EXIT_STATUS);
    match end.exit_status {
        Some(status) => out.int(i64::from(status)),
        None => out.raw(b"null"),
    }
    out.raw(b",");
    out.key(arg::PEAK_RSS_BYTES);
    out.uint(end.usage.peak_rss_bytes);
    close_tracer_instant(out, event::EXIT, pid);
    out.micros(end.dur_ns);
    out.raw(b"}\n]\n");
}
