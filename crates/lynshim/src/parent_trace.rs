//! Which trace this process's trace points at as its parent: the nearest traced ancestor's.
//!
//! lynanalyze builds a run's process tree from these pointers, written into the process metadata when
//! a session starts. It is kept apart from the session because it is a question about the trace
//! directory and the process's ancestors (`/proc`), asked once per process, not about recording.

use std::fs;
use std::path::Path;

use lynschema::{arg, files};

use crate::procinfo;

/// The trace of the nearest traced ancestor in `dir`: `(path, pid)`. The preload library's record of
/// an ancestor counts too (make, sh), so a Python process started by make points at make. An ancestor
/// with several files — a Python process has its lynshim trace and its exec record, a process that
/// exec'd has a record per program — is pointed at by its lynshim trace, else by its latest record.
pub fn find_parent_trace(dir: &Path, own: &Path) -> Option<(String, u32)> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| files::is_trace_file_name(n))
        .collect();
    let own_name = own.file_name()?.to_str()?;
    procinfo::ancestors().into_iter().find_map(|(pid, start)| {
        let prefix = files::trace_file_prefix(pid, start);
        let candidates = names.iter().filter(|n| n.as_str() != own_name && n.starts_with(&prefix));
        candidates
            .map(|n| dir.join(n))
            .max_by_key(|path| {
                let head = file_head(path);
                let exec = head.contains(&format!("\"{}\":\"{}\"", arg::SOURCE, arg::SOURCE_EXEC));
                (!exec, head_wall_zero(&head))
            })
            .map(|path| (path.to_string_lossy().into_owned(), pid))
    })
}

/// The first few kilobytes of a trace file: enough for its `lynshim.process` event.
fn file_head(path: &Path) -> String {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    let _ = fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    String::from_utf8_lossy(&head).into_owned()
}

/// The `wall_zero_ns` written in a file's head (0 when it is not there yet): which image came last.
fn head_wall_zero(head: &str) -> u64 {
    let key = format!("\"{}\":", arg::WALL_ZERO_NS);
    head.find(&key)
        .map(|i| &head[i + key.len()..])
        .map_or(0, |rest| rest.bytes().take_while(u8::is_ascii_digit).fold(0, |n, b| n * 10 + u64::from(b - b'0')))
}
