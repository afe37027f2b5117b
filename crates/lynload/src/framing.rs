//! lynshim's framing of a trace file: `[` alone on the first line, one JSON event per line, `]` at the
//! end unless the file was cut short. What is a line, which lines are dropped before they are read (not
//! UTF-8, too long, unreadable in the middle of the file), and where a file cut short ends.

use crate::check::{self, Dropped, Reason};

/// What [`for_each_line`] saw of a file's framing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing {
    /// No closing `]`: cut short.
    pub(crate) truncated: bool,
    /// Event lines, read or dropped (a last line cut in half is not counted).
    pub(crate) events: usize,
}

/// lynshim's framing: `[` alone on the first line, one event per line, `]` at the end unless cut short.
/// Each event line goes to `read` with its number, in order. A line `read` cannot parse, that is not
/// UTF-8 or that is longer than [`check::MAX_LINE`] is dropped and counted in `dropped` — unless it is
/// the last, which is a file cut short in the middle of a line.
pub(crate) fn for_each_line<'a>(
    bytes: &'a [u8],
    dropped: &mut Dropped,
    mut read: impl FnMut(usize, &'a str) -> Result<(), serde_json::Error>,
) -> Result<Framing, String> {
    // Nearly every file is UTF-8 throughout and is checked once; else line by line.
    let whole = std::str::from_utf8(bytes);
    // Lines found with the memchr crate's vectorised search: `str::lines` was a tenth of loading.
    let mut start = 0;
    let line_ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    let mut lines = line_ends
        .map(|end| {
            let line = match whole {
                Ok(text) => Ok(&text[start..end]),
                Err(_) => std::str::from_utf8(&bytes[start..end]),
            };
            start = end + 1;
            line.map(str::trim)
        })
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.is_empty()));
    match lines.next() {
        None => return Err("empty file".to_owned()),
        Some((_, Err(err))) => return Err(format!("not UTF-8 text ({err})")),
        Some((_, Ok("["))) => {}
        Some((_, Ok(line))) if line.starts_with('[') => {
            return Err("not a lynshim trace (JSON, but not one event per line)".to_owned());
        }
        Some(_) => return Err("not a lynshim trace (expected `[` on the first line)".to_owned()),
    }
    // A line that could not be read: dropped if any line follows it, else the file was cut in it.
    let mut unreadable: Option<(usize, Reason)> = None;
    let mut events = 0;
    for (number, line) in lines {
        if let Some((number, reason)) = unreadable.take() {
            dropped.add(reason, number);
        }
        let Ok(line) = line else {
            events += 1;
            unreadable = Some((number, Reason::NotUtf8));
            continue;
        };
        let line = line.trim_start_matches(',').trim_end_matches(',');
        if line == "]" {
            return Ok(Framing { truncated: false, events });
        }
        if line.is_empty() {
            continue;
        }
        events += 1;
        if line.len() > check::MAX_LINE {
            dropped.add(Reason::TooLong, number);
        } else if read(number, line).is_err() {
            unreadable = Some((number, Reason::Unreadable));
        }
    }
    Ok(Framing { truncated: true, events: events - usize::from(unreadable.is_some()) })
}
