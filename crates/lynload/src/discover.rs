//! Finding the trace files and run records under the inputs: each file read once, whatever number of
//! paths lead to it (by device and inode), and no directory entered twice, so a link back up the tree
//! (`loop -> .`) is not followed round. What was passed over is said, as a note per path.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use lynschema::files;

use crate::Problem;

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Found {
    pub traces: Vec<PathBuf>,
    pub runs: Vec<PathBuf>,
    /// Paths that could not be read or listed.
    pub skipped: Vec<Problem>,
    /// Paths passed over because what they lead to was already found by another path.
    pub notes: Vec<Problem>,
}

/// Trace files and run records under `inputs` (files, or directories searched recursively, links
/// followed once).
pub fn collect(inputs: &[PathBuf]) -> Found {
    let mut found = Found::default();
    // (device, inode) of every directory entered and file taken, and the path it was first found by.
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Depth first, each directory's entries in name order (links last), so which path is "first" does not vary.
    let mut stack: Vec<(PathBuf, bool)> = inputs.iter().rev().map(|p| (p.clone(), true)).collect();
    while let Some((path, is_input)) = stack.pop() {
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(err) => {
                // A dangling link inside a directory is not worth more than a note.
                let list = if is_input { &mut found.skipped } else { &mut found.notes };
                list.push(Problem { file: path, message: format!("cannot read it ({err})") });
                continue;
            }
        };
        if !meta.is_dir() && !meta.is_file() {
            continue; // sockets, fifos, devices
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let wanted_file = meta.is_file() && (is_input || name == files::RUN_RECORD || files::is_trace_file_name(name));
        if meta.is_file() && !wanted_file {
            continue;
        }
        let key = (meta.dev(), meta.ino());
        if let Some(first) = seen.get(&key) {
            let what = if meta.is_dir() { "a directory already read" } else { "the same file as" };
            found.notes.push(Problem { file: path, message: format!("{what} {}: not read again", first.display()) });
            continue;
        }
        seen.insert(key, path.clone());
        if meta.is_dir() {
            match fs::read_dir(&path) {
                Ok(entries) => {
                    // Links after real entries: a file is named by its own path before any link's.
                    let mut entries: Vec<(bool, PathBuf)> = entries
                        .filter_map(Result::ok)
                        .map(|e| (e.file_type().is_ok_and(|t| t.is_symlink()), e.path()))
                        .collect();
                    entries.sort();
                    stack.extend(entries.into_iter().rev().map(|(_, p)| (p, false)));
                }
                Err(err) => found.skipped.push(Problem { file: path, message: format!("cannot list it ({err})") }),
            }
        } else if name == files::RUN_RECORD {
            found.runs.push(path);
        } else {
            found.traces.push(path);
        }
    }
    found.traces.sort();
    found.runs.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lynload-discover-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn links_back_up_the_tree_and_second_paths_are_read_once() {
        let dir = scratch("loop");
        fs::create_dir(dir.join("run")).expect("mkdir");
        fs::write(dir.join("run/1-1-a.lynshim.json"), "[\n]").expect("write");
        fs::write(dir.join("run/run.json"), "{}").expect("write");
        symlink(".", dir.join("run/loop")).expect("symlink");
        symlink("..", dir.join("run/up")).expect("symlink");
        symlink("run", dir.join("latest")).expect("symlink");
        fs::hard_link(dir.join("run/1-1-a.lynshim.json"), dir.join("1-1-b.lynshim.json")).expect("hard link");
        symlink("nowhere", dir.join("run/dangling.lynshim.json")).expect("symlink");
        let found = collect(&[dir.clone(), dir.join("run")]);
        assert_eq!(found.traces, vec![dir.join("1-1-b.lynshim.json")]);
        assert_eq!(found.runs.len(), 1);
        assert!(found.skipped.is_empty(), "{:?}", found.skipped);
        let noted: Vec<String> =
            found.notes.iter().map(|n| n.file.strip_prefix(&dir).expect("inside").display().to_string()).collect();
        for path in ["latest", "run/loop", "run/up", "run/1-1-a.lynshim.json", "run", "run/dangling.lynshim.json"] {
            assert!(noted.contains(&path.to_owned()), "{path} not noted: {noted:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_input_is_skipped() {
        let found = collect(&[PathBuf::from("/nonexistent/lynload")]);
        assert_eq!(found.skipped.len(), 1);
    }
}
