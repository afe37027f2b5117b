//! JSON text written through a fixed buffer on the stack, without allocating.
//!
//! The end of a record is written from `_exit`, which programs may call from a signal handler: a
//! handler can interrupt `malloc` with its lock held, so that path must neither allocate nor lock.
//! [`Out`] formats into a small buffer and hands it to its [`Sink`] in whole chunks; the constructor uses
//! the same writer (with a `Vec` sink) to prepare the record's fixed strings, so both share one escaper.

use std::os::raw::c_int;

/// Where an [`Out`] sends its bytes. `false` means the bytes were not all written.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]) -> bool;
}

/// A file descriptor, written with `write(2)` until every byte is out.
pub struct Fd(pub c_int);

impl Sink for Fd {
    fn put(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            // SAFETY: bytes is a valid slice for its length.
            let n = unsafe { libc::write(self.0, bytes.as_ptr().cast(), bytes.len()) };
            match usize::try_from(n) {
                Ok(0) => return false,
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(_) if crate::sys::errno() == libc::EINTR => {}
                Err(_) => return false,
            }
        }
        true
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> bool {
        self.extend_from_slice(bytes);
        true
    }
}

/// A sink that takes nothing: an [`Out`] over it is a bounded buffer on the stack (see
/// [`Out::buffered`]), for a file's path.
pub struct Nowhere;

impl Sink for Nowhere {
    fn put(&mut self, _bytes: &[u8]) -> bool {
        false
    }
}

/// Buffer size: every record's end fits in one `write`, so the end lines reach the file in one
/// `O_APPEND` write; small, because a signal handler may run on a small alternate stack.
const CAP: usize = 1024;

/// A buffered JSON writer. Nothing in it panics: every index is checked.
pub struct Out<S: Sink> {
    sink: S,
    buf: [u8; CAP],
    len: usize,
    ok: bool,
}

impl<S: Sink> Out<S> {
    pub fn new(sink: S) -> Self {
        Self { sink, buf: [0; CAP], len: 0, ok: true }
    }

    /// Bytes as they are.
    pub fn raw(&mut self, bytes: &[u8]) {
        if bytes.len() > CAP - self.len {
            self.flush();
            if bytes.len() > CAP {
                self.ok &= self.sink.put(bytes);
                return;
            }
        }
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    /// The bytes written so far, if all of them are still in the buffer.
    pub fn buffered(&self) -> Option<&[u8]> {
        self.ok.then(|| self.buf.get(..self.len)).flatten()
    }

    pub fn text(&mut self, text: &str) {
        self.raw(text.as_bytes());
    }

    fn flush(&mut self) {
        if self.len > 0 {
            let ok = self.sink.put(self.buf.get(..self.len).unwrap_or_default());
            self.ok &= ok;
            self.len = 0;
        }
    }

    /// Flushes and gives back the sink, with whether every byte was written.
    pub fn finish(mut self) -> (S, bool) {
        self.flush();
        (self.sink, self.ok)
    }

    pub fn uint(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            // n % 10 < 10: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            if let Some(d) = digits.get_mut(at) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || at == 0 {
                break;
            }
        }
        self.raw(digits.get(at..).unwrap_or_default());
    }

    pub fn int(&mut self, n: i64) {
        if n < 0 {
            self.raw(b"-");
        }
        self.uint(n.unsigned_abs());
    }

    /// Nanoseconds as microseconds with three decimals, as the Python traces write times: `1234.567`.
    pub fn micros(&mut self, ns: u64) {
        self.uint(ns / 1000);
        let frac = ns % 1000;
        // frac < 1000: each digit is below 10.
        #[allow(clippy::cast_possible_truncation)]
        self.raw(&[b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8]);
    }

    /// Eight lower-case hex digits (the nonce of a trace file's name).
    pub fn hex8(&mut self, n: u32) {
        let mut digits = [0u8; 8];
        for (i, d) in digits.iter_mut().enumerate() {
            let nibble = (n >> (28 - 4 * i)) & 0xf;
            *d = b"0123456789abcdef".get(nibble as usize).copied().unwrap_or(b'0');
        }
        self.raw(&digits);
    }

    /// `"key":` (schema keys need no escaping).
    pub fn key(&mut self, key: &str) {
        self.raw(b"\"");
        self.text(key);
        self.raw(b"\":");
    }

    /// A JSON string holding `bytes`: escaped, and with any invalid UTF-8 (argv and paths are bytes)
    /// replaced by U+FFFD, as Python's and Rust's lossy decoders do, so the file is always UTF-8.
    pub fn string(&mut self, bytes: &[u8]) {
        self.raw(b"\"");
        self.string_body(bytes);
        self.raw(b"\"");
    }

    /// The inside of a JSON string (no quotes), so a value can be written in parts.
    pub fn string_body(&mut self, bytes: &[u8]) {
        for chunk in bytes.utf8_chunks() {
            let valid = chunk.valid().as_bytes();
            let mut run = 0;
            for (i, &b) in valid.iter().enumerate() {
                let escape: &[u8] = match b {
                    b'"' => b"\\\"",
                    b'\\' => b"\\\\",
                    b'\n' => b"\\n",
                    b'\r' => b"\\r",
                    b'\t' => b"\\t",
                    0..=0x1f => b"",
                    _ => continue,
                };
                self.raw(valid.get(run..i).unwrap_or_default());
                run = i + 1;
                if escape.is_empty() {
                    let hex = b"0123456789abcdef";
                    let (hi, lo) = (hex.get(usize::from(b >> 4)), hex.get(usize::from(b & 0xf)));
                    self.raw(&[b'\\', b'u', b'0', b'0', hi.copied().unwrap_or(b'0'), lo.copied().unwrap_or(b'0')]);
                } else {
                    self.raw(escape);
                }
            }
            self.raw(valid.get(run..).unwrap_or_default());
            if !chunk.invalid().is_empty() {
                self.raw("\u{fffd}".as_bytes());
            }
        }
    }
}

/// JSON text built with an [`Out`], for the strings the constructor prepares once.
pub fn json(build: impl FnOnce(&mut Out<Vec<u8>>)) -> String {
    let mut out = Out::new(Vec::new());
    build(&mut out);
    let (bytes, _) = out.finish();
    // Out writes valid UTF-8 only (escapes are ASCII, invalid input becomes U+FFFD).
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_made_utf8() {
        let s = json(|o| o.string(b"a\"b\\c\nd\te\x01f \xff g \xc3\xa9"));
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\te\\u0001f \u{fffd} g é\"");
        let parsed: String = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(parsed, "a\"b\\c\nd\te\u{1}f \u{fffd} g é");
    }

    #[test]
    fn numbers() {
        assert_eq!(json(|o| o.uint(0)), "0");
        assert_eq!(json(|o| o.uint(u64::MAX)), u64::MAX.to_string());
        assert_eq!(json(|o| o.int(-42)), "-42");
        assert_eq!(json(|o| o.int(i64::MIN)), i64::MIN.to_string());
        assert_eq!(json(|o| o.micros(1_234_567)), "1234.567");
        assert_eq!(json(|o| o.micros(5)), "0.005");
        assert_eq!(json(|o| o.hex8(0xdead_beef)), "deadbeef");
        assert_eq!(json(|o| o.hex8(7)), "00000007");
    }

    #[test]
    fn long_output_goes_through_in_order() {
        let long = "x".repeat(3 * CAP + 17);
        let s = json(|o| {
            o.text("[");
            o.string(long.as_bytes());
            o.raw(long.as_bytes());
            o.text("]");
        });
        assert_eq!(s, format!("[\"{long}\"{long}]"));
    }
}
