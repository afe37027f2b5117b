//! Reading a trace file whole, within a size limit: a file larger than the limit is skipped with a reason
//! rather than read into memory (a runaway trace, or something that is not a trace at all).

use std::fs;
use std::path::Path;

/// Read a file into `buffer`, unless it is larger than `max_bytes`.
pub(crate) fn read_limited(path: &Path, max_bytes: u64, buffer: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(|e| format!("cannot read it ({e})"))?;
    let size = file.metadata().map_err(|e| format!("cannot read it ({e})"))?.len();
    if size > max_bytes {
        return Err(format!("too large ({size} bytes, limit {max_bytes}; raise it with --max-file-size)"));
    }
    buffer.clear();
    // A file still being written may have grown since: read no more than the limit either way.
    file.take(max_bytes.saturating_add(1)).read_to_end(buffer).map_err(|e| format!("cannot read it ({e})"))?;
    if buffer.len() as u64 > max_bytes {
        return Err(format!("too large (over {max_bytes} bytes; raise the limit with --max-file-size)"));
    }
    Ok(())
}
