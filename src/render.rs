//! Turning an extracted JSON value into the text stored in `process_instance_metadata.value`.
//!
//! Pure functions, no PostgreSQL: the default format reproduces what SpiffWorkflow stores,
//! which is Python's `str()` of the value `json.loads` produced; the `json` format reproduces
//! `jsonb #>> '{}'`. Numbers arrive as their decimal text (serde_json's `arbitrary_precision`),
//! exactly as jsonb prints them, so integers of any size stay exact.

use serde_json::Value;
use unicode_general_category::{get_general_category, GeneralCategory};

/// The longest value `process_instance_metadata.value` (varchar(255)) holds, in characters.
pub const MAX_VALUE_CHARS: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueFormat {
    /// Python's `str(value)`, what SpiffWorkflow writes.
    Python,
    /// `jsonb #>> '{}'`.
    Json,
}

/// Renders a value, or `None` for JSON `null` (stored as SQL NULL), cut to 255 characters.
pub fn render(value: &Value, format: ValueFormat) -> Option<String> {
    let mut out = match (value, format) {
        (Value::Null, _) => return None,
        (Value::String(s), _) => s.clone(),
        (_, ValueFormat::Python) => {
            let mut out = String::new();
            python_repr(value, &mut out);
            out
        }
        (_, ValueFormat::Json) => {
            let mut out = String::new();
            jsonb_text(value, &mut out);
            out
        }
    };
    truncate_chars(&mut out, MAX_VALUE_CHARS);
    Some(out)
}

/// Cuts `s` to at most `max` characters; a character is never split.
pub fn truncate_chars(s: &mut String, max: usize) {
    if let Some((byte_index, _)) = s.char_indices().nth(max) {
        s.truncate(byte_index);
    }
}

/// Python's `repr()` of the value `json.loads` would give (for a top-level string `str()` is
/// the string itself, which `render` handles before coming here).
fn python_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => python_number(&n.to_string(), out),
        Value::String(s) => python_str_repr(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_str_repr(k, out);
                out.push_str(": ");
                python_repr(v, out);
            }
            out.push('}');
        }
    }
}

/// `json.loads` makes an `int` of a literal without fraction or exponent and a `float` of
/// anything else; `str()` of either follows.
fn python_number(text: &str, out: &mut String) {
    if text.contains(['.', 'e', 'E']) {
        // A JSON number always parses as f64 (overflow gives inf, as in Python).
        let x: f64 = text.parse().unwrap_or(f64::NAN);
        python_float_repr(x, out);
    } else if text == "-0" {
        out.push('0');
    } else {
        out.push_str(text);
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in positional notation when
/// the decimal exponent is in [-4, 16), scientific with a signed two-digit exponent otherwise.
pub fn python_float_repr(x: f64, out: &mut String) {
    if x.is_nan() {
        out.push_str("nan");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Rust's `{:e}` prints the same shortest round-trip digits as Python's repr, e.g. "1.5e-7".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} always has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    // Python's decpt: the value is 0.d1d2d3... * 10^decpt.
    let decpt = exponent + 1;
    if x < 0.0 {
        out.push('-');
    }
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else {
            let decpt = decpt as usize;
            if digits.len() <= decpt {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', decpt - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..decpt]);
                out.push('.');
                out.push_str(&digits[decpt..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        out.push_str(&format!("e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()));
    }
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double quote;
/// backslash escapes for the quote, `\`, `\t`, `\n`, `\r`; `\xNN`, `\uNNNN`, `\UNNNNNNNN` for
/// characters Python does not consider printable.
pub fn python_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if python_is_printable(c) => out.push(c),
            c => {
                let code = c as u32;
                if code <= 0xff {
                    out.push_str(&format!("\\x{code:02x}"));
                } else if code <= 0xffff {
                    out.push_str(&format!("\\u{code:04x}"));
                } else {
                    out.push_str(&format!("\\U{code:08x}"));
                }
            }
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character: everything but the categories Cc, Cf, Cs,
/// Co, Cn, Zl, Zp and Zs, except that the ASCII space is printable.
fn python_is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    !matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Surrogate
            | GeneralCategory::PrivateUse
            | GeneralCategory::Unassigned
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::SpaceSeparator
    )
}

/// The text `jsonb_out` prints for a value: `", "` and `": "` separators, strings escaped as
/// PostgreSQL's `escape_json` does.
fn jsonb_text(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => jsonb_escape(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                jsonb_text(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                jsonb_escape(k, out);
                out.push_str(": ");
                jsonb_text(v, out);
            }
            out.push('}');
        }
    }
}

fn jsonb_escape(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(json: &str) -> Option<String> {
        render(&serde_json::from_str(json).unwrap(), ValueFormat::Python)
    }

    fn js(json: &str) -> Option<String> {
        render(&serde_json::from_str(json).unwrap(), ValueFormat::Json)
    }

    /// (JSON input, Python's str() of json.loads(input)); every expectation was produced by
    /// CPython 3.11.
    const PYTHON_CASES: &[(&str, &str)] = &[
        (r#""INV-001""#, "INV-001"),
        (r#""""#, ""),
        (r#""it's \"quoted\"""#, r#"it's "quoted""#),
        (r#""line\nbreak\ttab""#, "line\nbreak\ttab"),
        (r#""Zürich 東京 🎉""#, "Zürich 東京 🎉"),
        ("0", "0"),
        ("-0", "0"),
        ("42", "42"),
        ("-17", "-17"),
        (
            "123456789012345678901234567890",
            "123456789012345678901234567890",
        ),
        ("-98765432109876543210", "-98765432109876543210"),
        ("1.5", "1.5"),
        ("1.0", "1.0"),
        ("1.50", "1.5"),
        ("-2.25", "-2.25"),
        ("100.0", "100.0"),
        ("0.1", "0.1"),
        ("0.0001", "0.0001"),
        ("0.00001", "1e-05"),
        ("0.00000015", "1.5e-07"),
        ("1e16", "1e+16"),
        ("1E16", "1e+16"),
        ("10000000000000000.0", "1e+16"),
        ("1000000000000000.0", "1000000000000000.0"),
        ("1234567890123456789.0", "1.2345678901234568e+18"),
        ("3.141592653589793238462643", "3.141592653589793"),
        ("1e2", "100.0"),
        ("2.5e-300", "2.5e-300"),
        ("1e400", "inf"),
        ("-1e400", "-inf"),
        ("0.0", "0.0"),
        ("true", "True"),
        ("false", "False"),
        ("[]", "[]"),
        ("{}", "{}"),
        (r#"["a", 1]"#, "['a', 1]"),
        (r#"[1.0, true, null, "x"]"#, "[1.0, True, None, 'x']"),
        (r#"{"k": null}"#, "{'k': None}"),
        (
            r#"{"a": {"b": [1, {"c": false}]}}"#,
            "{'a': {'b': [1, {'c': False}]}}",
        ),
        (r#"["it's"]"#, r#"["it's"]"#),
        (r#"["say \"hi\""]"#, r#"['say "hi"']"#),
        (r#"["it's \"both\""]"#, r#"['it\'s "both"']"#),
        (r#"["back\\slash"]"#, r"['back\\slash']"),
        (r#"["a\nb\tc\rd"]"#, r"['a\nb\tc\rd']"),
        (r#"["\u0000\u0007\u001f\u007f"]"#, r"['\x00\x07\x1f\x7f']"),
        (r#"["\u0085\u00a0\u00ad"]"#, r"['\x85\xa0\xad']"),
        (r#"["\u2028\u200b\ue000"]"#, r"['\u2028\u200b\ue000']"),
        (r#"["\ud83c\udf89 é ü 東"]"#, "['🎉 é ü 東']"),
        (r#"["\udb80\udc00"]"#, r"['\U000f0000']"),
        (r#"{"it's": "x"}"#, r#"{"it's": 'x'}"#),
        (r#"[1e16, 0.00001, -0.5]"#, "[1e+16, 1e-05, -0.5]"),
        (
            r#"[123456789012345678901234567890]"#,
            "[123456789012345678901234567890]",
        ),
        (r#"[[[[[[["deep"]]]]]]]"#, "[[[[[[['deep']]]]]]]"),
    ];

    #[test]
    fn python_rendering_matches_cpython() {
        for (input, expected) in PYTHON_CASES {
            assert_eq!(py(input).as_deref(), Some(*expected), "input {input}");
        }
    }

    #[test]
    fn null_renders_as_sql_null_in_both_formats() {
        assert_eq!(py("null"), None);
        assert_eq!(js("null"), None);
    }

    #[test]
    fn json_rendering_matches_jsonb_text() {
        let cases: &[(&str, &str)] = &[
            (r#""plain""#, "plain"),
            (r#""a\"b""#, "a\"b"),
            ("42", "42"),
            ("1.50", "1.50"),
            ("true", "true"),
            ("false", "false"),
            (r#"[1, "a", null, true]"#, r#"[1, "a", null, true]"#),
            (
                r#"{"a": {"b": []}, "c": {}}"#,
                r#"{"a": {"b": []}, "c": {}}"#,
            ),
            (
                r#"["q\"\\\n\t\r\b\f\u0001 é"]"#,
                r#"["q\"\\\n\t\r\b\f\u0001 é"]"#,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(js(input).as_deref(), Some(*expected), "input {input}");
        }
    }

    #[test]
    fn cut_to_255_characters_never_inside_a_character() {
        let ascii = "x".repeat(300);
        assert_eq!(py(&format!("\"{ascii}\"")).unwrap(), "x".repeat(255));

        // 254 ASCII characters then multi-byte ones: the cut falls after the first of them.
        let mixed = format!("{}é🎉東", "a".repeat(254));
        let out = py(&format!("\"{mixed}\"")).unwrap();
        assert_eq!(out.chars().count(), 255);
        assert_eq!(out, format!("{}é", "a".repeat(254)));

        let emoji = "🎉".repeat(300);
        let out = js(&format!("\"{emoji}\"")).unwrap();
        assert_eq!(out.chars().count(), 255);
        assert_eq!(out.len(), 255 * 4);

        // A container's repr is cut too.
        let long_list = format!("[{}]", vec!["1"; 200].join(", "));
        let out = py(&long_list).unwrap();
        assert_eq!(out.chars().count(), 255);
        assert!(out.starts_with("[1, 1, "));

        // Exactly 255 is kept whole.
        let exact = "y".repeat(255);
        assert_eq!(py(&format!("\"{exact}\"")).unwrap(), exact);
    }

    #[test]
    fn float_repr_boundaries() {
        let cases: &[(f64, &str)] = &[
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (0.00001, "1e-05"),
            (1e100, "1e+100"),
            (1e-100, "1e-100"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
        ];
        for (x, expected) in cases {
            let mut out = String::new();
            python_float_repr(*x, &mut out);
            assert_eq!(out, *expected, "value {x:e}");
        }
    }
}
