//! The system calls the library makes, each usable from the exit path: no allocation, no lock, so
//! all of them are safe in a signal handler and in a child between `fork` and `exec`.
//!
//! `/proc/<pid>/stat` is read as `crates/lynshim/src/procinfo.rs` reads it (same fields), into a
//! buffer on the stack instead of a `String`.

use std::os::raw::c_int;

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}

pub fn getpid() -> u32 {
    // SAFETY: no preconditions. glibc no longer caches the pid, so this is right in a vfork child.
    u32::try_from(unsafe { libc::getpid() }).unwrap_or(0)
}

pub fn getppid() -> u32 {
    // SAFETY: no preconditions.
    u32::try_from(unsafe { libc::getppid() }).unwrap_or(0)
}

/// Nanoseconds of `clock` now (vDSO: no system call for the two clocks used here).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub fn unix_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// What `getrusage(RUSAGE_SELF)` says: CPU in microseconds, peak RSS in bytes. The kernel keeps these
/// across `exec`, so they cover the whole process, every image it has been so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub user_us: u64,
    pub sys_us: u64,
    pub peak_rss_bytes: u64,
}

pub fn usage() -> Usage {
    // SAFETY: an all-zero rusage is a valid value to pass for writing.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Usage::default();
    }
    let us =
        |tv: libc::timeval| u64::try_from(tv.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec).unwrap_or(0);
    Usage {
        user_us: us(ru.ru_utime),
        sys_us: us(ru.ru_stime),
        // ru_maxrss is in KiB on Linux.
        peak_rss_bytes: u64::try_from(ru.ru_maxrss).unwrap_or(0) * 1024,
    }
}

/// `(ppid, starttime in clock ticks since boot)` from the text of `/proc/<pid>/stat`. The command
/// name (field 2) may hold spaces and `)`, so fields are counted from the last `)`.
pub fn parse_stat(stat: &[u8]) -> Option<(u32, u64)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat.get(close + 1..)?.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
    // After the command name: state(0) ppid(1) … starttime (field 22 of the line) is index 19.
    let ppid = parse_u64(fields.nth(1)?)?;
    let start = parse_u64(fields.nth(17)?)?;
    Some((u32::try_from(ppid).ok()?, start))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `(ppid, start ticks)` of `pid`, or of this process for `None`.
pub fn stat_of(pid: Option<u32>) -> Option<(u32, u64)> {
    let mut path = [0u8; 32];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if let Some(slot) = path.get_mut(at) {
                *slot = b;
                at += 1;
            }
        }
    };
    put(b"/proc/");
    match pid {
        None => put(b"self"),
        Some(pid) => {
            let mut digits = [0u8; 10];
            let mut n = pid;
            let mut i = digits.len();
            loop {
                i -= 1;
                #[allow(clippy::cast_possible_truncation)]
                if let Some(d) = digits.get_mut(i) {
                    *d = b'0' + (n % 10) as u8;
                }
                n /= 10;
                if n == 0 || i == 0 {
                    break;
                }
            }
            put(digits.get(i..).unwrap_or_default());
        }
    }
    put(b"/stat\0");
    // Enough for the fields up to starttime: the command name is at most 64 bytes.
    let mut buf = [0u8; 640];
    let n = read_file(&path, &mut buf)?;
    parse_stat(buf.get(..n)?)
}

/// Reads up to `buf.len()` bytes of the file at the NUL-terminated `path`.
fn read_file(path: &[u8], buf: &mut [u8]) -> Option<usize> {
    // SAFETY: path is NUL-terminated (callers end it with \0).
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buf.len() {
        let rest = buf.get_mut(len..)?;
        // SAFETY: rest is a valid, writable slice for its length.
        let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) if errno() == libc::EINTR => {}
            Err(_) => break,
        }
    }
    // SAFETY: fd was opened above.
    unsafe { libc::close(fd) };
    Some(len)
}

/// The current directory into `buf`; the bytes written, or `None`.
pub fn getcwd(buf: &mut [u8]) -> Option<&[u8]> {
    // SAFETY: buf is valid for buf.len() writable bytes; with a buffer, glibc's getcwd does not allocate.
    let p = unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) };
    if p.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    buf.get(..len)
}

/// A random 32-bit nonce for a file name (it only has to differ between processes).
pub fn nonce() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: buf is valid for 4 writable bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n == 4 {
        u32::from_ne_bytes(buf)
    } else {
        // The low bits of the clock and the pid differ between processes created close together.
        #[allow(clippy::cast_possible_truncation)]
        let mixed = (monotonic_ns() ^ (u64::from(getpid()) << 20)) as u32;
        mixed
    }
}

/// Creates the NUL-terminated `path` for writing: `O_EXCL` (never another file), `O_CLOEXEC` (no
/// program ever sees the descriptor), mode 0600 (traces hold paths and arguments).
pub fn create(path: &[u8]) -> Result<c_int, c_int> {
    open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW)
}

/// Opens the NUL-terminated `path` to append to it (never creating it).
pub fn append(path: &[u8]) -> Result<c_int, c_int> {
    open(path, libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC | libc::O_NOFOLLOW)
}

fn open(path: &[u8], flags: c_int) -> Result<c_int, c_int> {
    if path.last() != Some(&0) {
        return Err(libc::EINVAL);
    }
    loop {
        // SAFETY: path is NUL-terminated (checked above).
        let fd = unsafe { libc::open(path.as_ptr().cast(), flags, 0o600 as libc::c_uint) };
        if fd >= 0 {
            return Ok(fd);
        }
        let err = errno();
        if err != libc::EINTR {
            return Err(err);
        }
    }
}

pub fn close(fd: c_int) {
    // SAFETY: fd is a descriptor this library opened and still owns.
    unsafe { libc::close(fd) };
}

/// Removes the NUL-terminated `path` (a record that could not be written whole).
pub fn unlink(path: &[u8]) {
    if path.last() == Some(&0) {
        // SAFETY: path is NUL-terminated.
        unsafe { libc::unlink(path.as_ptr().cast()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_strange_command_name() {
        let line = b"4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 \
                     18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
        assert_eq!(parse_stat(line), Some((17, 987_654)));
        assert_eq!(parse_stat(b"12 (x) S"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn own_stat_matches_the_kernel() {
        let (ppid, ticks) = stat_of(None).expect("/proc/self/stat");
        assert_eq!(ppid, getppid());
        assert!(ticks > 0);
        let text = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let after = &text[text.rfind(')').expect(")") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        assert_eq!(fields[19].parse::<u64>().ok(), Some(ticks));
        assert_eq!(stat_of(Some(getpid())), Some((ppid, ticks)));
    }

    #[test]
    fn cwd_without_allocating() {
        let mut buf = [0u8; 4096];
        let cwd = getcwd(&mut buf).expect("cwd");
        assert_eq!(cwd, std::env::current_dir().expect("cwd").as_os_str().as_encoded_bytes());
    }
}
