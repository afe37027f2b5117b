//! The page cache, for `lynshim bench --cold`: how much of a file is resident (`mincore`), and asking
//! the kernel to drop it (`posix_fadvise(POSIX_FADV_DONTNEED)`), which needs no root.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// `(resident pages, total pages)` of a file.
pub fn residency(path: &Path) -> io::Result<(u64, u64)> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    if len == 0 {
        return Ok((0, 0));
    }
    let page = page_size();
    let pages = len.div_ceil(page);
    // SAFETY: a shared read-only mapping of an open file (shared, so that mincore sees the page cache's
    // pages, not private copies), unmapped before returning; the kernel checks
    // the arguments and reports failure as MAP_FAILED.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: addr/len is the mapping made above; vec has one byte per page of it.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = io::Error::last_os_error();
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err);
    }
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
    Ok((resident as u64, pages as u64))
}

/// Ask the kernel to drop a file's clean pages from the page cache.
pub fn evict(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: fd is open for the call; offset 0, length 0 means the whole file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
