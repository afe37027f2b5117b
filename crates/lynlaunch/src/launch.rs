//! A traced run, launched natively: what `_launch.launch` and `cli.run` do in Python, step for step,
//! with the same environment, run directory, run record, summary line and exit status.
//!
//! Where the two differ, this one is the closer to running the command bare, on purpose: the command
//! inherits the launcher's open descriptors (a make jobserver's, say), signal mask and locale, as from a
//! shell, where Python's `subprocess` closes descriptors above 2 and CPython may coerce a C locale
//! (PEP 538) into the environment it passes on.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lynschema::{env, files, RunRecord, FORMAT_VERSION};

use crate::args::RunArgs;
use crate::install::Package;
use crate::summary::{self, Traces};

/// Runs the command traced and returns its exit status, or dies of the signal that ended it.
pub fn run(package: &Package, cwd: &Path, run: RunArgs) -> ExitCode {
    let run_id = new_run_id();
    let run_dir = resolve(&cwd.join(&run.out).join(&run_id));
    if let Err(err) = make_private_dir(&run_dir) {
        say(&format!(
            "lynshim: cannot create the trace directory {}: {}; choose another with -o DIR",
            run_dir.display(),
            strerror(&err)
        ));
        return ExitCode::from(2);
    }
    let preload = if run.exec_trace { package.preload() } else { Err(String::new()) };
    let program = &run.command[0];
    let mut command = Command::new(program);
    command.args(&run.command[1..]);
    for (key, value) in traced_environment(package, &run_dir, &run_id, run.label.as_deref(), preload.as_ref().ok()) {
        command.env(key, value);
    }
    spawn_by_fork_and_exec(&mut command);

    let start_unix_ns = unix_ns();
    // In place before the spawn, so that no SIGINT or SIGTERM can end the launcher and leave the command
    // running without a record; caught, not ignored, so that the command starts with both as the caller
    // had them (exec resets a caught signal to its default, and ShellSignals keeps an ignored one ignored).
    let signals = ShellSignals::install();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let (what, code) = match err.kind() {
                std::io::ErrorKind::NotFound => ("command not found".to_owned(), 127),
                std::io::ErrorKind::PermissionDenied => ("permission denied".to_owned(), 126),
                _ => (strerror(&err), 126),
            };
            say(&format!("lynshim: {}: {what}", program.to_string_lossy()));
            let terminated = signals.terminated_meanwhile();
            drop(signals);
            // A SIGTERM sent while the command failed to start ends the launcher as it would have.
            return if terminated { die_of(libc::SIGTERM) } else { ExitCode::from(code) };
        }
    };
    let status = {
        signals.forward_to(child.id());
        wait_without_reaping(child.id());
        // The child has ended (not reaped yet, so its pid cannot be reused): stop forwarding to it.
        // The handlers stay until the launcher exits: a late Ctrl-C or SIGTERM cannot cut its record short.
        CHILD.store(0, Ordering::SeqCst);
        child.wait()
    };
    let end_unix_ns = unix_ns();
    let (exit_status, exit_signal) = match status {
        Ok(status) => (status.code(), status.signal()),
        Err(_) => (Some(1), None),
    };

    let traces = Traces::of(&run_dir);
    let (children_user_s, children_sys_s) = children_cpu_s();
    let record = RunRecord {
        format_version: FORMAT_VERSION,
        run_id,
        label: run.label,
        command: run.command.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        cwd: cwd.to_string_lossy().into_owned(),
        start_unix_ns,
        end_unix_ns,
        exit_status,
        exit_signal,
        children_user_s,
        children_sys_s,
        traced_processes: traces.python.len(),
    };
    let record_path = run_dir.join(files::RUN_RECORD);
    if let Err(err) = record.write(&record_path) {
        say(&format!("lynshim: could not write the run record: {}: {err}", record_path.display()));
    }
    let shown = run_dir.strip_prefix(cwd).map_or_else(|_| run_dir.clone(), Path::to_path_buf);
    let not_traced = if run.exec_trace { preload.err() } else { None };
    say(&summary::line(&traces, not_traced.as_deref(), &shown));

    match (exit_status, exit_signal) {
        (_, Some(signal)) => die_of(signal),
        (Some(code), None) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        (None, None) => ExitCode::from(1),
    }
}

impl Package {
    /// The preload library to put in `LD_PRELOAD`, or why not (for the summary line): the words of
    /// `_launch.preload_library`.
    fn preload(&self) -> Result<PathBuf, String> {
        let library = self.preload_library();
        if !library.is_file() {
            return Err(format!("{} is missing; `make install` builds it", library.display()));
        }
        // The dynamic loader splits LD_PRELOAD at spaces and colons.
        if library.as_os_str().as_encoded_bytes().iter().any(|b| matches!(b, b' ' | b':')) {
            return Err(format!(
                "its path {} holds a space or colon, which LD_PRELOAD cannot carry",
                library.display()
            ));
        }
        Ok(library)
    }
}

/// The variables set for the command (everything else is inherited): `_launch.traced_environment`'s.
fn traced_environment(
    package: &Package,
    run_dir: &Path,
    run_id: &str,
    label: Option<&str>,
    preload: Option<&PathBuf>,
) -> Vec<(&'static str, OsString)> {
    let bootstrap = package.bootstrap_dir();
    let mut python_path = bootstrap.clone().into_os_string();
    let existing = std::env::var_os("PYTHONPATH").unwrap_or_default();
    for part in std::env::split_paths(&existing).filter(|p| !p.as_os_str().is_empty()) {
        python_path.push(":");
        python_path.push(part);
    }
    let mut vars = vec![("PYTHONPATH", python_path)];
    if let Some(preload) = preload {
        let mut value = preload.clone().into_os_string();
        if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            value.push(":");
            value.push(existing);
        }
        vars.push(("LD_PRELOAD", value));
    }
    vars.push((env::DIR, run_dir.into()));
    vars.push((env::RUN_ID, run_id.into()));
    vars.push((env::BOOTSTRAP, bootstrap.into()));
    if let Some(label) = label.filter(|l| !l.is_empty()) {
        vars.push((env::LABEL, label.into()));
    }
    vars
}

/// An absolute path with `.`, `..` and the symbolic links of its existing part resolved, as pathlib's
/// `Path.resolve()` (not strict): `-o missing/../t` is `t`, and creates no `missing/`.
fn resolve(path: &Path) -> PathBuf {
    let mut resolved = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                if let Ok(real) = std::fs::canonicalize(&resolved) {
                    resolved = real;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    resolved
}

/// Creates `dir` readable by its owner only (0700), and its missing parents with the default mode, as
/// `Path.mkdir(mode=0o700, parents=True)` does (an existing `dir` is an error: runs never share one).
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let create = || std::fs::DirBuilder::new().mode(0o700).create(dir);
    match create() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            create()
        }
        made => made,
    }
}

/// `YYYYmmddTHHMMSS-xxxxxx`: local time and 3 random bytes, as `_launch.new_run_id`.
fn new_run_id() -> String {
    // SAFETY: time has no preconditions; tm is valid and writable for localtime_r (which reads TZ on
    // its first call in glibc, as time.strftime's localtime does).
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    let mut random = [0u8; 3];
    // SAFETY: random is a valid, writable buffer of the length given.
    if unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) } != 3 {
        let nanos = unix_ns().to_le_bytes();
        random.copy_from_slice(&nanos[..3]);
    }
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}-{:02x}{:02x}{:02x}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        random[0],
        random[1],
        random[2]
    )
}

/// The command's pid while it runs, for the SIGTERM handler; 0 before it starts and once it has ended.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// The launcher's pid: between fork and exec the command's process runs the same handler.
static LAUNCHER: AtomicI32 = AtomicI32::new(0);
/// A SIGTERM came before the command had a pid: it is passed on as soon as it has one.
static TERM_PENDING: AtomicBool = AtomicBool::new(false);

/// SIGTERM is passed on to the command; SIGINT is left to the terminal, which sends Ctrl-C to the whole
/// foreground process group, the command included.
extern "C" fn on_signal(signal: libc::c_int) {
    // SAFETY: errno is this thread's; getpid, signal, raise and kill are async-signal-safe, and pid is our
    // unreaped child's. The handler keeps errno as it found it for the code it interrupted.
    unsafe {
        let errno = *libc::__errno_location();
        if libc::getpid() != LAUNCHER.load(Ordering::SeqCst) {
            // The command's process before its exec: the signal is the command's, at its default.
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        } else if signal == libc::SIGTERM {
            let pid = CHILD.load(Ordering::SeqCst);
            if pid > 0 {
                libc::kill(pid, signal);
            } else {
                TERM_PENDING.store(true, Ordering::SeqCst);
            }
        }
        *libc::__errno_location() = errno;
    }
}

/// Like a shell while the command runs: the launcher outlives SIGINT and passes SIGTERM on, except
/// that a signal its caller ignores stays ignored, for the launcher and the command alike (a
/// background job's SIGINT, `trap '' TERM`). Dropping restores both signals' previous handling.
struct ShellSignals {
    previous: [(libc::c_int, libc::sigaction); 2],
}

impl ShellSignals {
    fn install() -> Self {
        // SAFETY: getpid has no preconditions.
        LAUNCHER.store(unsafe { libc::getpid() }, Ordering::SeqCst);
        let install = |signal: libc::c_int| {
            // SAFETY: both sigactions are valid; the handler only touches atomics and makes
            // async-signal-safe calls.
            unsafe {
                let mut previous: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, std::ptr::null(), &mut previous);
                if previous.sa_sigaction != libc::SIG_IGN {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                    action.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut action.sa_mask);
                    libc::sigaction(signal, &action, std::ptr::null_mut());
                }
                (signal, previous)
            }
        };
        Self { previous: [install(libc::SIGINT), install(libc::SIGTERM)] }
    }

    /// From now on SIGTERM goes to `pid`, and one that came while it started goes now.
    fn forward_to(&self, pid: u32) {
        let pid = i32::try_from(pid).unwrap_or(0);
        CHILD.store(pid, Ordering::SeqCst);
        if TERM_PENDING.swap(false, Ordering::SeqCst) && pid > 0 {
            // SAFETY: pid is our unreaped child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Whether a SIGTERM came while there was no command to pass it on to.
    fn terminated_meanwhile(&self) -> bool {
        TERM_PENDING.load(Ordering::SeqCst)
    }
}

impl Drop for ShellSignals {
    fn drop(&mut self) {
        for (signal, previous) in &self.previous {
            // SAFETY: previous is what sigaction returned for this signal.
            unsafe { libc::sigaction(*signal, previous, std::ptr::null_mut()) };
        }
    }
}

/// Starts the command by fork and exec, as a shell does: with a `pre_exec` step std cannot use its other
/// way, glibc's `posix_spawn`, which starts the program with glibc's internal signals (32 and 33) ignored,
/// where a bare run has them at their defaults. (The command inherits the launcher's signal mask either
/// way.) The step also gives the command back an ignored SIGCHLD: a caller that ignores it would leave
/// the launcher a child the kernel reaps unseen, with no exit status to report, so the launcher takes
/// SIGCHLD back to its default for itself.
fn spawn_by_fork_and_exec(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: previous is valid and writable; a null new action only reads the disposition.
    let sigchld_ignored = unsafe {
        let mut previous: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut previous);
        previous.sa_sigaction == libc::SIG_IGN
    };
    if sigchld_ignored {
        // SAFETY: setting a disposition to its default has no preconditions.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    }
    // SAFETY: the step runs in the child between fork and exec and calls only signal, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if sigchld_ignored {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            }
            Ok(())
        });
    }
}

/// Blocks until the child has ended, leaving it for `Child::wait` to reap.
fn wait_without_reaping(pid: u32) {
    loop {
        // SAFETY: info is a valid, writable siginfo_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; WNOWAIT leaves the child waitable.
        let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Dies of `signal`, so whoever started `lynshim run` sees what they would have seen; 128 + signal
/// when that signal does not end a process (SIGCHLD, SIGSTOP…). No core file is written for the
/// launcher: the command's own, when it dumped one, is the one to keep (the same name in the same
/// folder, with the default `core_pattern`).
fn die_of(signal: i32) -> ExitCode {
    // SAFETY: setrlimit, sigprocmask, signal and kill on ourselves have no preconditions; the set is
    // initialised by sigemptyset.
    unsafe {
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::signal(signal, libc::SIG_DFL);
        libc::kill(libc::getpid(), signal);
    }
    ExitCode::from(u8::try_from(128 + signal).unwrap_or(255))
}

/// `(user, system)` CPU seconds of the waited-for children (`getrusage(RUSAGE_CHILDREN)`).
pub fn children_cpu_s() -> (f64, f64) {
    // SAFETY: an all-zero rusage is a valid value to pass for writing.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is valid and writable.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    #[allow(clippy::cast_precision_loss)]
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An error as Python's `OSError.strerror` words it: without Rust's ` (os error N)`.
fn strerror(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// A line on stderr; a closed stderr is not a reason to fail the run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_differ() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_eq!(a.len(), "20261129T181500-abcdef".len());
        assert_eq!(&a[8..9], "T");
        assert!(a[16..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn run_directories_are_private_and_never_reused() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b/run");
        make_private_dir(&dir).expect("created");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert_eq!(strerror(&make_private_dir(&dir).expect_err("exists")), "File exists");
        std::fs::write(root.path().join("file"), "").expect("write");
        assert_eq!(strerror(&make_private_dir(&root.path().join("file/run")).expect_err("file")), "Not a directory");
    }

    #[test]
    fn paths_resolve_as_pathlib_resolves_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(root.path()).expect("canonical");
        std::os::unix::fs::symlink(&real, real.join("link")).expect("symlink");
        assert_eq!(resolve(&real.join("missing/../t/./run")), real.join("t/run"));
        assert_eq!(resolve(&real.join("link/t")), real.join("t"));
        assert!(!real.join("missing").exists());
    }
}
