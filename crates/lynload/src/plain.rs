//! The JSON fast path: the one or two shapes of line that make up nearly all of a trace, read without a
//! general JSON parser and to the same bits as serde_json would read them; any other line goes to
//! serde_json.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Map;

use crate::build::RawEvent;

/// Nearly every line lynshim writes is the begin, end or whole span of an import, shaped exactly like
/// `{"cat":"import","name":"numpy","ph":"B","pid":7,"tid":7,"ts":210.5}` (serde_json writes keys in
/// sorted order), or, from newer sessions, like [`written_in_order`]'s. Such a line is read here
/// without a general JSON parser — which was most of the time spent loading a build — and any other line (args, escapes, another key order) gives `None`
/// and goes to serde_json. Numbers are read as serde_json reads them ([`PlainNumber`]), so both paths
/// give the same event to the bit (a test compares them on every recorded line).
pub(crate) fn plain_event(line: &str) -> Option<RawEvent<'_>> {
    let Some(rest) = line.strip_prefix(r#"{"cat":""#) else {
        return written_in_order(line);
    };
    let (cat, rest) = plain_string(rest)?;
    let (dur, rest) = match rest.strip_prefix(r#","dur":"#) {
        Some(rest) => number(rest)?,
        None => (0.0, rest),
    };
    let (name, rest) = plain_string(rest.strip_prefix(r#","name":""#)?)?;
    let (ph, rest) = plain_string(rest.strip_prefix(r#","ph":""#)?)?;
    ids_and_time(rest, ph, name, cat, Some(dur))
}

/// The same line as lynshim's session writes it since its keys follow the event's own order:
/// `{"ph":"B","name":"numpy","cat":"import","pid":7,"tid":7,"ts":210.5}`, or a whole span
/// `{"ph":"X",…,"ts":210.5,"dur":4.25}` (no args).
fn written_in_order(line: &str) -> Option<RawEvent<'_>> {
    let (ph, rest) = plain_string(line.strip_prefix(r#"{"ph":""#)?)?;
    let (name, rest) = plain_string(rest.strip_prefix(r#","name":""#)?)?;
    let (cat, rest) = plain_string(rest.strip_prefix(r#","cat":""#)?)?;
    ids_and_time(rest, ph, name, cat, None)
}

/// The tail both key orders share, `,"pid":…,"tid":…,"ts":…}`, read into the event of a line whose
/// `ph`, `name` and `cat` were read before it, and its `dur` when the key order put it first; in
/// lynshim's own order (`dur` `None` here) a `dur` may follow the time.
fn ids_and_time<'a>(rest: &str, ph: &'a str, name: &'a str, cat: &'a str, dur: Option<f64>) -> Option<RawEvent<'a>> {
    let rest = skip_pid(rest.strip_prefix(r#","pid":"#)?)?;
    let (tid, rest) = number(rest.strip_prefix(r#","tid":"#)?)?;
    let (ts, rest) = number(rest.strip_prefix(r#","ts":"#)?)?;
    let (dur, rest) = match (dur, rest.strip_prefix(r#","dur":"#)) {
        (None, Some(rest)) => number(rest)?,
        (dur, _) => (dur.unwrap_or(0.0), rest),
    };
    (rest == "}").then(|| RawEvent {
        ph: Cow::Borrowed(ph),
        name: Cow::Borrowed(name),
        cat: Cow::Borrowed(cat),
        ts,
        dur,
        tid,
        args: Map::new(),
        at: None,
    })
}

/// The text of a JSON string up to its closing quote (`text` starts after the opening one), and what
/// follows the quote; `None` if it holds an escape or a control character, which JSON forbids bare.
fn plain_string(text: &str) -> Option<(&str, &str)> {
    let end = string_end(text.as_bytes())?;
    (text.as_bytes()[end] == b'"').then(|| (&text[..end], &text[end + 1..]))
}

/// The index of the first `"`, `\` or control character in `bytes`, looking at eight bytes at a time:
/// byte by byte, this scan over span names was a third of reading a line.
///
/// For each of the three tests a mask flags the bytes that pass it; a mask can also flag bytes above
/// (later than) one it rightly flagged, never below, so the lowest flag of all is the first such byte.
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Bytes below `n` (for n <= 0x80); with n = 1, the zero bytes.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let found = below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) | below(x, 0x20);
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map(|i| offset + i)
}

/// Skip the pid (the file's own pid is in its `lynshim.process` event): a plain positive integer, or
/// `None` to leave the line to serde_json.
fn skip_pid(text: &str) -> Option<&str> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let plain = digits > 0 && (digits == 1 || !text.starts_with('0'));
    (plain && text.as_bytes().get(digits) == Some(&b',')).then(|| &text[digits..])
}

/// A JSON number up to the next `,` or `}`, and the text from that delimiter on.
fn number<T: PlainNumber>(text: &str) -> Option<(T, &str)> {
    let bytes = text.as_bytes();
    if let Some((decimal, len)) = ShortDecimal::prefix(bytes) {
        if matches!(bytes.get(len), Some(b',' | b'}')) {
            return Some((T::from_decimal(decimal)?, &text[len..]));
        }
    }
    let end = bytes.iter().position(|&b| b == b',' || b == b'}')?;
    Some((serde_json::from_str(&text[..end]).ok()?, &text[end..]))
}

/// A number read exactly as serde_json reads it. Short plain decimals — what lynshim writes — are
/// read here: with at most 15 digits the digits are exact in an f64, and so is a power of ten up to
/// 10^15, so the one division serde_json makes (and a correctly rounded parse) gives these same bits.
/// Anything else (exponents, long fractions) is read by serde_json itself.
trait PlainNumber: Sized + for<'de> Deserialize<'de> {
    fn from_decimal(decimal: ShortDecimal) -> Option<Self>;

    #[cfg(test)]
    fn read(text: &str) -> Option<Self> {
        match ShortDecimal::parse(text.as_bytes()) {
            Some(decimal) => Self::from_decimal(decimal),
            None => serde_json::from_str(text).ok(),
        }
    }
}

/// A number of JSON's form `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most 15 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShortDecimal {
    negative: bool,
    /// All the digits, as one integer.
    digits: u64,
    /// How many of them follow the point.
    fraction_digits: usize,
}

impl ShortDecimal {
    const MAX_DIGITS: usize = 15;

    /// The whole of `text` as a short decimal.
    #[cfg(test)]
    fn parse(text: &[u8]) -> Option<Self> {
        Self::prefix(text).and_then(|(decimal, len)| (len == text.len()).then_some(decimal))
    }

    /// A short decimal at the start of `text`, read up to the first byte that is neither a digit nor
    /// its point, and how many bytes it took; `None` if those bytes are no short decimal.
    fn prefix(text: &[u8]) -> Option<(Self, usize)> {
        let negative = text.first() == Some(&b'-');
        let start = usize::from(negative);
        let (mut digits, mut count, mut point, mut end) = (0_u64, 0_usize, None, text.len());
        for (i, &b) in text.iter().enumerate().skip(start) {
            match b {
                b'0'..=b'9' => {
                    digits = digits * 10 + u64::from(b - b'0');
                    count += 1;
                    if count > Self::MAX_DIGITS {
                        return None;
                    }
                }
                b'.' if point.is_none() && i > start => point = Some(i),
                _ => {
                    end = i;
                    break;
                }
            }
        }
        let body = &text[start..end];
        // JSON forbids leading zeros ("07") and a point with no digit after it ("1.").
        let leading_zero = body.len() > 1 && body[0] == b'0' && body[1] != b'.';
        let fraction_digits = point.map_or(0, |p| end - p - 1);
        if count == 0 || leading_zero || (point.is_some() && fraction_digits == 0) {
            return None;
        }
        Some((Self { negative, digits, fraction_digits }, end))
    }
}

impl PlainNumber for f64 {
    fn from_decimal(d: ShortDecimal) -> Option<Self> {
        const POWERS_OF_TEN: [f64; ShortDecimal::MAX_DIGITS + 1] =
            [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
        #[allow(clippy::cast_precision_loss)] // at most 15 digits: exact
        let magnitude = d.digits as f64 / POWERS_OF_TEN[d.fraction_digits];
        Some(if d.negative { -magnitude } else { magnitude })
    }
}

impl PlainNumber for i64 {
    fn from_decimal(d: ShortDecimal) -> Option<Self> {
        if d.fraction_digits > 0 {
            return None; // not an integer: serde_json says so for the whole line
        }
        let magnitude = i64::try_from(d.digits).ok()?;
        Some(if d.negative { -magnitude } else { magnitude })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Event lines of the recorded fixture traces, and lines made to sit on either side of the fast
    /// path's edges.
    fn lines_to_compare() -> Vec<String> {
        // At run time (see lynanalyze's snapshot tests): this clone's fixtures, whatever built the binary.
        let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("../../tests/fixtures/traces");
        let mut lines = Vec::new();
        for entry in fs::read_dir(&dir).expect("fixture traces (tests/fixtures/record.sh)") {
            let path = entry.expect("entry").path();
            if path.to_string_lossy().ends_with(".lynshim.json") {
                let text = fs::read_to_string(&path).expect("read");
                lines.extend(text.lines().map(|l| l.trim().trim_matches(',').to_owned()).filter(|l| l.len() > 1));
            }
        }
        let plain = |cat: &str, name: &str, ph: &str, tid: &str, ts: &str| {
            format!(r#"{{"cat":"{cat}","name":"{name}","ph":"{ph}","pid":7,"tid":{tid},"ts":{ts}}}"#)
        };
        for ts in [
            "0",
            "0.0",
            "-0.0",
            "12.5",
            "1e3",
            "1.5E-2",
            "35670.198000000004",
            "123456789012345",
            "1234567890123456",
            "07",
            "1.",
            ".5",
            "-",
            "",
            "+1",
            "NaN",
            "1_0",
            "0.000000000000001",
            "99999999999999.9",
        ] {
            lines.push(plain("import", "numpy", "B", "7", ts));
        }
        for tid in ["-3", "0", "1.5", "9223372036854775807", "9223372036854775808", "01", "1e2"] {
            lines.push(plain("import", "numpy", "E", tid, "1.0"));
        }
        for name in [r#"a\"b"#, r"a\\b", "a\u{1}b", "émigré", "", r"\u00e9"] {
            lines.push(plain("import", name, "B", "7", "1.0"));
        }
        let in_order = |ph: &str, name: &str, tid: &str, ts: &str| {
            format!(r#"{{"ph":"{ph}","name":"{name}","cat":"import","pid":7,"tid":{tid},"ts":{ts}}}"#)
        };
        for (ts, tid, name) in [
            ("1.0", "7", "x"),
            ("07", "7", "x"),
            ("1e3", "7", "x"),
            ("NaN", "7", "x"),
            ("1.0", "1.5", "x"),
            ("1.0", "7", r#"a\"b"#),
            ("35670.198000000004", "-3", "émigré"),
            ("", "7", "x"),
        ] {
            lines.push(in_order("B", name, tid, ts));
        }
        // Whole spans, as lynshim writes a span with nothing recorded inside it.
        for dur in ["2.5", "0.0", "0", "1e3", "07", "-1.0", "", "NaN", "1.5,\"dur\":2.0", "1.0,\"x\":1"] {
            lines.push(format!(r#"{{"ph":"X","name":"x","cat":"import","pid":7,"tid":7,"ts":10.125,"dur":{dur}}}"#));
        }
        lines.push(r#"{"ph":"X","name":"x","cat":"import","pid":7,"tid":7,"dur":2.5,"ts":1.0}"#.to_owned());
        lines.push(r#"{"cat":"import","dur":12.5,"name":"x","ph":"X","pid":7,"tid":7,"ts":1.0,"dur":3.0}"#.to_owned());
        lines.push(
            r#"{"ph":"X","name":"x","cat":"field","pid":7,"tid":7,"ts":1.0,"dur":2.5,"args":{"a":1}}"#.to_owned(),
        );
        lines.push(r#"{"ph":"B","name":"x","cat":"import","pid":7,"tid":7,"ts":1.0,"args":{"a":1}}"#.to_owned());
        lines.push(r#"{"ph":"B","name":"x","cat":"import","pid":7,"tid":7,"ts":1.0}}"#.to_owned());
        lines.push(r#"{"cat":"import","dur":12.5,"name":"x","ph":"X","pid":7,"tid":7,"ts":1.0}"#.to_owned());
        lines.push(r#"{"name":"x","cat":"import","ph":"B","pid":7,"tid":7,"ts":1.0}"#.to_owned());
        lines.push(r#"{"cat":"import","name":"x","ph":"B","pid":7,"tid":7,"ts":1.0}x"#.to_owned());
        lines.push(r#"{"cat":"import","name":"x","ph":"B","pid":7,"tid":7,"ts":1.0,"ts":2.0}"#.to_owned());
        lines
    }

    /// The fast path reads a line exactly as serde_json does, or leaves it to serde_json.
    #[test]
    fn plain_lines_read_as_serde_json_reads_them() {
        let lines = lines_to_compare();
        let mut read_fast = 0;
        for line in &lines {
            let Some(fast) = plain_event(line) else { continue };
            read_fast += 1;
            let slow = serde_json::from_str::<RawEvent<'_>>(line)
                .unwrap_or_else(|e| panic!("the fast path read a line serde_json rejects ({e}): {line}"));
            assert_eq!(
                (&*fast.ph, &*fast.name, &*fast.cat, fast.tid, fast.ts.to_bits(), fast.dur.to_bits()),
                (&*slow.ph, &*slow.name, &*slow.cat, slow.tid, slow.ts.to_bits(), slow.dur.to_bits()),
                "{line}"
            );
            assert!(slow.args.is_empty(), "{line}");
        }
        // Nearly every recorded line without args takes the fast path (those with args, GC spans and
        // calls, are left to serde_json).
        let plain = lines.iter().filter(|l| !l.contains(r#""args""#)).count();
        assert!(read_fast * 20 > plain * 19, "{read_fast} of {plain} lines without args");
    }

    /// A whole span as lynshim writes it takes the fast path, its `dur` read after its time.
    #[test]
    fn whole_spans_in_lynshims_order_take_the_fast_path() {
        let line = r#"{"ph":"X","name":"numpy.core","cat":"import","pid":7,"tid":9,"ts":10.125,"dur":2.5}"#;
        let event = plain_event(line).expect("fast path");
        assert_eq!((&*event.ph, &*event.name, event.tid, event.ts, event.dur), ("X", "numpy.core", 9, 10.125, 2.5));
        let begin = r#"{"ph":"B","name":"numpy.core","cat":"import","pid":7,"tid":9,"ts":10.125}"#;
        assert_eq!(plain_event(begin).expect("fast path").dur, 0.0);
    }

    /// A reproducible stream of pseudo-random numbers (xorshift64).
    fn random(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Short decimals give serde_json's bits, over many numbers of every length the fast path takes.
    #[test]
    fn short_decimals_match_serde_json() {
        let mut next = random(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let digits = 1 + (next() % 15) as usize;
            let value = next() % 10_u64.pow(u32::try_from(digits).expect("small"));
            let text = value.to_string();
            let point = (next() as usize) % (text.len() + 1);
            let text =
                if point == 0 || point == text.len() { text } else { format!("{}.{}", &text[..point], &text[point..]) };
            let text = if next() % 4 == 0 { format!("-{text}") } else { text };
            let expected: f64 = serde_json::from_str(&text).expect("a JSON number");
            let got = <f64 as PlainNumber>::read(&text).expect("read");
            assert_eq!(got.to_bits(), expected.to_bits(), "{text}");
            assert!(ShortDecimal::parse(text.as_bytes()).is_some(), "{text}");
        }
        for text in ["07", "1.", ".5", "-", "", "+1", "1e5", "1234567890123456", "1.2.3", "--1", "0x1"] {
            assert_eq!(ShortDecimal::parse(text.as_bytes()), None, "{text}");
        }
    }

    /// Eight bytes at a time finds what a byte-by-byte look finds, wherever it is and whatever surrounds it.
    #[test]
    fn string_end_matches_a_plain_scan() {
        let mut next = random(0x2545_f491_4f6c_dd1d);
        let alphabet =
            [b'a', b'z', b'.', b'_', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xa9, 0xff, b'!', b']'];
        for _ in 0..100_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| if next() % 6 == 0 { alphabet[(next() % 16) as usize] } else { b'a' + (next() % 26) as u8 })
                .collect();
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(string_end(&bytes), expected, "{bytes:?}");
        }
    }
}
