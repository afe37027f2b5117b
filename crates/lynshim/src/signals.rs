//! Signals: lynshim's own threads never take the program's, and a SIGTERM that Python cannot get to
//! still ends the process.
//!
//! A traced process whose program left SIGTERM at its default gets a Python-level handler
//! (`python/lynshim/_activate.py`) that closes the trace and then dies of the same signal, so the
//! parent sees the same wait status. CPython runs a Python-level handler only when the main thread
//! next checks for signals, between bytecodes or when a blocking call returns with EINTR. Where it
//! never does, the process that bare Python would have ended at once lived on:
//!
//! - the signal arrived just before the main thread blocked in a call that retries or was not yet in
//!   the kernel: a `multiprocessing` pool worker taking its queue's lock as the pool terminated it
//!   waited there for ever, and the pool with it (two of twenty runs of a two-worker pool under
//!   `lynshim run`; `ftrace` showed the SIGTERM delivered to the worker's main thread);
//! - the main thread was in a long computation in C, which a signal does not interrupt.
//!
//! So [`guard_termination`] puts a native handler in front of CPython's: it notes the signal and passes
//! it on. If Python's handler has not ended the session [`GRACE_NS`] later, the emitter thread, which
//! checks on every round, writes out what was recorded, closes the trace with the signal as the exit
//! reason and ends the process by the signal's default action ([`die_of`]): the parent sees the status
//! it would have seen bare, [`GRACE_NS`] and at most one emitter round (100 ms) late.
//!
//! lynshim's threads are started with every signal blocked but those a fault raises ([`all_blocked`]):
//! a signal sent to the process then goes to one of the program's threads, as it would without lynshim,
//! and never runs a handler on a thread of ours, where CPython notes it for the main thread without
//! interrupting what that thread is blocked in.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

use crate::procinfo;

/// How long Python's own handler has to end the session before the emitter ends it.
pub const GRACE_NS: u64 = 100_000_000;

/// The signal that arrived (0: none), and CLOCK_MONOTONIC when it did.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);
static SIGNALLED_AT_NS: AtomicU64 = AtomicU64::new(0);
/// The handler in place before ours (CPython's), called by ours.
static PASS_ON: AtomicUsize = AtomicUsize::new(0);

/// Signals a fault raises on the thread that faulted: never blocked, so that a crash on one of
/// lynshim's threads still reaches `faulthandler` and Rust's own reports (blocked, the kernel would
/// apply the default action at once).
const FAULTS: [libc::c_int; 6] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP, libc::SIGSYS];

/// Run `f` (which starts threads) with every signal but [`FAULTS`] blocked on this thread, so the threads
/// it starts inherit a mask that blocks them; this thread's own mask is back as it was afterwards, even
/// if `f` panics.
pub fn all_blocked<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: the mask read before `f` ran.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: the sets are valid, writable sigset_t values, filled by sigfillset before use.
    let _restore = unsafe {
        let mut blocked: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut blocked);
        for fault in FAULTS {
            libc::sigdelset(&mut blocked, fault);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &blocked, &mut previous);
        Restore(previous)
    };
    f()
}

/// Put a handler for `signum` in front of the one in place (CPython's, which runs lynshim's Python
/// handler): it notes the signal for [`overdue`] and calls CPython's. Done once the Python handler is
/// set; a program that sets its own handler later replaces both, as it would have replaced Python's.
pub fn guard_termination(signum: i32) {
    let Some(current) = action(signum) else { return };
    let handler = current.sa_sigaction;
    if handler == ours()
        || handler == libc::SIG_DFL
        || handler == libc::SIG_IGN
        || current.sa_flags & libc::SA_SIGINFO != 0
    {
        return;
    }
    PASS_ON.store(handler, Ordering::SeqCst);
    let mut replaced = current;
    replaced.sa_sigaction = ours();
    // SAFETY: sigaction with valid pointers; the handler installed is async-signal-safe (atomics and
    // clock_gettime, then CPython's own handler, which is).
    unsafe { libc::sigaction(signum, &replaced, std::ptr::null_mut()) };
}

extern "C" fn on_signal(signum: libc::c_int) {
    // The first signal counts: a second SIGTERM does not put off the end.
    if SIGNALLED.load(Ordering::SeqCst) == 0 {
        SIGNALLED_AT_NS.store(procinfo::monotonic_ns(), Ordering::SeqCst);
        SIGNALLED.store(signum, Ordering::SeqCst);
    }
    let pass_on = PASS_ON.load(Ordering::SeqCst);
    if pass_on != 0 {
        // SAFETY: PASS_ON holds the plain (non-SA_SIGINFO) handler that was in place before ours.
        let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(pass_on) };
        handler(signum);
    }
}

/// The signal Python's handler has not acted on [`GRACE_NS`] after it arrived, if any. The emitter asks
/// on every round while the session records (a session Python's handler ended records no more).
pub fn overdue() -> Option<i32> {
    let signum = SIGNALLED.load(Ordering::SeqCst);
    if signum == 0 {
        return None;
    }
    let at = SIGNALLED_AT_NS.load(Ordering::SeqCst);
    if procinfo::monotonic_ns().saturating_sub(at) < GRACE_NS {
        return None;
    }
    // A program that set a handler of its own since (CPython's `signal.signal` puts its C handler back
    // in place of ours) has its handler run for the signal: it is the program's to act on.
    if !still_guarded(signum) {
        forget();
        return None;
    }
    Some(signum)
}

fn still_guarded(signum: i32) -> bool {
    action(signum).is_some_and(|current| current.sa_sigaction == ours())
}

/// The action in place for `signum`, if it can be read.
fn action(signum: i32) -> Option<libc::sigaction> {
    // SAFETY: sigaction only reads into a valid, writable sigaction.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(signum, std::ptr::null(), &mut current) == 0).then_some(current)
    }
}

/// [`on_signal`] as `sigaction` holds a handler.
fn ours() -> libc::sighandler_t {
    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
}

/// Forget a signal noted so far: the parent's, in a child after `fork` (called by the child's `fork`
/// handler, before any Python code runs there: a SIGTERM the child gets from then on is its own, and
/// CPython itself forgets what its handler noted before), or one a program's own handler now owns.
pub fn forget() {
    SIGNALLED.store(0, Ordering::SeqCst);
}

/// End the process by `signum`'s default action, from a thread of lynshim's (which blocks it).
pub fn die_of(signum: i32) -> ! {
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signum, &default, std::ptr::null_mut());
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signum);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(signum);
        // A default action that does not end the process (not SIGTERM's): end it as a signal would.
        libc::_exit(128 + signum)
    }
}
