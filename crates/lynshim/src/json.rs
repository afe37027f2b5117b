//! Writing JSON text by hand where the hot path needs it: a probe's args (a serde `Map` or `json!` value per
//! span would cost a tree and an allocation per key, and `write!` formats integers slowly), and the names
//! the trace file's writer puts in every event.

use serde_json::Value;

/// A JSON value, without allocating for the common scalars.
pub fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) => push_str(out, s),
        Value::Number(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{n}");
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `s` as a JSON string.
///
/// The rare escaping path is kept out of line (`#[cold]`): the common one, which a traced call takes for
/// each of a few short strings, is the check and three copies.
#[inline]
pub fn push_str(out: &mut String, s: &str) {
    if needs_escape(s.as_bytes()) {
        push_escaped(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Rare (a quote, a backslash, a control character): escaped by serde_json, as the file's writer
/// escapes names ([`push_str_bytes`]), so that one string is written the same everywhere.
#[cold]
#[inline(never)]
fn push_escaped(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// [`push_str`] into bytes (the trace file's writer).
#[inline]
pub fn push_str_bytes(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        push_escaped_bytes(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cold]
#[inline(never)]
fn push_escaped_bytes(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Does `s` hold a byte JSON must escape in a string: a quote, a backslash or a control character?
///
/// Every name, category and argument a span writes is checked, and almost none needs escaping, so the
/// check looks at eight bytes at a time ("SWAR"): in a word `v`, `(v - 0x0101…01·n) & !v & 0x8080…80`
/// is non-zero exactly when some byte of `v` is below `n` (for `n` ≤ 0x80), and a byte equal to `c` is
/// a zero byte of `v ^ 0x0101…01·c`. Bytes of multi-byte UTF-8 characters (0x80 and up) never match.
/// The last bytes (and short names, most of them) are looked up in a table.
#[inline]
pub fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    const SPACES: u64 = ONES * 0x20;
    let below = |v: u64, n: u64| v.wrapping_sub(n) & !v;
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0_u8; 8];
        bytes.copy_from_slice(word);
        let v = u64::from_le_bytes(bytes);
        if (below(v, SPACES) | below(v ^ QUOTES, ONES) | below(v ^ BACKSLASHES, ONES)) & HIGH != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| ESCAPED[usize::from(b)])
}

/// The bytes JSON escapes in a string, by value.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// An integer.
pub fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_escape_strings() {
        let mut out = String::from("[");
        for (i, value) in [Value::from("a \"quoted\"\n\\ path\u{1}"), Value::from(3), Value::Null].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_value(&mut out, value);
        }
        out.push(']');
        let parsed: Vec<Value> = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed, vec![Value::from("a \"quoted\"\n\\ path\u{1}"), Value::from(3), Value::Null]);
    }

    /// The word-at-a-time check agrees with the byte-by-byte rule for every byte at every position of
    /// a word and of the tail, and for strings around word boundaries.
    #[test]
    fn needs_escape_finds_every_byte_json_escapes() {
        let plain = |b: u8| b != b'"' && b != b'\\' && b >= 0x20;
        for len in [1_usize, 7, 8, 9, 15, 16, 17, 24] {
            for at in 0..len {
                for b in 0..=255_u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(needs_escape(&s), !plain(b), "byte {b:#04x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape("lynguine.util.yaml/_config.yml é…".as_bytes()));
        assert!(!needs_escape(b""));
    }

    /// Both writers escape as serde_json does (`\b`, not `\u0008`).
    #[test]
    fn both_writers_escape_alike() {
        let tricky = "a \"q\"\\ \u{8}\u{c}\n\t\u{1f} é";
        let mut text = String::new();
        push_str(&mut text, tricky);
        let mut bytes = Vec::new();
        push_str_bytes(&mut bytes, tricky);
        assert_eq!(text.as_bytes(), bytes.as_slice());
        assert_eq!(text, serde_json::to_string(tricky).expect("a string"));
    }

    #[test]
    fn integers_and_strings_make_valid_json() {
        let mut out = String::from("[");
        push_int(&mut out, -42_i64);
        out.push(',');
        push_int(&mut out, u64::MAX);
        out.push(',');
        push_str(&mut out, "tab\there");
        out.push(']');
        let parsed: Vec<Value> = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed, vec![Value::from(-42), Value::from(u64::MAX), Value::from("tab\there")]);
    }
}
