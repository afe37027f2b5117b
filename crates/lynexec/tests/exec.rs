//! liblynexec.so preloaded into real programs (sh, make, sleep, python3): the records they leave, and
//! that the programs' output and exit status are what they are without it.
//!
//! Cargo builds the library before its integration tests (the crate is an rlib too for that: a cdylib
//! alone is not rebuilt for them), into `target/<profile>/deps/` beside this test's executable: the tests
//! load it from there and build nothing else. (`target/<profile>/liblynexec.so` is only refreshed by
//! `cargo build`, and may be stale.)

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lynschema::{arg, category, event};
use serde_json::{Map, Value};

/// The library cargo built for these tests: `target/<profile>/deps/liblynexec.so`.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let lib = exe.parent().expect("target/<profile>/deps").join("liblynexec.so");
    assert!(lib.is_file(), "{} was not built", lib.display());
    lib
}

/// `command` with a clean environment for the library: traced into `dir` when given.
fn command(program: &str, args: &[&str], cwd: &Path, dir: Option<&Path>) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(cwd);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LYNSHIM_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("LD_PRELOAD").env_remove("MAKEFLAGS").env_remove("MFLAGS").env_remove("MAKELEVEL");
    if let Some(dir) = dir {
        cmd.env("LD_PRELOAD", library())
            .env(lynschema::env::DIR, dir)
            .env(lynschema::env::RUN_ID, "run-1")
            .env(lynschema::env::LABEL, "test");
    }
    cmd
}

fn run(program: &str, args: &[&str], cwd: &Path, dir: Option<&Path>) -> Output {
    command(program, args, cwd, dir).output().expect("program runs")
}

/// One record file: its events (strict JSON when complete) and what the loader makes of it.
struct Record {
    path: PathBuf,
    text: String,
    events: Vec<Value>,
    trace: lynload::ProcessTrace,
}

impl Record {
    fn meta(&self) -> &Map<String, Value> {
        self.events
            .iter()
            .find(|e| e["name"] == event::PROCESS)
            .and_then(|e| e["args"].as_object())
            .expect("lynshim.process event")
    }

    fn exit(&self) -> Option<&Map<String, Value>> {
        self.events.iter().find(|e| e["name"] == event::EXIT).and_then(|e| e["args"].as_object())
    }

    fn u64(&self, key: &str) -> u64 {
        self.meta()[key].as_u64().unwrap_or_else(|| panic!("{key} in {}", self.path.display()))
    }

    fn pid(&self) -> u64 {
        self.u64(arg::PID)
    }

    fn identity(&self) -> (u64, u64) {
        (self.pid(), self.u64(arg::START_TICKS))
    }

    fn argv(&self) -> Vec<String> {
        self.meta()[arg::ARGV]
            .as_array()
            .expect("argv")
            .iter()
            .map(|v| v.as_str().expect("string").to_owned())
            .collect()
    }

    fn program(&self) -> String {
        let argv0 = self.argv().first().cloned().unwrap_or_default();
        argv0.rsplit('/').next().unwrap_or_default().to_owned()
    }

    fn status(&self) -> Option<i64> {
        self.exit().and_then(|e| e[arg::EXIT_STATUS].as_i64())
    }

    fn complete(&self) -> bool {
        self.text.trim_end().ends_with(']')
    }
}

/// Every record in `dir`, each checked for the file format: `[` alone on the first line, one event per
/// line, strict JSON when complete, and loadable by lynload either way.
fn records(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("trace dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
        assert!(lynschema::files::is_trace_file_name(&name), "{name}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("UTF-8");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("["), "{name}");
        let trace = lynload::parse_trace(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        let events: Vec<Value> = if text.trim_end().ends_with(']') {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not strict JSON: {e}\n{text}"))
        } else {
            // Cut short: every line is still a whole event.
            lines.map(|l| serde_json::from_str(l.trim_start_matches(',')).expect("whole event")).collect()
        };
        assert_eq!(trace.source, lynload::Source::Exec, "{name}");
        out.push(Record { path, text, events, trace });
    }
    out.sort_by_key(|r| r.meta()[arg::WALL_ZERO_NS].as_u64());
    out
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn a_record_holds_the_schema_events() {
    let tmp = tempdir();
    let out = run("sh", &["-c", "exit 3"], tmp.path(), Some(tmp.path()));
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let records = records(tmp.path());
    assert_eq!(records.len(), 1);
    let r = &records[0];
    let meta = r.meta();
    assert_eq!(meta[arg::SOURCE], arg::SOURCE_EXEC);
    assert_eq!(meta[arg::ARGV], serde_json::json!(["sh", "-c", "exit 3"]));
    assert_eq!(meta[arg::COMMAND], "sh -c exit 3");
    assert_eq!(meta[arg::RUN_ID], "run-1");
    assert_eq!(meta[arg::LABEL], "test");
    assert_eq!(meta[arg::FORMAT_VERSION], lynschema::FORMAT_VERSION);
    assert_eq!(meta[arg::CWD], tmp.path().to_str().expect("utf-8"));
    assert!(meta[arg::EXECUTABLE].as_str().expect("exe").starts_with('/'));
    // The pid the parent saw, and the parent is this test.
    assert_eq!(meta[arg::PPID], std::process::id());
    let own = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let own_ticks: u64 =
        own[own.rfind(')').expect(")") + 2..].split_whitespace().nth(19).expect("f").parse().expect("n");
    assert_eq!(meta[arg::PARENT_START_TICKS], own_ticks);
    let name = r.path.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(name.starts_with(&lynschema::files::trace_file_prefix(
        u32::try_from(r.pid()).expect("pid"),
        r.u64(arg::START_TICKS)
    )));
    let wall = meta[arg::WALL_ZERO_NS].as_u64().expect("wall");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    assert!(u128::from(wall) < now && now - u128::from(wall) < 60_000_000_000);
    // Metadata events, as the Python traces write them.
    let by_name = |name: &str| r.events.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(by_name(event::PROCESS_NAME)["args"]["name"], "sh -c exit 3");
    assert_eq!(by_name(event::PROCESS_LABELS)["args"]["labels"], "test, run-1");
    // The program's span, its peak RSS and the exit.
    let span = r.events.iter().find(|e| e["ph"] == "X").expect("span");
    assert_eq!(span["cat"], category::PROCESS);
    assert_eq!(span["name"], "sh");
    assert!(span["dur"].as_f64().expect("dur") > 0.0);
    let peak = by_name(event::PEAK_RSS);
    assert_eq!(peak["ph"], "C");
    assert!(peak["args"]["bytes"].as_u64().expect("bytes") > 100_000);
    let exit = r.exit().expect("exit");
    assert_eq!(exit[arg::EXIT_STATUS], 3);
    assert!(exit[arg::EXIT_SIGNAL].is_null());
    assert!(exit.contains_key(arg::CPU_USER_US) && exit.contains_key(arg::CPU_SYS_US));
    assert_eq!(exit[arg::PEAK_RSS_BYTES], peak["args"]["bytes"]);
    // Every event names the real pid.
    assert!(r.events.iter().all(|e| e["pid"] == r.pid() && e["tid"] == r.pid()));
    // The loader's view.
    assert_eq!(r.trace.exit_status, Some(3));
    assert_eq!(r.trace.command, "sh -c exit 3");
    assert!(!r.trace.truncated);
    assert_eq!(r.trace.spans.len(), 1);
    assert!(r.complete());
}

#[test]
fn exec_chain_shares_pid_and_start_ticks() {
    let tmp = tempdir();
    let out = run("sh", &["-c", "exec sh -c 'exit 3'"], tmp.path(), Some(tmp.path()));
    assert_eq!(out.status.code(), Some(3));
    let records = records(tmp.path());
    assert_eq!(records.len(), 2, "{:?}", records.iter().map(|r| r.argv()).collect::<Vec<_>>());
    let (first, second) = (&records[0], &records[1]);
    assert_eq!(first.identity(), second.identity());
    assert_eq!(first.argv(), ["sh", "-c", "exec sh -c 'exit 3'"]);
    assert_eq!(second.argv(), ["sh", "-c", "exit 3"]);
    // The replaced image wrote no end; the last one did.
    assert!(!first.complete() && first.exit().is_none());
    assert_eq!(second.status(), Some(3));
}

#[test]
fn a_shell_and_its_children() {
    let tmp = tempdir();
    let out = run("sh", &["-c", "true; sleep 0.05; echo done"], tmp.path(), Some(tmp.path()));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"done\n");
    let records = records(tmp.path());
    // sh forks and execs sleep: two records, none for the fork itself.
    assert_eq!(records.iter().map(Record::program).collect::<Vec<_>>(), ["sh", "sleep"]);
    let (sh, sleep) = (&records[0], &records[1]);
    assert_eq!(sleep.u64(arg::PPID), sh.pid());
    assert_eq!(sleep.u64(arg::PARENT_START_TICKS), sh.u64(arg::START_TICKS));
    assert!(sleep.trace.spans[0].dur_us >= 50_000.0);
    assert!(sh.trace.spans[0].dur_us >= sleep.trace.spans[0].dur_us);
    assert!(records.iter().all(|r| r.status() == Some(0)));
    // sleep starts after sh, on one clock.
    assert!(sleep.u64(arg::WALL_ZERO_NS) > sh.u64(arg::WALL_ZERO_NS));
}

const MAKEFILE: &str = "all: a b\n\
a:\n\t@echo building a; sleep 0.01\n\
b:\n\t@echo building b >&2; true\n\
\n.PHONY: all a b\n";

#[test]
fn make_build_parent_links() {
    let tmp = tempdir();
    let traces = tmp.path().join("traces");
    std::fs::create_dir(&traces).expect("dir");
    std::fs::write(tmp.path().join("Makefile"), MAKEFILE).expect("Makefile");
    let bare = run("make", &["-j2"], tmp.path(), None);
    let traced = run("make", &["-j2"], tmp.path(), Some(&traces));
    assert_eq!(bare.status.code(), Some(0));
    assert_eq!(traced.status.code(), bare.status.code());
    // -j2: the two recipes' lines may interleave; each stream holds the same lines.
    let sorted = |b: &[u8]| {
        let mut lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
        lines.sort_unstable();
        lines.into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>()
    };
    assert_eq!(sorted(&traced.stdout), sorted(&bare.stdout));
    assert_eq!(traced.stderr, bare.stderr);

    let records = records(&traces);
    let make: Vec<&Record> = records.iter().filter(|r| r.program() == "make").collect();
    assert_eq!(make.len(), 1);
    let make = make[0];
    // make runs each recipe with sh -c; sh runs sleep (a fork and exec, or an exec).
    let programs: HashSet<String> = records.iter().map(Record::program).collect();
    assert!(programs.contains("sh") && programs.contains("sleep"), "{programs:?}");
    let by_identity: HashMap<(u64, u64), &Record> = records.iter().map(|r| (r.identity(), r)).collect();
    for r in &records {
        assert_eq!(r.status(), Some(0), "{:?}", r.argv());
        if std::ptr::eq(r, make) {
            continue;
        }
        // Every other process descends from make, through recorded parents (or is an exec of one).
        let mut at = r;
        let mut hops = 0;
        while !std::ptr::eq(at, make) {
            let parent = (at.u64(arg::PPID), at.u64(arg::PARENT_START_TICKS));
            at = by_identity.get(&parent).unwrap_or_else(|| panic!("{:?}: no record of its parent", r.argv()));
            hops += 1;
            assert!(hops < 10);
        }
    }
}

#[test]
fn killed_process_leaves_its_start() {
    let tmp = tempdir();
    let bare = run("sh", &["-c", "kill -9 $$"], tmp.path(), None);
    let traced = run("sh", &["-c", "kill -9 $$"], tmp.path(), Some(tmp.path()));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(bare.status.signal(), Some(9));
    assert_eq!(traced.status.signal(), bare.status.signal());
    let records = records(tmp.path());
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert!(r.exit().is_none() && !r.complete());
    assert!(r.trace.truncated && r.trace.exit_status.is_none());
    assert_eq!(r.trace.command, "sh -c kill -9 $$");
}

/// Writes to both streams, reads stdin, and exits 5.
const NOISY: &str = "echo out; echo err >&2; printf '%s|' \"$(cat)\"; ls /nonexistent-lynexec; exit 5";

fn with_input(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(input).expect("input");
    child.wait_with_output().expect("output")
}

#[test]
fn output_and_status_are_untouched() {
    let tmp = tempdir();
    let bare = with_input(command("sh", &["-c", NOISY], tmp.path(), None), b"some input\n");
    let traced = with_input(command("sh", &["-c", NOISY], tmp.path(), Some(tmp.path())), b"some input\n");
    assert_eq!(bare.status.code(), Some(5));
    assert_eq!(traced.status.code(), bare.status.code());
    assert_eq!(traced.stdout, bare.stdout);
    assert_eq!(traced.stderr, bare.stderr);
    assert!(!bare.stderr.is_empty());
    let records = records(tmp.path());
    let programs: Vec<String> = records.iter().map(Record::program).collect();
    // sh, the $(cat) subshell fork (it runs cat: a fork child that execs writes nothing as itself), cat, ls.
    assert!(programs.contains(&"cat".to_owned()) && programs.contains(&"ls".to_owned()), "{programs:?}");
    let ls = records.iter().find(|r| r.program() == "ls").expect("ls");
    assert_eq!(ls.status(), Some(2));
    let sh = &records[0];
    assert_eq!(sh.status(), Some(5));
}

#[test]
fn unwritable_trace_dir_changes_nothing() {
    let tmp = tempdir();
    // A path below a regular file can be neither created nor written, not even by root.
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"").expect("file");
    for dir in [file.join("traces"), file.clone()] {
        let bare = with_input(command("sh", &["-c", NOISY], tmp.path(), None), b"x");
        let traced = with_input(command("sh", &["-c", NOISY], tmp.path(), Some(&dir)), b"x");
        assert_eq!(traced.status.code(), bare.status.code());
        assert_eq!(traced.stdout, bare.stdout);
        assert_eq!(traced.stderr, bare.stderr);
    }
    assert_eq!(std::fs::read(&file).expect("file"), b"");
    assert_eq!(std::fs::read_dir(tmp.path()).expect("dir").count(), 1);
}

#[test]
fn missing_trace_dir_is_made_private() {
    let tmp = tempdir();
    let dir = tmp.path().join("a/b");
    let out = run("true", &[], tmp.path(), Some(&dir));
    assert!(out.status.success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dir).expect("made").permissions().mode() & 0o777, 0o700);
    assert_eq!(records(&dir).len(), 1);
}

#[test]
fn relative_trace_dir_survives_chdir() {
    let tmp = tempdir();
    std::fs::create_dir(tmp.path().join("traces")).expect("dir");
    std::fs::create_dir(tmp.path().join("elsewhere")).expect("dir");
    // The shell changes directory and then exits from a builtin: the end is written by path.
    let mut cmd = command("sh", &["-c", "cd elsewhere && exit 4"], tmp.path(), Some(tmp.path()));
    cmd.env(lynschema::env::DIR, "traces");
    let out = cmd.output().expect("runs");
    assert_eq!(out.status.code(), Some(4));
    let records = records(&tmp.path().join("traces"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status(), Some(4));
}

#[test]
fn fork_without_exec_writes_its_own_record() {
    let tmp = tempdir();
    // The subshell is a fork of sh that exits without exec'ing.
    let out = run("sh", &["-c", "(exit 4); echo $?"], tmp.path(), Some(tmp.path()));
    assert_eq!(out.stdout, b"4\n");
    let records = records(tmp.path());
    assert_eq!(records.len(), 2, "{:?}", records.iter().map(|r| &r.text).collect::<Vec<_>>());
    let (sh, child) = (&records[0], &records[1]);
    assert_eq!(child.u64(arg::PPID), sh.pid());
    assert_eq!(child.u64(arg::PARENT_START_TICKS), sh.u64(arg::START_TICKS));
    assert_ne!(child.pid(), sh.pid());
    assert_eq!(child.argv(), sh.argv());
    assert_eq!(child.meta()[arg::FORKED_FROM], sh.path.to_str().expect("path"));
    assert_eq!(child.status(), Some(4));
    assert_eq!(sh.status(), Some(0));
    // The child's start ticks are its own.
    let name = child.path.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(name.starts_with(&format!("{}-{}-", child.pid(), child.u64(arg::START_TICKS))));
    assert!(child.u64(arg::WALL_ZERO_NS) > sh.u64(arg::WALL_ZERO_NS));
}

#[test]
fn fork_of_a_fork_names_its_own_parent() {
    let tmp = tempdir();
    // A subshell inside a subshell: two forks without exec, the inner one forked by the outer. The loop
    // (builtins only, ~30 ms) makes the outer start a few clock ticks after sh, so their ticks differ.
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; ( (exit 6); exit 5 ); echo $?";
    let out = run("sh", &["-c", script], tmp.path(), Some(tmp.path()));
    assert_eq!(out.stdout, b"5\n");
    let records = records(tmp.path());
    assert_eq!(records.len(), 3);
    let by_status = |s| records.iter().find(|r| r.status() == Some(s)).expect("status");
    let (sh, outer, inner) = (by_status(0), by_status(5), by_status(6));
    assert_ne!(outer.u64(arg::START_TICKS), sh.u64(arg::START_TICKS));
    assert_eq!(outer.u64(arg::PPID), sh.pid());
    assert_eq!(outer.u64(arg::PARENT_START_TICKS), sh.u64(arg::START_TICKS));
    assert_eq!(inner.u64(arg::PPID), outer.pid());
    // The outer subshell was alive when the inner one exited: its ticks were looked up then.
    assert_eq!(inner.u64(arg::PARENT_START_TICKS), outer.u64(arg::START_TICKS));
    // Only a parent that wrote its start has a file to name.
    assert_eq!(outer.meta()[arg::FORKED_FROM], sh.path.to_str().expect("path"));
    assert!(!inner.meta().contains_key(arg::FORKED_FROM));
}

/// CPython's subprocess starts children with vfork; a failed exec makes the vfork child `_exit`.
#[test]
fn vfork_child_that_fails_to_exec_writes_nothing() {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"].into_iter().find(|p| Path::new(p).is_file());
    let Some(python) = python else {
        eprintln!("no python3 at /usr/bin or /usr/local/bin: vfork test skipped");
        return;
    };
    let tmp = tempdir();
    let code = "import subprocess, sys\n\
                try:\n    subprocess.run(['/nonexistent-lynexec'])\n\
                except FileNotFoundError:\n    print('not found'); sys.exit(6)\n";
    let bare = run(python, &["-c", code], tmp.path(), None);
    let traced = run(python, &["-c", code], tmp.path(), Some(tmp.path()));
    assert_eq!(bare.status.code(), Some(6));
    assert_eq!(traced.status.code(), Some(6));
    assert_eq!(traced.stdout, bare.stdout);
    assert_eq!(traced.stderr, bare.stderr);
    let records = records(tmp.path());
    assert_eq!(records.len(), 1, "{:?}", records.iter().map(|r| &r.text).collect::<Vec<_>>());
    assert_eq!(records[0].status(), Some(6));
}

#[test]
fn credentials_are_redacted_and_names_cut() {
    let tmp = tempdir();
    let long = "x".repeat(150);
    let out = run(
        "sh",
        &["-c", "exit 0", "--password", "hunter2", "--api-token=abc123", &long],
        tmp.path(),
        Some(tmp.path()),
    );
    assert!(out.status.success());
    let records = records(tmp.path());
    let r = &records[0];
    assert!(!r.text.contains("hunter2") && !r.text.contains("abc123"));
    assert_eq!(r.argv()[3..6], ["--password", arg::REDACTED, &format!("--api-token={}", arg::REDACTED)]);
    let name = r.meta()[arg::COMMAND].as_str().expect("command");
    assert_eq!(name.chars().count(), 100);
    assert!(name.ends_with('…') && name.starts_with("sh -c exit 0 --password [redacted]"));
}

#[test]
fn nothing_happens_without_the_trace_dir() {
    let tmp = tempdir();
    let mut cmd = command("sh", &["-c", "echo hi; exit 2"], tmp.path(), Some(tmp.path()));
    cmd.env(lynschema::env::DIR, "");
    let out = cmd.output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.stderr.is_empty());
    assert_eq!(std::fs::read_dir(tmp.path()).expect("dir").count(), 0);
}
