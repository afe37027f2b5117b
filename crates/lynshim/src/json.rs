//! Writing JSON text by hand where the hot path needs it (a probe's args): a serde `Map` or `json!` value
//! per span would cost a tree and an allocation per key, and `write!` formats integers slowly.

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
pub fn push_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    // Names, paths and field names rarely need escaping: copy them whole when they do not.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

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
