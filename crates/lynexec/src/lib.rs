//! lynexec: an `LD_PRELOAD` library that records every process of a traced build, Python or not.
//!
//! `lynshim run` puts `liblynexec.so` first in `LD_PRELOAD`; the dynamic loader then maps it into every
//! dynamically linked program the command starts (make, sh, gpp, pandoc, python…). When `LYNSHIM_DIR`
//! is set and not empty, each program image writes one *exec record*: a file in the lynshim trace
//! schema (`crates/lynschema`), named and created like a Python trace (`{pid}-{ticks}-{nonce}`,
//! `O_EXCL`, mode 0600), that holds
//!
//! - at the start (the library's constructor, after the loader mapped the program's libraries):
//!   `process_name` and `process_labels` metadata and a `lynshim.process` instant with argv (credential-like
//!   option values redacted), pid, ppid, the parent's start ticks, start ticks, cwd, executable, run id,
//!   label, CPU so far, the Unix time of the start, and `"source":"exec"`;
//! - at the end: an `X` span named after the program covering the image's life, a `peak rss` counter and
//!   a `lynshim.exit` instant with the exit status, CPU and peak RSS (`getrusage`: the kernel keeps
//!   those across `exec`, so they are the process's, every image so far).
//!
//! The file is closed between the two writes and reopened by path (`O_APPEND`) at the end: programs
//! close or `dup2` over descriptors they did not open. How the end is caught:
//!
//! - `exit()`, including `main` returning (libc calls `exit` with its value) and libc's own calls
//!   (`error()`): an `on_exit` handler, registered by the constructor before the program can register
//!   its own, so it runs after them and receives the status. (Wrapping `main` through
//!   `__libc_start_main` would miss the exits libc makes internally, which bypass symbol interposition.)
//! - `_exit`, `_Exit`, `quick_exit`, which run no handlers: interposed here, writing, then calling the
//!   real function found with `dlsym(RTLD_NEXT, …)`.
//! - the library's destructor, only where `on_exit` could not register the handler: it records the end
//!   without a status. (It cannot be the main path: glibc runs destructors from an exit handler that
//!   `__libc_start_main` registers after the constructor ran, so before the constructor's own.)
//!
//! A signal's death ends no record: the file keeps its start lines only (still loadable; the loader reads
//! files cut short). `exec` replaces the image and leaves its record without an end; the new image
//! writes its own (same pid and start ticks), and the loader reads the records of one process as a chain.
//!
//! `fork` without `exec`: a `pthread_atfork` child handler notes the fork's time; the child writes its
//! record (its own pid, the parent's argv, times from the fork) only if it reaches an exit without
//! exec'ing, so the fork-then-exec of make and sh creates no file. Children of `vfork` and `posix_spawn`
//! share the parent's memory and run no fork handlers: every exit path compares `getpid()` with the pid
//! the state belongs to and touches nothing when they differ.
//!
//! What escapes: statically linked programs (no dynamic loader reads `LD_PRELOAD`), programs run in
//! secure-execution mode (setuid/setgid or with file capabilities, when that changes the user, group or
//! privileges: the loader then ignores `LD_PRELOAD` entries holding a slash), programs of another ABI (a
//! 32-bit program cannot load a 64-bit library; the loader says so on its stderr), programs that end
//! with a raw `exit_group` system call (their records have no end, like a killed process's), and
//! processes started by a tool that clears `LD_PRELOAD` or `LYNSHIM_DIR` from the environment.
//!
//! Cost, measured on the 2-core machine this was written on (`perf stat -r 20` on `sh -c true`, 25
//! rounds interleaved, median CPU per process): 0.97 ms without the library, 1.00 ms with an empty
//! C library preloaded, 1.07 ms with this one and no `LYNSHIM_DIR`, 1.16 ms traced into tmpfs and
//! 1.27 ms into ext4, where creating the file is most of the difference.
//!
//! The library never changes what a program does: it writes nothing to any of the program's
//! descriptors, installs no signal handler, keeps `errno`, never panics into the host (entry points run
//! under `catch_unwind`, with a silent panic hook), and a failure to write simply records nothing. The
//! exit path allocates nothing and takes no lock, because `_exit` may be called from a signal handler.

mod out;
mod record;
mod sys;

use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;

use out::{Fd, Out};
use record::{End, Ids, Image, Start};

/// Tracing is on in this process (`LYNSHIM_DIR` was set when the image started).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The image's facts as JSON text, prepared by the constructor; read-only afterwards (and after fork).
static IMAGE: OnceLock<Image> = OnceLock::new();
/// This image's own file, NUL-terminated, once the constructor created it.
static PATH: OnceLock<Vec<u8>> = OnceLock::new();

// The state of the record this process owes, as atomics: a forked child gets a copy of them and
// changes its own, and no lock can be left held by a thread that does not exist in the child.
/// The process the state belongs to: a vfork child sees another pid and leaves the state alone.
static PID: AtomicU32 = AtomicU32::new(0);
static PPID: AtomicU32 = AtomicU32::new(0);
static START_TICKS: AtomicU64 = AtomicU64::new(0);
/// The parent's start ticks, [`NO_TICKS`] when unknown.
static PARENT_TICKS: AtomicU64 = AtomicU64::new(NO_TICKS);
const NO_TICKS: u64 = u64::MAX;
static NONCE: AtomicU32 = AtomicU32::new(0);
/// The record's zero: the image's start (the constructor), or the fork for a forked child.
static ZERO_MONO_NS: AtomicU64 = AtomicU64::new(0);
static ZERO_UNIX_NS: AtomicU64 = AtomicU64::new(0);
/// A forked child that has written nothing yet: it writes its whole record at its exit.
static FORKED: AtomicBool = AtomicBool::new(false);
/// For a forked child: the parent image's file exists (pid, ticks and nonce above describe it until
/// the child writes, see [`write_forked`]).
static FORKED_FROM_FILE: AtomicBool = AtomicBool::new(false);
/// The `on_exit` handler is in place (it fails only without memory).
static ON_EXIT_REGISTERED: AtomicBool = AtomicBool::new(false);
/// The end has been written (or is being written by another thread).
static DONE: AtomicBool = AtomicBool::new(false);

/// The real `_exit`, `_Exit` and `quick_exit`, found once by the constructor (dlsym may allocate and
/// lock, so it is not called on the exit path).
static REAL_EXIT: AtomicUsize = AtomicUsize::new(0);
static REAL_UNDERSCORE_EXIT: AtomicUsize = AtomicUsize::new(0);
static REAL_QUICK_EXIT: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    /// glibc: like `atexit`, but the handler receives the status given to `exit`.
    fn on_exit(function: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

/// Runs `f` so that a panic (there should be none) never unwinds into the program.
fn guarded(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// The constructor glibc calls with `(argc, argv, envp)` after mapping the library.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = init;

#[cfg(not(test))]
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;

#[cfg_attr(test, allow(dead_code))]
extern "C" fn init(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    let saved = sys::errno();
    guarded(|| {
        // SAFETY: glibc passes the program's argc and argv, which live as long as the process.
        unsafe { start(argc, argv) }
    });
    sys::set_errno(saved);
}

/// The destructor: the end without a status, only where no `on_exit` handler could be registered.
/// (Where one was, this must not write: glibc runs destructors from a handler `__libc_start_main`
/// registers after the constructor's, so before ours, and the status would be lost.)
#[cfg_attr(test, allow(dead_code))]
extern "C" fn fini() {
    if !ON_EXIT_REGISTERED.load(SeqCst) {
        guarded(|| finish(None));
    }
}

/// The value of an environment variable, as bytes (`getenv`: no allocation, no copy).
fn getenv(name: &str) -> &'static [u8] {
    let mut buf = [0u8; 64];
    let Some(slot) = buf.get_mut(..name.len()) else {
        return &[];
    };
    slot.copy_from_slice(name.as_bytes());
    // SAFETY: buf is NUL-terminated (name is shorter than it); getenv's result lives in the
    // environment, which nothing in this library changes.
    let value = unsafe { libc::getenv(buf.as_ptr().cast()) };
    if value.is_null() {
        return &[];
    }
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes()
}

fn dlsym_next(name: &std::ffi::CStr) -> usize {
    // SAFETY: name is NUL-terminated; RTLD_NEXT looks past this library.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) as usize }
}

/// The constructor's work: nothing at all unless `LYNSHIM_DIR` is set.
///
/// # Safety
/// `argv` must hold `argc` valid C strings (or be null).
unsafe fn start(argc: c_int, argv: *const *const c_char) {
    REAL_EXIT.store(dlsym_next(c"_exit"), SeqCst);
    REAL_UNDERSCORE_EXIT.store(dlsym_next(c"_Exit"), SeqCst);
    REAL_QUICK_EXIT.store(dlsym_next(c"quick_exit"), SeqCst);
    let dir = getenv(lynschema::env::DIR);
    if dir.is_empty() {
        return;
    }
    // The image's zero: as early as the library can know it.
    let zero_mono = sys::monotonic_ns();
    let zero_unix = sys::unix_ns();
    let cpu = sys::usage();
    // The default hook prints the panic on stderr: the program's stderr must stay its own.
    std::panic::set_hook(Box::new(|_| {}));

    let pid = sys::getpid();
    let (ppid, ticks) = sys::stat_of(None).unwrap_or((sys::getppid(), 0));
    let parent_ticks = (ppid > 0).then(|| sys::stat_of(Some(ppid))).flatten().map(|(_, t)| t);
    let args: Vec<&[u8]> = (0..usize::try_from(argc).unwrap_or(0))
        .map_while(|i| {
            // SAFETY: i < argc, and glibc's argv has argc entries.
            let p = unsafe { *argv.add(i) };
            // SAFETY: a non-null argv entry is a NUL-terminated string.
            (!p.is_null() && !argv.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes())
        })
        .collect();
    let cwd = std::env::current_dir().map(|p| p.into_os_string().into_encoded_bytes()).unwrap_or_default();
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.into_os_string().into_encoded_bytes()).unwrap_or_default();
    // Relative to the directory the image started in: the program may chdir before it exits.
    let dir = if dir.first() == Some(&b'/') { dir.to_vec() } else { [&cwd[..], b"/", dir].concat() };
    let image = Image::new(&dir, &args, &exe, getenv(lynschema::env::RUN_ID), getenv(lynschema::env::LABEL));

    PID.store(pid, SeqCst);
    PPID.store(ppid, SeqCst);
    START_TICKS.store(ticks, SeqCst);
    PARENT_TICKS.store(parent_ticks.unwrap_or(NO_TICKS), SeqCst);
    ZERO_MONO_NS.store(zero_mono, SeqCst);
    ZERO_UNIX_NS.store(zero_unix, SeqCst);
    let image = IMAGE.get_or_init(|| image);
    // SAFETY: registering handlers has no preconditions; they stay valid (the library is never unloaded).
    unsafe {
        ON_EXIT_REGISTERED.store(on_exit(at_exit, std::ptr::null_mut()) == 0, SeqCst);
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
    }
    ACTIVE.store(true, SeqCst);

    let ids = Ids { pid, ppid, start_ticks: ticks, parent_start_ticks: parent_ticks };
    let start = Start { ids, wall_zero_ns: zero_unix, cpu, cwd: &cwd, forked_from: None };
    if let Some((path, nonce)) = create_record(image, pid, ticks, |out| record::write_start(out, image, &start)) {
        NONCE.store(nonce, SeqCst);
        let _ = PATH.set(path);
    }
}

/// Creates this process's file in the trace directory and writes `write`'s lines into it; the
/// NUL-terminated path and the nonce of its name, or `None` (and no file left) when that failed.
fn create_record(image: &Image, pid: u32, ticks: u64, write: impl FnOnce(&mut Out<Fd>)) -> Option<(Vec<u8>, u32)> {
    let mut made_dir = false;
    for _ in 0..4 {
        let nonce = sys::nonce();
        let mut path = image.dir.clone();
        path.extend_from_slice(lynschema::files::trace_file_name(pid, ticks, nonce).as_bytes());
        path.push(0);
        match sys::create(&path) {
            Ok(fd) => {
                let mut out = Out::new(Fd(fd));
                write(&mut out);
                let (_, ok) = out.finish();
                sys::close(fd);
                if !ok {
                    sys::unlink(&path);
                    return None;
                }
                return Some((path, nonce));
            }
            // Another process's nonce: draw again.
            Err(libc::EEXIST) => {}
            // The directory `lynshim run` would have made: made here once, private like its traces.
            Err(libc::ENOENT) if !made_dir => {
                made_dir = true;
                let dir = std::path::Path::new(std::ffi::OsStr::from_bytes(&image.dir));
                if std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).is_err() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// `on_exit` handler: `exit` was called (or `main` returned) with `status`.
extern "C" fn at_exit(status: c_int, _arg: *mut c_void) {
    guarded(|| finish(Some(status)));
}

/// `pthread_atfork` child handler: this is a new process that has written nothing. Only a few atomic
/// stores, since make and sh fork for every command they run.
extern "C" fn after_fork_in_child() {
    if !ACTIVE.load(SeqCst) {
        return;
    }
    let saved = sys::errno();
    let zero_mono = sys::monotonic_ns();
    let zero_unix = sys::unix_ns();
    // The parent's start ticks and file are known here when the parent is the image this state
    // describes (not a forked child that has written nothing, nor a clone made without fork handlers);
    // otherwise the child looks its parent's ticks up if it ever writes. NONCE keeps naming the
    // parent's file, for `forked_from`.
    let parent = sys::getppid();
    let known = parent == PID.load(SeqCst) && !FORKED.load(SeqCst);
    FORKED_FROM_FILE.store(known && PATH.get().is_some(), SeqCst);
    PARENT_TICKS.store(if known { START_TICKS.load(SeqCst) } else { NO_TICKS }, SeqCst);
    PPID.store(parent, SeqCst);
    PID.store(sys::getpid(), SeqCst);
    ZERO_MONO_NS.store(zero_mono, SeqCst);
    ZERO_UNIX_NS.store(zero_unix, SeqCst);
    FORKED.store(true, SeqCst);
    DONE.store(false, SeqCst);
    sys::set_errno(saved);
}

/// Writes the end of this process's record, once: from whichever exit path comes first.
fn finish(exit_status: Option<c_int>) {
    if !ACTIVE.load(SeqCst) {
        return;
    }
    // A vfork or posix_spawn child (or a clone without fork handlers): the state is another
    // process's, shared or copied; this process has no record of its own to end.
    if sys::getpid() != PID.load(SeqCst) {
        return;
    }
    if DONE.swap(true, SeqCst) {
        return;
    }
    let Some(image) = IMAGE.get() else { return };
    let end = End {
        dur_ns: sys::monotonic_ns().saturating_sub(ZERO_MONO_NS.load(SeqCst)),
        // What the parent's wait sees: the status's low byte.
        exit_status: exit_status.map(|s| s & 0xff),
        usage: sys::usage(),
    };
    if FORKED.load(SeqCst) {
        write_forked(image, &end);
    } else if let Some(path) = PATH.get() {
        if let Ok(fd) = sys::append(path) {
            let mut out = Out::new(Fd(fd));
            record::write_end(&mut out, image, PID.load(SeqCst), &end);
            let _ = out.finish();
            sys::close(fd);
        }
    }
}

/// The whole record of a forked child that never exec'd, written at its exit. Without allocating:
/// the name is formatted on the stack (as `files::trace_file_name` would make it).
fn write_forked(image: &Image, end: &End) {
    let pid = PID.load(SeqCst);
    let parent = PPID.load(SeqCst);
    let parent_ticks = match PARENT_TICKS.load(SeqCst) {
        NO_TICKS => sys::stat_of(Some(parent)).map(|(_, t)| t),
        ticks => Some(ticks),
    };
    let ticks = sys::stat_of(None).map_or(0, |(_, t)| t);
    let mut cwd_buf = [0u8; 1024];
    let cwd = sys::getcwd(&mut cwd_buf).unwrap_or_default();
    let start = Start {
        ids: Ids { pid, ppid: parent, start_ticks: ticks, parent_start_ticks: parent_ticks },
        wall_zero_ns: ZERO_UNIX_NS.load(SeqCst),
        // A new process's CPU counters start at zero.
        cpu: sys::Usage::default(),
        cwd,
        forked_from: FORKED_FROM_FILE.load(SeqCst).then(|| (parent, parent_ticks.unwrap_or(0), NONCE.load(SeqCst))),
    };
    for _ in 0..4 {
        let nonce = sys::nonce();
        // The path, on the stack; one too long to fit is no path.
        let mut path = Out::new(out::Nowhere);
        path.raw(&image.dir);
        record::write_file_name(&mut path, pid, ticks, nonce);
        path.raw(b"\0");
        let Some(path) = path.buffered() else { return };
        match sys::create(path) {
            Ok(fd) => {
                let mut out = Out::new(Fd(fd));
                record::write_start(&mut out, image, &start);
                record::write_end(&mut out, image, pid, end);
                let (_, ok) = out.finish();
                sys::close(fd);
                if !ok {
                    sys::unlink(path);
                }
                return;
            }
            Err(libc::EEXIST) => {}
            Err(_) => return,
        }
    }
}

#[cfg_attr(test, allow(dead_code))]
type ExitFn = extern "C" fn(c_int) -> !;

/// Calls the real exit function whose address `real` holds; without one, ends the process as
/// glibc's `_exit` does, with the `exit_group` system call.
#[cfg_attr(test, allow(dead_code))]
fn call_real(real: &AtomicUsize, status: c_int) -> ! {
    let address = real.load(SeqCst);
    if address != 0 {
        // SAFETY: the address is what dlsym gave for a function of this signature.
        let f: ExitFn = unsafe { std::mem::transmute::<usize, ExitFn>(address) };
        f(status);
    }
    loop {
        // SAFETY: exit_group takes the status and does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}

/// Interposes `_exit`: the end of the record, then the real `_exit`.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn _exit(status: c_int) -> ! {
    guarded(|| finish(Some(status)));
    call_real(&REAL_EXIT, status)
}

/// Interposes `_Exit` (the C99 name of `_exit`).
#[cfg(not(test))]
#[no_mangle]
#[allow(non_snake_case)]
pub extern "C" fn _Exit(status: c_int) -> ! {
    guarded(|| finish(Some(status)));
    call_real(&REAL_UNDERSCORE_EXIT, status)
}

/// Interposes `quick_exit`, which ends with libc's internal `_exit`. The record is written before
/// the `at_quick_exit` handlers run (a moment early), since nothing catches the end after them.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn quick_exit(status: c_int) -> ! {
    guarded(|| finish(Some(status)));
    call_real(&REAL_QUICK_EXIT, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_file_names_are_the_schemas() {
        for (pid, ticks, nonce) in [(1, 0, 0), (4242, 123_456, 0xdead_beef), (u32::MAX, u64::MAX, 7)] {
            let mut out = Out::new(out::Nowhere);
            record::write_file_name(&mut out, pid, ticks, nonce);
            let expected = lynschema::files::trace_file_name(pid, ticks, nonce);
            assert_eq!(out.buffered(), Some(expected.as_bytes()));
        }
        let mut out = Out::new(out::Nowhere);
        out.raw(&[b'x'; 2000]);
        assert_eq!(out.buffered(), None);
    }
}
