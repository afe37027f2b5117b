//! Facts about this process from `/proc` and `getrusage`: start time, memory, CPU, ancestors.
//!
//! Everything here is Linux-specific and returns `None` rather than failing, so that a missing `/proc`
//! (a container without it, another OS) loses a figure, never the trace.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock ticks per second, the unit of `starttime` in `/proc/<pid>/stat`.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Fields of `/proc/<pid>/stat` after the command name, which may itself contain spaces and `)`.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    Some(after_comm.split_whitespace().map(str::to_owned).collect())
}

/// `(ppid, starttime in clock ticks since boot)` of a process.
pub fn parent_and_start_ticks(pid: &str) -> Option<(u32, u64)> {
    let fields = stat_fields(pid)?;
    // After the command name: state(0) ppid(1) … starttime is field 22 of the full line, index 19 here.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// Nanoseconds of `clock` now.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of Rust's `Instant` and Python's `time.monotonic_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

/// How long ago this process started, in nanoseconds. `/proc` counts in clock ticks (10 ms here), so
/// this is as precise as the kernel lets it be; CLOCK_BOOTTIME is the clock `starttime` is measured on.
pub fn process_age_ns(start_ticks: u64) -> u64 {
    let start_ns = start_ticks * (1_000_000_000 / clock_ticks_per_second());
    clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(start_ns)
}

/// Resident set size in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    Some(pages * page)
}

/// Peak resident set size in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `(user, system)` CPU time of this process so far, in microseconds.
pub fn cpu_times_us() -> (u64, u64) {
    // SAFETY: an all-zero rusage is a valid value to pass for writing.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0, 0);
    }
    let us =
        |tv: libc::timeval| u64::try_from(tv.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec).unwrap_or(0);
    (us(usage.ru_utime), us(usage.ru_stime))
}

/// OS thread id of the calling thread.
pub fn gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    u64::try_from(unsafe { libc::gettid() }).unwrap_or(0)
}

/// The chain of ancestors `(pid, start_ticks)`, nearest first, up to (not including) pid 1.
pub fn ancestors() -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut pid = match parent_and_start_ticks("self") {
        Some((ppid, _)) => ppid,
        None => return out,
    };
    while pid > 1 && out.len() < 64 {
        let Some((ppid, start)) = parent_and_start_ticks(&pid.to_string()) else { break };
        out.push((pid, start));
        pid = ppid;
    }
    out
}

/// A random 32-bit nonce for file names (not cryptographic: it only has to differ between processes).
pub fn nonce() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: buf is valid for 4 writable bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n == 4 {
        u32::from_ne_bytes(buf)
    } else {
        #[allow(clippy::cast_possible_truncation)]
        let mixed = (unix_ns() ^ (u64::from(std::process::id()) << 32)) as u32;
        mixed
    }
}
