//! The trace file on disk: written from one reused, page-aligned buffer, and, when the buffer fills
//! between two flushes (a traced function called in a tight loop), with `O_DIRECT`, so that the writer
//! thread does not copy megabytes of events into page-cache pages the kernel has just handed it.
//!
//! Why: in `make bench` the writer thread's kernel time was 90 % `copy_folio_from_iter_atomic`, the copy
//! of each `write` into newly allocated page-cache pages (analysis/benchmarks.md of 2026-12-01 23:43, "Top
//! kernel symbols of tracing-chrome's writer thread"). On a virtual machine whose host takes back free guest memory (virtio-balloon free page
//! reporting, as on this project's CI machines), the first touch of such a page cost 10 µs against
//! 1.7 µs for a page freed a moment ago: at ~200 bytes an event, ~490 ns of the writer's CPU per traced
//! call. A direct write goes from our buffer, whose pages stay resident, to the device, for 0.8 µs of CPU
//! a page when the writes are a MiB each (`fresh_page_cost` in analysis/bench.py, 2026-12-02).
//!
//! Small writes go through the page cache all the same: a direct write waits for the device, and a small
//! one cost about twice the CPU of a buffered one here (a scratch probe rewriting 8 KiB every 50 ms), which
//! the flush of a few KiB every [`crate::emitter::FLUSH_DELAY`] in an ordinary process would pay some
//! twenty times a second. So a flush writes what the buffer holds through the page cache, and only a full
//! buffer goes out direct.
//!
//! A direct write covers whole blocks from an aligned address at an aligned offset; the buffer's first byte
//! therefore always sits at a block boundary of the file, and a flush writes whole blocks too, the last one
//! padded with spaces, to be written again, completed, at the next (whole blocks: a block that direct I/O
//! wrote is not in the page cache, and a write of part of it, or cutting the file inside it, would first
//! read it back from the device). While the process runs the file therefore ends in up to one block of
//! spaces after its last whole event: JSON allows whitespace there, and lynshim's readers (lynload,
//! Perfetto) skip it in a file cut short. [`Sink::finish`] cuts the file to its exact length at the end,
//! and from [`Sink::ending`] on nothing waits for the device.
//!
//! Where the file system refuses direct I/O (tmpfs before Linux 6.6, some network and FUSE file systems),
//! the buffer is written through the page cache throughout, byte for byte, with no padding.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

/// Alignment of a direct write's memory, offset and length: a page, which every logical block size the
/// kernel supports for a block device divides.
pub const BLOCK: usize = 4096;

/// The buffer's size: it is written out when full (direct), and at every flush (the emitter's, every
/// [`crate::emitter::FLUSH_DELAY`] while records come; through the page cache). The larger a direct write,
/// the less CPU a page: a MiB is past the point where it stops falling here (scratch probes of 16 KiB to
/// 4 MiB writes, 2026-12-01 and -02). Pages are only touched as they fill, so a process that writes less
/// between two flushes holds less.
pub const CAPACITY: usize = 1 << 20;

/// A sink for trace bytes whose end must be marked: [`TraceFile`] cuts its padding off there.
pub trait Sink: Write {
    /// Everything written so far goes out, and nothing more will be written.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }

    /// The process is ending: what is written from now on should not wait for the device.
    fn ending(&mut self) {}
}

impl Sink for Vec<u8> {}

/// An anonymous, page-aligned mapping of [`CAPACITY`] bytes: zeroed by the kernel, faulted in as it is
/// used, and never touched by a child after `fork` (the child forgets its parent's session).
struct Buffer(NonNull<u8>);

// SAFETY: the mapping is owned by the `Buffer` alone; the pointer is never shared.
unsafe impl Send for Buffer {}

impl Buffer {
    fn new() -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; the kernel checks the arguments and reports failure
        // as MAP_FAILED.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CAPACITY,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(addr.cast()).map(Self).ok_or_else(|| io::Error::other("mmap returned a null mapping"))
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is CAPACITY bytes, readable and writable, initialised (zeroed) by the kernel,
        // and borrowed through `&mut self` only.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), CAPACITY) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`, which nothing borrows any more.
        unsafe { libc::munmap(self.0.as_ptr().cast(), CAPACITY) };
    }
}

/// A trace file written from [`CAPACITY`] bytes of buffer (see the module doc).
pub struct TraceFile {
    file: File,
    buffer: Buffer,
    /// Bytes of `buffer` that hold data.
    len: usize,
    /// The file offset of `buffer`'s first byte: a multiple of [`BLOCK`] while `whole_blocks`.
    at: u64,
    /// A full buffer goes out with `O_DIRECT` (which is set for that write only).
    direct: bool,
    /// Writes cover whole blocks, padded: wherever a block may have been written direct.
    whole_blocks: bool,
    /// How many writes went out direct.
    direct_writes: u64,
}

impl TraceFile {
    /// Take over `file` (open for writing, empty); `direct` writes full buffers with `O_DIRECT` where the
    /// file system allows that.
    pub fn new(file: File, direct: bool) -> io::Result<Self> {
        let direct = direct && set_direct(&file, true).and_then(|()| set_direct(&file, false)).is_ok();
        Ok(Self { file, buffer: Buffer::new()?, len: 0, at: 0, direct, whole_blocks: direct, direct_writes: 0 })
    }

    /// Whether a full buffer bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// How many writes bypassed the page cache.
    pub fn direct_writes(&self) -> u64 {
        self.direct_writes
    }

    /// Write the buffer out (a full one direct, see the module doc), its last unfinished block padded with
    /// spaces while `whole_blocks`, and keep that block at the front of the buffer to be completed.
    fn write_buffer(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let len = self.len;
        let end = if self.whole_blocks { len.next_multiple_of(BLOCK) } else { len };
        self.buffer.bytes()[len..end].fill(b' ');
        if len == CAPACITY && self.direct {
            self.write_direct()?;
        } else {
            self.file.write_all_at(&self.buffer.bytes()[..end], self.at)?;
        }
        let kept = if self.whole_blocks { len % BLOCK } else { 0 };
        let done = len - kept;
        self.buffer.bytes().copy_within(done..len, 0);
        self.len = kept;
        self.at += done as u64;
        Ok(())
    }

    /// Write the full buffer with `O_DIRECT` on for that write alone.
    fn write_direct(&mut self) -> io::Result<()> {
        let result = set_direct(&self.file, true).and_then(|()| self.file.write_all_at(self.buffer.bytes(), self.at));
        let cleared = set_direct(&self.file, false);
        match result {
            // A file system can take O_DIRECT at `fcntl` and refuse the write (an alignment it wants larger
            // than a page): the page cache then, for the rest of the file.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = false;
                cleared?;
                self.file.write_all_at(self.buffer.bytes(), self.at)
            }
            Err(err) => Err(err),
            Ok(()) => {
                self.direct_writes += 1;
                cleared
            }
        }
    }
}

impl Write for TraceFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let taken = data.len().min(CAPACITY - self.len);
        let len = self.len;
        self.buffer.bytes()[len..len + taken].copy_from_slice(&data[..taken]);
        self.len += taken;
        if self.len == CAPACITY {
            self.write_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffer()
    }
}

impl Sink for TraceFile {
    /// Write out what is left and cut the padding off: the file ends with its last byte of data.
    fn finish(&mut self) -> io::Result<()> {
        self.ending();
        self.write_buffer()?;
        if self.whole_blocks {
            self.file.set_len(self.at + self.len as u64)?;
        }
        Ok(())
    }

    /// From now on what is left goes through the page cache, which does not wait for the device (see the
    /// module doc).
    fn ending(&mut self) {
        self.direct = false;
    }
}

/// Turn `O_DIRECT` on or off for an open file; the kernel refuses (EINVAL) where the file system has no
/// direct I/O.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a file descriptor `file` keeps open for the call.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_file(direct: bool) -> (tempfile::TempDir, std::path::PathBuf, TraceFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
        let tf = TraceFile::new(file, direct).unwrap();
        (dir, path, tf)
    }

    fn lines(n: usize, width: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("{{\"n\":{i:0width$}}},\n").into_bytes()).collect()
    }

    #[test]
    fn every_byte_arrives_in_order_and_the_end_is_exact() {
        // Direct throughout, through the page cache throughout, and direct until the process starts ending.
        for (direct, ending_at) in [(true, None), (false, None), (true, Some(55_000))] {
            let (_dir, path, mut tf) = trace_file(direct);
            let takes_direct = tf.is_direct();
            let mut expected = Vec::new();
            for (i, line) in lines(60_000, 30).iter().enumerate() {
                if Some(i) == ending_at {
                    tf.ending();
                    assert!(!tf.is_direct());
                }
                tf.write_all(line).unwrap();
                expected.extend_from_slice(line);
                // Flushes mid-block, which go through the page cache, then none: the 1.2 MB after the last
                // flush fill the buffer, which goes out direct.
                if i % 7_777 == 0 && i < 30_000 {
                    tf.flush().unwrap();
                }
            }
            let wanted = u64::from(takes_direct);
            assert!(tf.direct_writes() >= wanted, "direct: {direct}, ending at {ending_at:?}");
            tf.finish().unwrap();
            assert!(expected.len() > 2 * CAPACITY);
            assert_eq!(std::fs::read(&path).unwrap(), expected, "direct: {direct}, ending at {ending_at:?}");
        }
    }

    #[test]
    fn after_a_flush_the_file_holds_every_byte_then_only_spaces() {
        let (_dir, path, mut tf) = trace_file(true);
        tf.write_all(b"[\n{\"a\":1},\n").unwrap();
        tf.flush().unwrap();
        tf.write_all(b"{\"b\":2},\n").unwrap();
        tf.flush().unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        let data = b"[\n{\"a\":1},\n{\"b\":2},\n";
        assert_eq!(&on_disk[..data.len()], data);
        assert!(on_disk[data.len()..].iter().all(|&b| b == b' '));
        if tf.whole_blocks {
            assert_eq!(on_disk.len(), BLOCK, "a whole block, padded");
        } else {
            assert_eq!(on_disk.len(), data.len());
        }
        tf.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn the_temporary_directory_takes_direct_io_so_the_tests_above_exercise_it() {
        let (dir, _path, tf) = trace_file(true);
        // SAFETY: statfs fills the zeroed struct for a path that exists (the NUL-terminated CString).
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        let c_path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::statfs(c_path.as_ptr(), &mut fs) }, 0);
        if fs.f_type == libc::TMPFS_MAGIC {
            // tmpfs has direct I/O from Linux 6.6 only; CI's /tmp is ext4.
            eprintln!("skipped: {} is a tmpfs", dir.path().display());
            return;
        }
        assert!(tf.is_direct(), "O_DIRECT refused in {}", dir.path().display());
    }

    #[test]
    fn nothing_written_leaves_an_empty_file() {
        let (_dir, path, mut tf) = trace_file(true);
        tf.flush().unwrap();
        tf.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
